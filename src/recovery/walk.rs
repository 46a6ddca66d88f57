//! Walking the frames of one segment: the one place that knows how frames
//! follow each other, used by the recovery scan, by readers and by `open`
//! when it copies records forward. Pure: bytes in, steps out.
//!
//! A v2 segment is a sequence of write batches from block 1 on. Each batch
//! starts on a block boundary with a batch header frame that says where the
//! batch ends (in bytes and in LSNs); its record frames follow, and zeroes
//! fill it to its end. A v1 segment is a sequence of record and padding
//! frames.

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

/// One step of a walk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'a> {
    /// A v2 batch header at `pos`.
    Batch { pos: u64, header: BatchHeader },
    /// A record frame at `pos`; its payload starts at `pos + FRAME_HEADER_LEN`.
    Record { pos: u64, kind: FrameKind, lsn: u64, payload: &'a [u8] },
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
                self.pos = end;
                self.step(data)
            }
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
        self.batch = Some((pos + bytes, header.end_lsn));
        self.pos = pos + BATCH_HEADER_LEN as u64;
        Step::Batch { pos, header }
    }

    fn record<'a>(&mut self, data: &'a [u8], batch_end: u64) -> Step<'a> {
        let pos = self.pos;
        let room = batch_end.saturating_sub(pos).saturating_sub(FRAME_HEADER_LEN as u64);
        if pos + FRAME_HEADER_LEN as u64 > data.len() as u64 {
            return self.stop(Stop::Eof);
        }
        let frame = match format::decode_frame(slice_from(data, pos), self.salt, room) {
            Ok(f) => f,
            Err(e) => return self.stop(Stop::Bad(e)),
        };
        self.accept(pos, frame, batch_end)
    }

    /// Checks that `frame` at `pos` is the next record and steps past it.
    fn accept<'a>(&mut self, pos: u64, frame: format::Frame<'a>, end: u64) -> Step<'a> {
        if !frame.kind.is_record() {
            return self.stop(Stop::Bad(FormatError::BadField("frame kind")));
        }
        if frame.lsn != self.lsn {
            return self.stop(Stop::Bad(FormatError::BadField("lsn")));
        }
        if !frame.kind.follows(self.atomic) {
            return self.stop(Stop::Bad(FormatError::BadField("frame order")));
        }
        if pos + frame.len_on_disk > end {
            return self.stop(Stop::Bad(FormatError::TooLong { len: frame.len_on_disk, max: end - pos }));
        }
        self.pos = pos + frame.len_on_disk;
        self.lsn += 1;
        self.atomic = frame.kind.opens_atomic();
        Step::Record { pos, kind: frame.kind, lsn: frame.lsn, payload: frame.payload }
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
