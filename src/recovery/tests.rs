//! Unit tests of recovery internals.

// A failed unwrap is a failed test here; the parent module denies it for shipped code.
#![allow(clippy::unwrap_used)]

use super::{MARK_BYTES, SeekMarks};

#[test]
fn marks_are_sparse_and_seek_to_the_last_at_or_before() {
    let m = SeekMarks::default();
    assert_eq!(m.seek(5), None);
    m.add(10, 4096);
    m.add(11, 4096 + 512); // too close to the previous mark
    m.add(40, 4096 + MARK_BYTES);
    m.add(90, 4096 + 2 * MARK_BYTES);
    assert_eq!(m.seek(9), None);
    assert_eq!(m.seek(10), Some((10, 4096)));
    assert_eq!(m.seek(39), Some((10, 4096)));
    assert_eq!(m.seek(40), Some((40, 4096 + MARK_BYTES)));
    assert_eq!(m.seek(1000), Some((90, 4096 + 2 * MARK_BYTES)));
}

/// A mark where the next record would go (the scan leaves one at the end of
/// a segment's data) must not make a read from past the durable end fail.
#[test]
fn seeking_past_the_durable_end_yields_nothing() {
    use std::sync::Arc;

    use super::{ReadIter, SegmentMeta};
    use crate::format::{self, FrameKind, SegmentHeader};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000001.wal");
    let header = SegmentHeader {
        alignment: 4096,
        sequence: 1,
        first_lsn: 1,
        salt: 7,
        segment_bytes: 16384,
        window_bytes: 8192,
        log_id: 1,
    };
    let mut seg = header.encode().to_vec();
    seg.resize(4096, 0);
    format::encode_frame(&mut seg, 7, 1, FrameKind::Record, b"one").unwrap();
    let used = (seg.len() - 4096) as u64;
    format::encode_padding(&mut seg, 7, 2, format::padding_for(used, 4096)).unwrap();
    assert_eq!(seg.len(), 8192);
    seg.resize(16384, 0);
    std::fs::write(&path, seg).unwrap();
    let marks = Arc::new(SeekMarks::default());
    marks.add(2, 8192);
    let meta = SegmentMeta { seq: 1, path, header, marks };
    let mut from_next = ReadIter::new(crate::vfs::Vfs::Os, vec![meta.clone()], 2, 1, 1 << 10);
    assert!(from_next.next().is_none());
    let mut from_first = ReadIter::new(crate::vfs::Vfs::Os, vec![meta], 1, 1, 1 << 10);
    assert_eq!(from_first.next().unwrap().unwrap().data(), b"one");
    assert!(from_first.next().is_none());
}
