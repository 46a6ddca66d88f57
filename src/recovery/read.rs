//! Reading records back: an iterator over durable records, straight from the
//! memory-mapped segments (no copy until the caller asks for one; a
//! compressed batch is decompressed once, into memory its records share).
//!
//! The bytes a [`Record`] borrows never change: every segment a reader may
//! map is pinned (see `registry`) from the moment its iterator is created,
//! so `truncate_before` deletes such a segment instead of recycling it, and
//! nothing else in aiowal writes to a block that holds records.

use std::fmt;
use std::sync::Arc;

use super::walk::{Payload, Step, Stop, Walker};
use super::{SegmentMeta, map_shared};
use crate::error::{CorruptKind, Error, Result};
use crate::format::FormatError;
use crate::lsn::Lsn;
use crate::registry::Pin;
use crate::vfs::{Mapped, Vfs};

/// One record read back from the log. Its bytes stay valid and unchanged
/// for as long as it lives, whatever happens to the log meanwhile.
///
/// A record of an uncompressed batch borrows its bytes from the mapped
/// segment; one of a compressed batch (see `Options::compression`) owns
/// them, in memory shared with the other records of its batch.
#[derive(Clone)]
pub struct Record {
    lsn: Lsn,
    src: Source,
    start: usize,
    len: usize,
    /// Keeps the segment from being recycled while the record lives.
    _pin: Option<Arc<Pin>>,
}

/// Where a record's bytes live.
#[derive(Clone)]
enum Source {
    Mapped(Arc<Mapped>),
    Owned(Arc<Vec<u8>>),
}

impl Record {
    /// The record's LSN.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The record's bytes: borrowed from the mapped segment, or (a record
    /// of a compressed batch) from its batch's decompressed bytes.
    pub fn data(&self) -> &[u8] {
        let all: &[u8] = match &self.src {
            Source::Mapped(m) => m,
            Source::Owned(b) => b,
        };
        all.get(self.start..self.start + self.len).unwrap_or_default()
    }

    /// The record's bytes, copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data().to_vec()
    }
}

impl AsRef<[u8]> for Record {
    fn as_ref(&self) -> &[u8] {
        self.data()
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
///
/// The iterator reads memory-mapped segment files: a page not in memory
/// is read from disk when first touched, on the calling thread. From async
/// code, iterate on a blocking thread (`spawn_blocking`) where a cold read
/// would stall other tasks.
pub struct ReadIter {
    segments: Vec<SegmentMeta>,
    idx: usize,
    map: Option<Arc<Mapped>>,
    walker: Option<Walker>,
    vfs: Vfs,
    next_lsn: u64,
    from: u64,
    until: u64,
    failed: bool,
    pin: Option<Arc<Pin>>,
    /// Whether the record returned last ends a group (is not followed by
    /// more records of its atomic batch).
    ended_group: bool,
    /// Where the log starts now, for a reader of a live log: a segment that
    /// is gone when the reader reaches it was retired by `truncate_before`
    /// if the log now starts above it.
    log_start: Option<LogStart>,
}

/// Tells where a live log starts now (`None` once it is gone).
pub(crate) type LogStart = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

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
    /// Reads `segments` (the log's, in order, each ending where the next
    /// begins) from the one holding `from` (the first, when `from` precedes
    /// it) up to `until`. `pin` keeps them from being recycled meanwhile.
    pub(crate) fn new(
        vfs: Vfs,
        segments: Vec<SegmentMeta>,
        from: u64,
        until: u64,
        pin: Option<Arc<Pin>>,
        log_start: Option<LogStart>,
    ) -> ReadIter {
        let idx = segments.iter().rposition(|s| s.header.first_lsn <= from).unwrap_or(0);
        let next_lsn = segments.get(idx).map_or(from, |s| s.header.first_lsn);
        ReadIter {
            segments,
            idx,
            map: None,
            walker: None,
            vfs,
            next_lsn,
            from,
            until,
            failed: false,
            pin,
            ended_group: true,
            log_start,
        }
    }

    /// Whether the record returned last ends a group: it is not followed by
    /// more records of its atomic batch.
    pub(crate) fn ended_group(&self) -> bool {
        self.ended_group
    }

    fn fail(&mut self, offset: u64, kind: CorruptKind) -> Option<Result<Record>> {
        self.failed = true;
        let segment = self.segments.get(self.idx).map(|s| s.path.clone()).unwrap_or_default();
        Some(Err(Error::Corrupt { segment, offset, lsn: self.next_lsn, kind }))
    }

    /// Where segment `idx`'s records end: the next segment's first LSN.
    fn limit(&self) -> Option<u64> {
        self.segments.get(self.idx + 1).map(|s| s.header.first_lsn)
    }

    /// Maps the current segment and places the walk at the last seek mark
    /// at or before `from` (or its first batch).
    fn enter_segment(&mut self) -> std::result::Result<(), Option<Result<Record>>> {
        let limit = self.limit();
        let Some(seg) = self.segments.get(self.idx) else {
            return Err(self.fail(0, CorruptKind::LsnGap { found: self.next_lsn }));
        };
        if seg.header.first_lsn != self.next_lsn {
            let found = seg.header.first_lsn;
            return Err(self.fail(0, CorruptKind::LsnGap { found }));
        }
        let map = match map_shared(&self.vfs, &seg.path) {
            Ok(m) => m,
            Err(e) => {
                self.failed = true;
                // Gone, and the log starts above it now: a checkpoint passed
                // this reader (as a tail reports it).
                let start = self.log_start.as_ref().and_then(|f| f());
                let e = match start.filter(|&first| self.next_lsn < first) {
                    Some(first) => Error::Truncated { lsn: self.next_lsn.max(self.from), first },
                    None => e,
                };
                return Err(Some(Err(e)));
            }
        };
        let mut walker = Walker::new(&seg.header, limit);
        if let Some((lsn, offset)) = seg.marks.seek(self.from) {
            if lsn > self.next_lsn {
                walker = Walker::at(&seg.header, offset, lsn, limit);
                self.next_lsn = lsn;
            }
        }
        self.map = Some(map);
        self.walker = Some(walker);
        Ok(())
    }
}

impl Iterator for ReadIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.failed || self.next_lsn > self.until {
                return None;
            }
            if self.map.is_none() {
                if let Err(out) = self.enter_segment() {
                    return out;
                }
                continue;
            }
            let (Some(map), Some(walker)) = (self.map.as_ref(), self.walker.as_mut()) else {
                return None;
            };
            match walker.step(map) {
                Step::Batch { .. } => {}
                Step::Record { pos, lsn, payload, .. } => {
                    self.next_lsn = lsn + 1;
                    self.ended_group = walker.at_group_boundary();
                    if lsn >= self.from {
                        let (src, start, len) = match payload {
                            Payload::Mapped(b) => {
                                let start = usize::try_from(pos).unwrap_or(usize::MAX)
                                    + crate::format::FRAME_HEADER_LEN;
                                (Source::Mapped(Arc::clone(map)), start, b.len())
                            }
                            Payload::Inflated { batch, start, len } => (Source::Owned(batch), start, len),
                        };
                        return Some(Ok(Record { lsn: Lsn(lsn), src, start, len, _pin: self.pin.clone() }));
                    }
                }
                Step::Stop { pos, why: Stop::Limit | Stop::Full, .. } => {
                    self.map = None;
                    self.walker = None;
                    self.idx += 1;
                    if self.idx >= self.segments.len() {
                        return self.fail(pos, CorruptKind::LsnGap { found: self.next_lsn });
                    }
                }
                Step::Stop { pos, why, .. } => {
                    let cause = match why {
                        Stop::Bad(e) => e,
                        Stop::Eof => FormatError::Truncated,
                        _ => FormatError::Zeroed,
                    };
                    return self.fail(pos, CorruptKind::Frame(cause));
                }
            }
        }
    }
}
