//! The kqueue-driven lio backend's logic (FreeBSD's default backend),
//! written against [`Kernel`] and [`Reactor`]: on FreeBSD over the real
//! calls and tokio's `Aio` registrations (`freebsd.rs`), in tests on Linux
//! over a model of FreeBSD's AIO and kqueue (`model.rs`).
//!
//! Each batch runs as a tokio task. Its write list is submitted with a
//! sigevent naming a readiness registration's kqueue and token; kqueue posts
//! one event per list when the list completes. Each wake-up is re-checked
//! and the readiness cleared before waiting again. The `aio_fsync(O_DSYNC)`
//! that follows is registered the same way. No thread waits.

use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use super::{AioBatch, Kernel, Notify, Submit};
use crate::error::IoOp;
use crate::io::{Completion, FileTarget, IoBackend, IoBatch, IoFailure};
use crate::sync::lock;

/// A readiness registration with the runtime's kqueue reactor (tokio's
/// `Aio` on FreeBSD).
pub(crate) trait Readiness: Send + Sync + 'static {
    /// What a wake-up delivered, to clear it with.
    type Event: Send;
    /// The sigevent target of this registration: its kqueue and token.
    fn notify(&self) -> Notify;
    /// Ready once an event for this registration arrived.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Event>>;
    /// Forgets `ev`: the next `poll_ready` waits for a new event.
    fn clear_ready(&self, ev: Self::Event);
}

/// Creates readiness registrations (tokio's `Aio::new_for_lio` / `new_for_aio`).
pub(crate) trait Reactor: Send + Sync + 'static {
    type Reg: Readiness;
    /// A registration for a list's `EVFILT_LIO` event.
    fn register_lio(&self) -> io::Result<Self::Reg>;
    /// A registration for one control block's `EVFILT_AIO` event.
    fn register_aio(&self) -> io::Result<Self::Reg>;
}

#[derive(Default)]
struct State {
    in_flight: usize,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

struct Shared<K: Kernel, R: Reactor> {
    kernel: Arc<K>,
    reactor: R,
    rt: tokio::runtime::Handle,
    /// Taken when the backend stops, breaking the cycle with the pipeline.
    sink: Mutex<Option<Arc<dyn Completion>>>,
    state: Mutex<State>,
}

/// The kqueue-driven lio backend.
pub(crate) struct Lio<K: Kernel, R: Reactor> {
    shared: Arc<Shared<K, R>>,
}

impl<K: Kernel, R: Reactor> Lio<K, R> {
    /// Starts the backend on the current tokio runtime.
    ///
    /// # Errors
    /// When called outside a tokio runtime.
    pub(crate) fn start(kernel: Arc<K>, reactor: R, sink: Arc<dyn Completion>) -> Result<Self, String> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            "the lio backend needs a tokio runtime (open the log from async code)".to_string()
        })?;
        let shared =
            Arc::new(Shared { kernel, reactor, rt, sink: Mutex::new(Some(sink)), state: Mutex::default() });
        Ok(Lio { shared })
    }
}

impl<K: Kernel, R: Reactor> Shared<K, R> {
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

impl<K: Kernel, R: Reactor> IoBackend for Lio<K, R> {
    fn name(&self) -> &'static str {
        "lio"
    }

    fn submit(&self, mut batch: IoBatch) {
        lock(&self.shared.state).in_flight += 1;
        let shared = Arc::clone(&self.shared);
        self.shared.rt.spawn(async move {
            let result = run(&shared, &mut batch).await;
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

fn reactor_failure(op: IoOp, error: io::Error) -> IoFailure {
    IoFailure { op, error }
}

/// Writes the batch with one `lio_listio` per list and syncs it.
async fn run<K: Kernel, R: Reactor>(sh: &Shared<K, R>, batch: &mut IoBatch) -> Result<(), IoFailure> {
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
    // SAFETY: `batch` outlives `aio`, whose Drop waits for the kernel.
    let mut aio = unsafe { AioBatch::new(Arc::clone(&sh.kernel), batch, file)? };

    let list = sh.reactor.register_lio().map_err(|e| reactor_failure(IoOp::Write, e))?;
    phase(&mut aio, &list, IoOp::Write, AioBatch::submit_writes, AioBatch::writes_done).await?;
    aio.reap_writes()?;
    let sync = sh.reactor.register_aio().map_err(|e| reactor_failure(IoOp::Sync, e))?;
    phase(&mut aio, &sync, IoOp::Sync, AioBatch::submit_sync, AioBatch::sync_done).await?;
    aio.reap_sync()
}

/// Submits through `reg`'s kevent and waits until `done`: a wake-up may
/// come before every operation finished, so readiness is cleared and
/// awaited again until they all have.
async fn phase<K: Kernel, G: Readiness>(
    aio: &mut AioBatch<K>,
    reg: &G,
    op: IoOp,
    submit: fn(&mut AioBatch<K>, Notify) -> Result<(), Submit>,
    done: fn(&AioBatch<K>) -> bool,
) -> Result<(), IoFailure> {
    loop {
        match submit(aio, reg.notify()) {
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
