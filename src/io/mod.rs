//! I/O backends: one trait, several implementations.
//!
//! The commit pipeline hands a backend an [`IoBatch`]: positioned writes of
//! block-aligned buffers into one segment file, then a data sync. The batch
//! owns its buffers; the backend owns the batch until the kernel reports
//! completion and then returns it, buffers and all, through [`Completion`].
//! Nothing waits on the batch by reference, so a dropped `append` future can
//! never free memory the kernel is still writing from.
//!
//! Platform choice is made here and nowhere else:
//!
//! | platform | `Backend::Auto` picks | why |
//! |----------|-----------------------|-----|
//! | any      | `threaded`            | `pwrite` + `fdatasync` on one thread per log: portable, one hand-off per batch |

mod threaded;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{IoOp, Result};
use crate::options::Backend;

/// One aligned buffer written at a file offset.
#[derive(Debug)]
pub(crate) struct WriteBuf {
    pub offset: u64,
    pub buf: Vec<u8>,
}

/// What the pipeline needs back when a batch completes; backends ignore it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchMeta {
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub bytes: u64,
    pub submitted: Instant,
}

/// Positioned writes into one file followed by a data sync, owned until done.
#[derive(Debug)]
pub(crate) struct IoBatch {
    pub file: Arc<File>,
    #[allow(dead_code)] // read by backends that report paths; kept for diagnostics
    pub path: Arc<PathBuf>,
    pub writes: Vec<WriteBuf>,
    pub meta: BatchMeta,
}

/// Why a batch failed: the operation and the operating system's error.
#[derive(Debug)]
pub(crate) struct IoFailure {
    pub op: IoOp,
    pub error: io::Error,
}

/// Receives every submitted batch back exactly once.
pub(crate) trait Completion: Send + Sync + 'static {
    /// Called when the batch's writes and sync finished (or one of them failed).
    fn complete(&self, batch: IoBatch, result: std::result::Result<(), IoFailure>);
}

/// A way of getting batches onto the disk.
pub(crate) trait IoBackend: Send + Sync + 'static {
    /// The backend's name, as in [`Backend::name`].
    fn name(&self) -> &'static str;
    /// Queues a batch. Batches complete in submission order.
    fn submit(&self, batch: IoBatch);
    /// Completes every queued batch, then stops and calls `done`.
    fn stop(&self, done: Box<dyn FnOnce() + Send>);
}

/// Starts the backend `which` for one log.
pub(crate) fn start(which: Backend, sink: Arc<dyn Completion>) -> Result<Box<dyn IoBackend>> {
    match which {
        Backend::Auto | Backend::Threaded => Ok(Box::new(threaded::Threaded::start(sink)?)),
    }
}
