//! Behavioural tests, written once and run on every backend.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use aiowal::format::FrameKind;
use aiowal::{Backend, Error, Lsn, Options, RecoveryMode, StopReason, Wal};
use common::*;

per_backend_and_sim!(
    sim: [
        concurrent_appends_dense_and_replayed,
        second_open_is_locked,
        reopen_after_close_in_any_mode,
        sync_and_stats,
        dropped_futures_in_flight,
        close_with_io_in_flight,
        staged_records_keep_call_order,
        read_from_any_lsn_seeks_correctly,
    ],
    real: [
    append_reopen_across_rotations,
    atomic_batch_all_or_nothing,
    torn_tail_cut_at_every_sector,
    torn_tail_garbage_at_every_sector,
    torn_tail_hole_at_every_sector,
    torn_tail_garbage_in_recycled_segment,
    torn_tail_hole_in_recycled_segment,
    recycled_segments_reopen_cleanly,
    mid_log_corruption_detected,
    truncate_before_removes_whole_segments,
    bad_input_gets_typed_errors,
    reopen_continues_in_place,
    blocking_handle_from_threads,
    ],
);

async fn append_reopen_across_rotations(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    assert_eq!(wal.backend_name(), b.name());
    assert!(wal.direct_io(), "this test's file system should take O_DIRECT (DirectIo::Auto)");
    let mut rng = Rng(7);
    let mut want = Vec::new();
    for i in 0..1500u64 {
        let len = rng.below(3000) as usize;
        if i % 10 == 0 {
            let recs: Vec<Vec<u8>> = (0..3).map(|k| record(i, k, len / 3)).collect();
            let range = wal.append_batch(&recs).await.unwrap();
            assert_eq!(range.len(), 3);
            for (lsn, r) in range.iter().zip(recs) {
                want.push((lsn.get(), r));
            }
        } else {
            let r = record(i, 0, len);
            let lsn = wal.append(&r).await.unwrap();
            want.push((lsn.get(), r));
        }
    }
    assert!(segments(dir.path()).len() >= 5, "expected several rotations");
    assert_eq!(read_all(&wal, Lsn::FIRST), want);
    wal.close().await.unwrap();

    let wal = Wal::open(dir.path(), opts).await.unwrap();
    let rep = wal.recovery_report();
    assert_eq!(rep.records, want.len() as u64);
    assert_eq!(rep.stop, StopReason::Clean);
    assert_eq!(rep.last_lsn.get(), want.len() as u64);
    assert_eq!(read_all(&wal, Lsn::FIRST), want);
    // Reading from the middle starts exactly there.
    let mid = want.len() as u64 / 2;
    let tail = read_all(&wal, Lsn::new(mid));
    assert_eq!(tail.first().unwrap().0, mid);
    assert_eq!(tail, want[(mid - 1) as usize..]);
    wal.close().await.unwrap();
}

async fn concurrent_appends_dense_and_replayed(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b).segment_bytes(4 << 20).batch_bytes_max(256 << 10);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(t + 1);
            let mut mine = Vec::new();
            for i in 0..1000u64 {
                let r = record(t, i, 1 + rng.below(300) as usize);
                let lsn = wal.append(&r).await.unwrap();
                mine.push((lsn.get(), r));
            }
            mine
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        let mine = t.await.unwrap();
        // Each task's LSNs increase in its own append order.
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0));
        for (lsn, r) in mine {
            assert!(all.insert(lsn, r).is_none(), "LSN {lsn} given twice");
        }
    }
    assert_eq!(all.len(), 64_000);
    assert_eq!(*all.keys().next().unwrap(), 1);
    assert_eq!(*all.keys().last().unwrap(), 64_000, "LSNs must be dense");
    let stats = wal.stats();
    assert_eq!(stats.appends, 64_000);
    assert!(stats.records_per_sync > 1.0, "group commit should batch: {stats:?}");
    wal.close().await.unwrap();

    let wal = Wal::open(dir.path(), opts).await.unwrap();
    let got: BTreeMap<u64, Vec<u8>> = read_all(&wal, Lsn::FIRST).into_iter().collect();
    assert_eq!(got, all);
    wal.close().await.unwrap();
}

/// Copies a log directory (without its lock file) so each cut starts fresh.
fn copy_log(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for p in segments(from) {
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

async fn atomic_batch_all_or_nothing(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    let mut want = Vec::new();
    for i in 0..5 {
        let r = record(1, i, 100);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    let batch: Vec<Vec<u8>> = (0..6).map(|k| record(2, k, 250)).collect();
    let range = wal.append_batch(&batch).await.unwrap();
    wal.close().await.unwrap();

    let seg = last_used_segment(dir.path());
    let (_, fr) = frames(&seg);
    let in_batch: Vec<_> =
        fr.iter().filter(|f| range.contains(Lsn::new(f.lsn)) && f.kind.is_record()).collect();
    assert_eq!(in_batch.len(), 6);
    assert_eq!(in_batch[0].kind, FrameKind::BatchBegin);
    assert_eq!(in_batch[5].kind, FrameKind::BatchEnd);
    let start = in_batch[0].offset;
    let end = in_batch[5].offset + in_batch[5].len;
    let mut cut = start;
    let mut full = 0;
    while cut < end {
        let copy = tempfile::tempdir().unwrap();
        copy_log(dir.path(), copy.path());
        let f =
            std::fs::OpenOptions::new().write(true).open(copy.path().join(seg.file_name().unwrap())).unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let wal = Wal::open(copy.path(), opts.clone()).await.unwrap();
        let got = read_all(&wal, Lsn::FIRST);
        assert_eq!(got, want, "cut at {cut}: the batch must vanish whole");
        // The log stays appendable after the cut, and the new record follows on.
        let lsn = wal.append(b"after").await.unwrap();
        assert_eq!(lsn.get(), want.len() as u64 + 1);
        wal.close().await.unwrap();
        let wal = Wal::open(copy.path(), opts.clone()).await.unwrap();
        assert_eq!(read_all(&wal, Lsn::FIRST).len(), want.len() + 1);
        wal.close().await.unwrap();
        cut += 56;
        full += 1;
    }
    assert!(full > 10);
    // Uncut, the whole batch is there.
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), want.len() + 6);
    wal.close().await.unwrap();
}

/// Writes a log whose last segment ends with several multi-record batches;
/// returns the records and the last segment's path.
///
/// With `recycle`, the log is first filled and checkpointed so that the tail
/// lands in reused segment files still holding an earlier incarnation's frames.
async fn write_tail(
    dir: &std::path::Path,
    opts: &Options,
    recycle: bool,
) -> (Vec<(u64, Vec<u8>)>, std::path::PathBuf) {
    let wal = Wal::open(dir, opts.clone()).await.unwrap();
    let mut want = Vec::new();
    if recycle {
        for i in 0..600u64 {
            wal.append(&record(2, i, 1000)).await.unwrap();
        }
        wal.truncate_before(wal.durable_lsn()).await.unwrap();
        let spares = spare_count(dir);
        assert!(spares > 0, "truncate_before kept no spares");
        for i in 600..900u64 {
            wal.append(&record(2, i, 1000)).await.unwrap();
        }
        assert!(spare_count(dir) < spares, "no spare was reused");
        wal.truncate_before(wal.durable_lsn()).await.unwrap();
        want.extend(read_all(&wal, wal.first_lsn()));
    }
    for i in 0..40u64 {
        let r = record(3, i, 50 + (i as usize * 37) % 700);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    for k in 0..4u64 {
        let futs: Vec<_> = (0..8u64)
            .map(|j| {
                let wal = wal.clone();
                let r = record(4 + k, j, 300 + j as usize * 40);
                tokio::spawn(async move { (wal.append(&r).await.unwrap().get(), r) })
            })
            .collect();
        for f in futs {
            want.push(f.await.unwrap());
        }
    }
    want.sort();
    wal.close().await.unwrap();
    (want, last_used_segment(dir))
}

fn spare_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".spare"))
        .count()
}

async fn push(wal: &Wal, want: &mut Vec<(u64, Vec<u8>)>, len: usize) {
    let r = record(want.len() as u64, 7, len);
    want.push((wal.append(&r).await.unwrap().get(), r));
}

async fn torn_tail_at_every_sector(b: Backend, garbage: bool, recycle: bool) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let (want, seg) = write_tail(dir.path(), &opts, recycle).await;
    let (h, fr) = frames(&seg);
    let end = fr.last().map(|f| f.offset + f.len).unwrap();
    // Records in earlier segments, which no cut of this one may lose.
    let prior = want.iter().filter(|(l, _)| *l < h.first_lsn).count();
    let first = end.saturating_sub(8 * 4096).max(4096);
    let mut cut = first - first % 512;
    let mut checked = 0;
    while cut <= end {
        let copy = tempfile::tempdir().unwrap();
        copy_log(dir.path(), copy.path());
        let path = copy.path().join(seg.file_name().unwrap());
        if garbage {
            let mut bytes = std::fs::read(&path).unwrap();
            let mut rng = Rng(cut + 1);
            let stop = (end as usize + 4096).min(bytes.len());
            for b in &mut bytes[cut as usize..stop] {
                *b = rng.next() as u8;
            }
            std::fs::write(&path, bytes).unwrap();
        } else {
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
        }
        let wal = Wal::open(copy.path(), opts.clone())
            .await
            .unwrap_or_else(|e| panic!("cut at {cut}: default mode must open: {e}"));
        let got = read_all(&wal, Lsn::FIRST);
        assert!(
            matches!(wal.recovery_report().stop, StopReason::TornTail { .. }),
            "cut at {cut}: {:?}",
            wal.recovery_report().stop
        );
        assert_eq!(got[..], want[..got.len()], "cut at {cut}: recovered records must be a prefix");
        // Every record wholly before the cut survives.
        let before = fr.iter().filter(|f| f.offset + f.len <= cut && f.kind.is_record()).count();
        assert!(
            got.len() >= prior + before,
            "cut at {cut}: lost acknowledged records ({} < {prior} + {before})",
            got.len()
        );
        wal.append(b"next").await.unwrap();
        wal.close().await.unwrap();
        // And a second recovery agrees, with the new record after the prefix.
        let wal = Wal::open(copy.path(), opts.clone()).await.unwrap();
        let again = read_all(&wal, Lsn::FIRST);
        assert_eq!(&again[..got.len()], &got[..]);
        assert_eq!(again.len(), got.len() + 1, "cut at {cut}: stale records came back");
        assert_eq!(again.last().unwrap().1, b"next");
        wal.close().await.unwrap();
        cut += 512;
        checked += 1;
    }
    assert!(checked >= 16);
}

async fn torn_tail_cut_at_every_sector(b: Backend) {
    torn_tail_at_every_sector(b, false, false).await;
}

async fn torn_tail_garbage_at_every_sector(b: Backend) {
    torn_tail_at_every_sector(b, true, false).await;
}

async fn torn_tail_garbage_in_recycled_segment(b: Backend) {
    torn_tail_at_every_sector(b, true, true).await;
}

async fn torn_tail_hole_in_recycled_segment(b: Backend) {
    torn_tail_hole(b, true).await;
}

async fn torn_tail_hole_at_every_sector(b: Backend) {
    torn_tail_hole(b, false).await;
}

/// A log that reuses retired segments still opens cleanly (even in
/// AbsoluteConsistency mode) after a clean close and continues in place, and
/// a reused segment that ended early is not mistaken for damage once a later
/// segment exists: the old bytes after its last batch stay unread.
async fn recycled_segments_reopen_cleanly(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let strict = opts.clone().recovery_mode(RecoveryMode::AbsoluteConsistency);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    let mut want = Vec::new();
    // Fill segments completely with one-block batches, then retire them:
    // the spares hold old frames in every block.
    for _ in 0..800 {
        push(&wal, &mut want, 1000).await;
    }
    wal.truncate_before(wal.durable_lsn()).await.unwrap();
    assert_eq!(spare_count(dir.path()), 4);
    // Rotate until a spare is in use and another is being prepared.
    while spare_count(dir.path()) > 2 {
        push(&wal, &mut want, 1000).await;
    }
    // Two-block batches leave the last block of this reused segment unused
    // before the next rotation; carry on into the next segment.
    let spares = spare_count(dir.path());
    while spare_count(dir.path()) == spares {
        push(&wal, &mut want, 5000).await;
    }
    // Past the 64 KiB a reused segment gets zeroed at its start.
    for _ in 0..20 {
        push(&wal, &mut want, 1000).await;
    }
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), strict.clone()).await.unwrap();
    assert_eq!(wal.recovery_report().stop, StopReason::Clean);
    let first = wal.first_lsn().get();
    assert_eq!(read_all(&wal, Lsn::FIRST), want[(first - 1) as usize..]);
    // It continued in place: appending and reopening still finds a clean end.
    push(&wal, &mut want, 100).await;
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), strict).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want[(first - 1) as usize..]);
    wal.close().await.unwrap();
}

/// A hole (one zeroed sector) in the tail of a cleanly closed log: later
/// batches and the clean-end mark prove the records there acknowledged, so
/// it is corruption, never a silently cut tail. PointInTime cuts at it and
/// reports the cut, and the frames after the hole never come back, not even
/// after new appends reuse their LSNs. (A hole a crash leaves, with only
/// unproven batches after it, is a torn tail: the simulator covers that.)
async fn torn_tail_hole(b: Backend, recycle: bool) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let (want, seg) = write_tail(dir.path(), &opts, recycle).await;
    let (h, fr) = frames(&seg);
    let end = fr.last().map(|f| f.offset + f.len).unwrap();
    // Records in earlier segments, which no cut of this one may lose.
    let prior = want.iter().filter(|(l, _)| *l < h.first_lsn).count();
    let mut hole = end.saturating_sub(6 * 4096).max(4096);
    hole -= hole % 512;
    let mut checked = 0;
    while hole < end {
        let copy = tempfile::tempdir().unwrap();
        copy_log(dir.path(), copy.path());
        let path = copy.path().join(seg.file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[hole as usize..hole as usize + 512].fill(0);
        std::fs::write(&path, bytes).unwrap();
        // The last frame is the clean-end mark: damage to it loses no record
        // (the log then opens as after a crash).
        let records = &fr[..fr.len() - 1];
        let damaged = records.iter().any(|f| f.offset < hole + 512 && f.offset + f.len > hole);
        let default = Wal::open(copy.path(), opts.clone()).await;
        match (&default, damaged) {
            (Err(Error::Corrupt { .. }), true) => {}
            (Ok(_), false) => {}
            (other, _) => panic!("hole at {hole} (over a frame: {damaged}): {other:?}"),
        }
        if let Ok(w) = default {
            w.close().await.unwrap();
        }
        let wal =
            Wal::open(copy.path(), opts.clone().recovery_mode(RecoveryMode::PointInTime)).await.unwrap();
        let got = read_all(&wal, Lsn::FIRST);
        assert_eq!(got[..], want[..got.len()], "hole at {hole}");
        let stop = &wal.recovery_report().stop;
        assert!(!damaged || matches!(stop, StopReason::PointInTime { .. }), "hole at {hole}: {stop:?}");
        let before = fr.iter().filter(|f| f.offset + f.len <= hole && f.kind.is_record()).count();
        assert!(got.len() >= prior + before, "hole at {hole}: lost records before it");
        for i in 0..3 {
            wal.append(&record(99, i, 20)).await.unwrap();
        }
        wal.close().await.unwrap();
        let wal = Wal::open(copy.path(), opts.clone()).await.unwrap();
        let again = read_all(&wal, Lsn::FIRST);
        assert_eq!(again.len(), got.len() + 3, "hole at {hole}: stale frames were replayed");
        assert_eq!(&again[..got.len()], &got[..]);
        wal.close().await.unwrap();
        hole += 512;
        checked += 1;
    }
    assert!(checked >= 8);
}

async fn mid_log_corruption_detected(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b).segment_bytes(1 << 20).batch_bytes_max(16 << 10);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    let mut want = Vec::new();
    for i in 0..600u64 {
        let r = record(5, i, 200);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    wal.close().await.unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let (_, fr) = frames(&segs[0]);
    let victim = fr.iter().find(|f| f.lsn == 20 && f.kind == FrameKind::Record).copied().unwrap();
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[victim.offset as usize + 30] ^= 0x40;
    std::fs::write(&segs[0], bytes).unwrap();

    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::AbsoluteConsistency] {
        match Wal::open(dir.path(), opts.clone().recovery_mode(mode)).await {
            Err(Error::Corrupt { segment, offset, lsn, .. }) => {
                assert_eq!(segment, segs[0]);
                assert_eq!(offset, victim.offset);
                assert_eq!(lsn, 20);
            }
            other => panic!("{mode:?}: expected Corrupt, got {other:?}"),
        }
    }
    let err = Wal::open(dir.path(), opts.clone()).await.unwrap_err().to_string();
    assert!(err.contains("00000000000000000001.wal") && err.contains("PointInTime"), "{err}");

    let wal = Wal::open(dir.path(), opts.clone().recovery_mode(RecoveryMode::PointInTime)).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want[..19]);
    assert!(matches!(wal.recovery_report().stop, StopReason::PointInTime { .. }));
    assert!(!wal.recovery_report().set_aside.is_empty());
    assert_eq!(wal.append(b"x").await.unwrap().get(), 20);
    wal.close().await.unwrap();
    // After the point-in-time cut the log opens cleanly in the default mode.
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), 20);
    wal.close().await.unwrap();
}

async fn second_open_is_locked(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small(b)).await.unwrap();
    match Wal::open(dir.path(), small(b)).await {
        Err(Error::Locked { path, shutting_down: false }) => assert_eq!(path, dir.path().join("LOCK")),
        other => panic!("expected Locked, got {other:?}"),
    }
    wal.append(b"a").await.unwrap();
    wal.close().await.unwrap();
    assert!(matches!(wal.append(b"b").await, Err(Error::Closed)));
    // Closing again, from any clone and concurrently, is a no-op.
    let other = wal.clone();
    let (a, b2) = tokio::join!(wal.close(), other.close());
    a.unwrap();
    b2.unwrap();
    let wal = Wal::open(dir.path(), small(b)).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), 1);
    wal.close().await.unwrap();
}

/// A log closed cleanly reopens in every mode with nothing written at open
/// (the clean-end mark proves every record), and a log that was not closed
/// reopens with its newest records copied forward.
async fn reopen_after_close_in_any_mode(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small(b)).await.unwrap();
    let mut want = Vec::new();
    for i in 0..200u64 {
        let r = record(8, i, 500);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    wal.close().await.unwrap();
    for mode in [RecoveryMode::AbsoluteConsistency, RecoveryMode::TolerateTornTail, RecoveryMode::PointInTime]
    {
        let wal = Wal::open(dir.path(), small(b).recovery_mode(mode)).await.unwrap();
        let rep = wal.recovery_report();
        assert_eq!(
            (rep.stop.clone(), rep.copied_forward, rep.records),
            (StopReason::Clean, 0, 200),
            "{mode:?}"
        );
        assert_eq!(read_all(&wal, Lsn::FIRST), want);
        wal.close().await.unwrap();
    }
    let wal = Wal::open(dir.path(), small(b)).await.unwrap();
    for i in 0..10u64 {
        let r = record(9, i, 500);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    drop(wal);
    let wal = loop {
        match Wal::open(dir.path(), small(b)).await {
            Ok(w) => break w,
            Err(Error::Locked { shutting_down: true, .. }) => tokio::task::yield_now().await,
            Err(e) => panic!("reopen after a drop: {e}"),
        }
    };
    assert!(wal.recovery_report().copied_forward > 0, "{:?}", wal.recovery_report());
    assert_eq!(read_all(&wal, Lsn::FIRST), want);
    wal.close().await.unwrap();
}

async fn truncate_before_removes_whole_segments(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    for i in 0..400u64 {
        wal.append(&record(6, i, 1000)).await.unwrap();
    }
    let before = segments(dir.path());
    assert!(before.len() >= 4);
    let cut = Lsn::new(250);
    let removed = wal.truncate_before(cut).await.unwrap();
    assert!(removed >= 1);
    // The oldest `removed` segments are gone, the rest are there; the next
    // segment, prepared in the background, may have appeared meanwhile.
    let after = segments(dir.path());
    assert_eq!(
        after.get(..before.len() - removed as usize),
        before.get(removed as usize..),
        "{before:?} -> {after:?}"
    );
    assert!(after.len() <= before.len() - removed as usize + 1, "{before:?} -> {after:?}");
    assert!(wal.first_lsn() <= cut && wal.first_lsn() > Lsn::FIRST);
    let rest = read_all(&wal, cut);
    assert_eq!(rest.first().unwrap().0, 250);
    assert_eq!(rest.len(), 151);
    // Everything from the oldest remaining LSN on is intact and in order.
    let all = read_all(&wal, Lsn::FIRST);
    assert_eq!(all.first().unwrap().0, wal.first_lsn().get());
    assert_eq!(all.last().unwrap().0, 400);
    // Truncating past the end never removes the segment being written.
    wal.truncate_before(Lsn::new(10_000)).await.unwrap();
    assert!(!segments(dir.path()).is_empty());
    wal.append(b"more").await.unwrap();
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST).last().unwrap().0, 401);
    wal.close().await.unwrap();
}

async fn bad_input_gets_typed_errors(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small(b)).await.unwrap();
    assert!(matches!(
        wal.append(&vec![0; (8 << 10) + 1]).await,
        Err(Error::RecordTooLarge { len: 8193, max: 8192 })
    ));
    assert!(matches!(wal.append_batch(Vec::<Vec<u8>>::new()).await, Err(Error::EmptyBatch)));
    let big: Vec<Vec<u8>> = (0..10).map(|_| vec![1; 8 << 10]).collect();
    assert!(matches!(wal.append_batch(&big).await, Err(Error::BatchTooLarge { .. })));
    // An empty record is a record.
    assert_eq!(wal.append(b"").await.unwrap(), Lsn::FIRST);
    wal.close().await.unwrap();

    for bad in [
        Options::default().alignment(1000),
        Options::default().segment_bytes(4096),
        Options::default().max_record_bytes(4 << 20),
        Options::default().max_record_bytes(0),
    ] {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(Wal::open(d.path(), bad.backend(b)).await, Err(Error::InvalidOption { .. })));
    }

    // A foreign file under a segment name is refused, not parsed.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("00000000000000000001.wal"),
        b"SQLite format 3\0 and then some more bytes here, 64+ bytes long......",
    )
    .unwrap();
    match Wal::open(d.path(), small(b)).await {
        Err(e @ Error::ForeignFile { .. }) => {
            assert!(e.to_string().contains("not an aiowal segment"))
        }
        other => panic!("expected ForeignFile, got {other:?}"),
    }
    // create(false) on a missing directory fails clearly.
    let missing = d.path().join("nope");
    assert!(matches!(Wal::open(&missing, small(b).create(false)).await, Err(Error::Io { .. })));
}

async fn reopen_continues_in_place(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    for round in 0..5u64 {
        // Alternate direct and buffered writes on the same segment.
        let direct = if round % 2 == 0 { aiowal::DirectIo::Auto } else { aiowal::DirectIo::Off };
        let wal = Wal::open(dir.path(), opts.clone().direct_io(direct)).await.unwrap();
        assert_eq!(wal.direct_io(), round % 2 == 0);
        assert_eq!(wal.recovery_report().records, round * 3);
        for i in 0..3 {
            wal.append(&record(round, i, 10)).await.unwrap();
        }
        wal.close().await.unwrap();
    }
    // One segment in use plus at most one prepared ahead: reopening costs no segment.
    assert!(segments(dir.path()).len() <= 2, "{:?}", segments(dir.path()));
}

async fn sync_and_stats(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small(b)).await.unwrap();
    assert_eq!(wal.sync().await.unwrap(), Lsn::ZERO);
    let l = wal.append(b"x").await.unwrap();
    assert_eq!(wal.sync().await.unwrap(), l);
    assert_eq!(wal.durable_lsn(), l);
    let s = wal.stats();
    assert_eq!((s.appends, s.bytes, s.syncs), (1, 1, 1));
    assert!(s.sync_latency_p50 > std::time::Duration::ZERO);
    assert_eq!((s.records_pending, s.batches_queued, s.batches_in_flight), (0, 0, 0));
    assert_eq!((s.segments_live, s.segments_retired, s.poisoned), (1, 0, false));
    // Across rotations, then a checkpoint: live segments grow, then retire.
    let mut last = l;
    for i in 0..300u64 {
        last = wal.append(&record(9, i, 4000)).await.unwrap();
    }
    let grown = wal.stats().segments_live;
    assert!(grown >= 4, "{grown} live segments after ~1.2 MB in 256 KiB segments");
    let retired = wal.truncate_before(last).await.unwrap();
    let s = wal.stats();
    assert_eq!(s.segments_retired, retired);
    assert_eq!(s.segments_live, grown - retired);
    assert!(s.segments_spare <= retired);
    assert_eq!(s.records_pending, 0);
    wal.close().await.unwrap();
}

async fn blocking_handle_from_threads(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let opts = small(b);
    let all = tokio::task::spawn_blocking(move || {
        let wal = Arc::new(aiowal::blocking::Wal::open(&path, opts.clone()).unwrap());
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    (0..200u64).map(|i| wal.append(&record(t, i, 64)).unwrap().get()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut lsns: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        lsns.sort_unstable();
        wal.close().unwrap();
        let wal = aiowal::blocking::Wal::open(&path, opts).unwrap();
        let n = wal.read_from(Lsn::FIRST).unwrap().count();
        wal.close().unwrap();
        (lsns, n)
    })
    .await
    .unwrap();
    assert_eq!(all.0, (1..=1600).collect::<Vec<_>>());
    assert_eq!(all.1, 1600);
}

#[test]
fn public_types_are_thread_safe() {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    fn key<T: Copy + Ord + std::hash::Hash + std::fmt::Display>() {}
    clone_send_sync::<Wal>();
    clone_send_sync::<aiowal::blocking::Wal>();
    error::<Error>();
    key::<Lsn>();
}

/// Append futures dropped while their batch is in flight: the log stays
/// consistent, every record is durable or absent, never corrupt.
async fn dropped_futures_in_flight(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    let mut kept = Vec::new();
    for round in 0..50u64 {
        let mut futs: Vec<_> = (0..8u64)
            .map(|i| {
                let wal = wal.clone();
                let r = record(round, i, 500);
                Box::pin(async move { (wal.append(&r).await, r) })
            })
            .collect();
        // Poll every future once (staging the records), then drop half of them.
        let mut ready = Vec::new();
        for f in futs.iter_mut() {
            ready.push(futures_poll_once(f).await);
        }
        for (i, (f, done)) in futs.into_iter().zip(ready).enumerate() {
            if i % 2 == 1 {
                continue; // dropped, possibly mid-flight
            }
            let (r, data) = match done {
                Some(out) => out,
                None => f.await,
            };
            kept.push((r.unwrap().get(), data));
        }
    }
    let durable = wal.sync().await.unwrap();
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    let all: BTreeMap<u64, Vec<u8>> = read_all(&wal, Lsn::FIRST).into_iter().collect();
    assert_eq!(all.len() as u64, durable.get(), "records staged by dropped futures are still written");
    for (lsn, data) in kept {
        assert_eq!(all.get(&lsn), Some(&data));
    }
    wal.close().await.unwrap();
}

/// Polls a future once; returns its output if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    use std::task::Poll;
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// `close` while appends are in flight: it waits for them, they all succeed,
/// and everything is there after reopening.
async fn close_with_io_in_flight(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let wal = wal.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    match wal.append(&record(t, n, 200)).await {
                        Ok(_) => n += 1,
                        Err(Error::Closed) => return n,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    wal.close().await.unwrap();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    assert!(acked > 0);
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    assert!(read_all(&wal, Lsn::FIRST).len() as u64 >= acked);
    wal.close().await.unwrap();
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_probe_failure_falls_back_or_errs() {
    let dir = tempfile::tempdir().unwrap();
    // The kernel rejects a zero-sized ring: the probe fails for real.
    let opts = small(Backend::Auto).uring_entries(0);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    assert_eq!(wal.backend_name(), "threaded", "Auto must fall back");
    wal.append(b"works").await.unwrap();
    wal.close().await.unwrap();
    match Wal::open(dir.path(), opts.backend(Backend::Uring)).await {
        Err(e @ Error::BackendUnavailable { backend: "uring", .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("uring_entries") && msg.contains("io_uring_disabled"), "{msg}");
        }
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
    // The directory lock was released by the failed open.
    let wal = Wal::open(dir.path(), small(Backend::Uring)).await.unwrap();
    assert_eq!(wal.backend_name(), "uring");
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), 1);
    wal.close().await.unwrap();
}

/// `stage` assigns LSNs in call order without waiting; `durable` of the last
/// one covers all before it; everything is there after reopening.
async fn staged_records_keep_call_order(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(b);
    let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
    let mut staged = Vec::new();
    let mut want = Vec::new();
    for i in 0..300u64 {
        let r = record(31, i, 100 + (i as usize % 700));
        let s = if i % 10 == 9 {
            wal.stage_batch([&r[..], &r[..1]]).await.unwrap()
        } else {
            wal.stage(&r).await.unwrap()
        };
        want.push((s.lsns().first().get(), r.clone()));
        if s.lsns().len() == 2 {
            want.push((s.lsns().last().get(), r[..1].to_vec()));
        }
        staged.push(s);
    }
    assert!(want.windows(2).all(|w| w[1].0 == w[0].0 + 1), "LSNs follow the call order");
    let last = staged.pop().unwrap().durable().await.unwrap();
    assert!(wal.durable_lsn() >= last.last());
    for s in staged {
        s.durable().await.unwrap();
    }
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want);
    wal.close().await.unwrap();
}

/// `read_from` starts mid-segment from a seek mark (every 64 KiB of a
/// segment, set as batches become durable and by the recovery scan): from
/// any LSN it yields exactly the records a full read yields from there, in
/// the live log and after reopening.
async fn read_from_any_lsn_seeks_correctly(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = || small(b).segment_bytes(1 << 20).batch_bytes_max(16 << 10);
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    let mut hs = Vec::new();
    for t in 0..8u64 {
        let wal = wal.clone();
        hs.push(tokio::spawn(async move {
            for i in 0..400u64 {
                wal.append(&record(t, i, 100 + (i as usize * 7) % 400)).await.unwrap();
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let all = read_all(&wal, Lsn::FIRST);
    assert_eq!(all.len(), 3200);
    check_reads_from(&wal, &all, "live");
    wal.close().await.unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    check_reads_from(&wal, &all, "after reopen");
    wal.close().await.unwrap();
}

fn check_reads_from(wal: &Wal, all: &[(u64, Vec<u8>)], when: &str) {
    for from in (1..=3201u64).step_by(29).chain([3199, 3200, 3201]) {
        let got: Vec<(u64, Vec<u8>)> = wal
            .read_from(Lsn::new(from))
            .unwrap()
            .take(3)
            .map(|r| r.map(|r| (r.lsn().get(), r.to_vec())).unwrap())
            .collect();
        let want: Vec<(u64, Vec<u8>)> = all.iter().filter(|(l, _)| *l >= from).take(3).cloned().collect();
        assert_eq!(got, want, "{when}, from {from}");
    }
}
