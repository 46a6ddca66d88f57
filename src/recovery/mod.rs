//! Recovery: a read-only scan of the segments, a decision per damaged place,
//! and the [`RecoveryReport`].
//!
//! The scan walks frames from the first segment, checking each checksum, the
//! frame order (batches are closed before anything else) and that LSNs
//! continue exactly. Where a segment stops making sense the place is
//! classified, then [`decide`] maps the class to an action per
//! [`RecoveryMode`] — the same table as in the `RecoveryMode` docs:
//!
//! | class                   | TolerateTornTail | AbsoluteConsistency | PointInTime |
//! |-------------------------|------------------|---------------------|-------------|
//! | `Clean` (zeroes at a block boundary, nothing valid in the window) | continue | continue | continue |
//! | `Full` (the segment is used to its end) | next segment | next segment | next segment |
//! | `Torn` (damage with valid bytes only inside the in-flight window)  | cut | error | cut |
//! | `Corrupt` (valid data beyond the window, or in a later segment)    | error | error | cut, set the rest aside |
//!
//! Bytes written after the last completed sync may persist in any order, so a
//! crash can leave a hole followed by valid frames of the batch that was in
//! flight. The in-flight window (the `window_bytes` of the segment header) is
//! the most that can be in flight at once; a valid frame beyond it was synced
//! once, so the hole before it destroyed acknowledged data.
//!
//! Nothing here writes. The one write recovery needs, sealing a cut segment,
//! is done by the caller after it has the plan.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

mod read;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use read::{ReadIter, Record};

use crate::error::{CorruptKind, Error, IoOp, Result};
use crate::format::{self, FRAME_ALIGN, FRAME_HEADER_LEN, FormatError, FrameKind, SegmentHeader};
use crate::lsn::Lsn;
use crate::options::RecoveryMode;
use crate::segment;
use crate::vfs::{Mapped, Vfs};

/// A segment's bytes, read-only (mapped, or the simulator's copy).
pub(crate) fn map(vfs: &Vfs, path: &Path) -> Result<Mapped> {
    vfs.map(path).map_err(|e| Error::io(IoOp::Map, path, e))
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
/// frame boundary outside any atomic batch where the next frame carries
/// `lsn`. Only durable positions are marked. At most `segment_bytes /
/// MARK_BYTES` entries.
#[derive(Debug, Default)]
pub(crate) struct SeekMarks(std::sync::Mutex<Vec<(u64, u64)>>);

impl SeekMarks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
        crate::sync::lock(&self.0)
    }

    /// Notes that the frame at `offset` carries `lsn`, if it is far enough
    /// past the last mark.
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
    /// A torn tail left by a crash was cut off at `offset` of `segment`.
    TornTail {
        /// The segment holding the tail.
        segment: PathBuf,
        /// Where the valid records end.
        offset: u64,
        /// What the first bad frame looked like.
        cause: FormatError,
    },
    /// `RecoveryMode::PointInTime` stopped before damaged acknowledged data.
    PointInTime {
        /// The damaged segment.
        segment: PathBuf,
        /// Where the valid records end.
        offset: u64,
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
    /// Segments renamed out of the log by `PointInTime` recovery.
    pub set_aside: Vec<PathBuf>,
}

/// How a segment's scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Frames (or a padding frame) reach the segment's end.
    Full,
    /// A zeroed frame header: space never written.
    Zeroed,
    /// The file ends before the segment size in its header.
    Eof,
    /// A frame failed to decode or broke the order.
    Bad(FormatError),
}

#[derive(Debug)]
struct SegScan {
    /// End of the last complete record or batch: where a cut would go.
    end_pos: u64,
    /// Where the scan stopped (the frame that failed).
    stop_pos: u64,
    /// LSN expected at `end_pos`.
    next_lsn: u64,
    records: u64,
    bytes: u64,
    end: End,
    /// The scan stopped inside an atomic batch.
    in_batch: bool,
    marks: SeekMarks,
}

fn order_ok(kind: FrameKind, in_batch: bool) -> bool {
    matches!(
        (kind, in_batch),
        (FrameKind::Record | FrameKind::BatchBegin | FrameKind::Padding, false)
            | (FrameKind::BatchMiddle | FrameKind::BatchEnd, true)
    )
}

fn slice_from(data: &[u8], pos: u64) -> &[u8] {
    usize::try_from(pos).ok().and_then(|p| data.get(p..)).unwrap_or_default()
}

/// Walks the frames of one segment from `start`.
fn scan_frames(data: &[u8], h: &SegmentHeader, start: u64, max_payload: u64) -> SegScan {
    let seg_end = h.segment_bytes;
    let mut s = SegScan {
        end_pos: start,
        stop_pos: start,
        next_lsn: h.first_lsn,
        records: 0,
        bytes: 0,
        end: End::Full,
        in_batch: false,
        marks: SeekMarks::default(),
    };
    let (mut pos, mut lsn, mut pending_records, mut pending_bytes) = (start, h.first_lsn, 0u64, 0u64);
    loop {
        s.stop_pos = pos;
        if pos + FRAME_HEADER_LEN as u64 > seg_end {
            s.end = if s.in_batch { End::Bad(FormatError::Truncated) } else { End::Full };
            return s;
        }
        if pos + FRAME_HEADER_LEN as u64 > data.len() as u64 {
            s.end = End::Eof;
            return s;
        }
        let frame = match format::decode_frame(slice_from(data, pos), h.salt, max_payload) {
            Ok(f) => f,
            Err(FormatError::Zeroed) => {
                s.end = End::Zeroed;
                return s;
            }
            Err(e) => {
                s.end = End::Bad(e);
                return s;
            }
        };
        if frame.lsn != lsn {
            s.end = End::Bad(FormatError::BadField("lsn"));
            return s;
        }
        if !order_ok(frame.kind, s.in_batch) {
            s.end = End::Bad(FormatError::BadField("frame order"));
            return s;
        }
        if pos + frame.len_on_disk > seg_end {
            s.end = End::Bad(FormatError::TooLong { len: frame.len_on_disk, max: seg_end - pos });
            return s;
        }
        pos += frame.len_on_disk;
        match frame.kind {
            FrameKind::Padding => {}
            FrameKind::Record | FrameKind::BatchBegin | FrameKind::BatchMiddle | FrameKind::BatchEnd => {
                lsn = lsn.saturating_add(1);
                pending_records += 1;
                pending_bytes += frame.payload.len() as u64;
            }
        }
        s.in_batch = matches!(frame.kind, FrameKind::BatchBegin | FrameKind::BatchMiddle);
        if !s.in_batch {
            s.records += pending_records;
            s.bytes += pending_bytes;
            pending_records = 0;
            pending_bytes = 0;
            s.end_pos = pos;
            s.next_lsn = lsn;
            s.marks.add(lsn, pos);
        }
    }
}

/// Whether a frame of this segment with an LSN at or past `min_lsn` starts at `pos`.
fn valid_frame_at(data: &[u8], h: &SegmentHeader, pos: u64, min_lsn: u64, max_payload: u64) -> bool {
    format::decode_frame(slice_from(data, pos), h.salt, max_payload).is_ok_and(|f| f.lsn >= min_lsn)
}

/// First offset in `from..to`, stepping by `step`, where a valid frame starts.
fn find_valid(
    data: &[u8],
    h: &SegmentHeader,
    from: u64,
    to: u64,
    step: u64,
    s: &SegScan,
    max: u64,
) -> Option<u64> {
    let to = to.min(data.len() as u64);
    if from >= to {
        return None;
    }
    let mut pos = format::align_up(from, step);
    while pos + FRAME_HEADER_LEN as u64 <= to {
        if valid_frame_at(data, h, pos, s.next_lsn, max) {
            return Some(pos);
        }
        pos += step;
    }
    None
}

/// The class of the place where a segment's scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    Full,
    Clean,
    Torn(FormatError),
    Corrupt { offset: u64, kind: CorruptKind },
}

fn cause(end: End) -> FormatError {
    match end {
        End::Bad(e) => e,
        End::Eof => FormatError::Truncated,
        End::Zeroed | End::Full => FormatError::Zeroed,
    }
}

/// Classifies the end of a segment. `last` is whether no later segment holds data.
fn classify(data: &[u8], h: &SegmentHeader, s: &SegScan, last: bool, max: u64) -> Class {
    let align = u64::from(h.alignment);
    if s.end == End::Full {
        return Class::Full;
    }
    let seg_end = h.segment_bytes;
    let ended_cleanly = s.end == End::Zeroed && !s.in_batch && s.end_pos % align == 0;
    if !last {
        // A later segment was written only after this one's last batch was
        // synced: anything but a clean end here is damage to synced data.
        if !ended_cleanly {
            let kind = CorruptKind::DamagedBeforeLaterSegment(cause(s.end));
            return Class::Corrupt { offset: s.stop_pos, kind };
        }
        if find_valid(data, h, s.stop_pos + align, seg_end, align, s, max).is_some() {
            return Class::Corrupt { offset: s.stop_pos, kind: CorruptKind::Frame(cause(s.end)) };
        }
        return Class::Clean;
    }
    let window_end = s.end_pos.saturating_add(h.window_bytes);
    if find_valid(data, h, window_end, seg_end, align, s, max).is_some() {
        return Class::Corrupt { offset: s.stop_pos, kind: CorruptKind::Frame(cause(s.end)) };
    }
    let debris = find_valid(data, h, s.stop_pos + FRAME_ALIGN as u64, window_end, FRAME_ALIGN as u64, s, max);
    if ended_cleanly && debris.is_none() { Class::Clean } else { Class::Torn(cause(s.end)) }
}

/// What `open` must do to the tail before appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// No segment holds data; the log starts empty.
    Fresh,
    /// Appends continue in the last segment at `offset`.
    Continue { offset: u64 },
    /// Seal the last segment at `offset` (a padding frame to its end), then
    /// append to a new segment.
    Seal { offset: u64 },
    /// The last segment is full; append to a new segment.
    Full,
}

/// The outcome of the scan: what is there and what to do.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Segments holding records, oldest first.
    pub segments: Vec<SegmentMeta>,
    /// Trailing segments never written (zeroed or torn header); reusable.
    pub unused: Vec<(u64, PathBuf)>,
    /// Segments after a PointInTime cut, to be set aside.
    pub discard: Vec<PathBuf>,
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
pub(crate) fn plan(vfs: &Vfs, dir: &Path, mode: RecoveryMode, max_payload: u64) -> Result<Plan> {
    let mut mapped = Vec::new();
    let listing = segment::list_segments(vfs, dir)?;
    for (seq, path) in listing.segments {
        let map = map(vfs, &path)?;
        let header = SegmentHeader::decode(&map);
        mapped.push(Segment { seq, path, map, header });
    }
    // A file that is not an aiowal segment, or one from a newer format, is
    // never touched: refuse to open.
    for m in &mapped {
        if let Err(FormatError::UnsupportedVersion(v)) = m.header {
            return Err(Error::UnsupportedFormat { path: m.path.clone(), version: v });
        }
    }
    // Trailing segments that were prepared but never written (all-zero
    // header, or an empty file): reusable, and safe to remove.
    let mut unused = Vec::new();
    while let Some(m) = mapped.last() {
        let never_written = matches!(m.header, Err(FormatError::Zeroed)) || m.map.is_empty();
        if !never_written {
            break;
        }
        if let Some(m) = mapped.pop() {
            unused.push((m.seq, m.path));
        }
    }
    unused.reverse();
    // The newest segment with a damaged header: its first write (header and
    // first batch together) may have been torn by a crash, which loses
    // nothing acknowledged. But if frames under the header's salt are
    // intact, the header was damaged after data was synced: corruption.
    let mut torn_header = None;
    if let Some(m) = mapped.last() {
        // A foreign file rarely has a preallocated segment's shape: a whole
        // number of (at least two) blocks of the smallest alignment. (Small
        // logs have segments of a few 512-byte blocks, so nothing stricter.)
        let block = format::ALIGNMENT_MIN as usize;
        let segment_shaped = m.map.len() >= 2 * block && m.map.len() % block == 0;
        if let (Err(cause), true) = (m.header, segment_shaped || m.header != Err(FormatError::BadMagic)) {
            if frames_survive(&m.map, max_payload) {
                let kind = CorruptKind::Header(cause);
                if mode != RecoveryMode::PointInTime {
                    return Err(corrupt(&m.path, 0, 0, kind));
                }
            } else if mode == RecoveryMode::AbsoluteConsistency {
                return Err(corrupt(&m.path, 0, 0, CorruptKind::TornTail(cause)));
            }
            if let Some(m) = mapped.pop() {
                torn_header = Some((m.path, cause));
            }
        }
    }
    for m in &mapped {
        if let Err(FormatError::BadMagic) = m.header {
            return Err(Error::ForeignFile { path: m.path.clone(), reason: FormatError::BadMagic });
        }
    }
    let mut plan = walk(mapped, unused, mode, max_payload)?;
    if let Some((path, cause)) = torn_header {
        // Set aside, not deleted: whatever it holds stays inspectable.
        plan.report.stop = StopReason::TornTail { segment: path.clone(), offset: 0, cause };
        plan.discard.push(path);
    }
    plan.leftovers = listing.tmp;
    plan.spares = listing.spares;
    Ok(plan)
}

/// Whether a frame decodes at any block start of a segment whose header is
/// damaged, using the salt where the header keeps it.
fn frames_survive(map: &[u8], max_payload: u64) -> bool {
    let Some(salt) = map.get(32..40).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes) else {
        return false;
    };
    let mut align = u64::from(format::ALIGNMENT_MIN);
    while align <= u64::from(format::ALIGNMENT_MAX) {
        if format::decode_frame(slice_from(map, align), salt, max_payload).is_ok() {
            return true;
        }
        align *= 2;
    }
    false
}

fn walk(mapped: Vec<Segment>, unused: Vec<(u64, PathBuf)>, mode: RecoveryMode, max: u64) -> Result<Plan> {
    let mut report = RecoveryReport {
        segments: 0,
        records: 0,
        bytes: 0,
        first_lsn: Lsn::ZERO,
        last_lsn: Lsn::ZERO,
        stop: StopReason::Empty,
        set_aside: Vec::new(),
    };
    let mut segments: Vec<SegmentMeta> = Vec::new();
    let mut next_lsn = 1u64;
    let mut tail = Tail::Fresh;
    let count = mapped.len();
    let mut discard = Vec::new();
    let mut iter = mapped.into_iter().enumerate();
    while let Some((i, m)) = iter.next() {
        let last = i + 1 == count;
        let h = match m.header {
            Ok(h) => h,
            Err(e) => {
                let err = corrupt(&m.path, 0, next_lsn, CorruptKind::Header(e));
                if mode != RecoveryMode::PointInTime {
                    return Err(err);
                }
                // Stop before this segment; everything from here on is set aside.
                discard.push(m.path);
                discard.extend(iter.by_ref().map(|(_, m)| m.path));
                report.stop = StopReason::PointInTime {
                    segment: segments.last().map(|s| s.path.clone()).unwrap_or_default(),
                    offset: 0,
                    kind: CorruptKind::Header(e),
                };
                if let Some(prev) = segments.last() {
                    tail = Tail::Seal { offset: prev.header.segment_bytes };
                }
                break;
            }
        };
        if let Some(err) = check_header(&m, &h, segments.first().map(|s| &s.header), next_lsn) {
            if mode != RecoveryMode::PointInTime {
                return Err(err);
            }
            discard.push(m.path);
            discard.extend(iter.by_ref().map(|(_, m)| m.path));
            if let Error::Corrupt { kind, .. } = err {
                report.stop = StopReason::PointInTime {
                    segment: segments.last().map(|s| s.path.clone()).unwrap_or_default(),
                    offset: 0,
                    kind,
                };
            }
            if let Some(prev) = segments.last() {
                tail = Tail::Seal { offset: prev.header.segment_bytes };
            }
            break;
        }
        if segments.is_empty() {
            report.first_lsn = Lsn(h.first_lsn);
        }
        let mut s = scan_frames(&m.map, &h, u64::from(h.alignment), max);
        report.records += s.records;
        report.bytes += s.bytes;
        report.segments += 1;
        next_lsn = s.next_lsn;
        let class = classify(&m.map, &h, &s, last, max);
        let marks = Arc::new(std::mem::take(&mut s.marks));
        segments.push(SegmentMeta { seq: m.seq, path: m.path.clone(), header: h, marks });
        match (class, last) {
            (Class::Full, true) => {
                tail = Tail::Full;
                report.stop = StopReason::Clean;
            }
            (Class::Full | Class::Clean, false) => {}
            (Class::Clean, true) => {
                tail = Tail::Continue { offset: s.end_pos };
                report.stop = StopReason::Clean;
            }
            (Class::Torn(cause), _) => {
                if mode == RecoveryMode::AbsoluteConsistency {
                    return Err(corrupt(&m.path, s.stop_pos, s.next_lsn, CorruptKind::TornTail(cause)));
                }
                tail = Tail::Seal { offset: s.end_pos };
                report.stop = StopReason::TornTail { segment: m.path.clone(), offset: s.end_pos, cause };
            }
            (Class::Corrupt { offset, kind }, _) => {
                if mode != RecoveryMode::PointInTime {
                    return Err(corrupt(&m.path, offset, s.next_lsn, kind));
                }
                discard.extend(iter.by_ref().map(|(_, m)| m.path));
                tail = Tail::Seal { offset: s.end_pos };
                report.stop = StopReason::PointInTime { segment: m.path.clone(), offset: s.end_pos, kind };
                break;
            }
        }
    }
    if next_lsn > 1 && !segments.is_empty() {
        report.last_lsn = Lsn(next_lsn - 1);
    }
    if report.records == 0 {
        report.first_lsn = if segments.is_empty() { Lsn::ZERO } else { report.first_lsn };
    }
    Ok(Plan { segments, unused, discard, leftovers: Vec::new(), spares: Vec::new(), next_lsn, tail, report })
}

fn check_header(
    m: &Segment,
    h: &SegmentHeader,
    first: Option<&SegmentHeader>,
    next_lsn: u64,
) -> Option<Error> {
    if let Some(f) = first {
        if h.log_id != f.log_id {
            return Some(corrupt(
                &m.path,
                0,
                next_lsn,
                CorruptKind::Mismatch("segment belongs to another log"),
            ));
        }
    }
    let first = first.is_none();
    if h.sequence != m.seq {
        return Some(corrupt(
            &m.path,
            0,
            next_lsn,
            CorruptKind::Mismatch("sequence number differs from file name"),
        ));
    }
    if !first && h.first_lsn != next_lsn {
        return Some(corrupt(&m.path, 0, next_lsn, CorruptKind::LsnGap { found: h.first_lsn }));
    }
    None
}

/// Opens a mapped segment as shared for readers.
pub(crate) fn map_shared(vfs: &Vfs, path: &Path) -> Result<Arc<Mapped>> {
    map(vfs, path).map(Arc::new)
}

#[cfg(test)]
mod tests;
