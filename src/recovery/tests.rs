//! Unit tests of recovery internals.

// A failed unwrap or index is a failed test here; the parent module denies
// them for shipped code.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

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

/// A v2 segment of `n` one-record batches of block `align`: bytes and header.
fn segment(n: u64, align: u64) -> (Vec<u8>, crate::format::SegmentHeader) {
    use crate::format::{self, BatchHeader, FrameKind, SegmentHeader};
    let header = SegmentHeader {
        version: format::VERSION,
        alignment: align as u32,
        sequence: 1,
        first_lsn: 1,
        salt: 7,
        segment_bytes: 16 * align,
        flags: 0,
        record_bytes_max: 1 << 10,
        window_bytes: 0,
        log_id: 1,
    };
    let mut seg = header.encode().to_vec();
    seg.resize(align as usize, 0);
    for lsn in 1..=n {
        let bh = BatchHeader {
            first_lsn: lsn,
            end_lsn: lsn + 1,
            synced_lsn: lsn - 1,
            acked_lsn: lsn - 1,
            batch_bytes: align as u32,
            flags: 0,
        };
        let at = seg.len();
        seg.extend_from_slice(&bh.encode(7));
        format::encode_frame(&mut seg, 7, lsn, FrameKind::Record, format!("rec {lsn}").as_bytes()).unwrap();
        seg.resize(at + align as usize, 0);
    }
    seg.resize(16 * align as usize, 0);
    (seg, header)
}

/// A mark where the next record would go (the scan leaves one at the end of
/// a segment's data) must not make a read from past the durable end fail.
#[test]
fn seeking_past_the_durable_end_yields_nothing() {
    use std::sync::Arc;

    use super::{ReadIter, SegmentMeta};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000001.wal");
    let (seg, header) = segment(1, 4096);
    std::fs::write(&path, seg).unwrap();
    let marks = Arc::new(SeekMarks::default());
    marks.add(2, 8192);
    let meta = SegmentMeta { seq: 1, path, header, marks };
    let mut from_next = ReadIter::new(crate::vfs::Vfs::Os, vec![meta.clone()], 2, 1, None, None);
    assert!(from_next.next().is_none());
    let mut from_first = ReadIter::new(crate::vfs::Vfs::Os, vec![meta], 1, 1, None, None);
    assert_eq!(from_first.next().unwrap().unwrap().data(), b"rec 1");
    assert!(from_first.next().is_none());
}

/// The scan's classification, by what proves a damaged record acknowledged.
#[test]
fn damage_is_corruption_only_when_something_proves_it_acknowledged() {
    use super::{Class, classify, scan, walk};
    let (mut seg, h) = segment(6, 512);
    // Batch 6 (LSN 6) carries synced watermark 5: it proves LSNs 1..=5.
    let damage = |seg: &mut Vec<u8>, lsn: usize| seg[512 * lsn + 60] ^= 1;
    let class_of = |seg: &[u8]| {
        let s = scan(seg, &h, None);
        let p = walk::proofs_after(seg, &h, s.stop_pos);
        (s.next_lsn, classify(seg, &h, &s, true, &p))
    };
    assert_eq!(class_of(&seg), (7, Class::Clean));
    let mut last = seg.clone();
    damage(&mut last, 6);
    assert!(matches!(class_of(&last), (6, Class::Torn(_))), "the newest batch: nothing after it proves it");
    damage(&mut seg, 5);
    assert!(matches!(class_of(&seg), (5, Class::Corrupt { .. })), "batch 6's watermark proves LSN 5");
}

/// A build without the `compression` feature refuses a log with a
/// compressed segment, naming the feature, and leaves the file alone.
#[cfg(not(feature = "compression"))]
#[test]
fn a_compressed_segment_needs_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000001.wal");
    let (mut seg, mut h) = segment(2, 4096);
    h.flags = crate::format::SEGMENT_COMPRESSED;
    seg[..crate::format::SEGMENT_HEADER_LEN].copy_from_slice(&h.encode());
    std::fs::write(&path, &seg).unwrap();
    match super::plan(&crate::vfs::Vfs::Os, dir.path(), crate::RecoveryMode::TolerateTornTail) {
        Err(crate::Error::NeedsFeature { path: p, feature: "compression", .. }) => assert_eq!(p, path),
        other => panic!("expected NeedsFeature: {:?}", other.map(|p| p.next_lsn)),
    }
    assert_eq!(std::fs::read(&path).unwrap(), seg);
}
