//! Walking the frames of one segment: the one place that knows how frames
//! follow each other, used by the recovery scan, by readers and by `open`
//! when it copies records forward. Pure: bytes in, steps out.
//!
//! A v2 segment is a sequence of write batches from block 1 on. Each batch
//! starts on a block boundary with a batch header frame that says where the
//! batch ends (in bytes and in LSNs); its record frames follow, and zeroes
//! fill it to its end. A v1 segment is a sequence of record and padding
//! frames.
//!
//! A compressed batch (batch flag COMPRESSED) holds one compressed records
//! frame in place of its record frames: the walk decompresses it when it
//! reaches it and steps through the record frames it holds, which lend
//! their payloads out as shared owned bytes ([`Payload::Inflated`]).

use std::fmt;
use std::sync::Arc;

use crate::format::{
    self, BATCH_HEADER_LEN, BatchHeader, FRAME_HEADER_LEN, FormatError, FrameKind, SegmentHeader,
};

/// Why a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The next LSN is where the next segment begins: this one is done.
    Limit,
    /// No room for another batch (or frame) before the segment's end.
    Full,
    /// Zero bytes where the next batch (or frame) would start: never written.
    Zeroed,
    /// The file ends before the segment's size.
    Eof,
    /// Bytes that are not the next frame.
    Bad(FormatError),
}

/// A record's bytes.
#[derive(Clone)]
pub(crate) enum Payload<'a> {
    /// In the segment's bytes (at the frame's position + `FRAME_HEADER_LEN`).
    Mapped(&'a [u8]),
    /// In a compressed batch, decompressed: shared by the batch's records.
    Inflated { batch: Arc<Vec<u8>>, start: usize, len: usize },
}

impl Payload<'_> {
    /// The record's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Payload::Mapped(b) => b,
            Payload::Inflated { batch, start, len } => batch.get(*start..start + len).unwrap_or_default(),
        }
    }

    /// The record's length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Mapped(b) => b.len(),
            Payload::Inflated { len, .. } => *len,
        }
    }
}

impl fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Mapped(b) => write!(f, "Mapped({} bytes)", b.len()),
            Payload::Inflated { len, .. } => write!(f, "Inflated({len} bytes)"),
        }
    }
}

/// One step of a walk.
#[derive(Debug, Clone)]
pub(crate) enum Step<'a> {
    /// A v2 batch header at `pos`.
    Batch { pos: u64, header: BatchHeader },
    /// A record frame at `pos` (inside a compressed batch: the position of
    /// the compressed records frame).
    Record { pos: u64, kind: FrameKind, lsn: u64, payload: Payload<'a> },
    /// The walk ended at `pos`, expecting `lsn` there.
    Stop { pos: u64, lsn: u64, why: Stop },
}

/// A cursor over one segment's frames. It holds no bytes: each step is
/// given the segment's bytes (so a reader can keep the cursor beside the
/// mapping it reads).
#[derive(Debug, Clone)]
pub(crate) struct Walker {
    salt: u64,
    v1: bool,
    align: u64,
    seg_end: u64,
    /// Where the next frame (or batch) starts.
    pos: u64,
    /// The LSN the next record must carry.
    lsn: u64,
    /// The LSN this segment's records end at (the next segment's first).
    limit: Option<u64>,
    /// Inside a v2 batch: where it ends, in bytes and in LSNs.
    batch: Option<(u64, u64)>,
    /// Inside an atomic batch (its `BatchEnd` not seen yet).
    atomic: bool,
    stopped: bool,
    /// The segment's header allows compressed batches.
    seg_compressed: bool,
    /// The batch being read is compressed...
    compressed: bool,
    /// ...and these are its record frames, once decompressed.
    inflated: Option<Inflated>,
}

/// A compressed batch's record frames and where the next one starts.
#[derive(Clone)]
struct Inflated {
    frames: Arc<Vec<u8>>,
    pos: usize,
}

impl fmt::Debug for Inflated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflated").field("len", &self.frames.len()).field("pos", &self.pos).finish()
    }
}

fn slice_from(data: &[u8], pos: u64) -> &[u8] {
    usize::try_from(pos).ok().and_then(|p| data.get(p..)).unwrap_or_default()
}

impl Walker {
    /// A walk of the segment with header `h` from its first frame.
    pub(crate) fn new(h: &SegmentHeader, limit: Option<u64>) -> Walker {
        Self::at(h, u64::from(h.alignment), h.first_lsn, limit)
    }

    /// A walk from `pos`, where the frame (v2: the batch header) carrying
    /// `lsn` starts (a seek mark).
    pub(crate) fn at(h: &SegmentHeader, pos: u64, lsn: u64, limit: Option<u64>) -> Walker {
        Walker {
            salt: h.salt,
            v1: h.version == 1,
            align: u64::from(h.alignment),
            seg_end: h.segment_bytes,
            pos,
            lsn,
            limit,
            batch: None,
            atomic: false,
            stopped: false,
            seg_compressed: h.flags & format::SEGMENT_COMPRESSED != 0,
            compressed: false,
            inflated: None,
        }
    }

    /// The LSN the next record must carry.
    pub(crate) fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Whether the walk is between atomic batches (every record so far is
    /// part of a complete record or atomic batch).
    pub(crate) fn at_group_boundary(&self) -> bool {
        !self.atomic
    }

    fn stop<'a>(&mut self, why: Stop) -> Step<'a> {
        self.stopped = true;
        Step::Stop { pos: self.pos, lsn: self.lsn, why }
    }

    /// The next step through `data` (the segment's bytes, the same at
    /// every step); after a `Stop`, a `Stop` again.
    pub(crate) fn step<'a>(&mut self, data: &'a [u8]) -> Step<'a> {
        if self.stopped {
            return Step::Stop { pos: self.pos, lsn: self.lsn, why: Stop::Bad(FormatError::Truncated) };
        }
        if self.limit == Some(self.lsn) {
            return self.stop(Stop::Limit);
        }
        if self.v1 {
            return self.step_v1(data);
        }
        match self.batch {
            Some((end, end_lsn)) if self.lsn == end_lsn => {
                if self.atomic {
                    return self.stop(Stop::Bad(FormatError::BadField("batch ends inside an atomic batch")));
                }
                self.batch = None;
                self.compressed = false;
                self.inflated = None;
                self.pos = end;
                self.step(data)
            }
            Some((end, _)) if self.compressed => self.inflated_record(data, end),
            Some((end, _)) => self.record(data, end),
            None => self.batch_header(data),
        }
    }

    fn batch_header<'a>(&mut self, data: &'a [u8]) -> Step<'a> {
        let pos = self.pos;
        if pos + BATCH_HEADER_LEN as u64 > self.seg_end {
            return self.stop(Stop::Full);
        }
        if pos + BATCH_HEADER_LEN as u64 > data.len() as u64 {
            return self.stop(Stop::Eof);
        }
        let header = match format::decode_frame(slice_from(data, pos), self.salt, BATCH_HEADER_LEN as u64)
            .and_then(|f| BatchHeader::from_frame(&f))
        {
            Ok(h) => h,
            Err(FormatError::Zeroed) => return self.stop(Stop::Zeroed),
            Err(e) => return self.stop(Stop::Bad(e)),
        };
        if header.first_lsn != self.lsn {
            return self.stop(Stop::Bad(FormatError::BadField("lsn")));
        }
        let bytes = u64::from(header.batch_bytes);
        if bytes % self.align != 0 || pos + bytes > self.seg_end {
            return self.stop(Stop::Bad(FormatError::BadField("batch_bytes")));
        }
        // Compressed batches only where the segment says so (an older
        // reader refuses such a segment instead of taking them for damage).
        if header.compressed() && (!self.seg_compressed || header.records() == 0) {
            return self.stop(Stop::Bad(FormatError::BadField("batch flags")));
        }
        self.compressed = header.compressed();
        self.inflated = None;
        self.batch = Some((pos + bytes, header.end_lsn));
        self.pos = pos + BATCH_HEADER_LEN as u64;
        Step::Batch { pos, header }
    }

    /// The frame at the walk's position inside a batch ending at
    /// `batch_end`, or why there is none.
    fn frame_at<'a>(&self, data: &'a [u8], batch_end: u64) -> Result<format::Frame<'a>, Stop> {
        let pos = self.pos;
        let room = batch_end.saturating_sub(pos).saturating_sub(FRAME_HEADER_LEN as u64);
        if pos + FRAME_HEADER_LEN as u64 > data.len() as u64 {
            return Err(Stop::Eof);
        }
        format::decode_frame(slice_from(data, pos), self.salt, room).map_err(Stop::Bad)
    }

    fn record<'a>(&mut self, data: &'a [u8], batch_end: u64) -> Step<'a> {
        match self.frame_at(data, batch_end) {
            Ok(frame) => self.accept(self.pos, frame, batch_end),
            Err(why) => self.stop(why),
        }
    }

    /// Why `frame` at `pos` is not the next record of a batch ending at
    /// `end`, if it is not.
    fn misfit(&self, pos: u64, frame: &format::Frame<'_>, end: u64) -> Option<FormatError> {
        if !frame.kind.is_record() {
            return Some(FormatError::BadField("frame kind"));
        }
        if frame.lsn != self.lsn {
            return Some(FormatError::BadField("lsn"));
        }
        if !frame.kind.follows(self.atomic) {
            return Some(FormatError::BadField("frame order"));
        }
        if pos + frame.len_on_disk > end {
            return Some(FormatError::TooLong { len: frame.len_on_disk, max: end - pos });
        }
        None
    }

    /// Checks that `frame` at `pos` is the next record and steps past it.
    fn accept<'a>(&mut self, pos: u64, frame: format::Frame<'a>, end: u64) -> Step<'a> {
        if let Some(e) = self.misfit(pos, &frame, end) {
            return self.stop(Stop::Bad(e));
        }
        self.pos = pos + frame.len_on_disk;
        self.lsn += 1;
        self.atomic = frame.kind.opens_atomic();
        Step::Record { pos, kind: frame.kind, lsn: frame.lsn, payload: Payload::Mapped(frame.payload) }
    }

    /// The next record of a compressed batch ending at `batch_end`,
    /// decompressing its records frame first if this is its first.
    fn inflated_record<'a>(&mut self, data: &'a [u8], batch_end: u64) -> Step<'a> {
        let pos = self.pos;
        if self.inflated.is_none() {
            let frame = match self.frame_at(data, batch_end) {
                Ok(f) => f,
                Err(why) => return self.stop(why),
            };
            if frame.kind != FrameKind::Compressed {
                return self.stop(Stop::Bad(FormatError::BadField("frame kind")));
            }
            if frame.lsn != self.lsn {
                return self.stop(Stop::Bad(FormatError::BadField("lsn")));
            }
            // The writer compresses only record frames that would have fit
            // here uncompressed: a claim beyond that is not its.
            match format::decompress_frames(frame.payload, self.seg_end.saturating_sub(pos)) {
                Ok(frames) => self.inflated = Some(Inflated { frames: Arc::new(frames), pos: 0 }),
                Err(e) => return self.stop(Stop::Bad(e)),
            }
        }
        let Some(inf) = self.inflated.as_ref() else {
            return self.stop(Stop::Bad(FormatError::Decompress));
        };
        let (frames, at) = (Arc::clone(&inf.frames), inf.pos);
        let rest = frames.get(at..).unwrap_or_default();
        let room = (rest.len() as u64).saturating_sub(FRAME_HEADER_LEN as u64);
        let frame = match format::decode_frame(rest, self.salt, room) {
            Ok(f) => f,
            Err(e) => return self.stop(Stop::Bad(e)),
        };
        let at64 = at as u64;
        if let Some(e) = self.misfit(at64, &frame, frames.len() as u64) {
            return self.stop(Stop::Bad(e));
        }
        let (kind, lsn, len) = (frame.kind, frame.lsn, frame.payload.len());
        let next = at.saturating_add(usize::try_from(frame.len_on_disk).unwrap_or(usize::MAX));
        if let Some(inf) = self.inflated.as_mut() {
            inf.pos = next;
        }
        self.lsn += 1;
        self.atomic = kind.opens_atomic();
        let payload = Payload::Inflated { batch: frames, start: at + FRAME_HEADER_LEN, len };
        Step::Record { pos, kind, lsn, payload }
    }

    fn step_v1<'a>(&mut self, data: &'a [u8]) -> Step<'a> {
        loop {
            let pos = self.pos;
            if pos + FRAME_HEADER_LEN as u64 > self.seg_end {
                let why = if self.atomic { Stop::Bad(FormatError::Truncated) } else { Stop::Full };
                return self.stop(why);
            }
            if pos + FRAME_HEADER_LEN as u64 > data.len() as u64 {
                return self.stop(Stop::Eof);
            }
            let room = self.seg_end - pos - FRAME_HEADER_LEN as u64;
            let frame = match format::decode_frame(slice_from(data, pos), self.salt, room) {
                Ok(f) => f,
                Err(FormatError::Zeroed) => return self.stop(Stop::Zeroed),
                Err(e) => return self.stop(Stop::Bad(e)),
            };
            if frame.kind != FrameKind::Padding {
                return self.accept(pos, frame, self.seg_end);
            }
            if frame.lsn != self.lsn {
                return self.stop(Stop::Bad(FormatError::BadField("lsn")));
            }
            if self.atomic {
                return self.stop(Stop::Bad(FormatError::BadField("frame order")));
            }
            if pos + frame.len_on_disk > self.seg_end {
                return self.stop(Stop::Bad(FormatError::TooLong {
                    len: frame.len_on_disk,
                    max: self.seg_end - pos,
                }));
            }
            self.pos = pos + frame.len_on_disk;
        }
    }
}

/// What valid batch headers after a damaged place prove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Proof {
    /// The highest synced watermark a valid later batch header carries.
    pub synced: Option<u64>,
    /// The highest acknowledged watermark (relaxed durability acknowledges
    /// before syncing).
    pub acked: Option<u64>,
    /// A later batch is a clean-end mark: everything before it was durable.
    pub clean_end_at: Option<u64>,
    /// The highest LSN a later batch says it ends at (what a cut discards).
    pub end_lsn: Option<u64>,
    /// Valid batch headers found.
    pub batches: u64,
}

impl Proof {
    /// Whether the record with LSN `lsn` is proven to have been durable.
    pub(crate) fn proves(&self, lsn: u64) -> bool {
        self.synced.is_some_and(|s| s >= lsn) || self.clean_end_at.is_some_and(|c| c > lsn)
    }
}

/// Looks at every block boundary from `from` (rounded up) to the segment's
/// end of a v2 segment for a valid batch header: each one found is a batch
/// its writer submitted (a segment is written once under its salt; the one
/// block written again, a clean-end mark a reopen writes over, holds no
/// record), and its watermarks say what was durable then. The block at
/// `from` itself counts: a valid batch there that does not continue the
/// LSNs is debris of a crash, never the log's clean end.
pub(crate) fn proofs_after(data: &[u8], h: &SegmentHeader, from: u64) -> Proof {
    let align = u64::from(h.alignment);
    let mut p = Proof::default();
    if h.version == 1 {
        return p;
    }
    let end = h.segment_bytes.min(data.len() as u64);
    let mut pos = format::align_up(from, align);
    while pos + BATCH_HEADER_LEN as u64 <= end {
        let found = format::decode_frame(slice_from(data, pos), h.salt, BATCH_HEADER_LEN as u64)
            .and_then(|f| BatchHeader::from_frame(&f));
        if let Ok(b) = found {
            p.batches += 1;
            p.synced = p.synced.max(Some(b.synced_lsn));
            p.acked = p.acked.max(Some(b.acked_lsn));
            p.end_lsn = p.end_lsn.max(Some(b.end_lsn));
            if b.clean_end() {
                p.clean_end_at = p.clean_end_at.max(Some(b.first_lsn));
            }
        }
        pos += align;
    }
    p
}

/// Whether a v1 frame with an LSN at or past `min_lsn` starts in `from..to`
/// at a multiple of `step` (v1's torn-tail test looks for valid data).
pub(crate) fn v1_valid_frame_in(
    data: &[u8],
    h: &SegmentHeader,
    from: u64,
    to: u64,
    step: u64,
    min_lsn: u64,
) -> bool {
    let to = to.min(data.len() as u64).min(h.segment_bytes);
    let mut pos = format::align_up(from, step);
    while pos + FRAME_HEADER_LEN as u64 <= to {
        let room = h.segment_bytes - pos - FRAME_HEADER_LEN as u64;
        if format::decode_frame(slice_from(data, pos), h.salt, room).is_ok_and(|f| f.lsn >= min_lsn) {
            return true;
        }
        pos += step;
    }
    false
}
