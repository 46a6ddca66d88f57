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
#[ignore = "needs root (a read-only bind mount): scripts/test runs it"]
async fn read_only_directory_fails_clearly() {
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

/// After a clean close, a reopen appends over the clean-end block. With two
/// batches in flight, a crash can keep the second and lose the first: the
/// block holds the old clean-end mark again, with a valid batch after it
/// whose watermark proves nothing. That batch (never acknowledged) must not
/// come back under the LSN a new record takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_batch_after_a_clean_end_never_comes_back() {
    use aiowal::format::{BatchHeader, FrameKind, SegmentHeader, encode_frame};
    let dir = tempfile::tempdir().unwrap();
    let o = || opts().segment_bytes(1 << 20);
    let wal = Wal::open(dir.path(), o()).await.unwrap();
    for i in 0..10u64 {
        wal.append(&record(50, i, 100)).await.unwrap();
    }
    wal.close().await.unwrap();
    let seg = last_used_segment(dir.path());
    let (_, fr) = frames(&seg);
    let mark = fr.last().unwrap().offset as usize; // the clean-end batch, LSN 11
    let h = SegmentHeader::decode(&std::fs::read(&seg).unwrap()).unwrap();
    // The second of two batches in flight after a reopen (LSN 12, submitted
    // while LSN 11 was not yet durable: its watermark says 10).
    let mut b2 = BatchHeader {
        first_lsn: 12,
        end_lsn: 13,
        synced_lsn: 10,
        acked_lsn: 10,
        batch_bytes: 4096,
        flags: 0,
    }
    .encode(h.salt)
    .to_vec();
    encode_frame(&mut b2, h.salt, 12, FrameKind::Record, b"B2: kept by the crash, never acknowledged")
        .unwrap();
    patch(&seg, mark + 4096, &b2);
    let wal = Wal::open(dir.path(), o()).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), 10);
    assert_eq!(wal.append(b"new 11").await.unwrap(), Lsn::new(11));
    // The process dies now, before anything else is written.
    let crashed = tempfile::tempdir().unwrap();
    for p in segments(dir.path()) {
        std::fs::copy(&p, crashed.path().join(p.file_name().unwrap())).unwrap();
    }
    wal.close().await.unwrap();
    let wal = Wal::open(crashed.path(), o()).await.unwrap();
    let all = read_all(&wal, Lsn::FIRST);
    assert_eq!(all.len(), 11, "a stale batch came back");
    assert_eq!(all[10].1, b"new 11");
    wal.close().await.unwrap();
}

/// PointInTime never deletes the segment it cuts, even when the damage is
/// in its first record (the new segment then voids all of it): it is set
/// aside, its acknowledged records after the damage still on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_sets_the_damaged_segment_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (want, used) = make_log(dir.path()).await;
    let last = used.last().unwrap().clone();
    let (h, fr) = frames(&last);
    let first = fr.iter().find(|f| f.kind.is_record()).copied().unwrap();
    let original = std::fs::read(&last).unwrap();
    flip_bit(&last, first.offset as usize + 40);
    let wal = Wal::open(dir.path(), opts().recovery_mode(RecoveryMode::PointInTime)).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want[..(h.first_lsn - 1) as usize]);
    let aside = &wal.recovery_report().set_aside;
    assert!(
        aside.iter().any(|p| p.to_string_lossy().starts_with(last.to_string_lossy().as_ref())),
        "{aside:?}"
    );
    let kept =
        aside.iter().find(|p| p.to_string_lossy().starts_with(last.to_string_lossy().as_ref())).unwrap();
    assert_eq!(std::fs::read(kept).unwrap().len(), original.len(), "set aside whole");
    wal.close().await.unwrap();
}

/// A newest segment whose header block reads as zeros over written
/// batches is not a prepared, never-written segment: it is set aside and
/// the cut reported (AbsoluteConsistency refuses), never reused in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroed_header_over_records_is_not_an_unused_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (want, used) = make_log(dir.path()).await;
    let last = used.last().unwrap().clone();
    let (h, _) = frames(&last);
    patch(&last, 0, &[0u8; 4096]);
    assert!(matches!(
        Wal::open(dir.path(), opts().recovery_mode(RecoveryMode::AbsoluteConsistency)).await,
        Err(Error::Corrupt { .. })
    ));
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    assert!(
        matches!(wal.recovery_report().stop, StopReason::TornTail { .. }),
        "{:?}",
        wal.recovery_report().stop
    );
    assert!(wal.recovery_report().set_aside.iter().any(|p| p.to_string_lossy().contains(".discarded-")));
    assert_eq!(read_all(&wal, Lsn::FIRST), want[..(h.first_lsn - 1) as usize]);
    wal.close().await.unwrap();
}

/// Tiny segments of one batch each. The newest one's first write is torn
/// (its header intact), and the batch of the one before it is damaged: the
/// newest one's header proves that batch was synced, so this is corruption,
/// not two torn segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_newest_segment_still_proves_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let o = || opts().segment_bytes(3 * 4096).batch_bytes_max(8192).max_record_bytes(2048);
    let wal = Wal::open(dir.path(), o()).await.unwrap();
    for i in 0..20u64 {
        wal.append(&record(51, i, 1500)).await.unwrap();
    }
    wal.close().await.unwrap();
    let used: Vec<_> = segments(dir.path())
        .into_iter()
        .filter(|p| aiowal::format::SegmentHeader::decode(&std::fs::read(p).unwrap()).is_ok())
        .collect();
    let (newest, before) = (&used[used.len() - 1], &used[used.len() - 2]);
    patch(newest, 4096, &[0u8; 4096]); // its first batch torn away
    let (_, fr) = frames(before);
    let rec = fr.iter().find(|f| f.kind.is_record()).unwrap();
    flip_bit(before, rec.offset as usize + 40);
    match Wal::open(dir.path(), o()).await {
        Err(Error::Corrupt { segment, .. }) => assert_eq!(&segment, before),
        other => panic!("expected corruption in {}, got {other:?}", before.display()),
    }
}

/// PointInTime cannot keep anything when the first segment's header is
/// damaged: it refuses rather than restart the log at LSN 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_refuses_to_restart_at_lsn_1() {
    let dir = tempfile::tempdir().unwrap();
    let (_, used) = make_log(dir.path()).await;
    flip_bit(&used[0], 20);
    assert!(matches!(
        Wal::open(dir.path(), opts().recovery_mode(RecoveryMode::PointInTime)).await,
        Err(Error::Corrupt { kind: CorruptKind::Header(_), .. })
    ));
}
