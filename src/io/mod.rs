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
//! | Linux    | `uring`, else `threaded` with the reason logged | one `io_uring_enter` per batch, completion via eventfd in tokio's reactor, write N+1 overlapping sync N |
//! | FreeBSD  | `lio` if the probe passes (local file system, `aio_fsync(O_DSYNC)`), else `threaded` with the reason logged | one `lio_listio` per batch, completion by kqueue through a long-lived tokio `Aio` registration, then `aio_fsync(O_DSYNC)` |
//! | Linux, explicit `Backend::Lio` | — | the same AIO code over glibc, driven by one thread in `aio_suspend` |
//! | other    | `threaded`            | `pwrite` + `fdatasync` on one thread per log: portable, one hand-off per batch |
//!
//! A lone appender does not pay for a hand-off: when no batch is in flight,
//! the threaded backend writes and syncs on the appender's own thread
//! (inside `tokio::task::block_in_place` on a multi-thread runtime, so the
//! runtime's other tasks move to another worker meanwhile). Batches that
//! queue behind it go to the I/O thread.

#[cfg(any(target_os = "linux", target_os = "freebsd"))]
mod lio;
#[cfg(all(test, target_os = "linux"))]
pub(crate) use lio::model as lio_model;
#[cfg(feature = "sim")]
mod sim;
mod threaded;
#[cfg(target_os = "linux")]
mod uring;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, IoOp, Result};
use crate::format::SegmentHeader;
use crate::options::{Backend, Options};
use crate::vfs::SegFile;

/// One block-aligned buffer written at a file offset. The data starts at
/// `start`, chosen so that it is aligned in memory as well (O_DIRECT needs it).
#[derive(Debug)]
pub(crate) struct WriteBuf {
    pub offset: u64,
    pub buf: Vec<u8>,
    pub start: usize,
}

impl WriteBuf {
    /// The bytes to write.
    pub(crate) fn data(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }
}

/// The `open(2)` flag for direct I/O, where the platform has one.
pub(crate) fn direct_io_flag() -> Option<i32> {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    return Some(libc::O_DIRECT);
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    return None;
}

/// What the pipeline needs back when a batch completes; backends ignore it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchMeta {
    /// The pipeline's id for the batch.
    pub id: u64,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub bytes: u64,
    pub submitted: Instant,
    /// Segment sequence number the batch is written to.
    pub seq: u64,
    /// Set when the batch starts a new segment (it carries the header block).
    pub header: Option<SegmentHeader>,
    /// The clean-end mark `close` writes.
    pub clean_end: bool,
    /// The first batch of a segment `truncate_after` starts.
    pub cut: bool,
    /// What must be durable when the batch completes.
    pub sync: SyncKind,
}

/// What must be durable when a batch completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncKind {
    /// Nothing: written is enough (a relaxed durability level).
    None,
    /// The batch's own writes (`Durability::Immediate`): a `RWF_DSYNC`
    /// write does, as does an `fdatasync`.
    Own,
    /// Everything written to the file so far (a relaxed level's sync):
    /// an `fdatasync` after the writes, never a `RWF_DSYNC` write alone.
    All,
}

/// Poisons the log if its batch is dropped before the pipeline got it back
/// through [`Completion::complete`]: an I/O thread that panicked, a task
/// dropped with its runtime, a bug. No appender then waits forever for a
/// batch nobody will complete. (It never frees memory the kernel may still
/// use: a backend keeps a batch until its I/O is over, or leaks it.)
pub(crate) struct BatchGuard {
    sink: Option<std::sync::Weak<dyn Completion>>,
}

impl BatchGuard {
    pub(crate) fn new<C: Completion>(sink: std::sync::Weak<C>) -> BatchGuard {
        let sink: std::sync::Weak<dyn Completion> = sink;
        BatchGuard { sink: Some(sink) }
    }

    /// A guard that poisons nothing (for tests of a backend alone).
    #[cfg(all(test, any(target_os = "freebsd", target_os = "linux")))]
    pub(crate) fn none() -> BatchGuard {
        BatchGuard { sink: None }
    }

    /// The batch reached the pipeline: nothing to do on drop.
    pub(crate) fn disarm(&mut self) {
        self.sink = None;
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take().and_then(|w| w.upgrade()) {
            let error = io::Error::other("an I/O batch was lost: the thread or task carrying it ended");
            sink.poison_now(IoFailure { op: IoOp::Write, error });
        }
    }
}

impl fmt::Debug for BatchGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.sink.is_some() { "BatchGuard(armed)" } else { "BatchGuard(disarmed)" })
    }
}

/// The file a batch goes to.
pub(crate) enum FileTarget {
    /// The segment being written.
    Open(Arc<SegFile>),
    /// A new segment whose file may still be being prepared: the backend
    /// waits for it (off the pipeline's lock) before writing. `None` once taken.
    New(Option<Box<dyn FnOnce() -> Result<SegFile> + Send + Sync>>),
}

impl FileTarget {
    /// A new segment's file, produced by `prepare`.
    pub(crate) fn new(prepare: impl FnOnce() -> Result<SegFile> + Send + Sync + 'static) -> FileTarget {
        FileTarget::New(Some(Box::new(prepare)))
    }

    /// Whether the file may still have to be waited for.
    pub(crate) fn is_new(&self) -> bool {
        matches!(self, FileTarget::New(_))
    }

    /// The file, waiting for its preparation if needed; afterwards `Open`.
    pub(crate) fn resolve(&mut self) -> std::result::Result<Arc<SegFile>, IoFailure> {
        let prepare = match self {
            FileTarget::Open(f) => return Ok(Arc::clone(f)),
            FileTarget::New(prepare) => prepare.take().ok_or_else(|| IoFailure {
                op: IoOp::Open,
                error: io::Error::other("segment preparation already failed"),
            })?,
        };
        let file = Arc::new(prepare().map_err(IoFailure::from_error)?);
        *self = FileTarget::Open(Arc::clone(&file));
        Ok(file)
    }
}

impl fmt::Debug for FileTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileTarget::Open(file) => f.debug_tuple("Open").field(file).finish(),
            FileTarget::New(_) => f.write_str("New(..)"),
        }
    }
}

/// Positioned writes into one file followed by a data sync, owned until done.
#[derive(Debug)]
pub(crate) struct IoBatch {
    pub file: FileTarget,
    pub writes: Vec<WriteBuf>,
    pub meta: BatchMeta,
    /// Poisons the log if the batch is dropped instead of completed.
    pub guard: BatchGuard,
    /// A share of the directory lock: the lock outlives every batch that
    /// may still write to the directory's files.
    pub _lock: Option<crate::segment::LockRef>,
}

/// Why a batch failed: the operation and the operating system's error.
#[derive(Debug)]
pub(crate) struct IoFailure {
    pub op: IoOp,
    pub error: io::Error,
}

impl IoFailure {
    /// From a library error (a failed segment preparation).
    pub(crate) fn from_error(e: crate::Error) -> IoFailure {
        match e {
            crate::Error::Io { op, source, .. } => IoFailure { op, error: source },
            crate::Error::NoSpace { .. } => {
                IoFailure { op: IoOp::Write, error: io::Error::from_raw_os_error(libc::ENOSPC) }
            }
            other => IoFailure { op: IoOp::Open, error: io::Error::other(other.to_string()) },
        }
    }
}

/// Receives every submitted batch back exactly once.
pub(crate) trait Completion: Send + Sync + 'static {
    /// Called when the newest batch's writes are done and only its sync
    /// remains, so an overlapping backend may take the next batch.
    // Only overlapping backends call it, and only io_uring overlaps so far.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn written(&self) {}

    /// Called when the batch's writes and sync finished (or one of them failed).
    fn complete(&self, batch: IoBatch, result: std::result::Result<(), IoFailure>);

    /// Poisons the log now, for a failure that no batch carries back (a
    /// lost batch, a failed `io_uring_enter` whose batch the kernel may
    /// still hold).
    fn poison_now(&self, failure: IoFailure);
}

/// A way of getting batches onto the disk.
pub(crate) trait IoBackend: Send + Sync + 'static {
    /// The backend's name, as in [`Backend::name`].
    fn name(&self) -> &'static str;
    /// Queues a batch. Batches may complete out of order; the pipeline
    /// acknowledges only a completed prefix.
    fn submit(&self, batch: IoBatch);
    /// Most batches in flight at once: 1, or 2 for a backend that writes
    /// batch N+1 while batch N's sync runs (and reports `written`).
    fn depth(&self) -> usize {
        1
    }
    /// Whether every batch is synced whatever its [`SyncKind`] (the lio
    /// backends): the pipeline then treats relaxed durability levels as
    /// `Immediate` and never sends a batch without writes.
    fn syncs_every_batch(&self) -> bool {
        false
    }
    /// Completes every queued batch, then stops and calls `done`.
    fn stop(&self, done: Box<dyn FnOnce() + Send>);
    /// Writes and syncs the batch on the calling thread, if this backend can.
    /// Only called when no other batch is in flight. Returns the batch back
    /// (with its result) or, if the backend cannot run inline, untouched.
    fn run_inline(&self, batch: IoBatch) -> Inline {
        Inline::Declined(batch)
    }
}

/// What [`IoBackend::run_inline`] did.
pub(crate) enum Inline {
    /// The batch was written and synced (or failed) on the calling thread.
    Done(IoBatch, std::result::Result<(), IoFailure>),
    /// The backend does not run batches inline; submit it instead.
    Declined(IoBatch),
}

/// Where the lio backend may run (explicitly chosen, or `Auto` on
/// FreeBSD): whether it can work for the log in `dir`, tried on its lock
/// file (a local file system, `aio_fsync(O_DSYNC)` supported). Blocks
/// briefly: runs on `open`'s blocking thread.
pub(crate) fn probe_lio(opts: &Options, dir: &std::path::Path) -> Option<std::result::Result<(), String>> {
    #[cfg(all(test, target_os = "linux"))]
    let lio_is_default = opts.lio_model.is_some();
    #[cfg(not(all(test, target_os = "linux")))]
    let lio_is_default = cfg!(target_os = "freebsd");
    let wanted = opts.backend == Backend::Lio || (opts.backend == Backend::Auto && lio_is_default);
    if !wanted || opts.vfs != crate::vfs::Vfs::Os {
        return None;
    }
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    {
        use std::os::fd::AsRawFd;
        let lock = dir.join("LOCK");
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(&lock) {
            Ok(f) => f,
            Err(e) => return Some(Err(format!("cannot open {} to try AIO on it: {e}", lock.display()))),
        };
        #[cfg(all(test, target_os = "linux"))]
        if let Some(m) = &opts.lio_model {
            return Some(lio::probe(&*m.0.kernel(), file.as_raw_fd()));
        }
        Some(lio::probe(&lio::Libc, file.as_raw_fd()))
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    {
        let _ = dir;
        Some(Err("POSIX AIO is supported on Linux and FreeBSD only".into()))
    }
}

/// Starts the backend `which` for one log.
///
/// # Errors
/// [`Error::BackendUnavailable`] when an explicitly chosen backend cannot run
/// here; `Auto` falls back instead, with the reason logged.
pub(crate) fn start(which: Backend, sink: Arc<dyn Completion>, opts: &Options) -> Result<Box<dyn IoBackend>> {
    #[cfg(feature = "sim")]
    if let crate::vfs::Vfs::Sim(disk) = &opts.vfs {
        return Ok(Box::new(sim::Sim::start(disk.clone(), sink)?));
    }
    if let (Backend::Lio, Some(Err(reason))) = (which, &opts.lio_probe) {
        return Err(Error::BackendUnavailable { backend: "lio", reason: reason.clone() });
    }
    // In tests on Linux, the FreeBSD path over the model of its kernel.
    #[cfg(all(test, target_os = "linux"))]
    if let Some(m) = &opts.lio_model {
        let model = |sink| {
            lio::driver::Lio::start(m.0.kernel(), m.0.reactor(), sink)
                .map(|l| Box::new(l) as Box<dyn IoBackend>)
                .map_err(|reason| Error::BackendUnavailable { backend: "lio", reason })
        };
        match which {
            Backend::Lio => return model(sink),
            Backend::Auto => return auto_lio(opts, sink, model),
            _ => {}
        }
    }
    match which {
        Backend::Threaded => Ok(Box::new(threaded::Threaded::start(sink)?)),
        Backend::Lio => start_lio(sink),
        Backend::Uring => {
            start_uring(sink, opts).map_err(|reason| Error::BackendUnavailable { backend: "uring", reason })
        }
        Backend::Auto if cfg!(target_os = "freebsd") => auto_lio(opts, sink, start_lio),
        Backend::Auto => match start_uring(Arc::clone(&sink), opts) {
            Ok(b) => Ok(b),
            Err(reason) => {
                tracing::warn!("aiowal: io_uring unavailable, using the threaded backend: {reason}");
                Ok(Box::new(threaded::Threaded::start(sink)?))
            }
        },
    }
}

/// `Backend::Auto` where lio is the default (FreeBSD): lio if the probe
/// passed and it starts, else the threaded backend, with the reason logged.
fn auto_lio(
    opts: &Options,
    sink: Arc<dyn Completion>,
    start_lio: impl FnOnce(Arc<dyn Completion>) -> Result<Box<dyn IoBackend>>,
) -> Result<Box<dyn IoBackend>> {
    let probed = opts.lio_probe.clone().unwrap_or(Ok(()));
    match probed.and_then(|()| start_lio(Arc::clone(&sink)).map_err(|e| e.to_string())) {
        Ok(b) => Ok(b),
        Err(reason) => {
            tracing::warn!("aiowal: POSIX AIO unusable here, using the threaded backend: {reason}");
            Ok(Box::new(threaded::Threaded::start(sink)?))
        }
    }
}

#[cfg(target_os = "linux")]
fn start_lio(sink: Arc<dyn Completion>) -> Result<Box<dyn IoBackend>> {
    Ok(Box::new(lio::start(sink)?))
}

#[cfg(target_os = "freebsd")]
fn start_lio(sink: Arc<dyn Completion>) -> Result<Box<dyn IoBackend>> {
    lio::start(sink)
}

#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
fn start_lio(_sink: Arc<dyn Completion>) -> Result<Box<dyn IoBackend>> {
    Err(Error::BackendUnavailable {
        backend: "lio",
        reason: "POSIX AIO is supported on Linux and FreeBSD only".into(),
    })
}

#[cfg(target_os = "linux")]
fn start_uring(sink: Arc<dyn Completion>, opts: &Options) -> std::result::Result<Box<dyn IoBackend>, String> {
    Ok(Box::new(uring::Uring::start(sink, opts.uring_entries, opts.uring_sync)?))
}

#[cfg(not(target_os = "linux"))]
fn start_uring(
    _sink: Arc<dyn Completion>,
    _opts: &Options,
) -> std::result::Result<Box<dyn IoBackend>, String> {
    Err("io_uring exists only on Linux".to_string())
}
