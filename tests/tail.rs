//! `Wal::tail`: a live stream of durable records, on every backend and the
//! crash simulator's disk.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aiowal::{Backend, Error, Lsn, Wal};
use common::*;

per_backend_and_sim!(
    sim: [
        tail_follows_appends_rotations_and_checkpoints,
        tail_that_falls_behind_a_checkpoint_errors,
        a_reader_that_falls_behind_a_checkpoint_errors,
        tail_ends_when_the_log_closes,
        idle_tail_does_not_hold_appends_back,
    ],
    real: [],
);

/// Eight appenders (single records and atomic pairs) across many small
/// segments while a checkpointer truncates up to what the tail has read:
/// the tail returns every LSN once, in order, byte for byte, never ahead of
/// the durable watermark, and ends after `close`.
async fn tail_follows_appends_rotations_and_checkpoints(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(backend).segments_recycled_max(2);
    let wal = Wal::open(dir.path().join("log"), opts).await.unwrap();
    let read_to = Arc::new(AtomicU64::new(0));
    let follower = {
        let (mut tail, wal, read_to) = (wal.tail(Lsn::FIRST), wal.clone(), Arc::clone(&read_to));
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(r) = tail.next().await {
                let r = r.unwrap();
                assert!(r.lsn() <= wal.durable_lsn(), "LSN {} returned before it was durable", r.lsn());
                assert_eq!(r.lsn().get(), got.len() as u64 + 1, "LSNs in order, none skipped");
                got.push(r.to_vec());
                read_to.store(r.lsn().get(), Ordering::Release);
                assert_eq!(tail.next_lsn().get(), got.len() as u64 + 1);
            }
            got
        })
    };
    let checkpointer = {
        let (wal, read_to) = (wal.clone(), Arc::clone(&read_to));
        tokio::spawn(async move {
            let mut retired = 0;
            loop {
                tokio::task::yield_now().await;
                let upto = read_to.load(Ordering::Acquire);
                match wal.truncate_before(Lsn::new(upto.max(1))).await {
                    Ok(n) => retired += n,
                    Err(Error::Closed) => break,
                    Err(e) => panic!("truncate_before: {e}"),
                }
            }
            retired
        })
    };
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60u64 {
                let len = 200 + (task * 61 + i * 17) as usize % 3000;
                if i % 7 == 3 {
                    let pair = [record(task, i, len), record(task, i + 1000, len / 2)];
                    let range = wal.append_batch(&pair).await.unwrap();
                    acked.push((range.first().get(), pair[0].clone()));
                    acked.push((range.last().get(), pair[1].clone()));
                } else {
                    let r = record(task, i, len);
                    acked.push((wal.append(&r).await.unwrap().get(), r));
                }
            }
            acked
        }));
    }
    let mut want = BTreeMap::new();
    for t in tasks {
        want.extend(t.await.unwrap());
    }
    // Let the follower catch up, then close: the tail must end.
    while read_to.load(Ordering::Acquire) < want.len() as u64 {
        tokio::task::yield_now().await;
    }
    wal.close().await.unwrap();
    let got = follower.await.unwrap();
    let retired = checkpointer.await.unwrap();
    assert!(retired > 0, "segments were retired (and recycled) under the tail");
    assert_eq!(got.len(), want.len());
    for (lsn, r) in want {
        assert_eq!(got[(lsn - 1) as usize], r, "LSN {lsn}");
    }
}

/// A tail that starts before the log's start, or falls behind a
/// checkpoint, fails with `Error::Truncated` naming both LSNs, then ends.
async fn tail_that_falls_behind_a_checkpoint_errors(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path().join("log"), small(backend)).await.unwrap();
    let mut slow = wal.tail(Lsn::FIRST);
    for i in 0..400u64 {
        wal.append(&record(1, i, 2000)).await.unwrap();
    }
    let retired = wal.truncate_before(Lsn::new(300)).await.unwrap();
    assert!(retired > 0, "small segments: something retired");
    let first = wal.first_lsn().get();
    assert!(first > 1);
    match slow.next().await {
        Some(Err(Error::Truncated { lsn, first: f })) => assert_eq!((lsn, f), (1, first)),
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(slow.next().await.is_none(), "ends after the error");
    // A tail from the new start reads on.
    let mut ok = wal.tail(Lsn::new(first));
    assert_eq!(ok.next().await.unwrap().unwrap().lsn().get(), first);
    wal.close().await.unwrap();
}

/// A reader (`read_from`) that a checkpoint passes reads on through the
/// segment it was in, then gets `Error::Truncated` (naming the LSN it
/// needed and where the log starts now) at a segment `truncate_before`
/// removed: not an I/O error about a missing file.
async fn a_reader_that_falls_behind_a_checkpoint_errors(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path().join("log"), small(backend)).await.unwrap();
    for i in 0..400u64 {
        wal.append(&record(1, i, 2000)).await.unwrap();
    }
    let mut it = wal.read_from(Lsn::FIRST).unwrap();
    assert_eq!(it.next().unwrap().unwrap().lsn(), Lsn::FIRST);
    // One that has not read yet, from inside a segment about to go.
    let mut unread = wal.read_from(Lsn::new(150)).unwrap();
    let retired = wal.truncate_before(Lsn::new(300)).await.unwrap();
    let first = wal.first_lsn().get();
    assert!(retired >= 2 && first > 200, "{retired} retired, log starts at {first}");
    let mut last = 1u64;
    let err = loop {
        match it.next() {
            Some(Ok(r)) => {
                assert_eq!((r.lsn().get(), r.data()), (last + 1, &record(1, last, 2000)[..]));
                last += 1;
            }
            Some(Err(e)) => break e,
            None => panic!("ended after LSN {last} without an error"),
        }
    };
    match err {
        Error::Truncated { lsn, first: f } => assert_eq!((lsn, f), (last + 1, first)),
        other => panic!("expected Truncated after LSN {last}, got {other:?}"),
    }
    assert!(it.next().is_none(), "ends after the error");
    match unread.next() {
        Some(Err(Error::Truncated { lsn, first: f })) => assert_eq!((lsn, f), (150, first)),
        other => panic!("expected Truncated at LSN 150, got {other:?}"),
    }
    wal.close().await.unwrap();
}

/// After `close` (or the last handle dropped) a tail waiting at the end
/// returns `None`; a tail created after close returns what was durable.
async fn tail_ends_when_the_log_closes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path().join("log"), small(backend)).await.unwrap();
    wal.append(b"only").await.unwrap();
    let mut waiting = wal.tail(Lsn::FIRST);
    assert_eq!(waiting.next().await.unwrap().unwrap().data(), b"only");
    let pending = tokio::spawn(async move { waiting.next().await.map(|r| r.map(|r| r.lsn())) });
    tokio::task::yield_now().await;
    wal.close().await.unwrap();
    assert!(pending.await.unwrap().is_none(), "a waiting tail ends when the log closes");

    let wal = Wal::open(dir.path().join("log"), small(backend)).await.unwrap();
    let mut waiting = wal.tail(Lsn::new(2));
    let pending = tokio::spawn(async move { waiting.next().await.map(|r| r.map(|r| r.lsn())) });
    tokio::task::yield_now().await;
    drop(wal); // the last handle
    assert!(pending.await.unwrap().is_none(), "a waiting tail ends when the last handle goes");
}

/// A tail that is never read holds nothing back: appends across many
/// rotations and checkpoints all complete.
async fn idle_tail_does_not_hold_appends_back(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path().join("log"), small(backend)).await.unwrap();
    let mut idle = wal.tail(Lsn::FIRST);
    assert_eq!(idle.next_lsn(), Lsn::FIRST);
    for i in 0..600u64 {
        let lsn = wal.append(&record(2, i, 3000)).await.unwrap();
        if i % 50 == 49 {
            wal.truncate_before(lsn).await.unwrap();
        }
    }
    assert!(wal.first_lsn().get() > 1);
    assert!(matches!(idle.next().await, Some(Err(Error::Truncated { .. }))));
    wal.close().await.unwrap();
}

/// A tail made on a new, empty log (before its first segment holds
/// anything) returns the first records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_of_a_new_log_starts_at_its_first_record() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("log"), aiowal::Options::default()).await.unwrap();
        let mut tail = wal.tail(Lsn::FIRST);
        let follower = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(r) = tail.next().await {
                got.push(r.map(|r| r.to_vec()));
            }
            got
        });
        wal.append(b"one").await.unwrap();
        wal.append(b"two").await.unwrap();
        wal.close().await.unwrap();
        let got: Vec<_> = follower.await.unwrap();
        assert!(got.iter().all(|r| r.is_ok()), "round {round}: {got:?}");
        assert_eq!(got.len(), 2, "round {round}: {got:?}");
    }
}

/// `Tail::into_stream` (feature `stream`): the same records as `next`, in
/// order, across rotations, ending after `close`.
#[cfg(feature = "stream")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_as_a_stream_yields_every_record_then_ends() {
    use std::pin::Pin;

    use futures_core::Stream;

    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path().join("log"), small(Backend::Auto)).await.unwrap();
    let mut stream = wal.tail(Lsn::FIRST).into_stream();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(r) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            let r = r.unwrap();
            got.push((r.lsn().get(), r.to_vec()));
        }
        // Ended: it stays ended.
        assert!(std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await.is_none());
        got
    });
    let mut want = Vec::new();
    for i in 1..=400u64 {
        let r = record(3, i, 100 + (i as usize * 37) % 2000);
        assert_eq!(wal.append(&r).await.unwrap(), Lsn::new(i));
        want.push((i, r));
    }
    assert!(wal.stats().segments_live >= 2);
    wal.close().await.unwrap();
    assert_eq!(reader.await.unwrap(), want);
}
