//! `Backend::Lio` on FreeBSD: the driver over the real AIO calls, with
//! completion by kqueue through tokio's `Aio` registrations.
//!
//! tokio hands an `Aio` source its kqueue and a token when it registers
//! it; they go into each `lio_listio`'s (and `aio_fsync`'s) own sigevent
//! (`SIGEV_KEVENT`), while every control block in a list keeps `SIGEV_NONE`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::bsd::{Aio, AioEvent, AioSource};

use super::Notify;
use super::driver::{Lio, Reactor, Readiness};
use super::sys::Libc;
use crate::error::{Error, Result};
use crate::io::{Completion, IoBackend};

/// Starts the lio backend on the current tokio runtime.
///
/// # Errors
/// [`Error::BackendUnavailable`] outside a tokio runtime.
pub(crate) fn start(sink: Arc<dyn Completion>) -> Result<Box<dyn IoBackend>> {
    Lio::start(Arc::new(Libc), Tokio, sink)
        .map(|l| Box::new(l) as Box<dyn IoBackend>)
        .map_err(|reason| Error::BackendUnavailable { backend: "lio", reason })
}

/// tokio's reactor: registrations are `Aio` sources.
pub(crate) struct Tokio;

impl Reactor for Tokio {
    type Reg = Registration;

    /// With LIO interest; tokio reports a list's and a single control
    /// block's kevent alike (readable).
    fn register(&self) -> io::Result<Registration> {
        Aio::new_for_lio(Kevent::default()).map(Registration)
    }
}

/// A tokio `Aio` registration.
pub(crate) struct Registration(Aio<Kevent>);

impl Readiness for Registration {
    type Event = AioEvent;

    /// An error if tokio never registered the source: a list submitted
    /// without a kevent would never wake its task.
    fn notify(&self) -> io::Result<Notify> {
        let source: &Kevent = &self.0;
        match source.0 {
            Some((kq, token)) => Ok(Notify::Kevent { kq, token }),
            None => Err(io::Error::other("tokio did not register the AIO source with its kqueue")),
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<AioEvent>> {
        self.0.poll_ready(cx)
    }

    fn clear_ready(&self, ev: AioEvent) {
        self.0.clear_ready(ev);
    }
}

/// A tokio AIO source that remembers the kqueue and token it was given.
#[derive(Debug, Default)]
pub(crate) struct Kevent(Option<(RawFd, usize)>);

impl AioSource for Kevent {
    fn register_borrowed(&mut self, kq: BorrowedFd<'_>, token: usize) {
        self.0 = Some((kq.as_raw_fd(), token));
    }

    fn deregister(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    //! On FreeBSD only: a list of writes through the real kernel and tokio,
    //! and a write refused by the kernel.
    use std::time::Instant;

    use super::*;
    use crate::error::IoOp;
    use crate::io::{BatchGuard, BatchMeta, FileTarget, IoBatch, WriteBuf};

    fn batch(file: &Arc<crate::vfs::SegFile>) -> IoBatch {
        let writes = (0..3u8)
            .map(|i| WriteBuf { offset: u64::from(i) * 4096, buf: vec![i + 1; 4096], start: 0 })
            .collect();
        let meta = BatchMeta {
            id: 1,
            first_lsn: 1,
            last_lsn: 3,
            bytes: 3 * 4096,
            submitted: Instant::now(),
            seq: 1,
            header: None,
            clean_end: false,
            cut: false,
            sync: crate::io::SyncKind::Own,
        };
        IoBatch {
            file: FileTarget::Open(Arc::clone(file)),
            writes,
            meta,
            guard: BatchGuard::none(),
            _lock: None,
        }
    }

    async fn run_one(b: IoBatch) -> std::result::Result<(), crate::io::IoFailure> {
        struct Sink(tokio::sync::mpsc::UnboundedSender<std::result::Result<(), crate::io::IoFailure>>);
        impl Completion for Sink {
            fn complete(&self, mut batch: IoBatch, result: std::result::Result<(), crate::io::IoFailure>) {
                batch.guard.disarm();
                let _ = self.0.send(result);
            }
            fn poison_now(&self, _f: crate::io::IoFailure) {}
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let lio = start(Arc::new(Sink(tx))).unwrap();
        lio.submit(b);
        rx.recv().await.unwrap()
    }

    #[tokio::test]
    async fn lio_list_writes_then_syncs() {
        let tmp = tempfile::tempfile().unwrap();
        let reader = tmp.try_clone().unwrap();
        let file = Arc::new(crate::vfs::SegFile::Os(tmp));
        run_one(batch(&file)).await.unwrap();
        let mut back = vec![0u8; 3 * 4096];
        std::os::unix::fs::FileExt::read_exact_at(&reader, &mut back, 0).unwrap();
        for i in 0..3usize {
            assert!(back[i * 4096..(i + 1) * 4096].iter().all(|&x| usize::from(x) == i + 1));
        }
    }

    #[tokio::test]
    async fn write_to_a_read_only_file_fails() {
        let path = tempfile::NamedTempFile::new().unwrap();
        let ro = Arc::new(crate::vfs::SegFile::Os(std::fs::File::open(path.path()).unwrap()));
        let err = run_one(batch(&ro)).await.unwrap_err();
        assert_eq!(err.op, IoOp::Write);
    }
}
