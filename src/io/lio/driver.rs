//! The kqueue-driven lio backend's logic (FreeBSD's default backend),
//! written against [`Kernel`] and [`Reactor`]: on FreeBSD over the real
//! calls and tokio's `Aio` registrations (`freebsd.rs`), in tests on Linux
//! over a model of FreeBSD's AIO and kqueue (`model.rs`).
//!
//! Each batch runs as a tokio task. Its writes go to the kernel as one
//! `lio_listio` (more if the kernel's queue is full or the batch has more
//! buffers than `AIO_LISTIO_MAX`), each list with a sigevent naming a
//! readiness registration's kqueue and token, then `aio_fsync(O_DSYNC)`
//! with the same registration. FreeBSD posts a list's kevent once every job
//! it queued finished (`aio_bio_done_notify`: `lioj_count ==
//! lioj_finished_count`) and keeps it active until the list is freed by the
//! last `aio_return` (`filt_lio`; no EV_CLEAR). A wake-up can still find
//! work undone — another list of the same batch, or readiness left from the
//! registration's previous use — so each is checked, and readiness cleared
//! before waiting again. No thread waits.
//!
//! Registrations are long-lived: tokio's `Aio` never deregisters (it has
//! no `Drop`; a dropped one stays registered until the runtime ends), so
//! the backend creates one per batch that can be in flight at once, at
//! start, and reuses it (tokio's own `reuse` test clears readiness between
//! uses). A registration goes back to the pool only once every job that
//! named it was reaped, so no kevent of an old batch reaches a new one.

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
    /// The sigevent target of this registration: its kqueue and token; an
    /// error if the reactor did not give it one.
    fn notify(&self) -> io::Result<Notify>;
    /// Ready once an event for this registration arrived.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Event>>;
    /// Forgets `ev`: the next `poll_ready` waits for a new event.
    fn clear_ready(&self, ev: Self::Event);
}

/// Creates readiness registrations (tokio's `Aio::new_for_lio`). Both the
/// lists' `EVFILT_LIO` and the sync's `EVFILT_AIO` events reach one
/// registration: tokio reports either as readable (`Ready::from_mio`).
pub(crate) trait Reactor: Send + Sync + 'static {
    type Reg: Readiness;
    /// A new registration. May panic where tokio's does (no I/O driver):
    /// the backend creates them at start, where that is caught.
    fn register(&self) -> io::Result<Self::Reg>;
}

/// Most batches in flight at once: the lio backend runs one at a time.
const DEPTH: usize = 1;

#[derive(Default)]
struct State {
    in_flight: usize,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

struct Shared<K: Kernel, R: Reactor> {
    kernel: Arc<K>,
    rt: tokio::runtime::Handle,
    /// Registrations not in use; one per batch that can be in flight.
    regs: Mutex<Vec<R::Reg>>,
    /// Taken when the backend stops, breaking the cycle with the pipeline.
    sink: Mutex<Option<Arc<dyn Completion>>>,
    state: Mutex<State>,
}

/// The kqueue-driven lio backend.
pub(crate) struct Lio<K: Kernel, R: Reactor> {
    shared: Arc<Shared<K, R>>,
}

impl<K: Kernel, R: Reactor> Lio<K, R> {
    /// Starts the backend on the current tokio runtime, with its
    /// registrations.
    ///
    /// # Errors
    /// Outside a tokio runtime, or on one without the I/O driver
    /// (`enable_io`), which tokio's `Aio` needs.
    pub(crate) fn start(kernel: Arc<K>, reactor: R, sink: Arc<dyn Completion>) -> Result<Self, String> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            "the lio backend needs a tokio runtime (open the log from async code)".to_string()
        })?;
        let mut regs = Vec::with_capacity(DEPTH);
        for _ in 0..DEPTH {
            let _enter = rt.enter();
            // tokio panics instead of failing without an I/O driver.
            let reg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reactor.register()))
                .map_err(|_| {
                    "the tokio runtime has no I/O driver: build it with enable_io() (or enable_all())"
                        .to_string()
                })?
                .map_err(|e| format!("registering with tokio's reactor failed: {e}"))?;
            reg.notify().map_err(|e| format!("registering with tokio's reactor failed: {e}"))?;
            regs.push(reg);
        }
        let shared = Arc::new(Shared {
            kernel,
            rt,
            regs: Mutex::new(regs),
            sink: Mutex::new(Some(sink)),
            state: Mutex::default(),
        });
        Ok(Lio { shared })
    }
}

/// Counts a batch task out when it ends — also when its runtime drops it,
/// polled or not — and finishes a pending stop with the last one.
struct Running<K: Kernel, R: Reactor>(Arc<Shared<K, R>>);

impl<K: Kernel, R: Reactor> Drop for Running<K, R> {
    fn drop(&mut self) {
        let done = {
            let mut st = lock(&self.0.state);
            st.in_flight -= 1;
            if st.in_flight == 0 { st.stop.take() } else { None }
        };
        if let Some(done) = done {
            lock(&self.0.sink).take();
            done();
        }
    }
}

/// A batch's control blocks and buffers while the kernel may use them.
/// Dropped with jobs still in flight (its task was dropped), it hands them
/// to a thread that waits for the kernel and reaps them, so no runtime
/// worker blocks and no memory the kernel uses is freed; the batch's guard
/// then poisons the log.
struct InFlight<K: Kernel> {
    aio: Option<AioBatch<K>>,
    batch: Option<IoBatch>,
}

impl<K: Kernel> Drop for InFlight<K> {
    fn drop(&mut self) {
        let Some(aio) = self.aio.take() else { return };
        if !aio.outstanding() {
            return;
        }
        let batch = self.batch.take();
        off_the_runtime(move || {
            let mut aio = aio;
            aio.release();
            drop(aio);
            drop(batch);
        });
    }
}

/// Runs `reap` (which waits for the kernel) on a thread of its own, so no
/// runtime worker blocks. If no thread can be started, runs it here
/// instead: a blocked worker for as long as the I/O takes is better than
/// freeing memory the kernel uses, or leaking a batch whose waiters would
/// then wait forever.
fn off_the_runtime(reap: impl FnOnce() + Send + 'static) {
    let slot = Arc::new(Mutex::new(Some(reap)));
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new().name("aiowal-lio-reaper".into()).spawn(move || {
        if let Some(reap) = lock(&theirs).take() {
            reap();
        }
    });
    if let Err(e) = spawned {
        tracing::error!("aiowal: cannot start a thread to reap AIO in flight ({e}); waiting on this one");
        if let Some(reap) = lock(&slot).take() {
            reap();
        }
    }
}

impl<K: Kernel, R: Reactor> IoBackend for Lio<K, R> {
    fn name(&self) -> &'static str {
        "lio"
    }

    fn syncs_every_batch(&self) -> bool {
        true // a write-only path through the driver is not built
    }

    fn submit(&self, batch: IoBatch) {
        lock(&self.shared.state).in_flight += 1;
        let running = Running(Arc::clone(&self.shared));
        let shared = Arc::clone(&self.shared);
        self.shared.rt.spawn(async move {
            let reg = lock(&shared.regs).pop();
            let Some(reg) = reg else {
                // More batches than DEPTH at once: a pipeline bug. Fail the
                // batch rather than register (and leak) one per batch.
                let error = io::Error::other("lio: no free readiness registration");
                complete(&shared, batch, Err(IoFailure { op: IoOp::Write, error }));
                drop(running);
                return;
            };
            let mut flight = InFlight { aio: None, batch: Some(batch) };
            let result = run(&shared, &reg, &mut flight).await;
            let (aio, batch) = (flight.aio.take(), flight.batch.take());
            if aio.as_ref().is_some_and(AioBatch::outstanding) {
                // A failure left jobs with the kernel: reap them on a thread
                // (no runtime worker blocks), then hand the batch back. The
                // registration is not reused (the log is poisoned anyway).
                let reaper = move || {
                    let mut aio = aio;
                    if let Some(a) = aio.as_mut() {
                        a.release();
                    }
                    drop(aio);
                    if let Some(batch) = batch {
                        complete(&shared, batch, result);
                    }
                    drop(running);
                };
                off_the_runtime(reaper);
                return;
            }
            // Everything that named the registration is reaped: reuse it.
            lock(&shared.regs).push(reg);
            drop(aio);
            if let Some(batch) = batch {
                complete(&shared, batch, result);
            }
            drop(running);
        });
    }

    fn stop(&self, done: Box<dyn FnOnce() + Send>) {
        let mut st = lock(&self.shared.state);
        if st.in_flight > 0 {
            st.stop = Some(done);
            return;
        }
        drop(st);
        lock(&self.shared.sink).take();
        done();
    }
}

fn complete<K: Kernel, R: Reactor>(sh: &Shared<K, R>, batch: IoBatch, result: Result<(), IoFailure>) {
    let sink = lock(&sh.sink).clone();
    if let Some(sink) = sink {
        sink.complete(batch, result);
    }
}

fn reactor_failure(op: IoOp, error: io::Error) -> IoFailure {
    IoFailure { op, error }
}

/// Writes the batch with one `lio_listio` per list and syncs it; on
/// return, nothing of it is left with the kernel.
async fn run<K: Kernel, R: Reactor>(
    sh: &Shared<K, R>,
    reg: &R::Reg,
    flight: &mut InFlight<K>,
) -> Result<(), IoFailure> {
    let Some(batch) = flight.batch.as_mut() else { return Ok(()) };
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
    // SAFETY: the batch's buffers live in `flight` beside the control blocks:
    // both are released together, after the kernel is done (InFlight::drop).
    let aio = unsafe { AioBatch::new(Arc::clone(&sh.kernel), batch, file)? };
    phases(flight.aio.insert(aio), reg).await
}

async fn phases<K: Kernel, G: Readiness>(aio: &mut AioBatch<K>, reg: &G) -> Result<(), IoFailure> {
    phase(aio, reg, IoOp::Write, AioBatch::submit_writes, AioBatch::writes_done).await?;
    aio.reap_writes()?;
    phase(aio, reg, IoOp::Sync, AioBatch::submit_sync, AioBatch::sync_done).await?;
    aio.reap_sync()
}

/// Submits through `reg`'s kevent and waits until `done`, re-checking
/// every wake-up and clearing readiness before waiting again. `done` also
/// reaps what finished (see [`AioBatch::reap_finished_writes`]).
async fn phase<K: Kernel, G: Readiness>(
    aio: &mut AioBatch<K>,
    reg: &G,
    op: IoOp,
    submit: fn(&mut AioBatch<K>, Notify) -> Result<(), Submit>,
    done: fn(&mut AioBatch<K>) -> bool,
) -> Result<(), IoFailure> {
    let notify = reg.notify().map_err(|e| reactor_failure(op, e))?;
    let mut tries = 0u32;
    loop {
        match submit(aio, notify) {
            Ok(()) => break,
            // The kernel's AIO queue is full: reap what of ours finished
            // (finished jobs count against the queue until reaped), back
            // off, retry what it did not take.
            Err(Submit::Again) => {
                done(aio);
                tries += 1;
                back_off(tries).await;
            }
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

/// Waits a little before resubmitting after EAGAIN, without tokio's timer
/// (a runtime may run without it): a few yields first, then a short sleep
/// on a blocking thread.
async fn back_off(tries: u32) {
    if tries < 8 {
        tokio::task::yield_now().await;
        return;
    }
    let nap = Duration::from_micros(50 * u64::from(tries.min(40)));
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(nap)).await;
}
