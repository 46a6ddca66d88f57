//! The simulator's backend: batches go to a [`SimDisk`] from tokio tasks.
//!
//! Each batch is one task: it yields a seeded number of times (so appenders
//! run and batches interleave differently per seed), writes, reports
//! `written` (the next batch may start, as io_uring's overlap allows: depth
//! 2), yields again, syncs, and completes. On a current-thread runtime the
//! order of everything is a function of the seed.

use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

use super::{Completion, IoBackend, IoBatch, IoFailure};
use crate::error::{Error, IoOp, Result};
use crate::sim::SimDisk;
use crate::sync::lock;

#[derive(Default)]
struct Flight {
    running: usize,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

pub(crate) struct Sim {
    disk: SimDisk,
    /// Taken at `stop`: the pipeline owns this backend, so holding the
    /// pipeline here for longer would keep both (and the runtime's driver,
    /// through `runtime`) alive forever.
    sink: Mutex<Option<Arc<dyn Completion>>>,
    runtime: Handle,
    flight: Arc<Mutex<Flight>>,
}

impl Sim {
    pub(crate) fn start(disk: SimDisk, sink: Arc<dyn Completion>) -> Result<Sim> {
        let runtime = Handle::try_current().map_err(|e| Error::BackendUnavailable {
            backend: "sim",
            reason: format!("the simulator's backend runs on the tokio runtime that opens the log: {e}"),
        })?;
        Ok(Sim { disk, sink: Mutex::new(Some(sink)), runtime, flight: Arc::default() })
    }
}

async fn pause(disk: &SimDisk) {
    for _ in 0..disk.yields() {
        tokio::task::yield_now().await;
    }
    if let Some(d) = disk.latency() {
        tokio::time::sleep(d).await;
    }
}

fn write(batch: &mut IoBatch) -> std::result::Result<(), IoFailure> {
    let file = batch.file.resolve()?;
    for w in &batch.writes {
        file.write_all_at(w.data(), w.offset).map_err(|error| IoFailure { op: IoOp::Write, error })?;
    }
    Ok(())
}

fn sync(batch: &mut IoBatch) -> std::result::Result<(), IoFailure> {
    let file = batch.file.resolve()?;
    file.sync_data().map_err(|error| IoFailure { op: IoOp::Sync, error })
}

/// Counts a batch task out when it ends, even when its runtime drops it
/// half-way, and finishes a pending stop with the last one.
struct Running(Arc<Mutex<Flight>>);

impl Drop for Running {
    fn drop(&mut self) {
        let done = {
            let mut f = lock(&self.0);
            f.running -= 1;
            if f.running == 0 { f.stop.take() } else { None }
        };
        if let Some(done) = done {
            done();
        }
    }
}

async fn run(disk: SimDisk, sink: Arc<dyn Completion>, running: Running, mut batch: IoBatch) {
    let _running = running;
    pause(&disk).await;
    let mut result = write(&mut batch);
    if result.is_ok() {
        // As io_uring reports it: the writes are done, the pipeline may
        // take the next batch (before this one completes, even when it
        // has no sync to run).
        if !batch.writes.is_empty() {
            sink.written();
        }
        if batch.meta.sync != crate::io::SyncKind::None {
            pause(&disk).await;
            result = sync(&mut batch);
        }
    }
    sink.complete(batch, result);
    drop(sink);
}

impl IoBackend for Sim {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn depth(&self) -> usize {
        2
    }

    fn submit(&self, batch: IoBatch) {
        let Some(sink) = lock(&self.sink).clone() else {
            return; // stopped: the pipeline submits nothing after `stop`
        };
        lock(&self.flight).running += 1;
        // Counted out when the task ends or is dropped, even unpolled.
        let running = Running(Arc::clone(&self.flight));
        let task = run(self.disk.clone(), sink, running, batch);
        drop(self.runtime.spawn(task));
    }

    fn stop(&self, done: Box<dyn FnOnce() + Send>) {
        drop(lock(&self.sink).take());
        let mut f = lock(&self.flight);
        if f.running > 0 {
            f.stop = Some(done);
            return;
        }
        drop(f);
        done();
    }
}
