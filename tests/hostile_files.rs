//! Damaged, foreign and hostile files in a log directory: each case gets a
//! specific, actionable error or a documented tolerant behaviour, never a
//! panic and never a silent loss of acknowledged data.

mod common;

use std::path::{Path, PathBuf};

use aiowal::format::FormatError;
use aiowal::{Backend, CorruptKind, Error, Lsn, RecoveryMode, StopReason, Wal};
use common::*;

fn opts() -> aiowal::Options {
    small(Backend::Threaded)
}

/// A closed log of several segments; returns its records and used segments.
async fn make_log(dir: &Path) -> (Vec<(u64, Vec<u8>)>, Vec<PathBuf>) {
    let wal = Wal::open(dir, opts()).await.unwrap();
    let mut want = Vec::new();
    for i in 0..200u64 {
        let r = record(11, i, 1000);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    wal.close().await.unwrap();
    let used: Vec<PathBuf> = segments(dir)
        .into_iter()
        .filter(|p| aiowal::format::SegmentHeader::decode(&std::fs::read(p).unwrap()).is_ok())
        .collect();
    assert!(used.len() >= 3);
    (want, used)
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

/// Flips the low bit of the byte at `at` (a header field, in these tests).
fn flip_bit(path: &Path, at: usize) {
    let b = std::fs::read(path).unwrap()[at];
    patch(path, at, &[b ^ 1]);
}

fn next_name(used: &[PathBuf]) -> PathBuf {
    let last = used.last().unwrap();
    let seq: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    last.with_file_name(format!("{:020}.wal", seq + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_or_zeroed_newest_file_is_an_unused_segment() {
    for zeroed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (want, used) = make_log(dir.path()).await;
        let extra = next_name(&used);
        // Replace whatever was prepared there with an empty or all-zero file.
        std::fs::write(&extra, if zeroed { vec![0u8; 256 << 10] } else { Vec::new() }).unwrap();
        let wal = Wal::open(dir.path(), opts()).await.unwrap();
        assert_eq!(read_all(&wal, Lsn::FIRST), want);
        wal.append(b"more").await.unwrap();
        wal.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_magic_in_a_segment_is_a_foreign_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = make_log(dir.path()).await;
    patch(&used[1], 0, b"SQLite f");
    match Wal::open(dir.path(), opts()).await {
        Err(Error::ForeignFile { path, reason: FormatError::BadMagic }) => assert_eq!(path, used[1]),
        other => panic!("expected ForeignFile, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_format_version_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = make_log(dir.path()).await;
    let newest = used.last().unwrap();
    patch(newest, 8, &3u32.to_le_bytes());
    let mut b = std::fs::read(newest).unwrap();
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(newest, &b).unwrap();
    match Wal::open(dir.path(), opts()).await {
        Err(e @ Error::UnsupportedFormat { version: 3, .. }) => {
            assert!(e.to_string().contains("upgrade aiowal"))
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    assert_eq!(std::fs::read(newest).unwrap(), b, "the newer segment must not be modified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_header_crc_in_the_middle_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = make_log(dir.path()).await;
    flip_bit(&used[1], 20);
    match Wal::open(dir.path(), opts()).await {
        Err(Error::Corrupt {
            segment,
            offset: 0,
            kind: CorruptKind::Header(FormatError::BadChecksum),
            ..
        }) => {
            assert_eq!(segment, used[1]);
        }
        other => panic!("expected Corrupt header, got {other:?}"),
    }
}

/// The newest segment's header damaged after its data was synced (its frames
/// are intact): corruption, not a torn tail, so nothing acknowledged is
/// cut silently. PointInTime sets the segment aside and keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_newest_header_with_intact_frames_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (want, used) = make_log(dir.path()).await;
    let newest = used.last().unwrap();
    flip_bit(newest, 20);
    assert!(matches!(
        Wal::open(dir.path(), opts()).await,
        Err(Error::Corrupt { kind: CorruptKind::Header(FormatError::BadChecksum), .. })
    ));
    let wal = Wal::open(dir.path(), opts().recovery_mode(RecoveryMode::PointInTime)).await.unwrap();
    let got = read_all(&wal, Lsn::FIRST);
    assert!(!got.is_empty() && got[..] == want[..got.len()]);
    assert!(wal.recovery_report().set_aside.iter().any(|p| p.to_string_lossy().contains(".discarded-")));
    wal.close().await.unwrap();
}

/// A header torn to garbage (salt included) with no frame left readable is
/// what a crash during a segment's first write leaves: the segment is set
/// aside (renamed, not deleted) and the log opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_newest_header_is_a_torn_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let (want, used) = make_log(dir.path()).await;
    let newest = used.last().unwrap().clone();
    let mut rng = Rng(5);
    let garbage: Vec<u8> = (0..512).map(|_| rng.next() as u8).collect();
    patch(&newest, 0, &garbage);
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    match &wal.recovery_report().stop {
        StopReason::TornTail { segment, offset: 0, .. } => assert_eq!(segment, &newest),
        other => panic!("expected a torn tail at the header, got {other:?}"),
    }
    assert_eq!(wal.recovery_report().set_aside.len(), 1);
    let got = read_all(&wal, Lsn::FIRST);
    assert_eq!(got[..], want[..got.len()]);
    wal.append(b"after").await.unwrap();
    wal.close().await.unwrap();
    assert!(matches!(
        Wal::open(dir.path(), opts().recovery_mode(RecoveryMode::AbsoluteConsistency)).await,
        Ok(_) | Err(Error::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_length_beyond_the_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = make_log(dir.path()).await;
    let (_, fr) = frames(&used[0]);
    let victim = fr[5];
    patch(&used[0], victim.offset as usize + 4, &0x7fff_ff00u32.to_le_bytes());
    match Wal::open(dir.path(), opts()).await {
        Err(Error::Corrupt { segment, offset, .. }) => {
            assert_eq!(segment, used[0]);
            assert_eq!(offset, victim.offset);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_foreign_middle_segment_is_refused() {
    // Missing.
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = make_log(dir.path()).await;
    std::fs::remove_file(&used[1]).unwrap();
    match Wal::open(dir.path(), opts()).await {
        Err(Error::Corrupt { segment, kind: CorruptKind::LsnGap { .. }, .. }) => assert_eq!(segment, used[2]),
        other => panic!("expected an LSN gap, got {other:?}"),
    }
    // Replaced by the same-numbered segment of another log (here even its
    // LSNs line up): refused by the log id every header carries.
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = make_log(dir.path()).await;
    let other = tempfile::tempdir().unwrap();
    let wal = Wal::open(other.path(), opts()).await.unwrap();
    for i in 0..150u64 {
        wal.append(&record(12, i, 3000)).await.unwrap();
    }
    wal.close().await.unwrap();
    std::fs::copy(other.path().join(used[1].file_name().unwrap()), &used[1]).unwrap();
    match Wal::open(dir.path(), opts()).await {
        Err(e @ Error::Corrupt { kind: CorruptKind::Mismatch(_), .. }) => {
            assert!(e.to_string().contains("another log"), "{e}");
        }
        other => panic!("expected a segment of another log to be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_files_are_ignored_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = make_log(dir.path()).await;
    let strays = ["notes.txt", "0001.wal", "00000000000000000001.wal.bak", "README"];
    for s in strays {
        std::fs::write(dir.path().join(s), b"not ours").unwrap();
    }
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want);
    wal.close().await.unwrap();
    for s in strays {
        assert_eq!(std::fs::read(dir.path().join(s)).unwrap(), b"not ours");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinked_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = make_log(dir.path()).await;
    let elsewhere = dir.path().join("moved-away");
    std::fs::rename(&used[0], &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &used[0]).unwrap();
    match Wal::open(dir.path(), opts()).await {
        Err(e @ Error::BadDirectoryEntry { .. }) => assert!(e.to_string().contains("symlink")),
        other => panic!("expected BadDirectoryEntry, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_directory_fails_clearly() {
    if std::env::var_os("AIOWAL_SKIP_MOUNT_TESTS").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = make_log(dir.path()).await;
    // A read-only bind mount of the log (root is exempt from permission bits).
    let ro = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| std::process::Command::new("mount").args(args).status().unwrap().success();
    assert!(
        run(&["--bind", dir.path().to_str().unwrap(), ro.path().to_str().unwrap()]),
        "bind mount (needs root)"
    );
    assert!(run(&["-o", "remount,ro,bind", ro.path().to_str().unwrap()]));
    let r = Wal::open(ro.path(), opts()).await;
    // Reading still works: verify needs no write access.
    let report = aiowal::verify(ro.path(), &opts());
    let _ = std::process::Command::new("umount").arg(ro.path()).status();
    match r {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("Read-only file system"), "{e}"),
        other => panic!("expected an I/O error naming the read-only file system, got {other:?}"),
    }
    assert_eq!(report.unwrap().records, want.len() as u64);
}

/// A format v1 segment with a torn tail 16 bytes before a block boundary.
/// (Found by the crash simulator: v1's open panicked sealing it, on a slice
/// out of range; also a seed of the `open_sim` fuzz target.) Format v2
/// writes nothing into the old segment: the record is copied forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_just_before_a_block_boundary_is_sealed() {
    use aiowal::format::{FrameKind, SegmentHeader, encode_frame};
    let dir = tempfile::tempdir().unwrap();
    let (align, salt) = (512usize, 0x3333);
    let header = SegmentHeader {
        version: 1,
        alignment: align as u32,
        sequence: 1,
        first_lsn: 1,
        salt,
        segment_bytes: 8192,
        flags: 0,
        record_bytes_max: 0,
        window_bytes: 4096,
        log_id: 0x5EED,
    };
    let mut seg = header.encode().to_vec();
    seg.resize(align, 0);
    encode_frame(&mut seg, salt, 1, FrameKind::Record, &[b'r'; 472]).unwrap();
    assert_eq!(seg.len() % align, align - 16, "the next frame would start 16 bytes before the block ends");
    seg.extend_from_slice(&[0xA5; 40]); // the torn rest of the batch
    seg.resize(8192, 0);
    std::fs::write(dir.path().join(format!("{:020}.wal", 1)), seg).unwrap();

    let o =
        || opts().alignment(align as u32).segment_bytes(8192).batch_bytes_max(2048).max_record_bytes(1024);
    let wal = Wal::open(dir.path(), o()).await.unwrap();
    assert!(matches!(wal.recovery_report().stop, StopReason::TornTail { offset: 1008, .. }));
    assert_eq!(read_all(&wal, Lsn::FIRST), vec![(1, vec![b'r'; 472])]);
    wal.append(b"after").await.unwrap();
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), o()).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), vec![(1, vec![b'r'; 472]), (2, b"after".to_vec())]);
    wal.close().await.unwrap();
}
