//! A live tail of the log: durable records from an LSN on, following the
//! durable watermark as new batches become durable ([`crate::Wal::tail`]).

use std::fmt;
use std::sync::Arc;

use crate::commit::Core;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::recovery::{ReadIter, Record};

/// Durable records from an LSN on, waiting for more at the end: what log
/// shipping, change-data capture and followers read. From
/// [`crate::Wal::tail`].
///
/// [`Tail::next`] returns each durable record once, in LSN order, with no
/// gaps: it reads what is on disk, then waits (without polling) for the
/// durable watermark to pass the next LSN. It returns `None` once the log
/// is closed (or its last handle dropped) and everything that was made
/// durable has been returned, and an error, after which it returns `None`,
/// if the records it needs next were truncated away
/// ([`Error::Truncated`]: `truncate_before` ran past a reader that fell
/// behind), the log was poisoned, or a segment failed its checks.
///
/// A tail holds no lock the appenders need and no handle that keeps the
/// log open: a slow reader never slows appends down. While it is reading a
/// stretch of the log it pins the segments of that stretch, which
/// `truncate_before` then deletes rather than reuses. Like
/// [`crate::Wal::read_from`], it reads memory-mapped segments on the
/// calling thread (the newest records, normally in memory).
pub struct Tail {
    core: Arc<Core>,
    next: u64,
    iter: Option<ReadIter>,
    done: bool,
}

impl fmt::Debug for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tail").field("next", &self.next).field("done", &self.done).finish()
    }
}

impl Tail {
    pub(crate) fn new(core: Arc<Core>, from: Lsn) -> Tail {
        Tail { core, next: from.get().max(1), iter: None, done: false }
    }

    /// The LSN of the record the next call to [`Tail::next`] returns.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next)
    }

    /// The first LSN of the oldest readable segment.
    fn first_lsn(&self) -> Option<u64> {
        self.core.first_segment_lsn()
    }

    fn fail(&mut self, e: Error) -> Option<Result<Record>> {
        self.iter = None;
        self.done = true;
        Some(Err(e))
    }

    /// The next durable record, waiting for it if the tail has caught up
    /// with the log; `None` once the log was closed and every durable
    /// record returned (see [`Tail`]).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses no record.
    pub async fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(it) = self.iter.as_mut() {
                match it.next() {
                    Some(Ok(r)) if r.lsn().get() == self.next => {
                        self.next += 1;
                        return Some(Ok(r));
                    }
                    // Before the reader's LSN: the segment starts earlier.
                    Some(Ok(r)) if r.lsn().get() < self.next => continue,
                    // After it: the segments holding it were truncated away
                    // between the check below and the pin.
                    Some(Ok(r)) => {
                        let first = r.lsn().get();
                        return self.fail(Error::Truncated { lsn: self.next, first });
                    }
                    // A segment a `truncate_before` deleted after the
                    // iterator listed it: the iterator says Truncated.
                    Some(Err(e)) => return self.fail(e),
                    None => self.iter = None,
                }
                continue;
            }
            // With no segment readable yet (a new log whose first batch is
            // in flight), nothing was truncated; a log that starts above
            // `next` shows in the iterator's first record instead.
            if let Some(first) = self.first_lsn().filter(|&f| self.next < f) {
                return self.fail(Error::Truncated { lsn: self.next, first });
            }
            match self.core.wait_tail(self.next).await {
                Ok(Some(durable)) => self.iter = Some(self.core.reader(self.next, durable.get())),
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => return self.fail(e),
            }
        }
    }
}

/// A [`Tail`] as a [`futures_core::Stream`] of records (feature `stream`),
/// from [`Tail::into_stream`]. Each item is what [`Tail::next`] returns.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aiowal::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// use std::pin::Pin;
/// use futures_core::Stream;
/// use aiowal::{Lsn, Options, Wal};
///
/// let wal = Wal::open(dir.path(), Options::default()).await?;
/// let mut records = wal.tail(Lsn::FIRST).into_stream();
/// wal.append(b"shipped").await?;
/// // Any Stream consumer works; here, by hand.
/// let first = std::future::poll_fn(|cx| Pin::new(&mut records).poll_next(cx)).await;
/// assert_eq!(first.unwrap()?.data(), b"shipped");
/// wal.close().await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "stream")]
pub struct TailStream {
    tail: Option<Tail>,
    next: Option<NextRecord>,
}

/// A [`Tail::next`] in progress, owning its tail.
#[cfg(feature = "stream")]
type NextRecord = std::pin::Pin<Box<dyn std::future::Future<Output = (Tail, Option<Result<Record>>)> + Send>>;

#[cfg(feature = "stream")]
impl fmt::Debug for TailStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TailStream").field("tail", &self.tail).field("waiting", &self.next.is_some()).finish()
    }
}

#[cfg(feature = "stream")]
impl Tail {
    /// This tail as a [`futures_core::Stream`] (feature `stream`).
    pub fn into_stream(self) -> TailStream {
        TailStream { tail: Some(self), next: None }
    }
}

#[cfg(feature = "stream")]
impl futures_core::Stream for TailStream {
    type Item = Result<Record>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.next.is_none() {
            let Some(mut tail) = this.tail.take() else { return Poll::Ready(None) };
            this.next = Some(Box::pin(async move {
                let r = tail.next().await;
                (tail, r)
            }));
        }
        let Some(next) = this.next.as_mut() else { return Poll::Ready(None) };
        match next.as_mut().poll(cx) {
            Poll::Ready((tail, r)) => {
                this.next = None;
                if r.is_some() {
                    this.tail = Some(tail);
                }
                Poll::Ready(r)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
