//! Recovery: a read-only scan of the segments, a decision per damaged place,
//! and the [`RecoveryReport`].
//!
//! The scan walks every segment's batches and frames, checking each checksum,
//! the frame order (atomic batches are closed before anything else) and that
//! LSNs continue exactly. Where a segment stops making sense, the place is
//! classified by **what proves the records there acknowledged**, not by where
//! the bytes sit, and [`decide`] maps the class to an action per
//! [`RecoveryMode`] (the same table as in the `RecoveryMode` docs):
//!
//! | class | what shows it | TolerateTornTail | AbsoluteConsistency | PointInTime |
//! |-------|---------------|------------------|---------------------|-------------|
//! | `Done` | the segment's records reach the next segment's first LSN, or its end | continue | continue | continue |
//! | `Clean` | the last segment's batches end in never-written space, nothing valid after | open | open | open |
//! | `Torn` | damage in the last segment that nothing proves acknowledged | cut, report | error | cut, report |
//! | `Corrupt` | damage to a record that something proves acknowledged | error | error | cut, report, set later segments aside |
//!
//! What proves record `n` acknowledged (format v2): a valid batch header
//! later in the same segment whose synced watermark is at least `n` (each
//! batch carries the watermark its writer knew when it submitted the batch),
//! a clean-end mark after it (written by `close` once everything was
//! durable), or a later segment (a segment's first batch is written only
//! after every earlier write and sync completed; a segment that voids part
//! of the one before it, see below, proves what it leaves in place).
//!
//! The one case that stays undecidable: the newest acknowledged batches
//! damaged after their acknowledgement (a bad sector, not a crash) with
//! nothing intact written after them. Nothing on disk tells that apart from a
//! crash during their write, so recovery cuts them as a torn tail and says
//! so in the report; `AbsoluteConsistency` refuses instead.
//!
//! Format v1 segments (read, never written) carry no watermarks: there, as
//! before, damage followed by valid frames beyond the in-flight window
//! (`window_bytes` of the header) or in a later segment is corruption.
//!
//! Nothing here writes. What `open` does with the plan — never writing over
//! a block that holds acknowledged records — is in `wal.rs`: after a crash
//! it copies the records nothing proves durable into a new segment whose
//! header voids the old copies ([`format::SEGMENT_CUTS`]).
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

mod read;
pub(crate) mod walk;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use read::LogStart;
pub use read::{ReadIter, Record};

use crate::error::{CorruptKind, Error, IoOp, Result};
use crate::format::{self, FormatError, SegmentHeader};
use crate::lsn::Lsn;
use crate::options::RecoveryMode;
use crate::segment;
use crate::vfs::{Mapped, Vfs};
use walk::{Proof, Step, Stop, Walker};

/// A segment's bytes, read-only (mapped, or the simulator's copy), every
/// page read once so that an unreadable one is an error, not a SIGBUS.
pub(crate) fn map(vfs: &Vfs, path: &Path) -> Result<Mapped> {
    vfs.map(path, true).map_err(|e| Error::io(IoOp::Map, path, e))
}

/// [`map`]s every segment, in order, the first error first. The read pass
/// that makes an unreadable page an error copies every byte once: on
/// threads of its own (up to 4, where the file system allows threads) it
/// runs at the speed of a sequential read instead of taking as long again
/// as the checksums that follow (measured: a warm open took 1.5x a
/// sequential read of its files with one thread).
fn map_all(vfs: &Vfs, segments: segment::Numbered) -> Result<Vec<((u64, PathBuf), Mapped)>> {
    let maps = par_map(&segments, workers(vfs), |_, (_, path)| map(vfs, path));
    segments.into_iter().zip(maps).map(|(seg, m)| m.map(|m| (seg, m))).collect()
}

/// Threads for recovery's passes over whole segments: up to 4 where the
/// file system allows threads (the simulator's does not).
fn workers(vfs: &Vfs) -> usize {
    if vfs.threads() { std::thread::available_parallelism().map_or(1, |n| n.get()).min(4) } else { 1 }
}

/// `f` over every item on up to `threads` scoped threads, the results in
/// the items' order.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<R>>> = items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (Some(item), Some(slot)) = (items.get(i), slots.get(i)) else { break };
                    let r = f(i, item);
                    *crate::sync::lock(slot) = Some(r);
                }
            });
        }
    });
    // A worker that panicked propagates out of the scope above, so every
    // slot is filled here; `f` on this thread covers the impossible rest.
    slots
        .into_iter()
        .zip(items)
        .enumerate()
        .map(|(i, (slot, item))| {
            let r = slot.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
            r.unwrap_or_else(|| f(i, item))
        })
        .collect()
}

/// What a segment knows about itself after the scan.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    pub seq: u64,
    pub path: PathBuf,
    pub header: SegmentHeader,
    /// Where readers may start instead of the first frame.
    pub marks: Arc<SeekMarks>,
}

/// Bytes between two seek marks of a segment: a reader scans at most this
/// much (checking every frame) before the record it asked for.
const MARK_BYTES: u64 = 64 << 10;

/// A sparse index of a segment: `(lsn, offset)` pairs, each the offset of a
/// batch header (v1: a frame boundary outside any atomic batch) where the
/// next record carries `lsn`. Only durable positions are marked. At most
/// `segment_bytes / MARK_BYTES` entries.
#[derive(Debug, Default)]
pub(crate) struct SeekMarks(std::sync::Mutex<Vec<(u64, u64)>>);

impl SeekMarks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
        crate::sync::lock(&self.0)
    }

    /// Notes that the batch (v1: frame) at `offset` carries `lsn`, if it is
    /// far enough past the last mark.
    pub(crate) fn add(&self, lsn: u64, offset: u64) {
        let mut v = self.lock();
        if v.last().is_none_or(|&(l, o)| lsn > l && offset >= o + MARK_BYTES) {
            v.push((lsn, offset));
        }
    }

    /// The last mark at or before `lsn`.
    pub(crate) fn seek(&self, lsn: u64) -> Option<(u64, u64)> {
        let v = self.lock();
        let i = v.partition_point(|&(l, _)| l <= lsn);
        i.checked_sub(1).and_then(|i| v.get(i).copied())
    }
}

/// Why the recovery scan stopped where it did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The directory held no records.
    Empty,
    /// The log ended cleanly.
    Clean,
    /// A torn tail left by a crash was cut off at `offset` of `segment`:
    /// damage that nothing proves acknowledged.
    TornTail {
        /// The segment holding the tail.
        segment: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// The first LSN not recovered.
        lsn: Lsn,
        /// Records that later batch headers show were written after the cut
        /// and were discarded with it (a lower bound: a batch whose header
        /// was destroyed cannot be counted). None of them was proven
        /// acknowledged.
        records_cut: u64,
        /// What the first bad bytes looked like.
        cause: FormatError,
    },
    /// `RecoveryMode::PointInTime` stopped before damaged acknowledged data.
    PointInTime {
        /// The damaged segment.
        segment: PathBuf,
        /// Where the damage is.
        offset: u64,
        /// The first LSN not recovered.
        lsn: Lsn,
        /// What was wrong.
        kind: CorruptKind,
    },
}

/// What `Wal::open` found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segments holding records.
    pub segments: u64,
    /// Records recovered.
    pub records: u64,
    /// Payload bytes of those records.
    pub bytes: u64,
    /// The oldest LSN in the log (`Lsn::ZERO` when empty).
    pub first_lsn: Lsn,
    /// The newest recovered LSN (`Lsn::ZERO` when empty).
    pub last_lsn: Lsn,
    /// Where and why the scan stopped.
    pub stop: StopReason,
    /// Segments renamed out of the log (by `PointInTime` recovery, or a
    /// newest segment whose first write a crash tore).
    pub set_aside: Vec<PathBuf>,
    /// Records `open` copied into a new segment because nothing proved them
    /// durable (the newest batches after a crash), so that every record it
    /// returns is durable before it returns. 0 after a clean close.
    pub copied_forward: u64,
    /// How long the scan (and, for `open`, the tail handling) took.
    pub elapsed: Duration,
}

impl RecoveryReport {
    fn empty() -> RecoveryReport {
        RecoveryReport {
            segments: 0,
            records: 0,
            bytes: 0,
            first_lsn: Lsn::ZERO,
            last_lsn: Lsn::ZERO,
            stop: StopReason::Empty,
            set_aside: Vec::new(),
            copied_forward: 0,
            elapsed: Duration::ZERO,
        }
    }
}

/// What the scan of one segment found.
#[derive(Debug, Default)]
struct SegScan {
    records: u64,
    bytes: u64,
    /// LSN after the last complete record or atomic batch.
    next_lsn: u64,
    /// Where the walk stopped, why, and whether inside a batch.
    stop_pos: u64,
    stop: Option<Stop>,
    in_batch: bool,
    /// Complete write batches (v2).
    batches: u64,
    /// A clean-end batch that is the last complete batch (v2): where it
    /// starts and ends.
    clean_end: Option<(u64, u64)>,
    /// The highest synced watermark of a batch header read on the way (v2),
    /// or what a clean-end batch proves.
    synced: Option<u64>,
    /// v1: the first LSN of the records in the last in-flight window.
    v1_window_start: Option<u64>,
    marks: SeekMarks,
}

/// Walks one segment up to `limit` (the first LSN of the next segment).
fn scan(data: &[u8], h: &SegmentHeader, limit: Option<u64>) -> SegScan {
    scan_until(data, h, limit, false)
}

/// [`scan`], stopping after the first complete batch when `first_only`.
fn scan_until(data: &[u8], h: &SegmentHeader, limit: Option<u64>, first_only: bool) -> SegScan {
    let mut s = SegScan { next_lsn: h.first_lsn, ..SegScan::default() };
    let mut w = Walker::new(h, limit);
    let (mut pending, mut pending_bytes) = (0u64, 0u64);
    // The end LSN of the v2 batch being read.
    let mut batch_end: Option<u64> = None;
    // v1: where each complete group (record or atomic batch) starts.
    let mut v1_groups: Vec<(u64, u64)> = Vec::new();
    let mut group_start = None;
    loop {
        if first_only && s.batches > 0 {
            return s;
        }
        match w.step(data) {
            Step::Batch { pos, header } => {
                s.synced = s.synced.max(Some(header.synced_lsn));
                s.marks.add(header.first_lsn, pos);
                s.clean_end = None;
                if header.records() > 0 {
                    batch_end = Some(header.end_lsn);
                    continue;
                }
                s.batches += 1;
                if header.clean_end() {
                    s.synced = s.synced.max(header.first_lsn.checked_sub(1));
                    s.clean_end = Some((pos, pos + u64::from(header.batch_bytes)));
                }
            }
            Step::Record { pos, payload, .. } => {
                pending += 1;
                pending_bytes += payload.len() as u64;
                let start = *group_start.get_or_insert(pos);
                if w.at_group_boundary() {
                    s.records += pending;
                    s.bytes += pending_bytes;
                    (pending, pending_bytes) = (0, 0);
                    if h.version == 1 {
                        v1_groups.push((start, s.next_lsn));
                        s.marks.add(w.lsn(), pos + format::frame_len(payload.len()) as u64);
                    }
                    group_start = None;
                    s.next_lsn = w.lsn();
                }
                if batch_end == Some(w.lsn()) {
                    s.batches += 1;
                    batch_end = None;
                }
            }
            Step::Stop { pos, why, .. } => {
                s.stop_pos = pos;
                s.stop = Some(why);
                s.in_batch = batch_end.is_some() || pending > 0;
                break;
            }
        }
    }
    if h.version == 1 {
        // v1 rewrote nothing before the last in-flight window: what starts
        // before it was synced.
        let from = s.stop_pos.saturating_sub(h.window_bytes);
        s.v1_window_start = v1_groups.iter().find(|(p, _)| *p >= from).map(|(_, l)| *l);
    }
    s
}

/// The class of the place where a segment's walk stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// The segment's records are all there.
    Done,
    /// The last segment's records end in never-written space.
    Clean,
    /// Damage nothing proves acknowledged.
    Torn(FormatError),
    /// Damage to acknowledged records.
    Corrupt { offset: u64, kind: CorruptKind },
}

fn cause(stop: Option<Stop>) -> FormatError {
    match stop {
        Some(Stop::Bad(e)) => e,
        Some(Stop::Eof) => FormatError::Truncated,
        _ => FormatError::Zeroed,
    }
}

/// Classifies the end of a v2 segment. `last`: no later segment holds data.
fn classify(data: &[u8], h: &SegmentHeader, s: &SegScan, last: bool, proof: &Proof) -> Class {
    match s.stop {
        Some(Stop::Limit) | Some(Stop::Full) => return Class::Done,
        _ => {}
    }
    let bad = cause(s.stop);
    if !last {
        // A later segment was written only after this one was synced.
        return Class::Corrupt { offset: s.stop_pos, kind: CorruptKind::DamagedBeforeLaterSegment(bad) };
    }
    if h.version == 1 {
        // A segment set aside after it (a torn v2 segment) may still prove it.
        if proof.proves(s.next_lsn) {
            let kind = CorruptKind::DamagedBeforeLaterSegment(bad);
            return Class::Corrupt { offset: s.stop_pos, kind };
        }
        return classify_v1(data, h, s);
    }
    if proof.proves(s.next_lsn) {
        let by = proof.clean_end_at.map_or(proof.synced.unwrap_or(0), |c| c.max(proof.synced.unwrap_or(0)));
        return Class::Corrupt {
            offset: s.stop_pos,
            kind: CorruptKind::Acknowledged { cause: bad, proven: by },
        };
    }
    // Never-written space after the last batch, or anything at all right
    // after a clean-end mark (a recycled file's old bytes, or the torn
    // first write after a clean close, which nothing proves acknowledged),
    // with no valid batch beyond: the records end cleanly here.
    let clean_here = s.stop == Some(Stop::Zeroed) || s.clean_end.is_some_and(|(_, end)| end == s.stop_pos);
    if clean_here && !s.in_batch && proof.batches == 0 { Class::Clean } else { Class::Torn(bad) }
}

/// v1's rule: valid data beyond the in-flight window after damage means the
/// damage hit synced data; valid data only inside it is a torn tail.
fn classify_v1(data: &[u8], h: &SegmentHeader, s: &SegScan) -> Class {
    let align = u64::from(h.alignment);
    let end_pos = s.stop_pos;
    let window_end = end_pos.saturating_add(h.window_bytes);
    if walk::v1_valid_frame_in(data, h, window_end, h.segment_bytes, align, s.next_lsn) {
        return Class::Corrupt { offset: s.stop_pos, kind: CorruptKind::Frame(cause(s.stop)) };
    }
    let debris = walk::v1_valid_frame_in(data, h, s.stop_pos + 8, window_end, 8, s.next_lsn);
    let clean = s.stop == Some(Stop::Zeroed) && !s.in_batch && s.stop_pos % align == 0;
    if clean && !debris { Class::Clean } else { Class::Torn(cause(s.stop)) }
}

/// What `open` must do to the tail before appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// No segment holds data; the log starts empty.
    Fresh,
    /// A clean close left the last segment here: appends continue at
    /// `offset`, the clean-end mark's block, and nothing is written at open.
    Continue { offset: u64 },
    /// The last segment is proven complete and full: appends start a new one.
    Rotate,
    /// After a crash: the last segment's records from `from` on are not
    /// proven durable (or stale frames follow them). `open` copies them into
    /// a new segment that voids the old copies, and syncs it. `damaged`:
    /// the last segment holds damage past them (a cut), so it is set aside,
    /// never deleted, if the new segment voids all of it.
    CopyForward { from: u64, damaged: bool },
}

/// The outcome of the scan: what is there and what to do.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Segments holding records, oldest first.
    pub segments: Vec<SegmentMeta>,
    /// Trailing segments never written (zeroed header); reusable.
    pub unused: Vec<(u64, PathBuf)>,
    /// Segments to set aside (renamed, not deleted): after a PointInTime
    /// cut, or a newest segment whose first write was torn.
    pub discard: Vec<PathBuf>,
    /// Segments whose every record a later segment voids: removed once the
    /// tail handling is durable.
    pub void: Vec<PathBuf>,
    /// Temporary files of interrupted segment preparations, to be removed.
    pub leftovers: Vec<PathBuf>,
    /// Retired segments kept for reuse.
    pub spares: Vec<PathBuf>,
    /// The LSN the next append gets.
    pub next_lsn: u64,
    pub tail: Tail,
    pub report: RecoveryReport,
}

fn corrupt(path: &Path, offset: u64, lsn: u64, kind: CorruptKind) -> Error {
    Error::Corrupt { segment: path.to_path_buf(), offset, lsn, kind }
}

/// A segment file read for the scan.
struct Segment {
    seq: u64,
    path: PathBuf,
    map: Mapped,
    header: std::result::Result<SegmentHeader, FormatError>,
}

/// Scans the log in `dir` and decides what to do, without writing anything.
pub(crate) fn plan(vfs: &Vfs, dir: &Path, mode: RecoveryMode) -> Result<Plan> {
    let started = std::time::Instant::now();
    let listing = segment::list_segments(vfs, dir)?;
    let mut mapped = Vec::new();
    for ((seq, path), map) in map_all(vfs, listing.segments)? {
        let header = SegmentHeader::decode(&map);
        mapped.push(Segment { seq, path, map, header });
    }
    // A file that is not an aiowal segment, or one from a newer format, is
    // never touched: refuse to open.
    for m in &mapped {
        match m.header {
            Err(FormatError::UnsupportedVersion(v)) => {
                return Err(Error::UnsupportedFormat { path: m.path.clone(), version: v });
            }
            Err(FormatError::UnsupportedFlags(f))
                if f & !(format::SEGMENT_CUTS | format::SEGMENT_COMPRESSED) == 0 =>
            {
                // Only the compressed flag is unknown: this build lacks the feature.
                let path = m.path.clone();
                return Err(Error::NeedsFeature { path, what: "compressed batches", feature: "compression" });
            }
            Err(FormatError::UnsupportedFlags(_)) => {
                return Err(Error::UnsupportedFormat { path: m.path.clone(), version: format::VERSION + 1 });
            }
            _ => {}
        }
    }
    // Trailing segments that were prepared but never written (all-zero
    // header, or an empty file) are reusable and safe to remove. Then the
    // newest segment, if a crash tore its first write, is set aside; and
    // again, for an open that crashed while recovering from a crash.
    let mut unused = Vec::new();
    let mut torn = Vec::new();
    let mut proven_by_torn = None;
    loop {
        while let Some(m) = mapped.last() {
            if !never_written(m) {
                break;
            }
            if let Some(m) = mapped.pop() {
                unused.push((m.seq, m.path));
            }
        }
        match newest_torn(&mut mapped, mode, proven_by_torn)? {
            Some((path, cause, proves)) => {
                torn.push((path, cause));
                proven_by_torn = proven_by_torn.max(proves);
            }
            None => break,
        }
    }
    unused.reverse();
    for (i, m) in mapped.iter().enumerate() {
        // (Before a segment that voids what follows it, a segment-shaped
        // file with an unreadable header is a torn first write an open
        // copied forward: see walk_log.)
        let cut_later = mapped.iter().skip(i + 1).any(|m| m.header.is_ok_and(|h| h.cuts()));
        if m.header == Err(FormatError::BadMagic) && !(cut_later && segment_shaped(&m.map)) {
            return Err(Error::ForeignFile { path: m.path.clone(), reason: FormatError::BadMagic });
        }
    }
    let mut plan = walk_log(mapped, unused, mode, proven_by_torn, workers(vfs))?;
    for (path, cause) in torn.into_iter().rev() {
        // Set aside, not deleted: whatever it holds stays inspectable.
        if plan.report.stop == StopReason::Clean || plan.report.stop == StopReason::Empty {
            let lsn = Lsn(plan.next_lsn);
            plan.report.stop =
                StopReason::TornTail { segment: path.clone(), offset: 0, lsn, records_cut: 0, cause };
        }
        plan.discard.push(path);
    }
    plan.leftovers = listing.tmp;
    plan.spares = listing.spares;
    plan.report.elapsed = started.elapsed();
    Ok(plan)
}

/// Whether a segment file was prepared but never written: empty, or zero
/// where its header and its first batch would be. (A zero header over
/// written blocks is damage or a torn first write: see `newest_torn`.)
fn never_written(m: &Segment) -> bool {
    if m.map.is_empty() {
        return true;
    }
    m.header == Err(FormatError::Zeroed)
        && m.map
            .get(..format::UNWRITTEN_PREFIX_BYTES.min(m.map.len()))
            .is_some_and(|b| b.iter().all(|&x| x == 0))
}

/// A foreign file rarely has a preallocated segment's shape: a whole number
/// of (at least two) blocks of the smallest alignment. (Small logs have
/// segments of a few 512-byte blocks, so nothing stricter.)
fn segment_shaped(map: &[u8]) -> bool {
    let block = format::ALIGNMENT_MIN as usize;
    map.len() >= 2 * block && map.len() % block == 0
}

/// The newest segment, if a crash tore its first write (its header, or the
/// batch that went out with it) and nothing proves it held acknowledged
/// records: taken out of `mapped`, to be set aside, with what its header
/// still proves (every LSN before its first was durable when it was
/// written). `proven` is what segments already set aside proved. Errors
/// when its header is damaged although its frames survive, or although a
/// segment after it proves it was written completely (damage after it was
/// synced).
fn newest_torn(
    mapped: &mut Vec<Segment>,
    mode: RecoveryMode,
    proven: Option<u64>,
) -> Result<Option<(PathBuf, FormatError, Option<u64>)>> {
    let Some(m) = mapped.last() else { return Ok(None) };
    let cause = match &m.header {
        // A segment whose records a later one proves is classified as the
        // log's last segment, with that proof.
        Ok(h) if proven.is_some_and(|p| p >= h.first_lsn) => return Ok(None),
        Ok(h) if h.version >= 2 => match first_write_torn(&m.map, h) {
            Some(cause) => cause,
            None => return Ok(None),
        },
        Ok(_) => return Ok(None),
        Err(cause) => {
            if !segment_shaped(&m.map) && *cause == FormatError::BadMagic {
                return Ok(None);
            }
            if frames_survive(&m.map) || holds_proven(mapped, proven) {
                if mode != RecoveryMode::PointInTime {
                    return Err(corrupt(&m.path, 0, 0, CorruptKind::Header(*cause)));
                }
            } else if mode == RecoveryMode::AbsoluteConsistency {
                return Err(corrupt(&m.path, 0, 0, CorruptKind::TornTail(*cause)));
            }
            *cause
        }
    };
    if mode == RecoveryMode::AbsoluteConsistency {
        return Err(corrupt(&m.path, 0, 0, CorruptKind::TornTail(cause)));
    }
    // (A segment starting at LSN 1 proves nothing.)
    let proves = m.header.ok().map(|h| h.first_lsn - 1).filter(|&p| p > 0);
    Ok(mapped.pop().map(|m| (m.path, cause, proves)))
}

/// Whether the newest segment of `mapped` (whose header cannot be read)
/// holds records that `proven` (from a segment set aside after it) proves
/// durable: whether the segment before it ends at or before `proven`. Yes
/// when that cannot be told.
fn holds_proven(mapped: &[Segment], proven: Option<u64>) -> bool {
    let Some(p) = proven else { return false };
    let Some(prev) = mapped.len().checked_sub(2).and_then(|i| mapped.get(i)) else { return true };
    let Ok(h) = prev.header else { return true };
    scan(&prev.map, &h, None).next_lsn <= p
}

/// For a v2 segment: why its first batch is incomplete, if it is, while no
/// later batch proves anything. A segment that voids part of the one before
/// it ([`format::SEGMENT_CUTS`]) counts only once its first batch (the
/// copies) is whole; any other segment only if it holds no record at all.
fn first_write_torn(data: &[u8], h: &SegmentHeader) -> Option<FormatError> {
    let s = scan_until(data, h, None, true);
    if s.batches > 0 || (s.records > 0 && !h.cuts()) {
        return None;
    }
    let proof = walk::proofs_after(data, h, s.stop_pos);
    (proof.batches == 0).then(|| cause(s.stop))
}

/// Whether a frame decodes at any block start of a segment whose header is
/// damaged, using the salt where the header keeps it.
fn frames_survive(map: &[u8]) -> bool {
    let Some(salt) =
        map.get(format::SALT_RANGE).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes)
    else {
        return false;
    };
    let mut align = u64::from(format::ALIGNMENT_MIN);
    while align <= u64::from(format::ALIGNMENT_MAX) {
        let at = usize::try_from(align).ok().and_then(|a| map.get(a..)).unwrap_or_default();
        if format::decode_frame(at, salt, map.len() as u64).is_ok() {
            return true;
        }
        align *= 2;
    }
    false
}

/// Where a PointInTime cut leaves the log: everything from `from` on is
/// set aside.
fn point_in_time(
    report: &mut RecoveryReport,
    discard: &mut Vec<PathBuf>,
    rest: impl Iterator<Item = PathBuf>,
    stop: StopReason,
) {
    discard.extend(rest);
    report.stop = stop;
}

/// Walks the segments in order. `proven` is what segments set aside proved
/// (every LSN up to it durable).
fn walk_log(
    mapped: Vec<Segment>,
    unused: Vec<(u64, PathBuf)>,
    mode: RecoveryMode,
    proven: Option<u64>,
    threads: usize,
) -> Result<Plan> {
    let mut report = RecoveryReport::empty();
    let mut segments: Vec<SegmentMeta> = Vec::new();
    let (mut discard, mut void) = (Vec::new(), Vec::new());
    let mut next_lsn = 1u64;
    let mut tail = Tail::Fresh;
    // Each segment's records end where the lowest first LSN of any later
    // segment begins (a later segment may void part of earlier ones).
    // (An unreadable header ends the search, unless a later segment voids
    // what follows its first LSN: see below.)
    let firsts: Vec<Option<u64>> = mapped.iter().map(|m| m.header.ok().map(|h| h.first_lsn)).collect();
    let cuts: Vec<bool> = mapped.iter().map(|m| m.header.is_ok_and(|h| h.cuts())).collect();
    let cut_later = |i: usize| cuts.iter().skip(i + 1).any(|c| *c);
    let limit_of = |i: usize| {
        let mut limit: Option<u64> = None;
        for (j, first) in firsts.iter().enumerate().skip(i + 1) {
            match first {
                Some(f) => limit = Some(limit.map_or(*f, |l| l.min(*f))),
                None if cut_later(j) => {}
                None => break,
            }
        }
        limit
    };
    // Every segment's frames are checked on `threads` threads first: the
    // checksums are most of an open's work once the files are read, and
    // one segment's walk needs nothing from the segments before it (the
    // loop below then joins the walks up in order).
    let mut scans = par_map(&mapped, threads, |i, m| {
        let h = m.header.as_ref().ok()?;
        let limit = limit_of(i);
        limit.is_none_or(|l| l > h.first_lsn).then(|| scan(&m.map, h, limit))
    });
    let count = mapped.len();
    let mut iter = mapped.into_iter().enumerate();
    while let Some((i, m)) = iter.next() {
        let last = i + 1 == count;
        let prev = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        // A later segment voids every record of this one (`truncate_after`
        // cut below its first LSN): set aside for removal before its LSNs
        // are checked against the log's, which no longer reach it.
        if let Ok(h) = &m.header {
            let same_log = segments.first().is_none_or(|f| f.header.log_id == h.log_id);
            if same_log && h.sequence == m.seq && limit_of(i).is_some_and(|l| l <= h.first_lsn) {
                void.push(m.path);
                continue;
            }
        }
        let h = match check_header(&m, segments.first().map(|s| &s.header), next_lsn) {
            Ok(h) => h,
            Err((_, CorruptKind::Header(e)))
                if cut_later(i) && (e != FormatError::BadMagic || segment_shaped(&m.map)) =>
            {
                // An unreadable header before a segment that voids what
                // follows its first LSN: the first write of a segment that
                // an open later copied forward (it never became durable).
                // Had it held records the later one does not, the LSNs of
                // its neighbours would not meet: checked as usual. Set
                // aside, not removed: whatever it is stays inspectable.
                discard.push(m.path);
                continue;
            }
            Err((offset, kind)) => {
                // PointInTime keeps what precedes the damage; with nothing
                // before it, the log's LSNs could only restart from 1,
                // reusing the LSNs of what is set aside.
                if mode != RecoveryMode::PointInTime || segments.is_empty() {
                    return Err(corrupt(&m.path, offset, next_lsn, kind));
                }
                // Stop before this segment; it and everything after are set aside.
                let stop = StopReason::PointInTime { segment: prev, offset: 0, lsn: Lsn(next_lsn), kind };
                point_in_time(
                    &mut report,
                    &mut discard,
                    std::iter::once(m.path).chain(iter.by_ref().map(|(_, m)| m.path)),
                    stop,
                );
                if !segments.is_empty() {
                    tail = Tail::CopyForward { from: next_lsn, damaged: false };
                }
                break;
            }
        };
        // (A segment a later one voids entirely was set aside above: the
        // header check passing means same log and sequence, so `limit`
        // is above its first LSN here.)
        let limit = limit_of(i);
        if segments.is_empty() {
            report.first_lsn = Lsn(h.first_lsn);
        }
        let mut s = match scans.get_mut(i).and_then(Option::take) {
            Some(s) => s,
            None => scan(&m.map, &h, limit),
        };
        report.records += s.records;
        report.bytes += s.bytes;
        report.segments += 1;
        next_lsn = s.next_lsn;
        let mut proof = if last && h.version >= 2 {
            walk::proofs_after(&m.map, &h, s.stop_pos)
        } else {
            Proof::default()
        };
        if last {
            proof.synced = proof.synced.max(proven);
        }
        // (A segment that ends before the next one begins leaves a gap the
        // next one's header check reports.)
        let class = classify(&m.map, &h, &s, last, &proof);
        let marks = Arc::new(std::mem::take(&mut s.marks));
        segments.push(SegmentMeta { seq: m.seq, path: m.path.clone(), header: h, marks });
        let proven = |s: &SegScan| {
            // Records up to the highest watermark any batch header of this
            // segment carries are durable; a v1 segment proves what lies
            // before its last in-flight window.
            let w = if h.version == 1 {
                s.v1_window_start.unwrap_or(s.next_lsn).saturating_sub(1)
            } else {
                s.synced.max(proof.synced).max(proof.clean_end_at.map(|c| c - 1)).unwrap_or(0)
            };
            w.max(h.first_lsn - 1).saturating_add(1).min(s.next_lsn)
        };
        match class {
            Class::Done if !last => {}
            Class::Done | Class::Clean => {
                report.stop = StopReason::Clean;
                tail = match s.clean_end {
                    // Appends go over the clean-end mark itself (a block
                    // that holds no record), not after it: the mark may be
                    // readable yet not durable (its sync failed, then the
                    // process died), and later batches must not rest on it.
                    Some((offset, _)) if class == Class::Clean => Tail::Continue { offset },
                    Some(_) if s.stop == Some(Stop::Full) => Tail::Rotate,
                    _ => Tail::CopyForward { from: proven(&s), damaged: false },
                };
            }
            Class::Torn(cause) => {
                if mode == RecoveryMode::AbsoluteConsistency {
                    return Err(corrupt(&m.path, s.stop_pos, s.next_lsn, CorruptKind::TornTail(cause)));
                }
                let records_cut = proof.end_lsn.map_or(0, |e| e.saturating_sub(s.next_lsn));
                let lsn = Lsn(s.next_lsn);
                report.stop = StopReason::TornTail {
                    segment: m.path.clone(),
                    offset: s.stop_pos,
                    lsn,
                    records_cut,
                    cause,
                };
                tail = Tail::CopyForward { from: proven(&s), damaged: true };
            }
            Class::Corrupt { offset, kind } => {
                if mode != RecoveryMode::PointInTime {
                    return Err(corrupt(&m.path, offset, s.next_lsn, kind));
                }
                let stop =
                    StopReason::PointInTime { segment: m.path.clone(), offset, lsn: Lsn(s.next_lsn), kind };
                point_in_time(&mut report, &mut discard, iter.by_ref().map(|(_, m)| m.path), stop);
                // Everything before the damage is proven (that is why it is
                // corruption): a new segment only voids what follows.
                tail = Tail::CopyForward { from: s.next_lsn, damaged: true };
                break;
            }
        }
    }
    if next_lsn > 1 && !segments.is_empty() {
        report.last_lsn = Lsn(next_lsn - 1);
    }
    if report.records == 0 && segments.is_empty() {
        report.first_lsn = Lsn::ZERO;
    }
    Ok(Plan {
        segments,
        unused,
        discard,
        void,
        leftovers: Vec::new(),
        spares: Vec::new(),
        next_lsn,
        tail,
        report,
    })
}

/// The segment's header, if it fits the log: decodes, belongs to the same
/// log as the first segment, carries its file's sequence number and starts
/// where the log is (exactly, or earlier for a segment that voids what
/// follows). Otherwise the offset and kind of the problem.
fn check_header(
    m: &Segment,
    first: Option<&SegmentHeader>,
    next_lsn: u64,
) -> std::result::Result<SegmentHeader, (u64, CorruptKind)> {
    let h = m.header.map_err(|e| (0, CorruptKind::Header(e)))?;
    if first.is_some_and(|f| h.log_id != f.log_id) {
        return Err((0, CorruptKind::Mismatch("segment belongs to another log")));
    }
    if h.sequence != m.seq {
        return Err((0, CorruptKind::Mismatch("sequence number differs from file name")));
    }
    let starts_ok = first.is_none() || h.first_lsn == next_lsn || (h.cuts() && h.first_lsn < next_lsn);
    if !starts_ok {
        return Err((0, CorruptKind::LsnGap { found: h.first_lsn }));
    }
    Ok(h)
}

/// Calls `f` with every record `from..until` of segment `seg` (its bytes in
/// `data`), with its frame kind: what `open` copies forward.
///
/// # Errors
/// `Corrupt` if the records are not all there (the scan just read them, so
/// only a concurrent change of the file does that).
pub(crate) fn copy_records(
    data: &[u8],
    seg: &SegmentMeta,
    from: u64,
    until: u64,
    mut f: impl FnMut(u64, format::FrameKind, &[u8]),
) -> Result<()> {
    let h = &seg.header;
    let mut w = match seg.marks.seek(from) {
        Some((lsn, offset)) => Walker::at(h, offset, lsn, Some(until)),
        None => Walker::new(h, Some(until)),
    };
    while w.lsn() < until {
        match w.step(data) {
            Step::Batch { .. } => {}
            Step::Record { lsn, kind, payload, .. } => {
                if lsn >= from {
                    f(lsn, kind, payload.bytes());
                }
            }
            Step::Stop { pos, lsn, why } => {
                let kind = CorruptKind::Frame(cause(Some(why)));
                return Err(corrupt(&seg.path, pos, lsn, kind));
            }
        }
    }
    Ok(())
}

/// Opens a mapped segment as shared for readers (not read in first: see
/// `Vfs::map`).
pub(crate) fn map_shared(vfs: &Vfs, path: &Path) -> Result<Arc<Mapped>> {
    vfs.map(path, false).map(Arc::new).map_err(|e| Error::io(IoOp::Map, path, e))
}

#[cfg(test)]
mod tests;
