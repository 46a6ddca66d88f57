//! The group-commit pipeline: staging, sealing, placement, the durable
//! watermark and the poison latch.
//!
//! Appenders encode their frames straight into the open batch under one
//! mutex, which also assigns LSNs, so byte order and LSN order agree. Every
//! batch starts with room for its batch header, filled in when the batch is
//! submitted with the watermarks known then (recovery's proof of what was
//! acknowledged). A batch is sealed (zero-filled to the alignment) when the
//! next record would not fit in `batch_bytes_max` or in its segment, or when
//! the I/O backend is idle and takes it. One batch is in flight at a time
//! (two for a backend that overlaps a write with the previous sync); while
//! it is, the next one fills. A completed batch advances the durable
//! watermark and wakes exactly the waiters whose LSN it covers, then the
//! next batch is taken — from the completing thread, without another
//! hand-off.
//!
//! Batch states: `open` (filling, at most one) → `sealed` (padded, queued,
//! at most [`SEALED_MAX`]) → in flight (owned by the backend) → durable.
//! Appenders that find the queue full wait; they are not dropped. A batch
//! the backend loses (a panic, a runtime shut down under it) poisons the log
//! through its guard: no waiter is ever stranded.

mod stats;
mod waiters;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::{Notify, oneshot, watch};

pub use stats::Stats;

use crate::error::{Error, IoOp, Result};
use crate::format::{self, BATCH_HEADER_LEN, BatchHeader, FrameKind, SegmentHeader};
use crate::io::{
    BatchGuard, BatchMeta, Completion, FileTarget, Inline, IoBackend, IoBatch, IoFailure, SyncKind, WriteBuf,
};
use crate::lsn::{Lsn, LsnRange};
use crate::options::Options;
use crate::recovery::{ReadIter, SeekMarks, SegmentMeta};
use crate::registry::{DirEntry, Pin};
use crate::segment::{self, LockRef, Preparing};
use crate::sync::lock;
use crate::vfs::SegFile;
use waiters::{WaitFor, Waiters};

/// Sealed batches that may wait behind the one in flight.
pub(crate) const SEALED_MAX: usize = 2;

/// Why the log refuses work after a failed write or sync.
#[derive(Debug, Clone)]
pub(crate) struct Poison {
    pub op: IoOp,
    pub cause: Arc<io::Error>,
}

impl Poison {
    fn error(&self) -> Error {
        Error::Poisoned { op: self.op, cause: Arc::clone(&self.cause) }
    }
}

/// Where the next new batch will be written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub seq: u64,
    pub salt: u64,
    pub offset: u64,
    pub seg_end: u64,
    /// Batches may be compressed: the options ask for it and the segment's
    /// header says so.
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    pub compress: bool,
}

/// The segment the backend is writing.
#[derive(Debug)]
pub(crate) struct Active {
    pub seq: u64,
    pub file: Arc<SegFile>,
    /// The segment's seek marks (shared with its `SegmentMeta`), added to as
    /// its batches become durable.
    pub marks: Arc<SeekMarks>,
}

/// A batch being filled or waiting for the backend.
#[derive(Debug)]
struct Batch {
    place: Place,
    /// The batch's bytes start at `buf[start]`, aligned in memory to the
    /// block alignment; `buf` never reallocates (capacity reserved up front).
    buf: Vec<u8>,
    start: usize,
    /// Where its batch header goes (after the segment header block of a
    /// segment's first batch), filled in at submission.
    header_at: usize,
    first_lsn: u64,
    /// LSN after the batch's last record.
    end_lsn: u64,
    header: Option<SegmentHeader>,
    /// The clean-end mark `close` writes: no records, everything before durable.
    clean_end: bool,
    /// The first batch of the segment `truncate_after` starts: no records,
    /// its header voids every record above the cut.
    cut: bool,
    /// Its record frames were replaced by one compressed records frame.
    compressed: bool,
    /// Bytes of the batch before compression, padding included.
    raw_bytes: u64,
}

impl Batch {
    fn records(&self) -> u64 {
        self.end_lsn - self.first_lsn
    }

    /// Bytes of the batch so far (from its first block).
    fn used(&self) -> u64 {
        (self.buf.len() - self.start) as u64
    }
}

/// Segment files ready for (or on their way to) being written.
#[derive(Debug)]
pub(crate) enum Next {
    /// Nothing prepared yet.
    None,
    /// Being zero-filled in the background.
    Preparing(Preparing),
    /// Prepared: sequence number and file.
    Ready(u64, SegFile),
}

/// A batch the backend holds: its id, last LSN, whether it completed and
/// whether completing it makes everything up to its last LSN durable.
#[derive(Debug, Clone, Copy)]
struct Flight {
    id: u64,
    last: u64,
    done: bool,
    syncs: bool,
}

pub(crate) struct State {
    next_lsn: u64,
    /// The last LSN of the newest batch handed to the backend.
    submitted_lsn: u64,
    /// Under a relaxed durability level: `sync` (or the periodic timer)
    /// wants everything up to here synced...
    sync_to: u64,
    /// ...and a batch that syncs up to here was taken already.
    sync_taken: u64,
    /// Under a relaxed level: bytes (before compression) of the batches
    /// written since the last sync was taken.
    unsynced_raw: u64,

    open: Option<Batch>,
    sealed: VecDeque<Batch>,
    /// Batches submitted and not yet completed, oldest first: id, last LSN
    /// and whether it completed (completions may arrive out of order; the
    /// durable watermark only advances over a completed prefix).
    in_flight: VecDeque<Flight>,
    /// Identifies batches in `in_flight` (a batch of no records shares its
    /// last LSN with the batch before it).
    next_batch_id: u64,
    /// Every LSN up to here is durable: the watermark new batch headers carry.
    synced_lsn: u64,
    /// Retired segment files waiting to be reused (see `truncate_before`).
    spares: Vec<PathBuf>,
    /// Batches and bytes written when the active segment became active
    /// (for `Preallocate::Auto`).
    at_rotation: (u64, u64),
    /// The newest in-flight batch's writes have not completed yet.
    writing: bool,
    place: Place,
    active: Option<Active>,
    next: Next,
    free_bufs: Vec<Vec<u8>>,
    /// Compressed records frames are built here before replacing the
    /// batch's record frames.
    #[cfg(feature = "compression")]
    scratch: (Vec<u8>, Vec<u8>),
    poison: Option<Poison>,
    /// Set by `close` or the last handle's drop: new work is refused.
    closing: bool,
    /// Who is shutting the log down.
    shutdown: Shutdown,
    /// The directory lock; `None` once `close` let go of it. Everything
    /// that may touch the directory holds a clone.
    lock: Option<LockRef>,
    /// Told when the clean-end mark `close` queued is durable (or failed).
    clean_end: Option<oneshot::Sender<bool>>,
    /// The next new segment's header voids what follows its first LSN
    /// (`truncate_after`).
    cut_pending: bool,
    /// Told when the batch `truncate_after` queued is durable (or failed).
    cut_done: Option<oneshot::Sender<bool>>,
    /// Segment files a durable cut voided, not removed yet: removed before
    /// `truncate_before` may retire the cut segment (which voids them).
    void_files: Vec<PathBuf>,
    stats: stats::Counters,
}

/// Everything one log shares between its handles and its backend.
pub(crate) struct Core {
    pub dir: PathBuf,
    pub opts: Options,
    /// Written into every segment header; recovery refuses segments of other logs.
    log_id: u32,
    /// This core, for the guards of batches handed to the backend.
    me: std::sync::Weak<Core>,
    state: Mutex<State>,
    /// The durable watermark: every LSN up to it is durable (synced).
    durable_lsn: AtomicU64,
    /// The written watermark: every LSN up to it is written (durable too
    /// under `Durability::Immediate`); what relaxed levels acknowledge.
    written_lsn: AtomicU64,
    /// Waiters for the durable watermark (`sync`, tails, `close`), by LSN;
    /// `waiters` are the appenders waiting for their acknowledgement.
    synced: Waiters,
    /// How many `truncate_after` cuts were made (changed under the state
    /// lock), and the LSN of each: an LSN above a cut made after a waiter
    /// began names another record now.
    epoch: AtomicU64,
    cuts: Mutex<Vec<u64>>,
    /// One `truncate_after` at a time.
    cutting: tokio::sync::Mutex<()>,
    /// Set once, when the log is poisoned.
    poisoned: OnceLock<Poison>,
    /// Appenders waiting for the two above, by LSN.
    waiters: Waiters,
    /// Set once `close` has stopped the backend and released the lock.
    closed: watch::Sender<bool>,
    /// What the shutdown `close` started returned, for that `close`.
    close_result: Mutex<Option<Result<()>>>,
    space: Notify,
    backend: OnceLock<Box<dyn IoBackend>>,
    /// Segments holding (or about to hold) records, oldest first.
    segments: Mutex<Vec<SegmentMeta>>,
    /// What the process shares about this directory (reader pins).
    entry: Arc<DirEntry>,
}

/// Who is shutting a log down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// Nobody: the log runs.
    Running,
    /// A `close`'s shutdown task.
    Closing,
    /// The last handle was dropped: the backend was told to stop.
    Dropped,
}

/// Finishes a shutdown whose `close` task was dropped before it ended (its
/// runtime shut down): the backend is told to stop, and waiting closers
/// are released.
struct CloseGuard(Option<Arc<Core>>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if let Some(core) = self.0.take() {
            core.stop_backend_now();
            let error = io::Error::other("the runtime running close() shut down before it finished");
            *lock(&core.close_result) = Some(Err(Error::io(IoOp::Spawn, core.dir.clone(), error)));
            core.closed.send_replace(true);
        }
    }
}

/// How `open` leaves the tail for the pipeline.
pub(crate) struct Start {
    pub next_lsn: u64,
    pub log_id: u32,
    /// Retired segment files found at open, reusable.
    pub spares: Vec<PathBuf>,
    pub place: Place,
    pub active: Option<Active>,
    pub next: Next,
    pub segments: Vec<SegmentMeta>,
    pub lock: LockRef,
    pub entry: Arc<DirEntry>,
}

/// A salt that differs between incarnations of a log. It need not be
/// secret or uniform, only different, so it never waits for the kernel's
/// random pool: on a machine booted moments ago without a hardware random
/// source (a VM, early boot) a blocking `getrandom` can stall `open` for
/// minutes (the kernel crash lab found exactly that). The kernel's bytes
/// are used when it gives them without waiting, mixed with the clock, the
/// process and a counter in every case.
pub(crate) fn random_salt() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut x = t
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= nonblocking_random().unwrap_or(0);
    // A finaliser (splitmix64) so that close clocks give distant salts.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Eight bytes from the kernel, if it has them without blocking.
#[cfg(any(target_os = "linux", target_os = "freebsd"))]
fn nonblocking_random() -> Option<u64> {
    let mut b = [0u8; 8];
    #[cfg(target_os = "linux")]
    let flags = [libc::GRND_INSECURE, libc::GRND_NONBLOCK];
    #[cfg(target_os = "freebsd")]
    let flags = [libc::GRND_NONBLOCK];
    for f in flags {
        // SAFETY: the buffer is valid for its length; the flags never block.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), f) };
        if n == b.len() as isize {
            return Some(u64::from_le_bytes(b));
        }
    }
    None
}

#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
fn nonblocking_random() -> Option<u64> {
    None
}

// A return value moved once per append: boxing the batch would allocate per batch.
#[allow(clippy::large_enum_variant)]
enum StageOutcome {
    /// The records are in a batch; wait for this LSN range to be durable.
    Done(LsnRange, Option<IoBatch>, u64),
    /// No room: wait for the backend to take a batch, then retry.
    Full,
}

/// A fresh batch buffer: capacity for `batch_max` bytes after an offset
/// that aligns them in memory to `align`.
fn batch_buffer(mut buf: Vec<u8>, batch_max: u64, align: u64) -> (Vec<u8>, usize) {
    buf.clear();
    let capacity = (batch_max + align) as usize;
    if buf.capacity() < capacity {
        buf = Vec::with_capacity(capacity);
    }
    let start = buf.as_ptr().align_offset(align as usize).min(align as usize);
    buf.resize(start, 0);
    (buf, start)
}

impl Core {
    pub(crate) fn new(dir: PathBuf, opts: Options, start: Start) -> Arc<Core> {
        Arc::new_cyclic(|me| Core {
            dir,
            opts,
            log_id: start.log_id,
            me: me.clone(),
            state: Mutex::new(State {
                next_lsn: start.next_lsn,
                open: None,
                sealed: VecDeque::new(),
                in_flight: VecDeque::new(),
                submitted_lsn: start.next_lsn - 1,
                // What open found is synced (recovery made it so).
                sync_to: start.next_lsn - 1,
                sync_taken: start.next_lsn - 1,
                unsynced_raw: 0,

                next_batch_id: 1,
                synced_lsn: start.next_lsn - 1,
                spares: start.spares,
                at_rotation: (0, 0),
                writing: false,
                place: start.place,
                active: start.active,
                next: start.next,
                free_bufs: Vec::new(),
                #[cfg(feature = "compression")]
                scratch: (Vec::new(), Vec::new()),
                poison: None,
                closing: false,
                shutdown: Shutdown::Running,
                lock: Some(start.lock),
                clean_end: None,
                cut_pending: false,
                cut_done: None,
                void_files: Vec::new(),
                stats: stats::Counters::default(),
            }),
            durable_lsn: AtomicU64::new(start.next_lsn - 1),
            written_lsn: AtomicU64::new(start.next_lsn - 1),
            synced: Waiters::default(),
            epoch: AtomicU64::new(0),
            cuts: Mutex::new(Vec::new()),
            cutting: tokio::sync::Mutex::new(()),
            poisoned: OnceLock::new(),
            waiters: Waiters::default(),
            closed: watch::Sender::new(false),
            close_result: Mutex::new(None),
            space: Notify::new(),
            backend: OnceLock::new(),
            segments: Mutex::new(start.segments),
            entry: start.entry,
        })
    }

    pub(crate) fn set_backend(&self, b: Box<dyn IoBackend>) {
        let _ = self.backend.set(b);
    }

    pub(crate) fn backend_name(&self) -> &'static str {
        self.backend.get().map_or("none", |b| b.name())
    }

    fn submit(&self, batch: Option<IoBatch>) {
        if let (Some(batch), Some(b)) = (batch, self.backend.get()) {
            b.submit(batch);
        }
    }

    /// Runs a batch taken by an appender: inline if the backend can (the
    /// backend was idle, so nothing else is in flight), else submitted.
    fn dispatch(&self, batch: Option<IoBatch>) {
        let (Some(batch), Some(b)) = (batch, self.backend.get()) else { return };
        match b.run_inline(batch) {
            Inline::Done(batch, result) => self.complete(batch, result),
            Inline::Declined(batch) => b.submit(batch),
        }
    }

    /// Appends `records` (one record, or an atomic batch) and waits for
    /// the acknowledgement the durability level promises: durable, or
    /// written under a relaxed level.
    pub(crate) async fn append(&self, records: &[&[u8]], atomic: bool) -> Result<LsnRange> {
        let (range, epoch) = self.reserve(records, atomic, true).await?;
        self.wait_acked(range.last.0, epoch).await?;
        Ok(range)
    }

    /// Whether batches are written without a sync and acknowledged once
    /// written (a relaxed durability level on a backend that honours it).
    fn relaxed(&self) -> bool {
        self.opts.durability != crate::options::Durability::Immediate
            && self.backend.get().is_some_and(|b| !b.syncs_every_batch())
    }

    /// Waits for `lsn`'s acknowledgement: durable, or written when relaxed.
    /// `epoch` is the cut epoch `lsn` was given in: if a `truncate_after`
    /// since dropped it, the wait ends with [`Error::DroppedByCut`] (its
    /// LSN names another record now, or none yet).
    pub(crate) async fn wait_acked(&self, lsn: u64, epoch: u64) -> Result<Lsn> {
        let relaxed = self.relaxed();
        let list = if relaxed { &self.waiters } else { &self.synced };
        WaitFor::new(list, lsn, || {
            if let Some(e) = self.dropped_since(lsn, epoch) {
                return Some(Err(e));
            }
            let mark = if relaxed { &self.written_lsn } else { &self.durable_lsn };
            let at = mark.load(Ordering::Acquire);
            if at >= lsn {
                return Some(Ok(Lsn(at)));
            }
            self.poisoned.get().map(|p| Err(p.error()))
        })
        .await
    }

    /// The cut epoch now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// If a cut made after `epoch` began dropped `lsn`: the error saying so.
    fn dropped_since(&self, lsn: u64, epoch: u64) -> Option<Error> {
        if self.epoch.load(Ordering::Acquire) == epoch {
            return None;
        }
        let cuts = lock(&self.cuts);
        let cut = cuts.iter().skip(usize::try_from(epoch).unwrap_or(usize::MAX)).min().copied()?;
        (lsn > cut).then_some(Error::DroppedByCut { lsn, cut })
    }

    /// The written watermark (the durable one under `Immediate`).
    pub(crate) fn written_lsn(&self) -> u64 {
        self.written_lsn.load(Ordering::Acquire).max(self.durable_lsn.load(Ordering::Acquire))
    }

    /// Under a relaxed level, asks for everything up to `lsn` to be synced
    /// (by the next batch, or a batch of its own) and starts it if the
    /// backend is idle. Nothing to do otherwise: every batch syncs.
    fn request_sync(&self, lsn: u64) {
        if !self.relaxed() {
            return;
        }
        let kick = {
            let mut st = lock(&self.state);
            st.sync_to = st.sync_to.max(lsn);
            self.take_next(&mut st)
        };
        self.submit(kick);
    }

    /// Makes everything up to `lsn` durable (starting a sync under a
    /// relaxed level) and waits for it; [`Error::DroppedByCut`] if a cut
    /// made after `epoch` dropped `lsn`.
    pub(crate) async fn sync_upto(&self, lsn: u64, epoch: u64) -> Result<Lsn> {
        if let Some(e) = self.dropped_since(lsn, epoch) {
            return Err(e);
        }
        self.request_sync(lsn);
        WaitFor::new(&self.synced, lsn, || {
            if let Some(e) = self.dropped_since(lsn, epoch) {
                return Some(Err(e));
            }
            self.durable_outcome(lsn)
        })
        .await
    }

    /// The periodic sync of `Durability::Periodic`: everything handed to
    /// the backend so far. False once the log is closing or poisoned.
    pub(crate) fn periodic_sync(&self) -> bool {
        let kick = {
            let mut st = lock(&self.state);
            if st.closing || st.poison.is_some() {
                return false;
            }
            if st.submitted_lsn > st.synced_lsn.max(st.sync_taken) {
                st.sync_to = st.sync_to.max(st.submitted_lsn);
            }
            self.take_next(&mut st)
        };
        self.submit(kick);
        true
    }

    /// A batch of no writes whose sync covers everything written to the
    /// active segment (a relaxed level's sync when nothing is staged, or
    /// the old segment's before a switch).
    fn sync_only(&self, st: &mut State) -> Option<IoBatch> {
        let a = st.active.as_ref()?;
        let (file, seq) = (FileTarget::Open(Arc::clone(&a.file)), a.seq);
        let id = st.next_batch_id;
        st.next_batch_id += 1;
        let last = st.submitted_lsn;
        st.sync_taken = st.sync_taken.max(last);
        st.unsynced_raw = 0;
        st.in_flight.push_back(Flight { id, last, done: false, syncs: true });
        st.writing = true;
        let meta = BatchMeta {
            id,
            first_lsn: last + 1,
            last_lsn: last,
            bytes: 0,
            submitted: Instant::now(),
            seq,
            header: None,
            clean_end: false,
            cut: false,
            sync: SyncKind::All,
        };
        let guard = BatchGuard::new(self.me.clone());
        Some(IoBatch { file, writes: Vec::new(), meta, guard, _lock: st.lock.clone() })
    }

    /// Stages `records` (LSNs assigned, bytes in a batch) and starts the
    /// batch if the backend is idle, without waiting for durability. With
    /// `inline`, an idle threaded backend writes on this thread (the lone
    /// appender's fast path); otherwise the batch is handed off.
    ///
    /// Returns the LSNs and the cut epoch they were given in (see
    /// [`Core::wait_acked`]).
    pub(crate) async fn reserve(
        &self,
        records: &[&[u8]],
        atomic: bool,
        inline: bool,
    ) -> Result<(LsnRange, u64)> {
        let max = self.opts.max_record_bytes;
        if let Some(r) = records.iter().find(|r| r.len() > max as usize) {
            return Err(Error::RecordTooLarge { len: r.len() as u64, max: u64::from(max) });
        }
        loop {
            if let StageOutcome::Done(range, kick, epoch) = self.stage(records, atomic)? {
                return Ok((self.kick(range, kick, inline), epoch));
            }
            // Full: wait until the backend takes a batch. Registered before
            // trying again, so a batch taken in between is not missed; only
            // appenders that find the queue full touch the waiter list.
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let StageOutcome::Done(range, kick, epoch) = self.stage(records, atomic)? {
                return Ok((self.kick(range, kick, inline), epoch));
            }
            notified.await;
        }
    }

    /// Starts the batch staging returned (if the backend was idle); with
    /// `inline`, on this thread where the backend can.
    fn kick(&self, range: LsnRange, batch: Option<IoBatch>, inline: bool) -> LsnRange {
        if inline {
            self.dispatch(batch);
        } else {
            self.submit(batch);
        }
        range
    }

    fn check_open(st: &State) -> Result<()> {
        if st.closing {
            return Err(Error::Closed);
        }
        if let Some(p) = &st.poison {
            return Err(p.error());
        }
        Ok(())
    }

    /// Refuses work once `close` began (or the last handle was dropped).
    pub(crate) fn ensure_open(&self) -> Result<()> {
        if lock(&self.state).closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Encodes the records into the open batch; returns a batch to submit if
    /// the backend was idle.
    fn stage(&self, records: &[&[u8]], atomic: bool) -> Result<StageOutcome> {
        let encoded: u64 = records.iter().map(|r| format::frame_len(r.len()) as u64).sum();
        let align = u64::from(self.opts.alignment);
        let batch_max = u64::from(self.opts.batch_bytes_max);
        if atomic && align + format::align_up(BATCH_HEADER_LEN as u64 + encoded, align) > batch_max {
            return Err(Error::BatchTooLarge { bytes: encoded, max: batch_max });
        }
        let mut st = lock(&self.state);
        Self::check_open(&st)?;
        if let Some(open) = &st.open {
            if !fits(open.place.offset, open.used(), encoded, align, batch_max, open.place.seg_end) {
                self.seal_open(&mut st);
            }
        }
        if st.open.is_none() {
            if st.sealed.len() >= SEALED_MAX {
                return Ok(StageOutcome::Full);
            }
            self.open_batch(&mut st, encoded);
        }
        let first = st.next_lsn;
        let n = records.len() as u64;
        let Some(open) = st.open.as_mut() else {
            return Ok(StageOutcome::Full);
        };
        let max = u64::from(self.opts.max_record_bytes);
        encode_records(&mut open.buf, open.place.salt, first, records, atomic)
            .map_err(|len| Error::RecordTooLarge { len, max })?;
        open.end_lsn = first + n;
        st.next_lsn = first + n;
        st.stats.appends += n;
        st.stats.bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
        let kick = self.take_next(&mut st);
        let epoch = self.epoch.load(Ordering::Acquire);
        Ok(StageOutcome::Done(LsnRange { first: Lsn(first), last: Lsn(first + n - 1) }, kick, epoch))
    }

    /// Starts a new open batch at the placement cursor, moving it to a new
    /// segment if `encoded` more bytes would not fit in the current one.
    fn open_batch(&self, st: &mut State, encoded: u64) {
        let align = u64::from(self.opts.alignment);
        let batch_max = u64::from(self.opts.batch_bytes_max);
        let p = st.place;
        let (mut buf, start) = batch_buffer(st.free_bufs.pop().unwrap_or_default(), batch_max, align);
        let mut header = None;
        if p.offset == 0 || !fits(p.offset, 0, encoded, align, batch_max, p.seg_end) {
            // A new segment: its header goes out with its first batch. The
            // old one needs no seal: the new header's first LSN says where
            // the old segment's records end.
            let seq = if p.offset == 0 { p.seq } else { p.seq + 1 };
            let compress = self.opts.compression != crate::Compression::None;
            st.place = Place {
                seq,
                salt: self.opts.vfs.random_u64(),
                offset: 0,
                seg_end: self.opts.segment_bytes,
                compress,
            };
            let cuts = if std::mem::take(&mut st.cut_pending) { format::SEGMENT_CUTS } else { 0 };
            let h = SegmentHeader {
                version: format::VERSION,
                alignment: self.opts.alignment,
                sequence: seq,
                first_lsn: st.next_lsn,
                salt: st.place.salt,
                segment_bytes: self.opts.segment_bytes,
                flags: cuts | if compress { format::SEGMENT_COMPRESSED } else { 0 },
                record_bytes_max: self.opts.max_record_bytes,
                window_bytes: 0,
                log_id: self.log_id,
            };
            buf.extend_from_slice(&h.encode());
            buf.resize(start + self.opts.alignment as usize, 0);
            header = Some(h);
        }
        let header_at = buf.len();
        buf.resize(header_at + BATCH_HEADER_LEN, 0);
        let lsn = st.next_lsn;
        st.open = Some(Batch {
            place: st.place,
            buf,
            start,
            header_at,
            first_lsn: lsn,
            end_lsn: lsn,
            header,
            clean_end: false,
            cut: false,
            compressed: false,
            raw_bytes: 0,
        });
    }

    /// Zero-fills the open batch to the alignment and queues it
    /// (compressing it first where that saves a block).
    fn seal_open(&self, st: &mut State) {
        let Some(mut b) = st.open.take() else { return };
        let align = u64::from(self.opts.alignment);
        b.raw_bytes = format::align_up(b.used(), align);
        #[cfg(feature = "compression")]
        if b.place.compress
            && b.records() > 0
            && !b.clean_end
            && !b.cut
            && compress_batch(&mut b, &mut st.scratch, align)
        {
            st.stats.batches_compressed += 1;
        }
        let padded = format::align_up(b.used(), align);
        b.buf.resize(b.start + padded as usize, 0);
        st.place.offset = b.place.offset + b.used();
        st.sealed.push_back(b);
    }

    /// Queues the clean-end mark: a batch of no records, flagged, after
    /// everything staged. Recovery takes it as proof that every record
    /// before it was durable, and a reopen continues after it.
    fn queue_clean_end(&self, st: &mut State) {
        self.seal_open(st);
        self.open_batch(st, 0);
        if let Some(b) = st.open.as_mut() {
            b.clean_end = true;
        }
        self.seal_open(st);
    }

    /// The next batch for the backend, if it can take one and one is staged.
    ///
    /// A backend that overlaps (depth 2) gets batch N+1 once batch N's writes
    /// are done and only its sync runs. A batch for a new segment waits until
    /// nothing is in flight, so a segment's data is synced before the next
    /// segment gets any: recovery relies on that. The batch header is filled
    /// in here, with the watermark known now.
    fn take_next(&self, st: &mut State) -> Option<IoBatch> {
        if st.writing || st.in_flight.len() >= self.depth() || st.poison.is_some() {
            return None;
        }
        let relaxed = self.relaxed();
        if st.sealed.is_empty() {
            if st.open.as_ref().is_none_or(|b| b.records() == 0 && !b.clean_end && !b.cut) {
                // Nothing to write: a relaxed level's sync of what was.
                // Only with nothing in flight: a batch in flight may be the
                // first of a segment `active` does not name yet, and the
                // sync must cover the file that batch went to.
                if relaxed
                    && st.in_flight.is_empty()
                    && st.sync_to > st.sync_taken
                    && st.submitted_lsn > st.sync_taken
                {
                    return self.sync_only(st);
                }
                return None;
            }
            self.seal_open(st);
        }
        let seq = st.sealed.front()?.place.seq;
        let new_segment = st.active.as_ref().is_none_or(|a| a.seq != seq);
        if !st.in_flight.is_empty() && new_segment {
            return None;
        }
        // A segment switch syncs the old segment first, under every level:
        // a crash can then tear only the newest segment.
        if relaxed && new_segment && st.active.is_some() && st.synced_lsn < st.submitted_lsn {
            return self.sync_only(st);
        }
        let mut batch = st.sealed.pop_front()?;
        let id = st.next_batch_id;
        st.next_batch_id += 1;
        let sync = if !relaxed {
            SyncKind::Own
        } else if batch.clean_end
            || batch.cut
            || st.sync_to > st.sync_taken
            || st.unsynced_raw + batch.raw_bytes > self.unsynced_raw_max()
        {
            st.sync_taken = st.sync_taken.max(batch.end_lsn - 1);
            st.unsynced_raw = 0;
            SyncKind::All
        } else {
            st.unsynced_raw += batch.raw_bytes;
            SyncKind::None
        };
        st.in_flight.push_back(Flight {
            id,
            last: batch.end_lsn - 1,
            done: false,
            syncs: sync != SyncKind::None,
        });
        st.submitted_lsn = batch.end_lsn - 1;
        st.writing = true;
        let bytes = u32::try_from(batch.buf.len() - batch.header_at).unwrap_or(u32::MAX);
        let bh = BatchHeader {
            first_lsn: batch.first_lsn,
            end_lsn: batch.end_lsn,
            synced_lsn: st.synced_lsn,
            acked_lsn: st.synced_lsn,
            batch_bytes: bytes,
            flags: if batch.clean_end { format::BATCH_CLEAN_END } else { 0 }
                | if batch.compressed { format::BATCH_COMPRESSED } else { 0 },
        };
        let encoded = bh.encode(batch.place.salt);
        if let Some(dst) = batch.buf.get_mut(batch.header_at..batch.header_at + BATCH_HEADER_LEN) {
            dst.copy_from_slice(&encoded);
        }
        let meta = BatchMeta {
            id,
            first_lsn: batch.first_lsn,
            last_lsn: batch.end_lsn - 1,
            bytes: batch.used(),
            submitted: Instant::now(),
            seq: batch.place.seq,
            header: batch.header,
            clean_end: batch.clean_end,
            cut: batch.cut,
            sync,
        };
        let file = self.target(st, batch.place.seq);
        debug_assert!(
            batch
                .buf
                .get(batch.start..)
                .is_some_and(|d| d.as_ptr().align_offset(self.opts.alignment as usize) == 0),
            "batch data must be aligned in memory"
        );
        let writes = vec![WriteBuf { offset: batch.place.offset, buf: batch.buf, start: batch.start }];
        let guard = BatchGuard::new(self.me.clone());
        Some(IoBatch { file, writes, meta, guard, _lock: st.lock.clone() })
    }

    fn depth(&self) -> usize {
        self.backend.get().map_or(1, |b| b.depth())
    }

    /// Under a relaxed level, the most bytes (before compression) written
    /// without a sync. A crash leaves what no sync proves for `open` to copy
    /// forward, uncompressed, into one batch of a new segment: the batches
    /// since the last sync, the one that took it and (depth 2) one more.
    /// Plain batches are bounded by the segment switch's sync; compressed
    /// ones could hold many segments' worth, so a sync is taken once the
    /// copy could outgrow a segment (`validate` leaves room for at least a
    /// batch).
    fn unsynced_raw_max(&self) -> u64 {
        if self.opts.compression == crate::Compression::None {
            return u64::MAX;
        }
        let batch = u64::from(self.opts.batch_bytes_max);
        self.opts.segment_bytes.saturating_sub(u64::from(self.opts.alignment) + 2 * batch)
    }

    /// The file for segment `seq`: the active one, or a new one that the
    /// backend waits for outside this lock (it may still be zero-filling).
    fn target(&self, st: &mut State, seq: u64) -> FileTarget {
        if let Some(a) = st.active.as_ref().filter(|a| a.seq == seq) {
            return FileTarget::Open(Arc::clone(&a.file));
        }
        let (dir, bytes, direct, how) =
            (self.dir.clone(), self.opts.segment_bytes, self.opts.direct, self.opts.preallocate);
        let vfs = self.opts.vfs.clone();
        let held = st.lock.clone();
        match std::mem::replace(&mut st.next, Next::None) {
            Next::Ready(s, f) if s == seq => FileTarget::Open(Arc::new(f)),
            Next::Preparing(p) if p.seq() == seq => FileTarget::new(move || p.wait()),
            _ => {
                let spare = st.spares.pop();
                FileTarget::new(move || {
                    let _held = held;
                    segment::prepare(&vfs, &dir, seq, bytes, direct, spare, how)
                })
            }
        }
    }

    /// After the first batch of a segment is durable: make it the active
    /// segment, show it to readers, and prepare the one after it.
    fn rotated(&self, st: &mut State, meta: &BatchMeta, file: Arc<SegFile>) {
        let seq = meta.seq;
        let path = segment::segment_path(&self.dir, seq);
        let marks = Arc::new(SeekMarks::default());
        if let Some(h) = meta.header {
            let marks = Arc::clone(&marks);
            lock(&self.segments).push(SegmentMeta { seq, path: path.clone(), header: h, marks });
        }
        st.active = Some(Active { seq, file, marks });
        tracing::debug!(dir = %self.dir.display(), segment = seq, first_lsn = meta.first_lsn, "aiowal: segment switch");
        let (batches, bytes) = st.stats.totals();
        let (b0, by0) = std::mem::replace(&mut st.at_rotation, (batches, bytes));
        let mean = (batches > b0).then(|| (bytes - by0) / (batches - b0));
        let how = self.opts.preallocate.resolve(mean);
        let spare = st.spares.pop();
        st.next = match st.lock.clone().map(|held| {
            Preparing::start(
                &self.opts.vfs,
                self.dir.clone(),
                seq + 1,
                self.opts.segment_bytes,
                self.opts.direct,
                spare,
                how,
                held,
            )
        }) {
            Some(Ok(p)) => Next::Preparing(p),
            // Retried synchronously (on the I/O path) when the segment is needed.
            _ => Next::None,
        };
    }

    /// Notes where a durable batch of records starts, for readers to seek to.
    fn mark(&self, st: &State, batch: &IoBatch) {
        let m = &batch.meta;
        let Some(w) = batch.writes.first() else { return };
        if m.last_lsn < m.first_lsn {
            return; // no records
        }
        let offset = w.offset + if m.header.is_some() { u64::from(self.opts.alignment) } else { 0 };
        if let Some(a) = st.active.as_ref().filter(|a| a.seq == m.seq) {
            a.marks.add(m.first_lsn, offset);
        }
    }

    fn poison(&self, st: &mut State, p: Poison) {
        if st.poison.is_none() {
            tracing::error!(op = ?p.op, cause = %p.cause, "aiowal: log poisoned");
            st.poison = Some(p.clone());
        }
        st.open = None;
        st.sealed.clear();
        if let Some(tx) = st.clean_end.take() {
            let _ = tx.send(false);
        }
        if let Some(tx) = st.cut_done.take() {
            let _ = tx.send(false);
        }
        // A cut that may not be durable must not lose the files it would
        // void (a reopen brings their records back); after a durable one,
        // recovery voids and removes them.
        st.void_files.clear();
        let _ = self.poisoned.set(p);
        self.waiters.wake_all();
        self.synced.wake_all();
        self.space.notify_waiters();
    }

    /// Whether waiting for `lsn` is over: durable, or the log died first.
    fn durable_outcome(&self, lsn: u64) -> Option<Result<Lsn>> {
        let durable = self.durable_lsn.load(Ordering::Acquire);
        if durable >= lsn {
            return Some(Ok(Lsn(durable)));
        }
        self.poisoned.get().map(|p| Err(p.error()))
    }

    /// Waits until `lsn` is durable; `Ok(None)` once the log is closing and
    /// `lsn` was never appended (it never will be); the log's error if it
    /// was poisoned. For readers that follow the log ([`crate::Tail`]).
    pub(crate) async fn wait_tail(&self, lsn: u64) -> Result<Option<Lsn>> {
        WaitFor::new(&self.synced, lsn, || {
            let durable = self.durable_lsn.load(Ordering::Acquire);
            if durable >= lsn {
                return Some(Ok(Some(Lsn(durable))));
            }
            if let Some(p) = self.poisoned.get() {
                return Some(Err(p.error()));
            }
            let st = lock(&self.state);
            (st.closing && lsn >= st.next_lsn).then_some(Ok(None))
        })
        .await
    }

    /// Makes everything appended so far durable; returns the durable LSN.
    pub(crate) async fn sync(&self) -> Result<Lsn> {
        let (target, kick, epoch) = {
            let mut st = lock(&self.state);
            Self::check_open(&st)?;
            let target = st.next_lsn - 1;
            if self.relaxed() {
                st.sync_to = st.sync_to.max(target);
            }
            (target, self.take_next(&mut st), self.epoch())
        };
        self.dispatch(kick);
        self.wait_durable_since(target, epoch).await
    }

    /// Waits until `lsn` is durable, or a cut made after `epoch` (which made
    /// everything before it durable first) took the LSNs above it away.
    async fn wait_durable_since(&self, lsn: u64, epoch: u64) -> Result<Lsn> {
        WaitFor::new(&self.synced, lsn, || {
            if self.epoch.load(Ordering::Acquire) != epoch {
                return Some(Ok(Lsn(self.durable_lsn.load(Ordering::Acquire))));
            }
            self.durable_outcome(lsn)
        })
        .await
    }

    /// The durable watermark.
    pub(crate) fn durable_lsn(&self) -> u64 {
        self.durable_lsn.load(Ordering::Acquire)
    }

    /// The LSN the next append will get.
    pub(crate) fn next_lsn(&self) -> u64 {
        lock(&self.state).next_lsn
    }

    /// Snapshot of the live segments.
    pub(crate) fn segments(&self) -> Vec<SegmentMeta> {
        lock(&self.segments).clone()
    }

    /// The live segments holding `from` and after, pinned against recycling
    /// for as long as the returned pin lives (taken under the segment
    /// list's lock, so `truncate_before` either sees the pin or retired the
    /// segments before this snapshot).
    /// The first LSN of the oldest readable segment (none while a new log's
    /// first batch is in flight), without copying the segment list.
    pub(crate) fn first_segment_lsn(&self) -> Option<u64> {
        lock(&self.segments).first().map(|s| s.header.first_lsn)
    }

    /// Records from `from` through `until`, over the segments pinned now:
    /// what `Wal::read_from` and the live tail read with.
    ///
    /// Taken under the state lock, where `truncate_after` lowers the
    /// durable watermark and drops segments: `until` is clamped to the
    /// watermark, so a reader never reads past a cut made before it.
    pub(crate) fn reader(&self, from: u64, until: u64) -> ReadIter {
        let st = lock(&self.state);
        let until = until.min(self.durable_lsn.load(Ordering::Acquire));
        let (segments, pin) = self.segments_pinned(from);
        drop(st);
        let me = self.me.clone();
        let log_start: crate::recovery::LogStart =
            Arc::new(move || me.upgrade().and_then(|core| core.first_segment_lsn()));
        ReadIter::new(self.opts.vfs.clone(), segments, from, until, Some(pin), Some(log_start))
    }

    pub(crate) fn segments_pinned(&self, from: u64) -> (Vec<SegmentMeta>, Arc<Pin>) {
        let segs = lock(&self.segments);
        let skip = segs.iter().rposition(|s| s.header.first_lsn <= from).unwrap_or(0);
        let snapshot: Vec<SegmentMeta> = segs.iter().skip(skip).cloned().collect();
        let first = snapshot.first().map_or(u64::MAX, |s| s.seq);
        let last = snapshot.last().map_or(0, |s| s.seq);
        let pin = self.entry.pin(first, last);
        (snapshot, pin)
    }

    /// Retires whole segments whose every record is below `lsn`, never the
    /// one being written: up to `segments_recycled_max` become spares that
    /// later segments reuse instead of zero-filling new space (never one a
    /// reader may still map: those are deleted); the rest are removed.
    /// Returns how many segments were retired.
    pub(crate) fn truncate_before(&self, lsn: u64) -> Result<u64> {
        // Files a cut voided go before the cut segment may be retired.
        self.remove_void_files()?;
        let (active, _held) = {
            let st = lock(&self.state);
            Self::check_open(&st)?;
            (st.active.as_ref().map(|a| a.seq), st.lock.clone().ok_or(Error::Closed)?)
        };
        let victims: Vec<SegmentMeta> = {
            let mut segs = lock(&self.segments);
            let mut n = 0;
            for pair in segs.windows(2) {
                let [cur, next] = pair else { continue };
                if next.header.first_lsn <= lsn && Some(cur.seq) != active {
                    n += 1;
                } else {
                    break;
                }
            }
            // Forgotten first, under the lock readers pin under: no new
            // reader starts on a file being retired.
            segs.drain(..n).collect()
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let room = self.opts.segments_recycled_max.saturating_sub(lock(&self.state).spares.len());
        // Oldest first, each change synced before the next: a crash part
        // way leaves the log without a prefix of its segments, never with
        // a hole (the simulator found the hole when removals came first).
        for (i, v) in victims.iter().enumerate() {
            let path = std::slice::from_ref(&v.path);
            let reusable = v.header.segment_bytes == self.opts.segment_bytes && !self.entry.pinned(v.seq);
            if i < room && reusable {
                let spares = segment::retire(&self.opts.vfs, &self.dir, path)?;
                lock(&self.state).spares.extend(spares);
            } else {
                segment::remove(&self.opts.vfs, &self.dir, path)?;
            }
        }
        let spares = {
            let mut st = lock(&self.state);
            st.stats.segments_retired += victims.len() as u64;
            st.spares.len()
        };
        tracing::debug!(
            dir = %self.dir.display(),
            below = lsn,
            retired = victims.len(),
            first_seq = victims.first().map(|v| v.seq),
            last_seq = victims.last().map(|v| v.seq),
            spares,
            "aiowal: segments retired"
        );
        Ok(victims.len() as u64)
    }

    /// Drops every record above `lsn` durably; the next append gets
    /// `lsn + 1`. See [`crate::Wal::truncate_after`].
    ///
    /// Everything staged is made durable first; then, with nothing staged
    /// or in flight (appends that raced in are made durable and it tries
    /// again), the log continues in a new segment whose header carries
    /// `SEGMENT_CUTS` and first LSN `lsn + 1`: recovery ends every earlier
    /// segment's records there, and voids segments that start above it.
    /// Returns once that segment's first batch (no records) is durable.
    pub(crate) async fn truncate_after(&self, lsn: u64) -> Result<Lsn> {
        let _one = self.cutting.lock().await;
        loop {
            let last = self.sync().await?.0;
            let last = last.max(self.next_lsn() - 1);
            if lsn >= last {
                return Ok(Lsn(last));
            }
            if lsn > self.durable_lsn() {
                // Appends raced the sync: the record at `lsn` must be
                // durable (readable) before its batch can be checked.
                tokio::task::yield_now().await;
                continue;
            }
            // A cut inside an atomic batch would keep part of it (and
            // recovery would not find the log's LSNs meeting the cut).
            if lsn > 0 && !self.ends_group(lsn)? {
                return Err(Error::CutInsideBatch { lsn });
            }
            let cut = {
                let mut st = lock(&self.state);
                Self::check_open(&st)?;
                let quiet = st.sealed.is_empty()
                    && st.in_flight.is_empty()
                    && st.open.as_ref().is_none_or(|b| b.records() == 0 && !b.clean_end && !b.cut);
                let durable = self.durable_lsn.load(Ordering::Acquire);
                if !quiet || st.next_lsn - 1 > durable {
                    None
                } else {
                    let first = self.first_segment_lsn().unwrap_or(st.next_lsn);
                    if lsn + 1 < first {
                        return Err(Error::CutBeforeStart { lsn, first });
                    }
                    if let Some(b) = st.open.take() {
                        st.free_bufs.push(b.buf);
                    }
                    let seq = if st.place.offset == 0 { st.place.seq } else { st.place.seq + 1 };
                    st.place =
                        Place { seq, salt: 0, offset: 0, seg_end: self.opts.segment_bytes, compress: false };
                    st.next_lsn = lsn + 1;
                    // Headers of the new segment carry watermarks up to the cut
                    // only: LSNs above it are about to mean other records.
                    st.synced_lsn = lsn;
                    st.submitted_lsn = lsn;
                    st.sync_to = st.sync_to.min(lsn);
                    st.sync_taken = st.sync_taken.min(lsn);
                    self.durable_lsn.store(lsn, Ordering::Release);
                    self.written_lsn.store(lsn, Ordering::Release);
                    lock(&self.cuts).push(lsn);
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    st.cut_pending = true;
                    self.open_batch(&mut st, 0);
                    if let Some(b) = st.open.as_mut() {
                        b.cut = true;
                    }
                    self.seal_open(&mut st);
                    // Readers stop at the cut: segments that start above it are
                    // void, and their files go once the cut is durable.
                    let void: Vec<PathBuf> = {
                        let mut segs = lock(&self.segments);
                        let (keep, void): (Vec<_>, Vec<_>) =
                            std::mem::take(&mut *segs).into_iter().partition(|s| s.header.first_lsn <= lsn);
                        *segs = keep;
                        void.into_iter().map(|s| s.path).collect()
                    };
                    // Removed once the cut is durable (below), or by the
                    // next truncate_before before it retires anything.
                    st.void_files.extend(void);
                    let (tx, rx) = oneshot::channel();
                    st.cut_done = Some(tx);
                    tracing::info!(dir = %self.dir.display(), lsn, segment = seq, "aiowal: records after the cut dropped");
                    Some((rx, self.take_next(&mut st)))
                }
            };
            let Some((rx, kick)) = cut else {
                // Appends raced in: let them finish, then again.
                tokio::task::yield_now().await;
                continue;
            };
            // Waiters for dropped LSNs learn it.
            self.waiters.wake_all();
            self.synced.wake_all();
            self.submit(kick);
            if !matches!(rx.await, Ok(true)) {
                return Err(self.poisoned.get().map_or(Error::Closed, Poison::error));
            }
            // The cut is durable: segments it voids can go (until they do,
            // a later `truncate_before` could retire the cut segment and
            // leave their stale records to an open; it removes them first).
            if let Some(me) = self.me.upgrade() {
                self.opts.vfs.clone().run_blocking(move || me.remove_void_files()).await?;
            }
            return Ok(Lsn(lsn));
        }
    }

    /// Removes the segment files a durable cut voided; on a failure the
    /// rest stay listed for the next try. Blocking.
    fn remove_void_files(&self) -> Result<()> {
        let (files, held) = {
            let mut st = lock(&self.state);
            // Only once the cut is durable (its header voids them).
            if st.void_files.is_empty() || st.cut_done.is_some() {
                return Ok(());
            }
            (std::mem::take(&mut st.void_files), st.lock.clone())
        };
        let _held = held;
        for (i, f) in files.iter().enumerate() {
            if let Err(e) = segment::remove(&self.opts.vfs, &self.dir, std::slice::from_ref(f)) {
                lock(&self.state).void_files.extend(files.iter().skip(i).cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether record `lsn` ends a group (it is not followed by more
    /// records of its atomic batch). Reads the durable log.
    fn ends_group(&self, lsn: u64) -> Result<bool> {
        let mut it = self.reader(lsn, lsn.saturating_add(1));
        match it.next() {
            Some(Ok(r)) if r.lsn().get() == lsn => Ok(it.ended_group()),
            // Retired by a checkpoint meanwhile: below the log now, which
            // the caller's range check reports.
            Some(Err(Error::Truncated { .. })) => Ok(true),
            Some(Err(e)) => Err(e),
            // Not readable (below the log): the caller's range check decides.
            _ => Ok(true),
        }
    }

    /// Refuses new appends, waits for staged records to become durable,
    /// writes the clean-end mark, stops the backend and waits until nothing
    /// of this log can touch the directory any more (the lock is released).
    ///
    /// The shutdown runs as a task of its own, started by the first `close`:
    /// it finishes even if that `close` is dropped, and every `close` waits
    /// for it.
    pub(crate) async fn close(self: &Arc<Self>) -> Result<()> {
        let (target, start, epoch) = {
            let mut st = lock(&self.state);
            st.closing = true;
            let start = st.shutdown == Shutdown::Running;
            if start {
                st.shutdown = Shutdown::Closing;
            }
            (st.next_lsn - 1, start, self.epoch())
        };
        // Readers following the log past its end learn that it ends; the
        // others find their LSN not yet durable and wait on.
        self.waiters.wake_all();
        self.synced.wake_all();
        if start {
            let me = Arc::clone(self);
            let guard = CloseGuard(Some(Arc::clone(self)));
            tokio::spawn(async move {
                let mut guard = guard;
                let result = me.finish_close(target).await;
                *lock(&me.close_result) = Some(result);
                me.closed.send_replace(true);
                guard.0 = None;
            });
        }
        let flushed = self.wait_durable_since(target, epoch).await.map(|_| ());
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
        let shut = if start { lock(&self.close_result).take() } else { None };
        flushed.and(shut.unwrap_or(Ok(())))
    }

    /// The shutdown `close` runs: staged records durable, the clean-end
    /// mark, the backend stopped, the lock released.
    async fn finish_close(&self, target: u64) -> Result<()> {
        self.request_sync(target);
        let flushed = self.wait_durable_since(target, self.epoch()).await.map(|_| ());
        let marked = if flushed.is_ok() { self.write_clean_end().await } else { Ok(()) };
        let stopped = self.shut_down().await;
        flushed.and(marked).and(stopped)
    }

    /// Writes the clean-end mark through the pipeline and waits for it.
    async fn write_clean_end(&self) -> Result<()> {
        let (rx, kick) = {
            let mut st = lock(&self.state);
            if let Some(p) = &st.poison {
                return Err(p.error());
            }
            let (tx, rx) = oneshot::channel();
            self.queue_clean_end(&mut st);
            st.clean_end = Some(tx);
            (rx, self.take_next(&mut st))
        };
        self.submit(kick);
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(self.poisoned.get().map_or(Error::Closed, Poison::error)),
        }
    }

    /// Stops the backend and lets go of the directory lock, then waits until
    /// every other holder (a segment preparation, a truncation) let go too.
    async fn shut_down(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if let Some(b) = self.backend.get() {
            b.stop(Box::new(move || {
                let _ = tx.send(());
            }));
            let _ = rx.await;
        }
        let (next, held) = {
            let mut st = lock(&self.state);
            (std::mem::replace(&mut st.next, Next::None), st.lock.take())
        };
        if let Next::Preparing(p) = next {
            // Let a preparation in progress finish rather than leave a temp file.
            let _ = self.opts.vfs.run_blocking(move || p.wait()).await;
        }
        if let Some(held) = held {
            let mut released = held.released();
            drop(held);
            while released.changed().await.is_ok() {}
        }
        Ok(())
    }

    /// Stops the backend without waiting (the last handle was dropped). The
    /// lock is released once the backend, a preparation or a truncation in
    /// progress let go of it; until then, a reopen in this process gets
    /// `Locked` saying a dropped handle is still shutting down. Nothing to
    /// do if a `close` is shutting the log down already.
    pub(crate) fn shutdown(&self) {
        let (held, running) = {
            let mut st = lock(&self.state);
            st.closing = true;
            let running = st.shutdown == Shutdown::Running;
            if running {
                st.shutdown = Shutdown::Dropped;
            }
            (st.lock.clone(), running)
        };
        self.waiters.wake_all();
        self.synced.wake_all();
        if let Some(held) = held {
            held.dropped(&self.entry);
        }
        if running {
            self.stop_backend_now();
        }
    }

    /// Tells the backend to stop once its batches are done, without waiting.
    fn stop_backend_now(&self) {
        if let Some(b) = self.backend.get() {
            b.stop(Box::new(|| {}));
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let segments_live = lock(&self.segments).len() as u64;
        let st = lock(&self.state);
        let mut s = st.stats.snapshot();
        s.records_pending = (st.next_lsn - 1).saturating_sub(self.durable_lsn.load(Ordering::Acquire));
        s.batches_queued = st.sealed.len() as u64;
        s.batches_in_flight = st.in_flight.len() as u64;
        s.segments_live = segments_live;
        s.segments_spare = st.spares.len() as u64;
        s.segments_retired = st.stats.segments_retired;
        s.next_segment_ready =
            matches!(st.next, Next::Ready(..)) || matches!(&st.next, Next::Preparing(p) if p.is_done());
        s.poisoned = st.poison.is_some();
        s
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
    /// A batch came back: poison on failure, or mark it done, advance the
    /// synced watermark over the completed prefix and take the next batch.
    /// Returns the next batch to submit and the new durable LSN.
    fn settle(
        &self,
        batch: &mut IoBatch,
        result: std::result::Result<(), IoFailure>,
    ) -> (Option<IoBatch>, Option<u64>, Option<u64>) {
        let mut st = lock(&self.state);
        let id = batch.meta.id;
        if let Err(f) = result {
            // Nothing in flight may count as durable any more, whatever
            // completes later: with two batches in flight, the other
            // one's sync can succeed after this one failed, though the
            // failed sync may have been about its pages (Linux reports a
            // writeback error once and drops the pages).
            st.in_flight.clear();
            st.writing = false;
            self.poison(&mut st, Poison { op: f.op, cause: Arc::new(f.error) });
            return (None, None, None);
        }
        if st.poison.is_some() {
            return (None, None, None); // completed after the log died: counts for nothing
        }
        if let Some(slot) = st.in_flight.iter_mut().find(|f| f.id == id) {
            slot.done = true;
        }
        if st.in_flight.back().is_some_and(|f| f.id == id) {
            st.writing = false;
        }
        // (Only a batch that wrote starts a segment: a batch that only
        // synced never names a segment `active` does not.)
        if st.active.as_ref().is_none_or(|a| a.seq != batch.meta.seq) && !batch.writes.is_empty() {
            if let FileTarget::Open(f) = &batch.file {
                self.rotated(&mut st, &batch.meta, Arc::clone(f));
            }
        }
        st.stats.record_sync(&batch.meta);
        self.mark(&st, batch);
        if let Some(w) = batch.writes.pop() {
            if st.free_bufs.len() < SEALED_MAX + 2 {
                st.free_bufs.push(w.buf);
            }
        }
        // Over the completed prefix: everything is written, and durable up
        // to the last batch that synced (a sync covers every write that
        // completed before it started, which is every earlier batch's:
        // the next batch is taken only once the previous one's writes are
        // done).
        let (mut written, mut durable) = (None, None);
        while let Some(f) = st.in_flight.front().copied().filter(|f| f.done) {
            st.in_flight.pop_front();
            written = Some(f.last);
            if f.syncs {
                durable = Some(f.last);
            }
        }
        if let Some(l) = durable {
            st.synced_lsn = st.synced_lsn.max(l);
            // Published under the state lock, where a cut lowers them: a
            // completion cannot raise them above a later cut.
            self.durable_lsn.fetch_max(l, Ordering::Release);
        }
        if let Some(w) = written {
            self.written_lsn.fetch_max(w, Ordering::Release);
        }
        if batch.meta.clean_end {
            if let Some(tx) = st.clean_end.take() {
                let _ = tx.send(true);
            }
        }
        if batch.meta.cut {
            if let Some(tx) = st.cut_done.take() {
                let _ = tx.send(true);
            }
        }
        (self.take_next(&mut st), written, durable)
    }
}

/// Encodes `records` after `first_lsn` into `buf` (one record, or an atomic
/// batch). All or nothing: on failure `buf` is as it was, and the length of
/// the record that did not fit is returned.
fn encode_records(
    buf: &mut Vec<u8>,
    salt: u64,
    first_lsn: u64,
    records: &[&[u8]],
    atomic: bool,
) -> std::result::Result<(), u64> {
    let mark = buf.len();
    for (i, r) in records.iter().enumerate() {
        let kind = match (atomic && records.len() > 1, i) {
            (false, _) => FrameKind::Record,
            (true, 0) => FrameKind::BatchBegin,
            (true, i) if i + 1 == records.len() => FrameKind::BatchEnd,
            (true, _) => FrameKind::BatchMiddle,
        };
        if format::encode_frame(buf, salt, first_lsn + i as u64, kind, r).is_err() {
            buf.truncate(mark);
            return Err(r.len() as u64);
        }
    }
    Ok(())
}

/// Replaces the record frames of `b` (not padded yet) by one compressed
/// records frame if that makes the batch at least one block shorter;
/// `scratch` holds the compressed payload and frame meanwhile. Whether it did.
#[cfg(feature = "compression")]
fn compress_batch(b: &mut Batch, scratch: &mut (Vec<u8>, Vec<u8>), align: u64) -> bool {
    let frames_at = b.header_at + BATCH_HEADER_LEN;
    let Some(frames) = b.buf.get(frames_at..) else { return false };
    let before = format::align_up(b.used(), align);
    // Not even an empty compressed frame would save a block.
    let floor = (frames_at - b.start + format::FRAME_HEADER_LEN + format::COMPRESSED_PREFIX_LEN) as u64;
    if before <= format::align_up(floor, align) {
        return false;
    }
    let (payload, frame) = (&mut scratch.0, &mut scratch.1);
    payload.clear();
    frame.clear();
    if !format::compress_frames(frames, payload)
        || format::encode_frame(frame, b.place.salt, b.first_lsn, FrameKind::Compressed, payload).is_err()
    {
        return false;
    }
    let after = format::align_up((frames_at - b.start + frame.len()) as u64, align);
    if after >= before {
        return false;
    }
    b.buf.truncate(frames_at);
    b.buf.extend_from_slice(frame);
    b.compressed = true;
    true
}

/// Whether `more` bytes fit a batch of `used` bytes at `offset`, padding included.
fn fits(offset: u64, used: u64, more: u64, align: u64, batch_max: u64, seg_end: u64) -> bool {
    let padded = format::align_up(used.max(BATCH_HEADER_LEN as u64) + more, align);
    padded <= batch_max && offset + padded <= seg_end
}

impl Completion for Core {
    fn written(&self) {
        let next = {
            let mut st = lock(&self.state);
            st.writing = false;
            self.take_next(&mut st)
        };
        self.submit(next);
    }

    fn poison_now(&self, f: IoFailure) {
        let mut st = lock(&self.state);
        st.in_flight.clear();
        st.writing = false;
        self.poison(&mut st, Poison { op: f.op, cause: Arc::new(f.error) });
    }

    fn complete(&self, mut batch: IoBatch, result: std::result::Result<(), IoFailure>) {
        // The guard stays armed until the state is updated: a panic in
        // between drops the batch and so poisons the log.
        let (next, written, durable) = self.settle(&mut batch, result);
        batch.guard.disarm();
        drop(batch);
        self.submit(next);
        if let Some(lsn) = durable {
            self.synced.wake_upto(lsn);
        }
        if let Some(lsn) = written {
            self.waiters.wake_upto(lsn);
            self.space.notify_waiters();
        }
    }
}
