//! The group-commit pipeline: staging, sealing, placement, the durable
//! watermark and the poison latch.
//!
//! Appenders encode their frames straight into the open batch under one
//! mutex, which also assigns LSNs, so byte order and LSN order agree. A batch
//! is sealed (padded to the alignment) when the next record would not fit in
//! `batch_bytes_max` or in its segment, or when the I/O backend is idle and
//! takes it. One batch is in flight at a time; while it is, the next one
//! fills. A completed batch advances the durable watermark and wakes every
//! waiter whose LSN it covers, then the next batch is taken — from the
//! completing thread, without another hand-off.
//!
//! Batch states: `open` (filling, at most one) → `sealed` (padded, queued,
//! at most [`SEALED_MAX`]) → in flight (owned by the backend, at most one) →
//! durable. Appenders that find the queue full wait; they are not dropped.

mod stats;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::{Notify, watch};

pub use stats::Stats;

use crate::error::{Error, IoOp, Result};
use crate::format::{self, FrameKind, SegmentHeader};
use crate::io::{BatchMeta, Completion, FileTarget, Inline, IoBackend, IoBatch, IoFailure, WriteBuf};
use crate::lsn::{Lsn, LsnRange};
use crate::options::Options;
use crate::recovery::{SeekMarks, SegmentMeta};
use crate::segment::{self, DirLock, Preparing};
use crate::sync::lock;
use crate::vfs::SegFile;

/// Lists the durable waiters are spread over.
const WAIT_LISTS: usize = 8;

/// Sealed batches that may wait behind the one in flight.
pub(crate) const SEALED_MAX: usize = 2;

/// Why the log refuses work after a failed write or sync.
#[derive(Debug, Clone)]
pub(crate) struct Poison {
    pub op: IoOp,
    pub cause: Arc<io::Error>,
}

/// Where the next new batch will be written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub seq: u64,
    pub salt: u64,
    pub offset: u64,
    pub seg_end: u64,
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
    first_lsn: u64,
    /// LSN after the batch's last record.
    end_lsn: u64,
    header: Option<SegmentHeader>,
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

pub(crate) struct State {
    next_lsn: u64,
    open: Option<Batch>,
    sealed: VecDeque<Batch>,
    /// Batches submitted and not yet completed, oldest first: id, last LSN
    /// and whether it completed (completions may arrive out of order; the
    /// durable watermark only advances over a completed prefix).
    in_flight: VecDeque<(u64, u64, bool)>,
    /// Identifies batches in `in_flight` (an empty seal batch shares its
    /// last LSN with the batch before it).
    next_batch_id: u64,
    /// Retired segment files waiting to be reused (see `truncate_before`).
    spares: Vec<PathBuf>,
    /// The newest in-flight batch's writes have not completed yet.
    writing: bool,
    place: Place,
    active: Option<Active>,
    next: Next,
    free_bufs: Vec<Vec<u8>>,
    poison: Option<Poison>,
    closing: bool,
    lock: Option<DirLock>,
    stats: stats::Counters,
}

/// Everything one log shares between its handles and its backend.
pub(crate) struct Core {
    pub dir: PathBuf,
    pub opts: Options,
    /// Written into every segment header; recovery refuses segments of other logs.
    log_id: u32,
    state: Mutex<State>,
    /// The durable watermark: every LSN up to it is durable.
    durable_lsn: AtomicU64,
    /// Set once, when the log is poisoned.
    poisoned: OnceLock<Poison>,
    /// Waiters for the two above, spread over lists by LSN so that hundreds
    /// of appenders do not queue on one lock. (Not a `watch`: it spreads its
    /// waiters at random, and the simulator's replays must depend on the
    /// seed alone.)
    durable_changed: [Notify; WAIT_LISTS],
    /// Set once `close` has stopped the backend and released the lock.
    closed: watch::Sender<bool>,
    space: Notify,
    backend: OnceLock<Box<dyn IoBackend>>,
    /// Segments holding (or about to hold) records, oldest first.
    segments: Mutex<Vec<SegmentMeta>>,
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
    pub lock: DirLock,
}

pub(crate) fn random_salt() -> u64 {
    let mut b = [0u8; 8];
    // A failing OS random source is not worth refusing writes over: fall back
    // to a clock-derived salt, which still differs between incarnations.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b = (t as u64 ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

enum StageOutcome {
    /// The records are in a batch; wait for this LSN range to be durable.
    Done(LsnRange, Option<IoBatch>),
    /// No room: wait for the backend to take a batch, then retry.
    Full,
}

impl Core {
    pub(crate) fn new(dir: PathBuf, opts: Options, start: Start) -> Arc<Core> {
        Arc::new(Core {
            dir,
            opts,
            log_id: start.log_id,
            state: Mutex::new(State {
                next_lsn: start.next_lsn,
                open: None,
                sealed: VecDeque::new(),
                in_flight: VecDeque::new(),
                next_batch_id: 1,
                spares: start.spares,
                writing: false,
                place: start.place,
                active: start.active,
                next: start.next,
                free_bufs: Vec::new(),
                poison: None,
                closing: false,
                lock: Some(start.lock),
                stats: stats::Counters::default(),
            }),
            durable_lsn: AtomicU64::new(start.next_lsn - 1),
            poisoned: OnceLock::new(),
            durable_changed: std::array::from_fn(|_| Notify::new()),
            closed: watch::Sender::new(false),
            space: Notify::new(),
            backend: OnceLock::new(),
            segments: Mutex::new(start.segments),
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

    /// Appends `records` (one record, or an atomic batch) and waits until durable.
    pub(crate) async fn append(&self, records: &[&[u8]], atomic: bool) -> Result<LsnRange> {
        let range = self.reserve(records, atomic, true).await?;
        self.wait_durable(range.last.0).await?;
        Ok(range)
    }

    /// Stages `records` (LSNs assigned, bytes in a batch) and starts the
    /// batch if the backend is idle, without waiting for durability. With
    /// `inline`, an idle threaded backend writes on this thread (the lone
    /// appender's fast path); otherwise the batch is handed off.
    pub(crate) async fn reserve(&self, records: &[&[u8]], atomic: bool, inline: bool) -> Result<LsnRange> {
        let max = self.opts.max_record_bytes;
        if let Some(r) = records.iter().find(|r| r.len() > max as usize) {
            return Err(Error::RecordTooLarge { len: r.len() as u64, max: u64::from(max) });
        }
        loop {
            if let StageOutcome::Done(range, kick) = self.stage(records, atomic)? {
                return Ok(self.kick(range, kick, inline));
            }
            // Full: wait until the backend takes a batch. Registered before
            // trying again, so a batch taken in between is not missed; only
            // appenders that find the queue full touch the waiter list.
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let StageOutcome::Done(range, kick) = self.stage(records, atomic)? {
                return Ok(self.kick(range, kick, inline));
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
        if let Some(p) = &st.poison {
            return Err(Error::Poisoned { op: p.op, cause: Arc::clone(&p.cause) });
        }
        if st.closing {
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
        if atomic && align + encoded + format::padding_for(encoded, align) > batch_max {
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
        for (i, r) in records.iter().enumerate() {
            let kind = match (atomic && records.len() > 1, i) {
                (false, _) => FrameKind::Record,
                (true, 0) => FrameKind::BatchBegin,
                (true, i) if i + 1 == records.len() => FrameKind::BatchEnd,
                (true, _) => FrameKind::BatchMiddle,
            };
            let lsn = first + i as u64;
            format::encode_frame(&mut open.buf, open.place.salt, lsn, kind, r).map_err(|_| {
                Error::RecordTooLarge { len: r.len() as u64, max: u64::from(self.opts.max_record_bytes) }
            })?;
        }
        open.end_lsn = first + n;
        st.next_lsn = first + n;
        st.stats.appends += n;
        st.stats.bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
        let kick = self.take_next(&mut st);
        Ok(StageOutcome::Done(LsnRange { first: Lsn(first), last: Lsn(first + n - 1) }, kick))
    }

    /// Starts a new open batch at the placement cursor, moving it to a new
    /// segment if `encoded` more bytes would not fit in the current one.
    fn open_batch(&self, st: &mut State, encoded: u64) {
        let align = u64::from(self.opts.alignment);
        let batch_max = u64::from(self.opts.batch_bytes_max);
        let p = st.place;
        let mut buf = st.free_bufs.pop().unwrap_or_default();
        buf.clear();
        let capacity = (batch_max + align) as usize;
        if buf.capacity() < capacity {
            buf = Vec::with_capacity(capacity);
        }
        let start = buf.as_ptr().align_offset(align as usize).min(align as usize);
        buf.resize(start, 0);
        let mut header = None;
        if p.offset == 0 || !fits(p.offset, 0, encoded, align, batch_max, p.seg_end) {
            if p.offset > 0 {
                self.seal_segment(st, p);
            }
            let seq = if p.offset == 0 { p.seq } else { p.seq + 1 };
            st.place =
                Place { seq, salt: self.opts.vfs.random_u64(), offset: 0, seg_end: self.opts.segment_bytes };
            let h = SegmentHeader {
                alignment: self.opts.alignment,
                sequence: seq,
                first_lsn: st.next_lsn,
                salt: st.place.salt,
                segment_bytes: self.opts.segment_bytes,
                window_bytes: self.opts.window_bytes(),
                log_id: self.log_id,
            };
            buf.extend_from_slice(&h.encode());
            buf.resize(start + self.opts.alignment as usize, 0);
            header = Some(h);
        }
        st.open =
            Some(Batch { place: st.place, buf, start, first_lsn: st.next_lsn, end_lsn: st.next_lsn, header });
    }

    /// Queues a batch of no records that ends segment `p.seq` explicitly: a
    /// padding frame from `p.offset` to the segment's end. Recovery then
    /// finds every segment but the last one full, whatever bytes a recycled
    /// file still holds beyond the last batch.
    fn seal_segment(&self, st: &mut State, p: Place) {
        let align = self.opts.alignment as usize;
        let Ok(hdr) = format::padding_header(p.salt, st.next_lsn, p.seg_end.saturating_sub(p.offset)) else {
            return; // no room for a frame header: the scan ends there anyway
        };
        let mut buf: Vec<u8> = Vec::with_capacity(2 * align);
        let start = buf.as_ptr().align_offset(align).min(align);
        buf.resize(start, 0);
        buf.extend_from_slice(&hdr);
        buf.resize(start + align, 0);
        let lsn = st.next_lsn;
        st.sealed.push_back(Batch { place: p, buf, start, first_lsn: lsn, end_lsn: lsn, header: None });
    }

    /// Pads the open batch to the alignment and queues it.
    fn seal_open(&self, st: &mut State) {
        let Some(mut b) = st.open.take() else { return };
        let align = u64::from(self.opts.alignment);
        let pad = format::padding_for(b.used(), align);
        if pad > 0 {
            // Cannot fail: `pad` is a multiple of 8 and at least a frame header.
            let _ = format::encode_padding(&mut b.buf, b.place.salt, b.end_lsn, pad);
        }
        st.place.offset = b.place.offset + b.used();
        st.sealed.push_back(b);
    }

    /// The next batch for the backend, if it can take one and one is staged.
    ///
    /// A backend that overlaps (depth 2) gets batch N+1 once batch N's writes
    /// are done and only its sync runs. A batch for a new segment waits until
    /// nothing is in flight, so a segment's data is synced before the next
    /// segment gets any: recovery relies on that.
    fn take_next(&self, st: &mut State) -> Option<IoBatch> {
        if st.writing || st.in_flight.len() >= self.depth() || st.poison.is_some() {
            return None;
        }
        if st.sealed.is_empty() {
            if st.open.as_ref().is_none_or(|b| b.records() == 0) {
                return None;
            }
            self.seal_open(st);
        }
        let seq = st.sealed.front()?.place.seq;
        if !st.in_flight.is_empty() && st.active.as_ref().is_none_or(|a| a.seq != seq) {
            return None;
        }
        let batch = st.sealed.pop_front()?;
        let id = st.next_batch_id;
        st.next_batch_id += 1;
        st.in_flight.push_back((id, batch.end_lsn - 1, false));
        st.writing = true;
        let meta = BatchMeta {
            id,
            first_lsn: batch.first_lsn,
            last_lsn: batch.end_lsn - 1,
            bytes: batch.used(),
            submitted: Instant::now(),
            seq: batch.place.seq,
            header: batch.header,
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
        Some(IoBatch { file, writes, meta })
    }

    fn depth(&self) -> usize {
        self.backend.get().map_or(1, |b| b.depth())
    }

    /// The file for segment `seq`: the active one, or a new one that the
    /// backend waits for outside this lock (it may still be zero-filling).
    fn target(&self, st: &mut State, seq: u64) -> FileTarget {
        if let Some(a) = st.active.as_ref().filter(|a| a.seq == seq) {
            return FileTarget::Open(Arc::clone(&a.file));
        }
        let (dir, bytes, direct) = (self.dir.clone(), self.opts.segment_bytes, self.opts.direct);
        let vfs = self.opts.vfs.clone();
        match std::mem::replace(&mut st.next, Next::None) {
            Next::Ready(s, f) if s == seq => FileTarget::Open(Arc::new(f)),
            Next::Preparing(p) if p.seq() == seq => FileTarget::new(move || p.wait()),
            _ => {
                let spare = st.spares.pop();
                FileTarget::new(move || segment::prepare(&vfs, &dir, seq, bytes, direct, spare))
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
        let spare = st.spares.pop();
        st.next = match Preparing::start(
            &self.opts.vfs,
            self.dir.clone(),
            seq + 1,
            self.opts.segment_bytes,
            self.opts.direct,
            spare,
        ) {
            Ok(p) => Next::Preparing(p),
            // Retried synchronously (on the I/O path) when the segment is needed.
            Err(_) => Next::None,
        };
    }

    /// Notes where a durable batch of records starts, for readers to seek to.
    fn mark(&self, st: &State, batch: &IoBatch) {
        let m = &batch.meta;
        let Some(w) = batch.writes.first() else { return };
        if m.last_lsn < m.first_lsn {
            return; // a seal: no records
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
        let _ = self.poisoned.set(p);
        self.wake_waiters();
        self.space.notify_waiters();
    }

    fn wake_waiters(&self) {
        for list in &self.durable_changed {
            list.notify_waiters();
        }
    }

    /// Whether waiting for `lsn` is over: durable, or the log died first.
    fn durable_outcome(&self, lsn: u64) -> Option<Result<Lsn>> {
        let durable = self.durable_lsn.load(Ordering::Acquire);
        if durable >= lsn {
            return Some(Ok(Lsn(durable)));
        }
        let p = self.poisoned.get()?;
        Some(Err(Error::Poisoned { op: p.op, cause: Arc::clone(&p.cause) }))
    }

    /// Waits until `lsn` is durable (or the log is poisoned).
    pub(crate) async fn wait_durable(&self, lsn: u64) -> Result<Lsn> {
        let list = &self.durable_changed[(lsn % WAIT_LISTS as u64) as usize];
        loop {
            if let Some(r) = self.durable_outcome(lsn) {
                return r;
            }
            let changed = list.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(r) = self.durable_outcome(lsn) {
                return r;
            }
            changed.await;
        }
    }

    /// Makes everything appended so far durable; returns the durable LSN.
    pub(crate) async fn sync(&self) -> Result<Lsn> {
        let (target, kick) = {
            let mut st = lock(&self.state);
            if let Some(p) = &st.poison {
                return Err(Error::Poisoned { op: p.op, cause: Arc::clone(&p.cause) });
            }
            (st.next_lsn - 1, self.take_next(&mut st))
        };
        self.dispatch(kick);
        self.wait_durable(target).await
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

    /// Retires whole segments whose every record is below `lsn`, never the
    /// one being written: up to `segments_recycled_max` become spares that
    /// later segments reuse instead of zero-filling new space; the rest are
    /// removed. Returns how many segments were retired.
    pub(crate) fn truncate_before(&self, lsn: u64) -> Result<u64> {
        let active = lock(&self.state).active.as_ref().map(|a| a.seq);
        let victims: Vec<SegmentMeta> = {
            let segs = lock(&self.segments);
            let mut v = Vec::new();
            for pair in segs.windows(2) {
                let [cur, next] = pair else { continue };
                if next.header.first_lsn <= lsn && Some(cur.seq) != active {
                    v.push(cur.clone());
                } else {
                    break;
                }
            }
            v
        };
        if victims.is_empty() {
            return Ok(0);
        }
        // Forget them first so new readers do not start on a file being retired.
        lock(&self.segments).retain(|s| !victims.iter().any(|v| v.seq == s.seq));
        let room = self.opts.segments_recycled_max.saturating_sub(lock(&self.state).spares.len());
        // Oldest first, each change synced before the next: a crash part
        // way leaves the log without a prefix of its segments, never with
        // a hole (the simulator found the hole when removals came first).
        for (i, v) in victims.iter().enumerate() {
            let path = std::slice::from_ref(&v.path);
            if i < room && v.header.segment_bytes == self.opts.segment_bytes {
                let spares = segment::retire(&self.opts.vfs, &self.dir, path)?;
                lock(&self.state).spares.extend(spares);
            } else {
                segment::remove(&self.opts.vfs, &self.dir, path)?;
            }
        }
        Ok(victims.len() as u64)
    }

    /// Refuses new appends, waits for staged records to become durable and
    /// stops the backend.
    pub(crate) async fn close(&self) -> Result<()> {
        let (target, first) = {
            let mut st = lock(&self.state);
            let first = !std::mem::replace(&mut st.closing, true);
            (st.next_lsn - 1, first)
        };
        let flushed = self.wait_durable(target).await.map(|_| ());
        if !first {
            // Another close (or this one, earlier) stops the backend; wait for it.
            let mut closed = self.closed.subscribe();
            let _ = closed.wait_for(|c| *c).await;
            return flushed;
        }
        let result = self.shut_down(flushed.is_ok()).await;
        self.closed.send_replace(true);
        flushed.and(result)
    }

    /// Stops the backend, marks the clean end, releases the lock.
    async fn shut_down(&self, clean: bool) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(b) = self.backend.get() {
            b.stop(Box::new(move || {
                let _ = tx.send(());
            }));
            let _ = rx.await;
        }
        let marked = if clean { self.mark_clean_end().await } else { Ok(()) };
        let next = {
            let mut st = lock(&self.state);
            st.lock = None;
            std::mem::replace(&mut st.next, Next::None)
        };
        if let Next::Preparing(p) = next {
            // Let a preparation in progress finish rather than leave a temp file.
            let _ = self.opts.vfs.run_blocking(move || p.wait()).await;
        }
        marked
    }

    /// Zeroes the block after the last batch, so that the next open sees a
    /// clean end even where a recycled file holds old bytes there.
    async fn mark_clean_end(&self) -> Result<()> {
        let (p, active) = {
            let st = lock(&self.state);
            (st.place, st.active.as_ref().map(|a| a.seq))
        };
        let align = u64::from(self.opts.alignment);
        if active != Some(p.seq) || p.offset == 0 || p.offset + align > p.seg_end {
            return Ok(());
        }
        let path = segment::segment_path(&self.dir, p.seq);
        let vfs = self.opts.vfs.clone();
        let zero = move || -> Result<()> {
            let f = segment::open_for_write(&vfs, &path, false)?;
            let zeroes = vec![0u8; align as usize];
            f.write_all_at(&zeroes, p.offset).map_err(|e| Error::io(IoOp::Write, &path, e))?;
            f.sync_data().map_err(|e| Error::io(IoOp::Sync, &path, e))
        };
        self.opts.vfs.run_blocking(zero).await
    }

    /// Stops the backend without waiting (the last handle was dropped).
    pub(crate) fn shutdown(&self) {
        if std::mem::replace(&mut lock(&self.state).closing, true) {
            return; // `close` already stops it
        }
        if let Some(b) = self.backend.get() {
            b.stop(Box::new(|| {}));
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        lock(&self.state).stats.snapshot()
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether `more` bytes fit a batch of `used` bytes at `offset`, padding included.
fn fits(offset: u64, used: u64, more: u64, align: u64, batch_max: u64, seg_end: u64) -> bool {
    let total = used + more;
    let padded = total + format::padding_for(total, align);
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

    fn complete(&self, mut batch: IoBatch, result: std::result::Result<(), IoFailure>) {
        let (next, durable) = {
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
                return;
            }
            if let Some(slot) = st.in_flight.iter_mut().find(|(i, _, _)| *i == id) {
                slot.2 = true;
            }
            if st.in_flight.back().is_some_and(|(i, _, _)| *i == id) {
                st.writing = false;
            }
            if st.active.as_ref().is_none_or(|a| a.seq != batch.meta.seq) {
                if let FileTarget::Open(f) = &batch.file {
                    self.rotated(&mut st, &batch.meta, Arc::clone(f));
                }
            }
            st.stats.record_sync(&batch.meta);
            self.mark(&st, &batch);
            if let Some(w) = batch.writes.pop() {
                if st.free_bufs.len() < SEALED_MAX + 2 {
                    st.free_bufs.push(w.buf);
                }
            }
            let mut durable = None;
            while st.in_flight.front().is_some_and(|(_, _, done)| *done) {
                durable = st.in_flight.pop_front().map(|(_, l, _)| l);
            }
            (self.take_next(&mut st), durable)
        };
        self.submit(next);
        if let Some(lsn) = durable {
            self.durable_lsn.fetch_max(lsn, Ordering::Release);
            self.wake_waiters();
            self.space.notify_waiters();
        }
    }
}
