//! `aiowal::raft::RaftLog` through crashes: appends, truncates, purges, votes
//! and committed ids interleaved with simulated power losses; after every
//! recovery (from a power loss, or a process kill that leaves the page
//! cache) the adapter's state must be the state after some prefix of the
//! operations that includes every operation openraft was told was durable
//! (the committed id excepted: one it held earlier in that prefix will do).
//! Plus a reopen on the real file system after purges reclaimed segments.

#[path = "../examples/raft_kv/sm.rs"]
mod sm;

use std::collections::BTreeMap;

use aiowal::raft::RaftLog;
use aiowal::sim::{Rng, SimDisk};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use sm::{Config, NodeId, Op, Request};

const DIR: &str = "/sim/raft";

fn opts() -> aiowal::Options {
    aiowal::Options::default().alignment(512).segment_bytes(8192).batch_bytes_max(2048).max_record_bytes(1024)
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, rng: &mut Rng) -> Entry<Config> {
    let key = format!("k{}", rng.below(20)).into_bytes();
    // One in eight larger than a record (1 KiB here), some larger than a
    // batch (2 KiB): stored as part records, across batches.
    let len = if rng.below(8) == 0 { 1000 + rng.below(4000) } else { rng.below(300) };
    let value = (0..len).map(|i| (i % 251) as u8).collect();
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Request::new(&Op::Put(key, value))) }
}

/// An entry's log id and exact bytes (its Debug output omits the payload).
fn text(e: &Entry<Config>) -> String {
    let bytes = postcard::to_stdvec(e).unwrap();
    format!("{} {}", e.log_id, bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl View {
    fn summary(&self) -> String {
        let r = |k: Option<&u64>| k.copied();
        format!(
            "entries {:?}..={:?} ({}), purged {:?}, vote {:?}, committed {:?}",
            r(self.entries.keys().next()),
            r(self.entries.keys().next_back()),
            self.entries.len(),
            self.purged,
            self.vote,
            self.committed
        )
    }
}

/// One storage call, as the model replays it.
#[derive(Debug, Clone)]
enum Call {
    Append(Vec<Entry<Config>>),
    Truncate(LogId<NodeId>),
    Purge(LogId<NodeId>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
}

/// What the adapter must show: entries (as text), purged id, vote, committed.
#[derive(Debug, Clone, PartialEq, Default)]
struct View {
    entries: BTreeMap<u64, String>,
    purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl View {
    fn apply(&mut self, call: &Call) {
        match call {
            Call::Append(es) => {
                for e in es {
                    self.entries.insert(e.log_id.index, text(e));
                }
            }
            Call::Truncate(id) => self.entries.retain(|&i, _| i < id.index),
            Call::Purge(id) => {
                self.entries.retain(|&i, _| i > id.index);
                if self.purged.is_none_or(|p| id.index > p.index) {
                    self.purged = Some(*id);
                }
            }
            Call::Vote(v) => self.vote = Some(*v),
            Call::Committed(c) => self.committed = *c,
        }
    }

    fn next_index(&self) -> u64 {
        self.entries.keys().next_back().map(|i| i + 1).or(self.purged.map(|p| p.index + 1)).unwrap_or(0)
    }

    async fn of(log: &mut RaftLog<Config>) -> View {
        let state = log.get_log_state().await.unwrap();
        let entries = log.try_get_log_entries(..).await.unwrap();
        let view = View {
            entries: entries.iter().map(|e| (e.log_id.index, text(e))).collect(),
            purged: state.last_purged_log_id,
            vote: log.read_vote().await.unwrap(),
            committed: log.read_committed().await.unwrap(),
        };
        let last = entries.last().map(|e| e.log_id);
        assert_eq!(state.last_log_id, last.or(view.purged), "log state's last log id");
        view
    }
}

/// A random call that openraft could make in the current state.
fn next_call(view: &View, term: &mut u64, rng: &mut Rng) -> Call {
    let next = view.next_index();
    let first = view.entries.keys().next().copied();
    match rng.below(12) {
        0 => {
            *term += 1;
            Call::Vote(Vote::new(*term, 1))
        }
        1 if next > 0 => Call::Committed(Some(log_id(*term, rng.below(next)))),
        2 if first.is_some() => {
            Call::Truncate(log_id(*term, first.unwrap_or(0) + rng.below(next - first.unwrap_or(0))))
        }
        3 if next > 0 => Call::Purge(log_id(*term, next.saturating_sub(1 + rng.below(4)))),
        _ => Call::Append((0..1 + rng.below(4)).map(|i| entry(*term, next + i, rng)).collect()),
    }
}

async fn call(log: &mut RaftLog<Config>, c: &Call) -> bool {
    let r = match c {
        Call::Append(es) => log.blocking_append(es.clone()).await,
        Call::Truncate(id) => log.truncate(*id).await,
        Call::Purge(id) => log.purge(*id).await,
        Call::Vote(v) => log.save_vote(v).await,
        Call::Committed(c) => log.save_committed(*c).await,
    };
    r.is_ok()
}

/// The recovered view must be the view after `calls[..k]` for some k from
/// `acked` (everything acknowledged) to all calls issued, or after those and
/// a prefix of the entries of the append that followed them (an append too
/// large for one atomic batch is written in several); returns k and, for
/// the latter, the part of that append that survived.
fn matching_prefix(calls: &[Call], acked: usize, got: &View) -> Result<(usize, Option<Call>), String> {
    // `save_committed` is not waited for (openraft allows an older
    // committed id after a crash): the committed id recovered must be one
    // the log held at some point of the prefix, and everything else exact.
    let mut view = View::default();
    let mut held = vec![view.committed];
    for c in &calls[..acked] {
        view.apply(c);
        held.push(view.committed);
    }
    let mut tried = Vec::new();
    for k in acked..=calls.len() {
        if k > acked {
            view.apply(&calls[k - 1]);
            held.push(view.committed);
        }
        let matches = |v: &View| {
            View { committed: got.committed, ..v.clone() } == *got && held.contains(&got.committed)
        };
        if matches(&view) {
            return Ok((k, None));
        }
        // Only an append too large for one atomic batch can survive in
        // part. A batch here holds 2 KiB less a 512-byte block reserved
        // for a segment header; appends well under that (with frame
        // headers and a committed record carried along) never split.
        let large = |es: &[Entry<Config>]| {
            es.iter().map(|e| postcard::to_stdvec(e).unwrap().len() + 32).sum::<usize>() + 64 > 1300
        };
        if let Some(Call::Append(es)) = calls.get(k).filter(|c| matches!(c, Call::Append(es) if large(es))) {
            for j in 1..es.len() {
                let part = Call::Append(es[..j].to_vec());
                let mut v = view.clone();
                v.apply(&part);
                if matches(&v) {
                    return Ok((k, Some(part)));
                }
            }
        }
        tried.push(format!("  after {k} calls: {}", view.summary()));
    }
    let last: Vec<String> =
        calls.iter().rev().take(4).map(|c| format!("{c:?}").chars().take(120).collect()).collect();
    Err(format!(
        "recovered state matches no prefix of {} calls ({acked} acknowledged)\n  got: {}\n{}\n  last calls (newest first): {last:#?}",
        calls.len(),
        got.summary(),
        tried.join("\n")
    ))
}

async fn run_seed(seed: u64) -> Result<(usize, usize), String> {
    let mut rng = Rng::new(seed);
    let mut disk = SimDisk::new(seed);
    let mut calls: Vec<Call> = Vec::new();
    let mut acked = 0usize;
    let mut term = 1u64;
    let mut crashes = 0;
    for round in 0..4 {
        let mut log =
            RaftLog::<Config>::open(DIR, opts().sim(&disk)).await.map_err(|e| format!("open: {e}"))?;
        if round > 0 {
            let got = View::of(&mut log).await;
            let (k, part) =
                matching_prefix(&calls, acked, &got).map_err(|e| format!("round {round}: {e}"))?;
            calls.truncate(k); // the rest never happened
            calls.extend(part);
            acked = calls.len();
        }
        if round == 3 {
            break;
        }
        disk.crash_after(1 + rng.below(120));
        let mut view = View::default();
        for c in &calls {
            view.apply(c);
        }
        for _ in 0..40 {
            let c = next_call(&view, &mut term, &mut rng);
            calls.push(c.clone());
            if !call(&mut log, &c).await {
                break;
            }
            view.apply(&c);
            acked = calls.len();
        }
        drop(log);
        crashes += usize::from(disk.crashed());
        // Sometimes only the process dies (the page cache survives).
        disk = if rng.below(3) == 0 { disk.restart_process() } else { disk.restart() };
    }
    Ok((calls.len(), crashes))
}

#[test]
fn raft_log_survives_crashes() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut calls, mut crashes) = (0, 0);
    for seed in 0..300 {
        match rt.block_on(run_seed(seed)) {
            Ok((c, k)) => {
                calls += c;
                crashes += k;
            }
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    println!(
        "300 seeds: {calls} storage calls kept, {crashes} crashes mid-run (power losses and process kills), every recovery a prefix holding every ack"
    );
    assert!(crashes > 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_purge_keeps_vote_and_reclaims_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    log.save_vote(&Vote::new(3, 1)).await.unwrap();
    for i in 0..200 {
        log.blocking_append([entry(3, i, &mut rng)]).await.unwrap();
    }
    log.save_committed(Some(log_id(3, 150))).await.unwrap();
    log.truncate(log_id(3, 180)).await.unwrap();
    log.purge(log_id(3, 120)).await.unwrap();
    let before = View::of(&mut log).await;
    assert_eq!(before.entries.len(), 59);
    // Segments are removed in the background; close waits for it.
    log.close().await.unwrap();
    assert!(log.wal().first_lsn().get() > 100, "purge retired whole segments: {:?}", log.wal().first_lsn());
    drop(log);

    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    let after = View::of(&mut log).await;
    assert_eq!(after, before);
    assert_eq!(after.vote, Some(Vote::new(3, 1)), "the vote outlives the segments it was written in");
    // Appending continues after the last entry.
    log.blocking_append([entry(3, 180, &mut rng)]).await.unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(3, 180)));
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_refuses_a_hole_and_splits_a_batch_too_large_for_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(9);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    log.blocking_append([entry(1, 0, &mut rng), entry(1, 1, &mut rng)]).await.unwrap();
    // Index 3 after 1: a hole. Refused, and nothing reaches the log.
    let records = log.wal().stats().appends;
    assert!(log.blocking_append([entry(1, 3, &mut rng)]).await.is_err());
    assert_eq!(log.wal().stats().appends, records);
    // Eight ~900-byte entries exceed batch_bytes_max (2 KiB): they go in one
    // record each, in order.
    let big: Vec<Entry<Config>> = (2..10)
        .map(|i| Entry {
            log_id: log_id(1, i),
            payload: EntryPayload::Normal(Request::new(&Op::Put(b"k".to_vec(), vec![b'v'; 900]))),
        })
        .collect();
    log.blocking_append(big.clone()).await.unwrap();
    let got = log.try_get_log_entries(2..10).await.unwrap();
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), big.iter().map(text).collect::<Vec<_>>());
    log.close().await.unwrap();
    drop(log);
    assert_eq!(reopened(dir.path()).await, (Some(log_id(1, 9)), 10));
}

/// The last log id and the number of entries of the log in `dir`, reopened.
async fn reopened(dir: &std::path::Path) -> (Option<LogId<NodeId>>, usize) {
    let mut log = RaftLog::<Config>::open(dir, opts()).await.unwrap();
    let last = log.get_log_state().await.unwrap().last_log_id;
    let n = log.try_get_log_entries(..).await.unwrap().len();
    log.close().await.unwrap();
    (last, n)
}

fn put(term: u64, index: u64, len: usize) -> Entry<Config> {
    let value = (0..len).map(|i| (i * 7 % 253) as u8).collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request::new(&Op::Put(b"k".to_vec(), value))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_larger_than_a_record_are_stored_in_parts_and_read_back() {
    // Before: an entry over max_record_bytes failed the append, which
    // openraft treats as fatal (the node shuts down).
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    assert_eq!(log.max_record_bytes(), 1024);
    // Sizes around a record, a batch (2 KiB) and many segments (8 KiB):
    // one append mixing whole and split entries, then a large one alone.
    let sizes = [10, 1023, 1024, 1500, 2100, 5000, 20_000, 100];
    let mut all: Vec<Entry<Config>> = sizes.iter().enumerate().map(|(i, &n)| put(1, i as u64, n)).collect();
    log.blocking_append(all.clone()).await.unwrap();
    all.push(put(1, sizes.len() as u64, 30_000));
    log.blocking_append(all.last().cloned()).await.unwrap();
    let want: Vec<String> = all.iter().map(text).collect();
    let got = log.try_get_log_entries(..).await.unwrap();
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), want);
    // Single entries, from the middle of the log (a reader that starts at
    // a split entry's first part).
    for i in 0..all.len() as u64 {
        let one = log.try_get_log_entries(i..=i).await.unwrap();
        assert_eq!(one.iter().map(text).collect::<Vec<_>>(), want[i as usize..=i as usize]);
    }
    log.close().await.unwrap();
    drop(log);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap().iter().map(text).collect::<Vec<_>>(), want);
    // Purging retires whole segments, which can cut a purged split entry
    // in the middle: the next open skips its remaining parts.
    log.purge(log_id(1, 6)).await.unwrap();
    log.close().await.unwrap();
    drop(log);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    let st = log.get_log_state().await.unwrap();
    assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(log_id(1, 6)), Some(log_id(1, 8))));
    assert_eq!(log.try_get_log_entries(..).await.unwrap().iter().map(text).collect::<Vec<_>>(), want[7..]);
    log.close().await.unwrap();
}

#[test]
fn a_crash_between_the_parts_of_an_entry_leaves_it_out() {
    // Power loss at every operation of an append of a split entry (9 KB:
    // nine part records in several batches and segments): after recovery
    // the entry is all there or not at all, and the log continues.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut left_out, mut whole) = (0, 0);
    for ops in 1..=60u64 {
        let got = rt.block_on(async {
            let disk = SimDisk::new(ops);
            let mut log = RaftLog::<Config>::open(DIR, opts().sim(&disk)).await.unwrap();
            log.blocking_append([put(1, 0, 50)]).await.unwrap();
            disk.crash_after(ops);
            let acked = log.blocking_append([put(1, 1, 9000)]).await.is_ok();
            drop(log);
            let disk = disk.restart();
            let mut log = RaftLog::<Config>::open(DIR, opts().sim(&disk)).await.unwrap();
            let got = log.try_get_log_entries(..).await.unwrap();
            let next = got.len() as u64;
            log.blocking_append([put(1, next, 3000)]).await.unwrap();
            let again = log.try_get_log_entries(..).await.unwrap();
            assert_eq!(again.len(), got.len() + 1, "ops {ops}: the log continues after recovery");
            assert!(!acked || got.len() == 2, "ops {ops}: an acknowledged entry was lost");
            got
        });
        assert!(got.len() == 1 || got.len() == 2, "ops {ops}: {} entries", got.len());
        assert_eq!(text(&got[0]), text(&put(1, 0, 50)));
        if got.len() == 2 {
            assert_eq!(text(&got[1]), text(&put(1, 1, 9000)), "ops {ops}: the split entry came back whole");
            whole += 1;
        } else {
            left_out += 1;
        }
    }
    assert!(left_out > 5 && whole > 0, "crash points: {left_out} left the entry out, {whole} kept it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saving_committed_writes_with_the_next_record_and_adds_no_sync() {
    // Before: every save_committed wrote a record and waited for its own
    // sync, a second sync per client write.
    let dir = tempfile::tempdir().unwrap();
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    log.blocking_append([put(1, 0, 10)]).await.unwrap();
    let before = log.wal().stats();
    log.save_committed(Some(log_id(1, 0))).await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 0)));
    let after = log.wal().stats();
    assert_eq!(
        (after.appends, after.syncs),
        (before.appends, before.syncs),
        "nothing written, nothing synced"
    );
    // The next append carries it: one more record in the same batch.
    log.blocking_append([put(1, 1, 10)]).await.unwrap();
    let next = log.wal().stats();
    assert_eq!(next.appends, after.appends + 2);
    assert_eq!(next.batches, after.batches + 1, "one batch for the entry and the committed id");
    // A vote carries it too, in the vote's own batch (durable when the vote is).
    log.save_committed(Some(log_id(1, 1))).await.unwrap();
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    let voted = log.wal().stats();
    assert_eq!((voted.appends, voted.batches), (next.appends + 2, next.batches + 1));
    log.close().await.unwrap();
    assert_eq!(log.wal().stats().appends, voted.appends, "nothing left to write at close");
    drop(log);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1)), "carried by the vote's batch");
    // Close writes one still unsaved.
    log.blocking_append([put(1, 2, 10)]).await.unwrap();
    log.save_committed(Some(log_id(1, 2))).await.unwrap();
    log.close().await.unwrap();
    drop(log);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 2)), "written at close");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_the_earlier_record_format_are_still_read() {
    // Earlier versions wrote an entry as the operation `Entry(entry)`:
    // format byte 1, postcard's variant index 0, the entry. Opening reads
    // the log id of new records without decoding the payload; old ones
    // are decoded whole.
    let dir = tempfile::tempdir().unwrap();
    let old = put(2, 0, 100);
    let wal = aiowal::Wal::open(dir.path(), opts()).await.unwrap();
    let mut record = vec![1u8, 0];
    record.extend(postcard::to_stdvec(&old).unwrap());
    wal.append(&record).await.unwrap();
    wal.close().await.unwrap();
    drop(wal);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    log.blocking_append([put(2, 1, 3000)]).await.unwrap();
    let got = log.try_get_log_entries(..).await.unwrap();
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), [text(&old), text(&put(2, 1, 3000))]);
    log.close().await.unwrap();
    drop(log);
    assert_eq!(reopened(dir.path()).await, (Some(log_id(2, 1)), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_appending_at_once_cannot_both_pass_the_checks() {
    // Before: the hole check, the write and the index update were separate
    // steps, so two clones appending the same index both passed the check,
    // both were written, and the log no longer reopened.
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
        let (mut a, mut b) = (log.clone(), log.clone());
        a.blocking_append([put(1, 0, 10)]).await.unwrap();
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.blocking_append([put(1, 1, 10)]).await.is_ok() }),
            tokio::spawn(async move { b.blocking_append([put(2, 1, 20)]).await.is_ok() }),
        );
        assert_eq!(
            u8::from(ra.unwrap()) + u8::from(rb.unwrap()),
            1,
            "round {round}: exactly one append of index 1"
        );
        log.close().await.unwrap();
        drop(log);
        let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 2, "round {round}");
        log.close().await.unwrap();
    }
}

#[test]
fn purge_returns_before_its_segments_are_removed() {
    // Before: purge removed the segments before returning, blocking
    // openraft's core (95 ms for 298 segments). On a current-thread
    // runtime the removal task cannot have run when purge returns.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let disk = SimDisk::new(1);
        let mut log = RaftLog::<Config>::open(DIR, opts().sim(&disk)).await.unwrap();
        for i in 0..60 {
            log.blocking_append([put(1, i, 200)]).await.unwrap();
        }
        let first = log.wal().first_lsn();
        log.purge(log_id(1, 55)).await.unwrap();
        assert_eq!(log.wal().first_lsn(), first, "no segment removed yet");
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(log_id(1, 55)));
        log.close().await.unwrap();
        assert!(log.wal().first_lsn() > first, "close waited for the removal");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reads_log_ids_without_decoding_payloads() {
    // An entry record whose payload does not decode (written here by hand)
    // opens: replay reads the log id ahead of it; reading the entry fails.
    let dir = tempfile::tempdir().unwrap();
    let wal = aiowal::Wal::open(dir.path(), opts()).await.unwrap();
    let mut record = vec![5u8];
    record.extend(postcard::to_stdvec(&log_id(4, 0)).unwrap());
    record.extend([0xff; 5]);
    wal.append(&record).await.unwrap();
    wal.close().await.unwrap();
    drop(wal);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(4, 0)));
    assert!(log.try_get_log_entries(0..1).await.is_err(), "the payload itself is checked when read");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_other_records_is_refused_naming_segment_and_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let wal = aiowal::Wal::open(dir.path(), opts()).await.unwrap();
    wal.append(b"not an openraft record").await.unwrap();
    wal.close().await.unwrap();
    drop(wal);
    let err = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, aiowal::Error::RaftLogDamaged { lsn: 1, .. }), "{text}");
    assert!(text.contains("new learner") && !text.contains("open with RecoveryMode::PointInTime"), "{text}");
    assert!(text.contains("00000000000000000001.wal") && text.contains("not an openraft record"), "{text}");
}

/// After a purge that leaves no live entry, the next entry stored must be
/// the one after the purged id, in `append` and when a log is replayed: an
/// entry at or below it is covered by the purge and not stored (openraft's
/// own suite appends one after its state machine moved past the log), so
/// `last_log_id` never falls below `last_purged_log_id`; one above it
/// leaves a hole and is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_after_a_purge_that_emptied_the_log_continues_from_it() {
    let dir = tempfile::tempdir().unwrap();

    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    for i in 0..10 {
        log.blocking_append([put(1, i, 10)]).await.unwrap();
    }
    log.purge(log_id(1, 9)).await.unwrap();
    let records = log.wal().stats().appends;
    log.blocking_append([put(1, 3, 10)]).await.unwrap();
    assert_eq!(log.wal().stats().appends, records, "index 3 after purge(9): covered, not stored");
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 9)), "last_log_id stays at the purged id");
    assert!(log.blocking_append([put(1, 11, 10)]).await.is_err(), "index 11 after purge(9): a hole");
    log.blocking_append([put(1, 8, 10), put(1, 9, 10), put(1, 10, 10)]).await.unwrap();
    assert_eq!(log.wal().stats().appends, records + 1, "8 and 9 covered, 10 stored");
    log.close().await.unwrap();
    drop(log);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 9)), Some(log_id(1, 10))));
    log.close().await.unwrap();
    drop(log);

    // A log written past the rule (by an older adapter) is refused on open:
    // entry 11 right after purge(9) leaves a hole.
    let dir = tempfile::tempdir().unwrap();
    let wal = aiowal::Wal::open(dir.path(), opts()).await.unwrap();
    let op = |tag: u8, body: Vec<u8>| [vec![1u8, tag], body].concat();
    let id = |index: u64| postcard::to_stdvec(&log_id(1, index)).unwrap();
    let e = |index: u64| postcard::to_stdvec(&entry(1, index, &mut Rng::new(1))).unwrap();
    wal.append(&op(0, e(0))).await.unwrap(); // Entry 0
    wal.append(&op(4, id(9))).await.unwrap(); // Purge 9
    wal.append(&op(0, e(3))).await.unwrap(); // Entry 3: covered by the purge, skipped
    wal.append(&op(0, e(11))).await.unwrap(); // Entry 11: a hole after 9
    wal.close().await.unwrap();
    drop(wal);
    let err = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap_err();
    assert!(matches!(err, aiowal::Error::RaftLogDamaged { lsn: 4, .. }), "{err}");
}

/// `PointInTime` recovery is refused for a Raft log unless the caller
/// opts in with `open_allowing_loss`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_recovery_is_refused_without_an_explicit_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let pit = opts().recovery_mode(aiowal::RecoveryMode::PointInTime);
    let err = RaftLog::<Config>::open(dir.path(), pit.clone()).await.unwrap_err();
    assert!(matches!(err, aiowal::Error::InvalidOption { name: "recovery_mode", .. }), "{err}");
    assert!(err.to_string().contains("new learner"), "{err}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "refused before creating anything");
    let log = RaftLog::<Config>::open_allowing_loss(dir.path(), pit).await.unwrap();
    log.close().await.unwrap();
}

/// A failed vote write is reported as a vote's, not as a log write's
/// (openraft tells them apart), and log writes stay log writes.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_vote_write_is_reported_as_a_vote() {
    let disk = SimDisk::new(3);
    let mut log = RaftLog::<Config>::open(DIR, opts().sim(&disk)).await.unwrap();
    disk.inject(aiowal::sim::Fault::SyncError { after: 0 });
    let text = log.save_vote(&Vote::new(1, 1)).await.unwrap_err().to_string();
    assert!(text.contains("Write Vote"), "{text}");
    let text = log.truncate(log_id(1, 0)).await.unwrap_err().to_string();
    assert!(text.contains("Write Logs"), "{text}");
}

/// A read that races a purge returns the entries still there (the reader
/// contract allows fewer than asked for), not a fatal corruption error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_a_purge_returns_fewer_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(17);
    let mut log = RaftLog::<Config>::open(dir.path(), opts()).await.unwrap();
    for i in 0..200 {
        log.blocking_append([entry(1, i, &mut rng)]).await.unwrap();
    }
    let mut reader = log.get_log_reader().await;
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let mut r = reader.clone();
            tokio::spawn(async move {
                let mut reads = 0;
                for _ in 0..200 {
                    let got = r.try_get_log_entries(0..200).await.expect("a racing read is not an error");
                    // Whatever it returns is a run of consecutive entries.
                    for w in got.windows(2) {
                        assert_eq!(w[1].log_id.index, w[0].log_id.index + 1);
                    }
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    for upto in (10..190).step_by(10) {
        log.purge(log_id(1, upto)).await.unwrap();
        tokio::task::yield_now().await;
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert_eq!(reader.try_get_log_entries(..).await.unwrap().len(), 19, "181..=199 after purge(180)");
    log.close().await.unwrap();
}
