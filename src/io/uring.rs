//! The Linux io_uring backend.
//!
//! Each batch is one submission: a positioned `Write` per buffer, linked to
//! an `Fsync(DATASYNC)` (or, in [`UringSync::Dsync`] mode, writes carrying
//! `RWF_DSYNC`). Completions post to an eventfd registered with the ring;
//! a tokio task watches it through `AsyncFd`, so no thread blocks waiting and
//! nothing polls. When a batch's writes complete while its sync still runs,
//! the pipeline may submit the next batch's writes (depth 2): the write of
//! batch N+1 overlaps the sync of batch N, and the pipeline acknowledges LSNs
//! only over a prefix of completed syncs.
//!
//! With `RWF_DSYNC` writes there is no separate sync to overlap, so one
//! batch is in flight at a time.
//!
//! In-flight batches (and so their buffers) are owned by the ring's table
//! until their last completion arrives; a dropped `append` future cannot free
//! them, and dropping the ring with I/O in flight waits for it first.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use io_uring::{IoUring, Probe, opcode, squeue, types};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{Completion, IoBackend, IoBatch, IoFailure, SyncKind};
use crate::error::IoOp;
use crate::options::UringSync;
use crate::sync::lock;
use crate::vfs::SegFile;

const SYNC_OP: u64 = 0xFFFF;

/// A batch whose last operation completed, with its outcome.
type Finished = (IoBatch, Result<(), IoFailure>);

struct Flight {
    batch: IoBatch,
    /// Keeps the file descriptor open while the kernel uses it.
    _file: Arc<SegFile>,
    writes_left: usize,
    ops_left: usize,
    result: Result<(), IoFailure>,
}

struct Ring {
    ring: IoUring,
    flights: HashMap<u64, Flight>,
    next_id: u64,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Buffers must outlive the kernel's use of them: wait for everything
        // still in flight before the table (and its buffers) is freed. A
        // transient failure of io_uring_enter is retried; any other failure
        // leaves the kernel's use of the buffers unknown, so they are leaked
        // rather than freed.
        let mut transient = 0u32;
        while !self.flights.is_empty() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => transient = 0,
                Err(e) if is_transient(&e) && transient < 10_000 => {
                    transient += 1;
                    std::thread::yield_now();
                }
                Err(e) => {
                    tracing::error!(
                        "aiowal: io_uring_enter failed while waiting for I/O in flight ({e}); leaking its buffers"
                    );
                    std::mem::forget(std::mem::take(&mut self.flights));
                    return;
                }
            }
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data() >> 16).collect();
            for id in done {
                if let Some(f) = self.flights.get_mut(&id) {
                    f.ops_left = f.ops_left.saturating_sub(1);
                    if f.ops_left == 0 {
                        self.flights.remove(&id);
                    }
                }
            }
        }
    }
}

/// `io_uring_enter` failures that go away by themselves: a signal, a full
/// completion queue (drained by the caller), a momentary lack of resources.
fn is_transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY))
}

struct Shared {
    ring: Mutex<Ring>,
    /// Taken when the backend stops, breaking the cycle with the pipeline.
    sink: Mutex<Option<Arc<dyn Completion>>>,
    stop: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Nothing will complete what is in flight any more (the completion
    /// task is gone, or the kernel refused an enter): the log is poisoned,
    /// and stopping needs no wait. Buffers in flight stay in the ring's
    /// table until the ring is dropped, which waits for the kernel or
    /// leaks them.
    dead: std::sync::atomic::AtomicBool,
    efd: AsyncFd<EventFd>,
    mode: UringSync,
    rt: tokio::runtime::Handle,
}

/// A running io_uring backend.
pub(crate) struct Uring {
    shared: Arc<Shared>,
}

/// Why io_uring cannot be used here, in words that name the likely cause.
fn explain(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    let sysctl =
        disabled.as_deref().map_or(String::new(), |v| format!(", kernel.io_uring_disabled = {}", v.trim()));
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            format!("io_uring_setup was refused ({e}): blocked by seccomp or by the sysctl{sysctl}")
        }
        Some(libc::ENOSYS) => {
            format!("io_uring_setup does not exist ({e}): kernel too old or built without io_uring{sysctl}")
        }
        Some(libc::EINVAL) => format!(
            "io_uring_setup rejected the ring parameters ({e}); check uring_entries (1..=32768){sysctl}"
        ),
        Some(libc::ENOMEM) => {
            format!("io_uring_setup ran out of locked memory ({e}); raise RLIMIT_MEMLOCK{sysctl}")
        }
        _ => format!("io_uring_setup failed ({e}){sysctl}"),
    }
}

impl Uring {
    /// Sets up a ring of `entries`, checks the opcodes it needs, registers the
    /// eventfd and starts the completion task on the current tokio runtime.
    ///
    /// # Errors
    /// A sentence naming the likely cause when io_uring is unavailable.
    pub(crate) fn start(sink: Arc<dyn Completion>, entries: u32, mode: UringSync) -> Result<Uring, String> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            "the io_uring backend needs a tokio runtime (open the log from async code)".to_string()
        })?;
        let ring = IoUring::new(entries).map_err(|e| explain(&e))?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe failed: {e}"))?;
        for (code, name) in [(opcode::Write::CODE, "WRITE"), (opcode::Fsync::CODE, "FSYNC")] {
            if !probe.is_supported(code) {
                return Err(format!("the kernel's io_uring lacks IORING_OP_{name} (kernel too old)"));
            }
        }
        let flags = EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC;
        let efd = EventFd::from_flags(flags).map_err(|e| format!("eventfd: {e}"))?;
        ring.submitter()
            .register_eventfd(efd.as_raw_fd())
            .map_err(|e| format!("registering the eventfd: {e}"))?;
        // AsyncFd must be created inside the runtime (it registers with its
        // reactor); tokio panics instead of failing when the runtime has no
        // I/O driver.
        let efd = {
            let _enter = rt.enter();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: the EventFd owns its descriptor and moves into the
                // AsyncFd, so the fd stays open and unchanged for its lifetime.
                unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE) }
            }))
            .map_err(|_| {
                "the tokio runtime has no I/O driver: build it with enable_io() (or enable_all())".to_string()
            })?
            .map_err(|e| format!("registering the eventfd with tokio: {e}"))?
        };
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring { ring, flights: HashMap::new(), next_id: 1 }),
            sink: Mutex::new(Some(sink)),
            stop: Mutex::new(None),
            dead: std::sync::atomic::AtomicBool::new(false),
            efd,
            mode,
            rt: rt.clone(),
        });
        rt.spawn(reap(Arc::clone(&shared)));
        Ok(Uring { shared })
    }
}

impl Shared {
    fn sink(&self) -> Option<Arc<dyn Completion>> {
        lock(&self.sink).clone()
    }

    /// Queues the batch's operations and enters the kernel once.
    fn push(&self, mut batch: IoBatch) {
        let file = match batch.file.resolve() {
            Ok(f) => f,
            Err(fail) => return self.fail(batch, fail),
        };
        let fd = match file.raw_fd() {
            Ok(fd) => types::Fd(fd),
            Err(error) => return self.fail(batch, IoFailure { op: IoOp::Write, error }),
        };
        let mut r = lock(&self.ring);
        let id = r.next_id;
        r.next_id += 1;
        let mut entries = Vec::with_capacity(batch.writes.len() + 1);
        // Immediate batches: RWF_DSYNC writes or writes + fdatasync, per
        // the mode. A relaxed level's sync must cover earlier writes too,
        // which only fdatasync does; its other batches are plain writes.
        let kind = batch.meta.sync;
        let dsync = self.mode == UringSync::Dsync && kind == SyncKind::Own && !batch.writes.is_empty();
        let fsync = kind != SyncKind::None && !dsync;
        for (i, w) in batch.writes.iter().enumerate() {
            let Ok(len) = u32::try_from(w.data().len()) else {
                drop(r);
                let error = io::Error::other("write buffer larger than 4 GiB");
                return self.fail(batch, IoFailure { op: IoOp::Write, error });
            };
            let mut e = opcode::Write::new(fd, w.data().as_ptr(), len)
                .offset(w.offset)
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build()
                .user_data(id << 16 | i as u64);
            if fsync {
                // A failed or short write cancels the sync linked after it.
                e = e.flags(squeue::Flags::IO_LINK);
            }
            entries.push(e);
        }
        if fsync {
            entries.push(
                opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(id << 16 | SYNC_OP),
            );
        }
        let writes = batch.writes.len();
        let ops = entries.len();
        // SAFETY: every entry points into `batch.writes` buffers, which move
        // into `r.flights` below and stay there (heap buffers do not move)
        // until the last completion for `id` is reaped; `file` keeps the fd open.
        let pushed = unsafe { r.ring.submission().push_multiple(&entries) };
        if pushed.is_err() {
            drop(r);
            let error = io::Error::other("io_uring submission queue full");
            return self.fail(batch, IoFailure { op: IoOp::Write, error });
        }
        r.flights
            .insert(id, Flight { batch, _file: file, writes_left: writes, ops_left: ops, result: Ok(()) });
        if let Err(error) = submit_retrying(&r.ring) {
            // The entries are in the queue and the kernel may still consume
            // them on a later enter, so the batch stays in the table (its
            // buffers alive) and fails when its completions arrive; the log
            // is poisoned now, not when (or if) they do.
            let text = error.to_string();
            if let Some(f) = r.flights.get_mut(&id) {
                f.result = Err(IoFailure { op: IoOp::Write, error });
            }
            drop(r);
            let error = io::Error::other(format!("io_uring_enter failed: {text}"));
            self.die(IoFailure { op: IoOp::Write, error });
        }
    }

    /// Nothing will complete the batches in flight: poison the log, let go
    /// of the pipeline and finish a pending stop.
    fn die(&self, failure: IoFailure) {
        self.dead.store(true, std::sync::atomic::Ordering::Release);
        // The batches in flight keep their buffers (the kernel may still
        // use them) but not their shares of the directory lock: nothing
        // will complete them, and `close` must not wait for them forever.
        for f in lock(&self.ring).flights.values_mut() {
            f.batch._lock = None;
        }
        if let Some(sink) = lock(&self.sink).take() {
            sink.poison_now(failure);
        }
        if let Some(stop) = lock(&self.stop).take() {
            stop();
        }
    }

    fn fail(&self, batch: IoBatch, fail: IoFailure) {
        if let Some(s) = self.sink() {
            s.complete(batch, Err(fail));
        }
    }

    /// Drains the completion queue: batches whose last op completed, and
    /// whether some batch's writes all completed.
    fn drain(&self) -> (Vec<Finished>, bool) {
        let mut done = Vec::new();
        let mut written = false;
        let mut r = lock(&self.ring);
        let cqes: Vec<(u64, i32)> = r.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (data, res) in cqes {
            let (id, op) = (data >> 16, data & 0xFFFF);
            let Some(f) = r.flights.get_mut(&id) else { continue };
            f.ops_left -= 1;
            if op != SYNC_OP {
                let want = f.batch.writes.get(op as usize).map_or(0, |w| w.data().len());
                if f.result.is_ok() {
                    f.result = check_write(res, want);
                }
                f.writes_left -= 1;
                if f.writes_left == 0 && self.mode == UringSync::Fsync {
                    written = true;
                }
            } else if f.result.is_ok() && res < 0 {
                f.result = Err(IoFailure { op: IoOp::Sync, error: io::Error::from_raw_os_error(-res) });
            }
            if f.ops_left == 0 {
                if let Some(f) = r.flights.remove(&id) {
                    done.push((f.batch, f.result));
                }
            }
        }
        (done, written)
    }
}

/// Enters the kernel, retrying the transient failures of `io_uring_enter`.
fn submit_retrying(ring: &IoUring) -> io::Result<usize> {
    let mut tries = 0;
    loop {
        match ring.submit() {
            Err(e) if tries < 100 && is_transient(&e) => {
                tries += 1;
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}

/// A write's completion: an error, a short write (both poison the log), or done.
fn check_write(res: i32, want: usize) -> Result<(), IoFailure> {
    if res < 0 {
        return Err(IoFailure { op: IoOp::Write, error: io::Error::from_raw_os_error(-res) });
    }
    if usize::try_from(res).ok() != Some(want) {
        let error = io::Error::new(io::ErrorKind::WriteZero, format!("short write: {res} of {want} bytes"));
        return Err(IoFailure { op: IoOp::Write, error });
    }
    Ok(())
}

impl Shared {
    /// Drains the completion queue and hands what finished to the pipeline.
    fn deliver(&self) {
        let (done, written) = self.drain();
        if let Some(sink) = self.sink() {
            if written {
                sink.written();
            }
            for (batch, result) in done {
                sink.complete(batch, result);
            }
        }
    }
}

/// Poisons the log if the completion task ends before the backend stopped
/// (its runtime shut down, or it lost its eventfd): nothing would complete
/// the batches in flight. They stay in the ring's table until the ring is
/// dropped, which waits for the kernel.
struct ReapGuard<'a> {
    shared: &'a Shared,
    stopped: bool,
}

impl Drop for ReapGuard<'_> {
    fn drop(&mut self) {
        if !self.stopped {
            let error = io::Error::other("the io_uring completion task ended (its tokio runtime shut down)");
            self.shared.die(IoFailure { op: IoOp::Sync, error });
        }
    }
}

/// The completion task: wakes on the eventfd, hands finished batches back.
async fn reap(shared: Arc<Shared>) {
    let mut guard = ReapGuard { shared: &shared, stopped: false };
    guard.stopped = reap_loop(&shared).await;
}

/// Returns true when the backend was stopped, false when the eventfd failed.
async fn reap_loop(shared: &Shared) -> bool {
    loop {
        match shared.efd.readable().await {
            Ok(mut guard) => {
                // Read the counter before the queue: a completion posted after
                // the drain signals the eventfd again.
                let _ = guard.get_inner().read();
                guard.clear_ready();
            }
            Err(e) => {
                tracing::error!("aiowal: io_uring completion task lost its eventfd: {e}");
                return false;
            }
        }
        shared.deliver();
        let idle = lock(&shared.ring).flights.is_empty();
        if idle {
            if let Some(stop) = lock(&shared.stop).take() {
                lock(&shared.sink).take();
                stop();
                return true;
            }
        }
    }
}

impl IoBackend for Uring {
    fn name(&self) -> &'static str {
        "uring"
    }

    /// Linked write+fsync has a sync phase for the next batch's write to
    /// overlap; a `RWF_DSYNC` write does not, and two of them in flight
    /// only split the group (measured: 1.61x vs 1.57x the baseline at N=64,
    /// 511k/s vs 470k/s at N=256, 100 B records).
    fn depth(&self) -> usize {
        match self.shared.mode {
            UringSync::Fsync => 2,
            UringSync::Dsync => 1,
        }
    }

    fn submit(&self, mut batch: IoBatch) {
        if batch.file.is_new() {
            // A new segment may still be being zero-filled: wait for it on a
            // blocking thread, never on a runtime worker.
            let shared = Arc::clone(&self.shared);
            self.shared.rt.spawn_blocking(move || {
                if let Err(fail) = batch.file.resolve() {
                    return shared.fail(batch, fail);
                }
                shared.push(batch);
            });
            return;
        }
        self.shared.push(batch);
    }

    fn stop(&self, done: Box<dyn FnOnce() + Send>) {
        if self.shared.dead.load(std::sync::atomic::Ordering::Acquire) {
            lock(&self.shared.sink).take();
            return done();
        }
        let mut stop = lock(&self.shared.stop);
        if stop.is_none() {
            *stop = Some(done);
        }
        drop(stop);
        if self.shared.dead.load(std::sync::atomic::Ordering::Acquire) {
            // Died meanwhile, after `die` looked for a stop to finish.
            if let Some(done) = lock(&self.shared.stop).take() {
                lock(&self.shared.sink).take();
                done();
            }
            return;
        }
        // Wake the completion task through the ring's own eventfd so it
        // checks for an idle stop even with nothing in flight.
        let _ = self.shared.efd.get_ref().write(1);
    }
}
