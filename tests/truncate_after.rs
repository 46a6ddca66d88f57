//! `Wal::truncate_after`: records above a cut are dropped durably and their
//! LSNs reused, on every backend and the crash simulator's disk; and power
//! loss at every operation of a cut (simulator).

mod common;

use aiowal::{Backend, Error, Lsn, Wal};
use common::*;

per_backend_and_sim!(
    sim: [
        a_cut_drops_what_follows_and_appends_reuse_its_lsns,
        a_cut_below_the_log_is_refused,
        a_cut_at_or_past_the_end_changes_nothing,
        a_cut_inside_an_atomic_batch_is_refused,
        checkpoints_after_a_cut_never_bring_dropped_records_back,
        waiting_for_a_dropped_record_ends_with_an_error,
    ],
    real: [],
);

fn old(i: u64) -> Vec<u8> {
    record(1, i, 500 + (i as usize * 97) % 2500)
}

fn new(round: u64, i: u64) -> Vec<u8> {
    record(100 + round, i, 300 + (i as usize * 53) % 1800)
}

/// A log of 1..=n from `old`.
async fn filled(dir: &std::path::Path, backend: Backend, n: u64) -> Wal {
    let wal = Wal::open(dir, small(backend)).await.unwrap();
    for i in 1..=n {
        assert_eq!(wal.append(&old(i)).await.unwrap(), Lsn::new(i));
    }
    wal
}

/// Cuts in the middle of an early segment (voiding the later ones), then
/// after a reopen at a later LSN and at 0 (everything): each time the next
/// append gets the LSN after the cut, reads see the kept records then the
/// new ones, and a reopen (clean, and after a drop without close) too.
async fn a_cut_drops_what_follows_and_appends_reuse_its_lsns(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    // About 1.7 MB of records in 256 KiB segments: 6 or more segments.
    let mut wal = filled(&path, backend, 1000).await;
    let segments_before = wal.stats().segments_live;
    assert!(segments_before >= 6, "{segments_before} segments");
    let mut want: Vec<(u64, Vec<u8>)> = (1..=1000).map(|i| (i, old(i))).collect();
    for (round, cut) in [(0u64, 140u64), (1, 150), (2, 0)] {
        assert_eq!(wal.truncate_after(Lsn::new(cut)).await.unwrap(), Lsn::new(cut));
        assert_eq!(wal.durable_lsn(), Lsn::new(cut), "the durable watermark goes back to the cut");
        want.truncate(cut as usize);
        assert_eq!(read_all(&wal, Lsn::FIRST), want, "round {round}: only what precedes the cut");
        for i in 1..=30 {
            let lsn = wal.append(&new(round, i)).await.unwrap();
            assert_eq!(lsn, Lsn::new(cut + i), "round {round}: LSNs after the cut are reused");
            want.push((lsn.get(), new(round, i)));
        }
        assert_eq!(read_all(&wal, Lsn::FIRST), want, "round {round}");
        // Reading from the middle (seek marks of the cut segment).
        assert_eq!(read_all(&wal, Lsn::new(cut + 10)), want[(cut + 9) as usize..], "round {round}");
        if round == 0 {
            assert!(wal.stats().segments_live < segments_before, "segments above the cut are void");
        }
        wal.close().await.unwrap();
        drop(wal);
        wal = Wal::open(&path, small(backend)).await.unwrap();
        assert_eq!(read_all(&wal, Lsn::FIRST), want, "round {round}: after reopening");
    }
    // Cut, append, and stop without close (what a process kill leaves).
    wal.truncate_after(Lsn::new(20)).await.unwrap();
    want.truncate(20);
    for i in 1..=5 {
        let lsn = wal.append(&new(9, i)).await.unwrap();
        want.push((lsn.get(), new(9, i)));
    }
    drop(wal);
    let wal = loop {
        match Wal::open(&path, small(backend)).await {
            Ok(w) => break w,
            Err(Error::Locked { .. }) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            Err(e) => panic!("reopen after drop: {e}"),
        }
    };
    assert_eq!(read_all(&wal, Lsn::FIRST), want, "after a drop without close");
    wal.close().await.unwrap();
}

/// Below what `truncate_before` left: refused, typed, and the log unchanged.
async fn a_cut_below_the_log_is_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(&dir.path().join("log"), backend, 600).await;
    assert!(wal.truncate_before(Lsn::new(400)).await.unwrap() > 0);
    let first = wal.first_lsn().get();
    assert!(first > 1);
    match wal.truncate_after(Lsn::new(first - 2)).await {
        Err(Error::CutBeforeStart { lsn, first: f }) => assert_eq!((lsn, f), (first - 2, first)),
        other => panic!("expected CutBeforeStart, got {other:?}"),
    }
    assert_eq!(wal.append(b"next").await.unwrap(), Lsn::new(601), "the log is unchanged");
    // Right below the first record held: everything dropped.
    assert_eq!(wal.truncate_after(Lsn::new(first - 1)).await.unwrap(), Lsn::new(first - 1));
    assert!(read_all(&wal, Lsn::FIRST).is_empty());
    assert_eq!(wal.append(b"again").await.unwrap(), Lsn::new(first));
    wal.close().await.unwrap();
}

/// At the last LSN or past it: nothing to drop, nothing written.
async fn a_cut_at_or_past_the_end_changes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(&dir.path().join("log"), backend, 50).await;
    let batches = wal.stats().batches;
    assert_eq!(wal.truncate_after(Lsn::new(50)).await.unwrap(), Lsn::new(50));
    assert_eq!(wal.truncate_after(Lsn::new(5000)).await.unwrap(), Lsn::new(50));
    assert_eq!(wal.stats().batches, batches);
    assert_eq!(wal.append(b"x").await.unwrap(), Lsn::new(51));
    wal.close().await.unwrap();
}

/// A cut that would keep part of an atomic batch is refused; before or
/// after the batch is fine.
async fn a_cut_inside_an_atomic_batch_is_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(&dir.path().join("log"), backend, 10).await;
    let batch = wal.append_batch([old(11), old(12), old(13), old(14)]).await.unwrap();
    assert_eq!(batch.first(), Lsn::new(11));
    wal.append(&old(15)).await.unwrap();
    for inside in [11, 12, 13] {
        match wal.truncate_after(Lsn::new(inside)).await {
            Err(Error::CutInsideBatch { lsn }) => assert_eq!(lsn, inside),
            other => panic!("cut after {inside}: expected CutInsideBatch, got {other:?}"),
        }
    }
    assert_eq!(wal.truncate_after(Lsn::new(14)).await.unwrap(), Lsn::new(14));
    assert_eq!(wal.truncate_after(Lsn::new(10)).await.unwrap(), Lsn::new(10));
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), 10);
    wal.close().await.unwrap();
}

/// A cut voids later segments; checkpoints afterwards retire the cut
/// segment itself. The voided files must be gone by then, or a reopen would
/// find their dropped records with nothing voiding them.
async fn checkpoints_after_a_cut_never_bring_dropped_records_back(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let wal = filled(&path, backend, 700).await;
    assert!(wal.stats().segments_live >= 4);
    assert_eq!(wal.truncate_after(Lsn::new(150)).await.unwrap(), Lsn::new(150));
    let live_after_cut = wal.stats().segments_live;
    if wal.backend_name() != "sim" {
        assert_eq!(
            segments(&path).len() as u64,
            live_after_cut + 1,
            "voided files removed (+1: the next one, prepared)"
        );
    }
    let mut want: Vec<(u64, Vec<u8>)> = (1..=150).map(|i| (i, old(i))).collect();
    let mut i = 0;
    while wal.stats().segments_live < live_after_cut + 3 {
        i += 1;
        let lsn = wal.append(&new(5, i)).await.unwrap();
        want.push((lsn.get(), new(5, i)));
    }
    // Retire everything but the newest segment, the cut segment included.
    let newest = read_all(&wal, Lsn::FIRST).last().unwrap().0;
    wal.truncate_before(Lsn::new(newest)).await.unwrap();
    let first = wal.first_lsn().get();
    want.retain(|(l, _)| *l >= first);
    assert_eq!(read_all(&wal, Lsn::FIRST), want);
    wal.close().await.unwrap();
    drop(wal);
    let wal = Wal::open(&path, small(backend)).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want, "no dropped record came back");
    wal.close().await.unwrap();
}

/// A record staged, then dropped by a cut before anyone waited for it:
/// waiting ends with `DroppedByCut`, not with another record's ack.
async fn waiting_for_a_dropped_record_ends_with_an_error(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(&dir.path().join("log"), backend, 20).await;
    let staged = wal.stage(&old(21)).await.unwrap();
    assert_eq!(staged.lsns().last(), Lsn::new(21));
    wal.truncate_after(Lsn::new(20)).await.unwrap();
    let other = wal.append(b"another record under 21").await.unwrap();
    assert_eq!(other, Lsn::new(21));
    match staged.durable().await {
        Err(Error::DroppedByCut { lsn: 21, cut: 20 }) => {}
        r => panic!("expected DroppedByCut, got {r:?}"),
    }
    wal.close().await.unwrap();
}

#[cfg(feature = "sim")]
mod crashes {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use aiowal::sim::SimDisk;
    use aiowal::{Lsn, Options, Wal};

    use super::{new, old, read_all};

    const DIR: &str = "/sim/cut";

    fn opts() -> Options {
        Options::default().alignment(512).batch_bytes_max(4096).segment_bytes(16384).max_record_bytes(3000)
    }

    /// Power loss (or a process kill) at the k-th operation of a cut and of
    /// the appends after it, for every k: the recovered log holds the
    /// records up to the cut, then either all the old ones (the cut had not
    /// returned) or a prefix of the new ones holding every acknowledged
    /// one, never an old record above the cut after the cut returned.
    #[test]
    fn power_loss_at_every_operation_of_a_cut() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (mut k, mut kept_old, mut cut_seen) = (0u64, 0, 0);
        let old_small = |i: u64| old(i)[..(100 + i as usize * 13 % 400)].to_vec();
        loop {
            let (done, crashed_during_cut) = rt.block_on(async {
                let disk = SimDisk::new(k);
                let wal = Wal::open(DIR, opts().sim(&disk)).await.unwrap();
                // Several segments: the cut voids all but the first.
                for i in 1..=80 {
                    wal.append(&old_small(i)).await.unwrap();
                }
                assert!(wal.stats().segments_live >= 3);
                let seen = Arc::new(AtomicU64::new(0));
                {
                    let seen = Arc::clone(&seen);
                    disk.crash_when(move |_| seen.fetch_add(1, Ordering::SeqCst) == k);
                }
                let cut = wal.truncate_after(Lsn::new(15)).await.is_ok();
                let mut acked = 0u64;
                if cut {
                    for i in 1..=12 {
                        if wal.append(&new(0, i)).await.is_err() {
                            break;
                        }
                        acked = i;
                    }
                }
                let crashed = disk.crashed();
                drop(wal);
                let disk = if k % 3 == 2 { disk.restart_process() } else { disk.restart() };
                let wal = Wal::open(DIR, opts().sim(&disk))
                    .await
                    .unwrap_or_else(|e| panic!("crash point {k}: reopen failed: {e}"));
                let got = read_all(&wal, Lsn::FIRST);
                let head: Vec<(u64, Vec<u8>)> = (1..=15).map(|i| (i, old_small(i))).collect();
                assert_eq!(got.get(..15), Some(&head[..]), "crash point {k}: records up to the cut");
                let rest = &got[15..];
                let all_old: Vec<(u64, Vec<u8>)> = (16..=80).map(|i| (i, old_small(i))).collect();
                let is_new_prefix = rest
                    .iter()
                    .enumerate()
                    .all(|(j, (lsn, r))| *lsn == 16 + j as u64 && *r == new(0, j as u64 + 1));
                if cut {
                    assert!(is_new_prefix, "crash point {k}: an old record came back after the cut returned");
                    assert!(
                        rest.len() as u64 >= acked,
                        "crash point {k}: acknowledged appends after the cut lost"
                    );
                } else {
                    assert!(
                        rest == &all_old[..] || rest.is_empty(),
                        "crash point {k}: a cut that did not return left {} records above it",
                        rest.len()
                    );
                }
                let kept = usize::from(!cut && rest == &all_old[..]);
                // Life goes on: append after recovery and reopen.
                let next = wal.append(b"after").await.unwrap();
                assert_eq!(next.get(), got.len() as u64 + 1, "crash point {k}");
                wal.close().await.unwrap();
                (!crashed, (crashed && !cut, kept))
            });
            if crashed_during_cut.0 {
                cut_seen += 1;
                kept_old += crashed_during_cut.1;
            }
            if done {
                break;
            }
            k += 1;
        }
        println!("{k} crash points; {cut_seen} during the cut, {kept_old} of them kept the old records");
        assert!(
            cut_seen >= 2 && kept_old >= 1,
            "{k} crash points, {cut_seen} during the cut, {kept_old} kept"
        );
    }

    /// A random mix of appends (single records and atomic pairs), cuts at
    /// random group boundaries (repeated, right after a reopen, below
    /// checkpoints) and checkpoints, with power lost (or the process
    /// killed) at a random operation, two rounds per seed. After each
    /// crash the recovered log must be the log as it was before the
    /// operation that crashed, or as that operation would have left it
    /// (nothing else: appends are acknowledged durable, so every earlier
    /// operation's effect is there), apart from records below a
    /// checkpoint.
    #[test]
    fn random_cuts_appends_and_checkpoints_through_crashes() {
        use super::common::Rng;
        type Log = Vec<(u64, Vec<u8>, bool)>; // LSN, bytes, ends its group

        /// `got` against `want`: equal from `got`'s first LSN on, which may
        /// be later than `want`'s only up to the checkpoint `floor`.
        fn matches(got: &[(u64, Vec<u8>)], want: &Log, floor: u64) -> bool {
            let Some(first) = got.first().map(|r| r.0) else {
                return want.iter().all(|r| r.0 < floor);
            };
            let kept: Vec<(u64, Vec<u8>)> =
                want.iter().filter(|r| r.0 >= first).map(|r| (r.0, r.1.clone())).collect();
            let first_wanted = want.first().map_or(first, |r| r.0);
            kept == got && (first <= first_wanted.max(floor))
        }

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (mut cuts, mut crashes, mut refused) = (0u64, 0u64, 0u64);
        const SEEDS: u64 = 300;
        for seed in 0..SEEDS {
            rt.block_on(async {
                let mut rng = Rng(seed * 7 + 1);
                let mut disk = SimDisk::new(seed);
                let mut log: Log = Vec::new();
                let mut floor = 0u64;
                for round in 0..2 {
                    let wal = Wal::open(DIR, opts().sim(&disk)).await.unwrap_or_else(|e| panic!("seed {seed}: open: {e}"));
                    let got = read_all(&wal, Lsn::FIRST);
                    if round == 0 {
                        assert!(got.is_empty());
                    }
                    let mut next = got.last().map_or(wal.first_lsn().get(), |r| r.0 + 1);
                    disk.crash_after(1 + rng.below(120));
                    let mut before: Log = log.clone();
                    let mut after: Log = log.clone();
                    for op in 0..60u64 {
                        before.clone_from(&log);
                        after.clone_from(&log);
                        let ok = match rng.below(10) {
                            0..=5 => {
                                // Names its round, operation and cut count: a stale
                                // record under a reused LSN never matches.
                                let mut r = format!("{seed}/{round}/{op}/{cuts}:").into_bytes();
                                r.resize(50 + rng.below(700) as usize, b'.');
                                after.push((next, r.clone(), true));
                                wal.append(&r).await.is_ok()
                            }
                            6 | 7 => {
                                let mut a = format!("{seed}/{round}/{op}/{cuts}a").into_bytes();
                                a.resize(30 + rng.below(300) as usize, b'.');
                                let mut b = format!("{seed}/{round}/{op}/{cuts}b").into_bytes();
                                b.resize(30 + rng.below(300) as usize, b'.');
                                after.push((next, a.clone(), false));
                                after.push((next + 1, b.clone(), true));
                                wal.append_batch([a, b]).await.is_ok()
                            }
                            8 => {
                                // A group boundary at or below the end (or
                                // a random LSN, to see refusals).
                                let ends: Vec<u64> = log.iter().filter(|r| r.2).map(|r| r.0).collect();
                                let lsn = if ends.is_empty() || rng.below(5) == 0 {
                                    rng.below(next + 1)
                                } else {
                                    ends[rng.below(ends.len() as u64) as usize]
                                };
                                after.retain(|r| r.0 <= lsn);
                                match wal.truncate_after(Lsn::new(lsn)).await {
                                    Ok(_) => {
                                        cuts += 1;
                                        if lsn + 1 < next {
                                            next = lsn + 1;
                                        }
                                        true
                                    }
                                    Err(aiowal::Error::CutInsideBatch { .. } | aiowal::Error::CutBeforeStart { .. }) => {
                                        refused += 1;
                                        after.clone_from(&log);
                                        true
                                    }
                                    Err(_) => false,
                                }
                            }
                            _ => {
                                let to = Lsn::new(rng.below(next + 1).max(1));
                                // Raised first: a crashed one may have removed segments.
                                floor = floor.max(to.get());
                                wal.truncate_before(to).await.is_ok()
                            }
                        };
                        if !ok {
                            break;
                        }
                        log.clone_from(&after);
                        if let Some(r) = log.last() {
                            next = next.max(r.0 + 1);
                        }
                    }
                    crashes += u64::from(disk.crashed());
                    drop(wal);
                    disk = if rng.below(3) == 0 { disk.restart_process() } else { disk.restart() };
                    let wal = Wal::open(DIR, opts().sim(&disk)).await.unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen: {e}"));
                    let got = read_all(&wal, Lsn::FIRST);
                    let ok_before = matches(&got, &before, floor);
                    let ok_after = matches(&got, &after, floor);
                    assert!(
                        ok_before || ok_after || matches(&got, &log, floor),
                        "seed {seed} round {round}: recovered {:?} matches neither the log before the crashed operation {:?} nor after it {:?} (floor {floor})",
                        got.iter().map(|r| r.0).collect::<Vec<_>>(),
                        before.iter().map(|r| r.0).collect::<Vec<_>>(),
                        after.iter().map(|r| r.0).collect::<Vec<_>>(),
                    );
                    log = got.into_iter().map(|(l, b)| (l, b, true)).collect();
                    // (Group ends of recovered records: atomic pairs come
                    // back whole, so only a pair's first record does not
                    // end its group; cutting there is refused and counted.)
                    wal.close().await.unwrap();
                    drop(wal);
                    disk = disk.restart();
                }
            });
        }
        println!("{SEEDS} seeds: {cuts} cuts, {refused} refused, {crashes} crashes");
        assert!(cuts > 200 && crashes > 200, "{cuts} cuts, {crashes} crashes");
    }

    /// A cut whose future is dropped part way (after any number of its
    /// steps), then checkpoints that retire the cut segment, then a
    /// reopen: the log is the cut one or the uncut one, never the cut one
    /// with dropped records back (voided files go before a checkpoint may
    /// retire the segment that voids them).
    #[test]
    fn a_cut_dropped_part_way_then_checkpointed_never_brings_records_back() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (mut cut_seen, mut uncut_seen) = (0, 0);
        let small = |i: u64| old(i)[..(100 + i as usize * 13 % 400)].to_vec();
        for polls in 0..40u64 {
            let cut = rt.block_on(async {
                let disk = SimDisk::new(polls);
                let wal = Wal::open(DIR, opts().sim(&disk)).await.unwrap();
                for i in 1..=80 {
                    wal.append(&small(i)).await.unwrap();
                }
                tokio::select! {
                    biased;
                    _ = async {
                        for _ in 0..polls {
                            tokio::task::yield_now().await;
                        }
                    } => {}
                    r = wal.truncate_after(Lsn::new(15)) => { r.unwrap(); }
                }
                let next = wal.append(b"probe").await.unwrap().get();
                let cut = next == 16;
                assert!(cut || next == 81, "polls {polls}: next LSN {next}");
                let mut want: Vec<(u64, Vec<u8>)> =
                    (1..=if cut { 15 } else { 80 }).map(|i| (i, small(i))).collect();
                want.push((next, b"probe".to_vec()));
                let mut i = 0;
                while wal.stats().segments_live < 4 {
                    i += 1;
                    let lsn = wal.append(&new(1, i)[..300]).await.unwrap();
                    want.push((lsn.get(), new(1, i)[..300].to_vec()));
                }
                let newest = want.last().unwrap().0;
                wal.truncate_before(Lsn::new(newest)).await.unwrap();
                let first = wal.first_lsn().get();
                want.retain(|r| r.0 >= first);
                wal.close().await.unwrap();
                drop(wal);
                let disk = disk.restart();
                let wal = Wal::open(DIR, opts().sim(&disk)).await.unwrap();
                let got = read_all(&wal, Lsn::FIRST);
                let lsns = |v: &[(u64, Vec<u8>)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
                assert!(
                    got == want,
                    "polls {polls} (cut: {cut}): got {:?}, want {:?}",
                    lsns(&got),
                    lsns(&want)
                );
                wal.close().await.unwrap();
                cut
            });
            if cut {
                cut_seen += 1;
            } else {
                uncut_seen += 1;
            }
        }
        assert!(cut_seen > 0 && uncut_seen > 0, "{cut_seen} cut, {uncut_seen} not");
    }
}
