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
                    // A segment deleted by a `truncate_before` after the
                    // iterator listed it fails to map: behind a truncation.
                    Some(Err(e)) => {
                        let e = match self.first_lsn().filter(|&f| self.next < f) {
                            Some(first) => Error::Truncated { lsn: self.next, first },
                            None => e,
                        };
                        return self.fail(e);
                    }
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
