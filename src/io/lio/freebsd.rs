//! `Backend::Lio` on FreeBSD: completion by kqueue through tokio's `Aio`.
//!
//! Each batch runs as a tokio task. Its write list is registered with
//! `Aio::new_for_lio`; tokio hands the source its kqueue and a token, which
//! go into `lio_listio`'s own sigevent (`SIGEV_KEVENT`) while every control
//! block keeps `SIGEV_NONE`. kqueue posts one event per list; a wake-up may
//! come before every member is done, so each one is re-checked and the
//! readiness cleared before waiting again. The `aio_fsync(O_DSYNC)` that
//! follows is registered the same way with AIO interest. No thread waits.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::bsd::{Aio, AioSource};

use super::{AioBatch, Submit};
use crate::error::IoOp;
use crate::io::{Completion, FileTarget, IoBackend, IoBatch, IoFailure};
use crate::sync::lock;

#[derive(Default)]
struct State {
    in_flight: usize,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

struct Shared {
    rt: tokio::runtime::Handle,
    /// Taken when the backend stops, breaking the cycle with the pipeline.
    sink: Mutex<Option<Arc<dyn Completion>>>,
    state: Mutex<State>,
}

/// The FreeBSD lio backend.
pub(crate) struct Lio {
    shared: Arc<Shared>,
}

impl Lio {
    /// Starts the backend on the current tokio runtime.
    ///
    /// # Errors
    /// When called outside a tokio runtime.
    pub(crate) fn start(sink: Arc<dyn Completion>) -> Result<Lio, String> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            "the lio backend needs a tokio runtime (open the log from async code)".to_string()
        })?;
        let shared = Arc::new(Shared { rt, sink: Mutex::new(Some(sink)), state: Mutex::default() });
        Ok(Lio { shared })
    }
}

impl Shared {
    /// A batch task ended: stop if asked to and nothing is left.
    fn finished(&self) {
        let done = {
            let mut st = lock(&self.state);
            st.in_flight -= 1;
            if st.in_flight == 0 { st.stop.take() } else { None }
        };
        if let Some(done) = done {
            lock(&self.sink).take();
            done();
        }
    }
}

impl IoBackend for Lio {
    fn name(&self) -> &'static str {
        "lio"
    }

    fn submit(&self, mut batch: IoBatch) {
        lock(&self.shared.state).in_flight += 1;
        let shared = Arc::clone(&self.shared);
        self.shared.rt.spawn(async move {
            let result = run(&mut batch).await;
            let sink = lock(&shared.sink).clone();
            if let Some(sink) = sink {
                sink.complete(batch, result);
            }
            shared.finished();
        });
    }

    fn stop(&self, done: Box<dyn FnOnce() + Send>) {
        let idle = {
            let mut st = lock(&self.shared.state);
            if st.in_flight == 0 {
                true
            } else {
                st.stop = Some(done);
                return;
            }
        };
        if idle {
            lock(&self.shared.sink).take();
            done();
        }
    }
}

/// A tokio AIO source that remembers the kqueue and token it was given.
#[derive(Debug, Default)]
struct Kevent(Option<(RawFd, usize)>);

impl AioSource for Kevent {
    fn register_borrowed(&mut self, kq: BorrowedFd<'_>, token: usize) {
        self.0 = Some((kq.as_raw_fd(), token));
    }

    fn deregister(&mut self) {
        self.0 = None;
    }
}

impl Kevent {
    /// The sigevent asking the kernel to post the registered kevent.
    fn sigevent(&self) -> Option<libc::sigevent> {
        let (kq, token) = self.0?;
        // SAFETY: sigevent is a plain C struct; all-zero is valid.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_KEVENT;
        sev.sigev_signo = kq;
        sev.sigev_value = libc::sigval { sival_ptr: token as *mut libc::c_void };
        Some(sev)
    }
}

fn reactor_failure(op: IoOp, error: io::Error) -> IoFailure {
    IoFailure { op, error }
}

/// Writes the batch with one `lio_listio` per list and syncs it.
async fn run(batch: &mut IoBatch) -> Result<(), IoFailure> {
    if batch.file.is_new() {
        // A new segment may still be being zero-filled: wait off the runtime.
        let mut target = std::mem::replace(&mut batch.file, FileTarget::New(None));
        let (target, r) = tokio::task::spawn_blocking(move || {
            let r = target.resolve();
            (target, r)
        })
        .await
        .map_err(|e| reactor_failure(IoOp::Open, io::Error::other(e)))?;
        batch.file = target;
        r?;
    }
    let file = batch.file.resolve()?;
    let mut aio = AioBatch::new(batch, file)?;

    let list = Aio::new_for_lio(Kevent::default()).map_err(|e| reactor_failure(IoOp::Write, e))?;
    phase(&mut aio, &list, IoOp::Write, AioBatch::submit_writes, AioBatch::writes_done).await?;
    aio.reap_writes()?;
    let sync = Aio::new_for_aio(Kevent::default()).map_err(|e| reactor_failure(IoOp::Sync, e))?;
    phase(&mut aio, &sync, IoOp::Sync, AioBatch::submit_sync, AioBatch::sync_done).await?;
    aio.reap_sync()
}

/// Submits through `reg`'s kevent and waits until `done`: a wake-up may
/// come before every operation finished, so readiness is cleared and
/// awaited again until they all have.
async fn phase<'b>(
    aio: &mut AioBatch<'b>,
    reg: &Aio<Kevent>,
    op: IoOp,
    submit: fn(&mut AioBatch<'b>, Option<libc::sigevent>) -> Result<(), Submit>,
    done: fn(&AioBatch<'b>) -> bool,
) -> Result<(), IoFailure> {
    loop {
        match submit(aio, reg.sigevent()) {
            Ok(()) => break,
            // The kernel's AIO queue is full: retry what it did not take.
            Err(Submit::Again) => tokio::time::sleep(Duration::from_micros(100)).await,
            Err(Submit::Failed(f)) => return Err(f),
        }
    }
    while !done(aio) {
        let ev = poll_fn(|cx| reg.poll_ready(cx)).await.map_err(|e| reactor_failure(op, e))?;
        if !done(aio) {
            reg.clear_ready(ev);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Modelled on tokio's `tests/io_poll_aio.rs`: a list of writes submitted
    //! through `Aio` with LIO interest, readiness cleared after a partial
    //! wake-up, results read back.
    use std::time::Instant;

    use super::*;
    use crate::io::{BatchMeta, WriteBuf};

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
        };
        IoBatch {
            file: FileTarget::Open(Arc::clone(file)),
            writes,
            meta,
            guard: crate::io::BatchGuard::none(),
        }
    }

    #[tokio::test]
    async fn lio_list_writes_then_syncs() {
        let tmp = tempfile::tempfile().unwrap();
        let reader = tmp.try_clone().unwrap();
        let file = Arc::new(crate::vfs::SegFile::Os(tmp));
        let mut b = batch(&file);
        run(&mut b).await.unwrap();
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
        let mut b = batch(&ro);
        let err = run(&mut b).await.unwrap_err();
        assert_eq!(err.op, IoOp::Write);
    }
}
