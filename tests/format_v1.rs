//! Logs written by format v1 (tests/fixtures/v1, written by the v1 code)
//! still open, with v1's recovery rules, and are upgraded as new segments
//! are written: appends go to v2 segments, v1 segments are never written to.

mod common;

use std::path::Path;

use aiowal::format::SegmentHeader;
use aiowal::{Backend, CorruptKind, Error, Lsn, Options, RecoveryMode, StopReason, Wal};
use common::*;

/// The records the fixture holds, in LSN order (see its README).
fn fixture_records() -> Vec<Vec<u8>> {
    let mut want = Vec::new();
    for i in 0..100usize {
        if i % 10 == 9 {
            want.push(format!("v1 batch {i} a").into_bytes());
            want.push(format!("v1 batch {i} b {}", "y".repeat((i * 7) % 90)).into_bytes());
        } else {
            want.push(format!("v1 record {i} {}", "x".repeat((i * 13) % 150)).into_bytes());
        }
    }
    want
}

fn opts() -> Options {
    Options::default()
        .backend(Backend::Threaded)
        .alignment(512)
        .segment_bytes(8192)
        .batch_bytes_max(2048)
        .max_record_bytes(400)
}

/// A copy of the fixture to work on.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/log")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn versions(dir: &Path) -> Vec<u32> {
    segments(dir)
        .iter()
        .filter_map(|p| SegmentHeader::decode(&std::fs::read(p).unwrap()).ok())
        .map(|h| h.version)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_log_opens_and_is_upgraded_by_new_segments() {
    let dir = fixture();
    let want = fixture_records();
    assert_eq!(versions(dir.path()), vec![1; 7]);
    let before: Vec<Vec<u8>> = segments(dir.path()).iter().map(|p| std::fs::read(p).unwrap()).collect();
    let report =
        aiowal::verify(dir.path(), &opts().recovery_mode(RecoveryMode::AbsoluteConsistency)).unwrap();
    assert_eq!((report.records, report.stop), (110, StopReason::Clean));

    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    let got: Vec<Vec<u8>> = read_all(&wal, Lsn::FIRST).into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, want);
    // v1 cannot prove its newest records durable: open copied its last
    // in-flight window into a v2 segment and wrote nothing into v1 files.
    assert!(wal.recovery_report().copied_forward > 0);
    for (p, b) in segments(dir.path()).iter().zip(&before) {
        assert_eq!(&std::fs::read(p).unwrap(), b, "{} was written to", p.display());
    }
    for i in 0..50u64 {
        wal.append(&record(1, i, 300)).await.unwrap();
    }
    wal.close().await.unwrap();
    let v = versions(dir.path());
    assert!(v.starts_with(&[1; 7]) && v.len() > 8 && v[7..].iter().all(|&x| x == 2), "{v:?}");

    let wal = Wal::open(dir.path(), opts().recovery_mode(RecoveryMode::AbsoluteConsistency)).await.unwrap();
    assert_eq!(wal.recovery_report().copied_forward, 0, "a clean close needs nothing at open");
    let got = read_all(&wal, Lsn::FIRST);
    assert_eq!(got.len(), 160);
    assert_eq!(got[..110].iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), want);
    assert_eq!(
        got[110..].iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        (0..50).map(|i| record(1, i, 300)).collect::<Vec<_>>()
    );
    wal.close().await.unwrap();
}

/// v1's rule for damage in the middle: a later segment proves the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_damage_before_a_later_segment_is_corruption() {
    let dir = fixture();
    let seg = segments(dir.path())[2].clone();
    let (_, fr) = frames(&seg);
    let victim = fr.iter().find(|f| f.kind.is_record()).copied().unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    b[victim.offset as usize + 30] ^= 4;
    std::fs::write(&seg, b).unwrap();
    match Wal::open(dir.path(), opts()).await {
        Err(Error::Corrupt { segment, lsn, kind: CorruptKind::DamagedBeforeLaterSegment(_), .. }) => {
            assert_eq!((segment, lsn), (seg, victim.lsn));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// A torn v1 tail (the last segment cut short) opens with v1's rule: cut,
/// and what remains is a prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_torn_tail_is_cut() {
    let dir = fixture();
    let want = fixture_records();
    let last = segments(dir.path()).pop().unwrap();
    let (_, fr) = frames(&last);
    let cut = fr[fr.len() / 2].offset + 10;
    std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(cut).unwrap();
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    assert!(
        matches!(wal.recovery_report().stop, StopReason::TornTail { .. }),
        "{:?}",
        wal.recovery_report().stop
    );
    let got: Vec<Vec<u8>> = read_all(&wal, Lsn::FIRST).into_iter().map(|(_, r)| r).collect();
    assert!(!got.is_empty() && got[..] == want[..got.len()] && got.len() < want.len());
    let next = wal.append(b"after").await.unwrap();
    assert_eq!(next.get(), got.len() as u64 + 1);
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), got.len() + 1, "v1 frames after the cut came back");
    wal.close().await.unwrap();
}
