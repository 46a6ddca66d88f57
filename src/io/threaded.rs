//! The portable backend: one thread per log runs `pwrite` + `fdatasync`.
//!
//! The thread is the pipeline's flusher: a completion that finds more work
//! staged submits it from this same thread, so a busy log pays one hand-off
//! (appender → thread) per batch and none per record.
//!
//! The same worker runs any blocking batch operation: Linux's `lio` backend
//! uses it with glibc's POSIX AIO calls instead of `pwrite`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::{Completion, Inline, IoBackend, IoBatch, IoFailure};
use crate::error::{Error, IoOp, Result};
use crate::sync::lock;

#[derive(Default)]
struct Queue {
    batches: VecDeque<IoBatch>,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// Writes and syncs one batch, blocking the calling thread.
pub(crate) type BatchOp = fn(&mut IoBatch) -> std::result::Result<(), IoFailure>;

pub(crate) struct Threaded {
    shared: Arc<Shared>,
    name: &'static str,
    op: BatchOp,
    /// Whether a lone appender may run `op` on its own thread.
    inline: bool,
    /// `op` syncs every batch, whatever its `SyncKind` (the glibc lio op).
    always_sync: bool,
}

impl Threaded {
    /// The portable backend: `pwrite` + `fdatasync`.
    pub(crate) fn start(sink: Arc<dyn Completion>) -> Result<Threaded> {
        Self::start_with(sink, "threaded", write_and_sync, true)
    }

    /// A worker whose `op` syncs every batch (see `syncs_every_batch`):
    /// the glibc lio backend.
    #[cfg(target_os = "linux")]
    pub(crate) fn always_syncing(mut self) -> Threaded {
        self.always_sync = true;
        self
    }

    /// A worker thread running `op` for each batch.
    pub(crate) fn start_with(
        sink: Arc<dyn Completion>,
        name: &'static str,
        op: BatchOp,
        inline: bool,
    ) -> Result<Threaded> {
        let shared = Arc::new(Shared { queue: Mutex::default(), ready: Condvar::new() });
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("aiowal-{name}"))
            .spawn(move || run(&worker, sink, op))
            .map_err(|e| Error::io(IoOp::Spawn, PathBuf::from("aiowal-io"), e))?;
        Ok(Threaded { shared, name, op, inline, always_sync: false })
    }
}

fn write_and_sync(batch: &mut IoBatch) -> std::result::Result<(), IoFailure> {
    let file = batch.file.resolve()?;
    for w in &batch.writes {
        file.write_all_at(w.data(), w.offset).map_err(|error| IoFailure { op: IoOp::Write, error })?;
    }
    if batch.meta.sync == super::SyncKind::None {
        return Ok(());
    }
    file.sync_data().map_err(|error| IoFailure { op: IoOp::Sync, error })
}

/// Writes and syncs one batch and hands it back. A panic in either step is
/// caught: the batch fails (or, if the panic was in the pipeline after it
/// took the batch, the batch's guard poisons the log), and the thread
/// carries on, so batches queued behind it are never stranded.
fn run_one(sink: &Arc<dyn Completion>, op: BatchOp, mut batch: IoBatch) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let result = op(&mut batch);
        (batch, result)
    }));
    let (batch, result) = match outcome {
        Ok(done) => done,
        // The batch unwound with the panic: its guard poisoned the log.
        Err(_) => return,
    };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.complete(batch, result)));
}

fn run(shared: &Shared, sink: Arc<dyn Completion>, op: BatchOp) {
    loop {
        let next = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(b) = q.batches.pop_front() {
                    break Ok(b);
                }
                if let Some(done) = q.stop.take() {
                    break Err(done);
                }
                q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        match next {
            Ok(batch) => run_one(&sink, op, batch),
            Err(done) => {
                drop(sink);
                done();
                return;
            }
        }
    }
}

impl IoBackend for Threaded {
    fn name(&self) -> &'static str {
        self.name
    }

    fn syncs_every_batch(&self) -> bool {
        self.always_sync
    }

    fn submit(&self, batch: IoBatch) {
        let mut q = lock(&self.shared.queue);
        q.batches.push_back(batch);
        drop(q);
        self.shared.ready.notify_one();
    }

    fn run_inline(&self, mut batch: IoBatch) -> Inline {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let op = self.op;
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            _ if !self.inline => Inline::Declined(batch),
            // Blocking a current-thread runtime would stall every task on it.
            Ok(RuntimeFlavor::CurrentThread) => Inline::Declined(batch),
            // A new segment may still be being zero-filled: let the I/O
            // thread wait for it rather than the appender.
            Ok(_) if batch.file.is_new() => Inline::Declined(batch),
            Ok(_) => tokio::task::block_in_place(|| {
                let r = op(&mut batch);
                Inline::Done(batch, r)
            }),
            // Not inside a runtime: a plain thread that may block.
            Err(_) => {
                let r = op(&mut batch);
                Inline::Done(batch, r)
            }
        }
    }

    fn stop(&self, done: Box<dyn FnOnce() + Send>) {
        let mut q = lock(&self.shared.queue);
        if q.stop.is_none() {
            q.stop = Some(done);
        }
        drop(q);
        self.shared.ready.notify_one();
    }
}
