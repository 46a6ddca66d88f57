//! Reading records back: an iterator over durable records, straight from the
//! memory-mapped segments (no copy until the caller asks for one).

use std::fmt;
use std::sync::Arc;

use super::{SegmentMeta, map_shared, slice_from};
use crate::error::{CorruptKind, Error, Result};
use crate::format::{self, FRAME_HEADER_LEN, FormatError, FrameKind};
use crate::lsn::Lsn;
use crate::vfs::{Mapped, Vfs};

/// One record read back from the log.
#[derive(Clone)]
pub struct Record {
    lsn: Lsn,
    map: Arc<Mapped>,
    start: usize,
    len: usize,
}

impl Record {
    /// The record's LSN.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The record's bytes, borrowed from the mapped segment.
    pub fn data(&self) -> &[u8] {
        self.map.get(self.start..self.start + self.len).unwrap_or_default()
    }

    /// The record's bytes, copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data().to_vec()
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record").field("lsn", &self.lsn).field("len", &self.len).finish()
    }
}

/// Iterator over records from an LSN up to the durable end at the time it was
/// created, returned by [`crate::Wal::read_from`].
///
/// Each item is a `Result`: a segment that cannot be read or that fails its
/// checks (someone damaged it after open) ends the iteration with an error.
pub struct ReadIter {
    segments: Vec<SegmentMeta>,
    idx: usize,
    map: Option<Arc<Mapped>>,
    vfs: Vfs,
    pos: u64,
    next_lsn: u64,
    from: u64,
    until: u64,
    max_payload: u64,
    failed: bool,
}

impl fmt::Debug for ReadIter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadIter")
            .field("next_lsn", &self.next_lsn)
            .field("from", &self.from)
            .field("until", &self.until)
            .finish()
    }
}

impl ReadIter {
    /// Reads `segments` (the log's, in order) from the one holding `from`
    /// (the first, when `from` precedes it).
    pub(crate) fn new(
        vfs: Vfs,
        segments: Vec<SegmentMeta>,
        from: u64,
        until: u64,
        max_payload: u64,
    ) -> ReadIter {
        let idx = segments.iter().rposition(|s| s.header.first_lsn <= from).unwrap_or(0);
        let next_lsn = segments.get(idx).map_or(from, |s| s.header.first_lsn);
        ReadIter { segments, idx, map: None, vfs, pos: 0, next_lsn, from, until, max_payload, failed: false }
    }

    fn fail(&mut self, offset: u64, kind: CorruptKind) -> Option<Result<Record>> {
        self.failed = true;
        let segment = self.segments.get(self.idx).map(|s| s.path.clone()).unwrap_or_default();
        Some(Err(Error::Corrupt { segment, offset, lsn: self.next_lsn, kind }))
    }

    fn advance_segment(&mut self) -> bool {
        self.map = None;
        self.idx += 1;
        self.idx < self.segments.len()
    }
}

impl Iterator for ReadIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.failed || self.next_lsn > self.until {
                return None;
            }
            let Some(seg) = self.segments.get(self.idx) else {
                return self.fail(self.pos, CorruptKind::LsnGap { found: self.next_lsn });
            };
            let (salt, seg_end) = (seg.header.salt, seg.header.segment_bytes);
            let map = match &self.map {
                Some(m) => Arc::clone(m),
                None => match map_shared(&self.vfs, &seg.path) {
                    Ok(m) => {
                        if seg.header.first_lsn != self.next_lsn {
                            return self.fail(0, CorruptKind::LsnGap { found: seg.header.first_lsn });
                        }
                        self.pos = u64::from(seg.header.alignment);
                        // Skip ahead in the segment holding `from`.
                        if let Some((lsn, offset)) = seg.marks.seek(self.from) {
                            if lsn > self.next_lsn {
                                (self.next_lsn, self.pos) = (lsn, offset);
                            }
                        }
                        self.map = Some(m);
                        // Check again from the top: the seek may have moved
                        // past `until` (a mark where the next record would go).
                        continue;
                    }
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                },
            };
            if self.pos + FRAME_HEADER_LEN as u64 > seg_end {
                if !self.advance_segment() {
                    return self.fail(self.pos, CorruptKind::LsnGap { found: self.next_lsn });
                }
                continue;
            }
            let frame = match format::decode_frame(slice_from(&map, self.pos), salt, self.max_payload) {
                Ok(f) => f,
                Err(FormatError::Zeroed) => {
                    if !self.advance_segment() {
                        return self.fail(self.pos, CorruptKind::LsnGap { found: self.next_lsn });
                    }
                    continue;
                }
                Err(e) => return self.fail(self.pos, CorruptKind::Frame(e)),
            };
            if frame.lsn != self.next_lsn {
                return self.fail(self.pos, CorruptKind::LsnGap { found: frame.lsn });
            }
            let start = usize::try_from(self.pos).unwrap_or(usize::MAX) + FRAME_HEADER_LEN;
            let (kind, len) = (frame.kind, frame.payload.len());
            self.pos += frame.len_on_disk;
            if kind == FrameKind::Padding {
                continue;
            }
            let lsn = self.next_lsn;
            self.next_lsn += 1;
            if lsn >= self.from {
                return Some(Ok(Record { lsn: Lsn(lsn), map, start, len }));
            }
        }
    }
}
