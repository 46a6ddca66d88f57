//! Durability levels: what `append` acknowledges, when the log syncs, and
//! what survives a crash under each level, on every backend and the crash
//! simulator's disk.

mod common;

use std::time::Duration;

use aiowal::{Backend, Durability, Lsn, Wal};
use common::*;

per_backend_and_sim!(
    sim: [
        relaxed_appends_are_acknowledged_written_and_synced_on_request,
        a_segment_switch_syncs_the_old_segment,
        periodic_syncs_without_being_asked,
        immediate_acknowledges_only_durable_records,
        syncs_requested_across_segment_switches_cover_the_right_files,
    ],
    real: [],
);

/// Whether the backend honours relaxed levels (the lio backends sync every
/// batch under every level).
fn honours(backend: Backend) -> bool {
    backend != Backend::Lio
}

fn rec(i: u64) -> Vec<u8> {
    record(7, i, 200 + (i as usize * 131) % 3000)
}

/// `Durability::None`: appends return once written, the durable watermark
/// stays behind until `sync` (or `Staged::durable`) asks for a sync, and a
/// clean close makes everything durable.
async fn relaxed_appends_are_acknowledged_written_and_synced_on_request(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let wal = Wal::open(&path, small(backend).durability(Durability::None)).await.unwrap();
    for i in 1..=20 {
        assert_eq!(wal.append(&rec(i)).await.unwrap(), Lsn::new(i));
        assert!(wal.written_lsn() >= Lsn::new(i), "acknowledged means written");
        assert!(wal.durable_lsn() <= wal.written_lsn());
    }
    if honours(backend) {
        assert_eq!(wal.durable_lsn(), Lsn::ZERO, "nothing synced without being asked");
        assert_eq!(wal.stats().syncs, 0, "stats count syncs, not batches");
        assert!(wal.stats().batches >= 1);
    }
    let syncs = wal.stats().syncs;
    assert_eq!(wal.sync().await.unwrap(), Lsn::new(20));
    if honours(backend) {
        assert_eq!(wal.stats().syncs, syncs + 1, "one sync for everything written");
    }
    assert_eq!(wal.durable_lsn(), Lsn::new(20));
    let staged = wal.stage(&rec(21)).await.unwrap();
    assert_eq!(staged.durable().await.unwrap().last(), Lsn::new(21), "Staged::durable waits for a sync");
    assert!(wal.durable_lsn() >= Lsn::new(21));
    for i in 22..=40 {
        wal.append(&rec(i)).await.unwrap();
    }
    // Readers see durable records only.
    assert_eq!(read_all(&wal, Lsn::FIRST).len() as u64, wal.durable_lsn().get());
    wal.close().await.unwrap();
    drop(wal);
    let wal = Wal::open(&path, small(backend)).await.unwrap();
    let got = read_all(&wal, Lsn::FIRST);
    assert_eq!(got, (1..=40).map(|i| (i, rec(i))).collect::<Vec<_>>(), "close synced everything");
    wal.close().await.unwrap();
}

/// Under `None`, appending across several segments: every segment but the
/// newest is synced (a switch syncs the old segment first), so the durable
/// watermark reaches at least the start of the newest segment.
async fn a_segment_switch_syncs_the_old_segment(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path().join("log"), small(backend).durability(Durability::None)).await.unwrap();
    let mut i = 0;
    while wal.stats().segments_live < 3 {
        i += 1;
        wal.append(&rec(i)).await.unwrap();
    }
    // About 90 records of 1.7 KB fill a 256 KiB segment.
    assert!(wal.durable_lsn().get() >= 60, "durable {} after {i} records in 3 segments", wal.durable_lsn());
    assert!(wal.durable_lsn().get() < i || !honours(backend));
    wal.close().await.unwrap();
}

/// `Periodic(d)`: the durable watermark catches up within a few periods
/// with nobody asking.
async fn periodic_syncs_without_being_asked(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(backend).durability(Durability::Periodic(Duration::from_millis(20)));
    let wal = Wal::open(dir.path().join("log"), opts).await.unwrap();
    for round in 0..3u64 {
        for i in 1..=10 {
            wal.append(&rec(round * 10 + i)).await.unwrap();
        }
        let want = Lsn::new(round * 10 + 10);
        let mut waited = 0;
        while wal.durable_lsn() < want {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
            assert!(waited < 500, "round {round}: no periodic sync in 5 s ({})", wal.durable_lsn());
        }
    }
    wal.close().await.unwrap();
}

/// `Immediate` (the default): an acknowledged record is durable.
async fn immediate_acknowledges_only_durable_records(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path().join("log"), small(backend)).await.unwrap();
    for i in 1..=30 {
        let lsn = wal.append(&rec(i)).await.unwrap();
        assert!(wal.durable_lsn() >= lsn);
        assert_eq!(wal.stats().syncs, wal.stats().batches, "one sync per batch");
        assert_eq!(wal.written_lsn(), wal.durable_lsn().max(wal.written_lsn()));
    }
    wal.close().await.unwrap();
}

/// Under `None`, each record staged then awaited durable, across many
/// segment switches (a sync asked for while a new segment's first batch
/// is in flight must sync that segment, not the one before), then
/// reopened: every record is there.
async fn syncs_requested_across_segment_switches_cover_the_right_files(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let wal = Wal::open(&path, small(backend).durability(Durability::None)).await.unwrap();
    let mut i = 0;
    while wal.stats().segments_live < 6 {
        i += 1;
        let staged = wal.stage(&rec(i)).await.unwrap();
        assert_eq!(staged.durable().await.unwrap().last(), Lsn::new(i));
        assert!(wal.durable_lsn() >= Lsn::new(i));
        if i % 7 == 0 {
            wal.append(&rec(1_000_000 + i)).await.unwrap();
            i += 1;
            assert!(wal.sync().await.unwrap() >= Lsn::new(i));
        }
    }
    let want = read_all(&wal, Lsn::FIRST);
    assert_eq!(want.len() as u64, i);
    wal.close().await.unwrap();
    drop(wal);
    let wal = Wal::open(&path, small(backend)).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want);
    wal.close().await.unwrap();
}

#[test]
fn periodic_on_a_runtime_without_timers_is_refused() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_io().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = aiowal::Options::default()
        .backend(Backend::Threaded)
        .durability(Durability::Periodic(Duration::from_millis(5)));
    match rt.block_on(Wal::open(dir.path(), opts)) {
        Err(aiowal::Error::Runtime(why)) => assert!(why.contains("time driver"), "{why}"),
        other => panic!("expected Error::Runtime, got {other:?}"),
    }
}

#[cfg(feature = "sim")]
mod crashes {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use aiowal::sim::{Checker, SimDisk};
    use aiowal::{Durability, Lsn, Options, Wal};

    use super::common::Rng;

    const DIR: &str = "/sim/durability";

    fn opts(level: Durability) -> Options {
        Options::default()
            .alignment(512)
            .batch_bytes_max(4096)
            .segment_bytes(16384)
            .max_record_bytes(1500)
            .durability(level)
    }

    /// Four appenders (single records and atomic pairs) under a relaxed
    /// level, syncing now and then, with power lost (or the process killed)
    /// at a random operation, over several restarts: after every recovery
    /// the log holds every record a completed sync covered, then a prefix
    /// of the rest, atomic pairs whole, LSNs dense. Half the seeds compress
    /// their batches.
    #[test]
    fn relaxed_levels_keep_every_synced_record_through_crashes() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (mut crashes, mut synced_checked, mut lost_unsynced) = (0u64, 0u64, 0u64);
        let mut compressed = 0u64;
        for seed in 0..200u64 {
            let level =
                if seed % 2 == 0 { Durability::None } else { Durability::Periodic(Duration::from_millis(1)) };
            rt.block_on(async {
                let mut rng = Rng(seed * 2 + 1);
                let mut disk = SimDisk::new(seed);
                let checker = Arc::new(Mutex::new(Checker::new()));
                for round in 0..3 {
                    let o = opts(level);
                    // Half the seeds compress (their records do).
                    #[cfg(feature = "compression")]
                    let o = if seed % 4 < 2 { o.compression(aiowal::Compression::Lz4) } else { o };
                    let wal = Wal::open(DIR, o.sim(&disk))
                        .await
                        .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen: {e}"));
                    if round > 0 {
                        let report = checker.lock().unwrap().check(&wal);
                        let r =
                            report.unwrap_or_else(|v| panic!("seed {seed} round {round} ({level:?}): {v}"));
                        synced_checked += r.acked;
                        lost_unsynced += r.lost_unacked;
                    }
                    disk.crash_after(1 + rng.below(150));
                    let mut tasks = Vec::new();
                    for t in 0..4u64 {
                        let (wal, checker) = (wal.clone(), Arc::clone(&checker));
                        let mut rng = Rng(seed * 31 + t * 7 + round * 1000 + 3);
                        tasks.push(tokio::spawn(async move {
                            for i in 0..30u64 {
                                let len = 20 + rng.below(600) as usize;
                                let recs: Vec<Vec<u8>> = if rng.below(4) == 0 {
                                    vec![vec![t as u8; len], vec![i as u8; len / 2 + 1]]
                                } else {
                                    vec![vec![(t * 40 + i) as u8; len]]
                                };
                                let staged = if recs.len() == 1 {
                                    wal.stage(&recs[0]).await
                                } else {
                                    wal.stage_batch(&recs).await
                                };
                                let Ok(staged) = staged else { return };
                                checker.lock().unwrap().staged(staged.lsns(), &recs, recs.len() > 1);
                                if rng.below(10) == 0 {
                                    // Only a completed sync is a promise.
                                    match staged.durable().await {
                                        Ok(r) => checker.lock().unwrap().synced(r.last()),
                                        Err(_) => return,
                                    }
                                } else {
                                    tokio::task::yield_now().await;
                                }
                                checker.lock().unwrap().synced(wal.durable_lsn());
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    crashes += u64::from(disk.crashed());
                    compressed += wal.stats().batches_compressed;
                    drop(wal);
                    disk = if rng.below(3) == 0 { disk.restart_process() } else { disk.restart() };
                }
            });
        }
        println!(
            "200 seeds: {crashes} crashes, {synced_checked} synced records checked, {lost_unsynced} unsynced records lost"
        );
        assert!(crashes > 100 && synced_checked > 1000, "{crashes} crashes, {synced_checked} checked");
        println!("{compressed} batches compressed");
        assert!(!cfg!(feature = "compression") || compressed > 100, "{compressed} batches compressed");
    }

    #[test]
    fn durable_lsn_never_runs_ahead_of_a_sync() {
        // Appends under `None` with no sync: a power loss keeps at least
        // what `durable_lsn` said (here: what the segment switches synced).
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let disk = SimDisk::new(3);
            let wal = Wal::open(DIR, opts(Durability::None).sim(&disk)).await.unwrap();
            for i in 0..120u64 {
                wal.append(&vec![i as u8; 400]).await.unwrap();
            }
            let durable = wal.durable_lsn();
            assert!(durable > Lsn::ZERO && durable < Lsn::new(120), "{durable}");
            drop(wal);
            let disk = disk.restart();
            let wal = Wal::open(DIR, opts(Durability::None).sim(&disk)).await.unwrap();
            let got = wal.read_from(Lsn::FIRST).unwrap().count() as u64;
            assert!(got >= durable.get(), "recovered {got} records, {durable} were durable");
            wal.close().await.unwrap();
        });
    }
}
