//! "No acknowledged record is ever lost or silently cut": recovery tells
//! damage to acknowledged records from a torn tail by what proves them
//! acknowledged, the record limit is not a recovery criterion, a closed
//! handle does nothing, and a `Record`'s bytes never change under a reader.
//! Every case runs on every backend.

mod common;

use std::path::Path;

use aiowal::format::FrameKind;
use aiowal::{Backend, Error, Lsn, Options, RecoveryMode, StopReason, Wal};
use common::*;

per_backend_and_sim!(
    sim: [smaller_record_limit_at_reopen_keeps_every_record, closed_handle_refuses_every_call],
    // The rest damage files or map them: real file systems only (the
    // simulator copies segments into memory instead of mapping them).
    real: [
        bit_flip_in_a_closed_log_is_corruption,
        bit_flip_before_later_batches_is_corruption,
        record_bytes_never_change_under_a_reader,
    ],
);

/// Segments large enough that the whole log sits in one segment and inside
/// the old in-flight window (2 x batch_bytes_max = 4 MiB).
fn roomy(b: Backend) -> Options {
    small(b).segment_bytes(8 << 20).batch_bytes_max(2 << 20).max_record_bytes(64 << 10)
}

/// Copies a log directory's segment files (not its lock).
fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for p in segments(from) {
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// Flips one bit inside the payload of the record frame carrying `lsn`.
fn flip_record(dir: &Path, lsn: u64) -> (std::path::PathBuf, u64) {
    for seg in segments(dir) {
        let Ok(bytes) = std::fs::read(&seg) else { continue };
        if aiowal::format::SegmentHeader::decode(&bytes).is_err() {
            continue;
        }
        let (_, fr) = frames(&seg);
        if let Some(f) = fr.iter().find(|f| f.lsn == lsn && f.kind == FrameKind::Record) {
            let mut b = bytes;
            b[f.offset as usize + 30] ^= 0x10;
            std::fs::write(&seg, b).unwrap();
            return (seg, f.offset);
        }
    }
    panic!("no record frame with LSN {lsn}");
}

/// A log closed cleanly: damage to any record is damage to an acknowledged
/// record. It is an error in TolerateTornTail and AbsoluteConsistency, and
/// a reported cut in PointInTime, never a silent one. (Before format v2 a
/// flipped bit in record 100 of 600 opened with 99 records and no error.)
async fn bit_flip_in_a_closed_log_is_corruption(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), roomy(b)).await.unwrap();
    let mut want = Vec::new();
    for i in 0..600u64 {
        let r = record(40, i, 100);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    wal.close().await.unwrap();
    let (seg, offset) = flip_record(dir.path(), 100);
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::AbsoluteConsistency] {
        match Wal::open(dir.path(), roomy(b).recovery_mode(mode)).await {
            Err(Error::Corrupt { segment, offset: at, lsn, .. }) => {
                assert_eq!((segment.as_path(), at, lsn), (seg.as_path(), offset, 100), "{mode:?}");
            }
            other => panic!("{mode:?}: expected Corrupt at LSN 100, got {other:?}"),
        }
    }
    let wal = Wal::open(dir.path(), roomy(b).recovery_mode(RecoveryMode::PointInTime)).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want[..99]);
    match &wal.recovery_report().stop {
        StopReason::PointInTime { segment, .. } => assert_eq!(segment, &seg),
        other => panic!("PointInTime must report its cut, got {other:?}"),
    }
    wal.close().await.unwrap();
}

/// Without a clean close (the files copied while the log is open, as a
/// killed process leaves them): damage to a record that later batches
/// prove acknowledged is corruption too. (Before format v2, one flipped bit
/// 60 KB before the end of a 3,000-record log dropped 20 acknowledged
/// records silently.)
async fn bit_flip_before_later_batches_is_corruption(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), roomy(b)).await.unwrap();
    for i in 0..3000u64 {
        wal.append(&record(41, i, 20)).await.unwrap();
    }
    let crashed = tempfile::tempdir().unwrap();
    copy_log(dir.path(), crashed.path());
    wal.close().await.unwrap();
    // Sequential appends: one record per 4 KiB batch, so LSN 2985 is 15
    // batches (60 KB) before the end.
    flip_record(crashed.path(), 2985);
    match Wal::open(crashed.path(), roomy(b)).await {
        Err(Error::Corrupt { lsn: 2985, .. }) => {}
        other => panic!("expected Corrupt at LSN 2985, got {other:?}"),
    }
}

/// The record limit guards appends; it is not a recovery criterion. A log
/// written with a 1 MiB limit and reopened with 4 KiB keeps every record
/// and continues after them (before: it opened empty and reused LSN 1).
async fn smaller_record_limit_at_reopen_keeps_every_record(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let big = || roomy(b).max_record_bytes(1 << 20);
    let wal = Wal::open(dir.path(), big()).await.unwrap();
    let mut want = Vec::new();
    for i in 0..6u64 {
        let r = record(42, i, 100 << 10);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    wal.close().await.unwrap();
    let strict = roomy(b).max_record_bytes(4096).recovery_mode(RecoveryMode::AbsoluteConsistency);
    let report = aiowal::verify(dir.path(), &strict).unwrap();
    assert_eq!(report.records, 6);
    let wal = Wal::open(dir.path(), strict).await.unwrap();
    assert_eq!(wal.recovery_report().stop, StopReason::Clean);
    assert_eq!(read_all(&wal, Lsn::FIRST), want);
    assert_eq!(wal.append(b"small").await.unwrap(), Lsn::new(7));
    assert!(matches!(wal.append(&[0u8; 5000]).await, Err(Error::RecordTooLarge { len: 5000, max: 4096 })));
    wal.close().await.unwrap();
}

/// After `close`, every fallible call of every clone fails with `Closed`,
/// and nothing it does touches the directory that a new handle now owns.
async fn closed_handle_refuses_every_call(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let w1 = Wal::open(dir.path(), opts.clone()).await.unwrap();
    for i in 0..300u64 {
        w1.append(&record(43, i, 2000)).await.unwrap();
    }
    w1.close().await.unwrap();
    let w2 = Wal::open(dir.path(), opts).await.unwrap();
    let want = read_all(&w2, Lsn::FIRST);
    assert_eq!(want.len(), 300);
    let clone = w1.clone();
    for w in [&w1, &clone] {
        assert!(matches!(w.truncate_before(Lsn::new(290)).await, Err(Error::Closed)));
        assert!(matches!(w.sync().await, Err(Error::Closed)));
        assert!(matches!(w.read_from(Lsn::FIRST), Err(Error::Closed)));
        assert!(matches!(w.append(b"x").await, Err(Error::Closed)));
        assert!(matches!(w.append_batch([b"x", b"y"]).await, Err(Error::Closed)));
        assert!(matches!(w.stage(b"x").await, Err(Error::Closed)));
    }
    // The new owner's log is untouched.
    assert_eq!(read_all(&w2, Lsn::FIRST), want);
    w2.close().await.unwrap();
}

/// A `Record` read before `truncate_before` keeps its bytes after the
/// segment it came from is retired and its file reused for new records.
/// (Before: the record read "AAAA..." first and "BBBB..." afterwards.)
async fn record_bytes_never_change_under_a_reader(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b).segment_bytes(16 << 10).batch_bytes_max(8 << 10).max_record_bytes(2 << 10);
    let wal = Wal::open(dir.path(), opts.segments_recycled_max(4)).await.unwrap();
    let a = vec![b'A'; 1500];
    wal.append(&a).await.unwrap();
    let held = wal.read_from(Lsn::FIRST).unwrap().next().unwrap().unwrap();
    let mut iter = wal.read_from(Lsn::FIRST).unwrap();
    assert_eq!(held.data(), &a[..]);
    for _ in 0..40 {
        wal.append(&[b'B'; 1500]).await.unwrap();
    }
    wal.truncate_before(wal.durable_lsn()).await.unwrap();
    // Enough new segments to reuse every spare.
    for _ in 0..200 {
        wal.append(&[b'B'; 1500]).await.unwrap();
    }
    assert!(held.data() == &a[..], "a record's bytes changed under its reader");
    // An iterator created before the truncation still reads the old records
    // as they were, or ends with an error; it never yields other bytes.
    if let Some(Ok(r)) = iter.next() {
        assert!(r.data() == &a[..], "an iterator yielded changed bytes");
    }
    wal.close().await.unwrap();
}
