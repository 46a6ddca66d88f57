//! Real process crashes: a child process appends from many tasks and prints
//! every acknowledged LSN; the parent kills it with SIGKILL at a random
//! moment, reopens the log and checks that every acknowledged record is there,
//! intact, in a dense LSN sequence. The same directory goes through every
//! crash, so each recovery also recovers the previous recoveries' work.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use aiowal::{Backend, Lsn, Options, Wal};
use common::{Rng, read_all, record};

const CHILD_ENV: &str = "AIOWAL_CRASH_CHILD_DIR";
const ROUNDS: u64 = 50;

fn options(backend: Backend) -> Options {
    Options::default()
        .backend(backend)
        .segment_bytes(1 << 20)
        .batch_bytes_max(64 << 10)
        .max_record_bytes(16 << 10)
}

fn backend_from(name: &str) -> Backend {
    match name {
        "uring" => Backend::Uring,
        "lio" => Backend::Lio,
        _ => Backend::Threaded,
    }
}

/// The child's body. Started by `kill_and_recover` (with `AIOWAL_CRASH_CHILD_DIR`
/// set) it appends until it is killed, printing every acknowledged LSN. Run on
/// its own it is a test of the same workload without the kill: it appends for
/// a short while on each backend, closes, reopens and checks every ack.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        for backend in BACKENDS {
            let dir = tempfile::tempdir().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_millis(300);
            let acks = run_workload(dir.path(), backend, 0, Some(deadline));
            let mut acked = HashMap::new();
            for (lsn, task, i, len) in acks {
                note_ack(&mut acked, lsn, task, i, len);
            }
            assert!(acked.len() > 50, "{backend}: only {} records acknowledged in 300 ms", acked.len());
            check(dir.path(), backend, 0, &acked);
        }
        return;
    };
    let backend = std::env::var("AIOWAL_CRASH_CHILD_BACKEND").unwrap_or_default();
    let round: u64 = std::env::var("AIOWAL_CRASH_CHILD_ROUND").ok().and_then(|r| r.parse().ok()).unwrap_or(0);
    run_workload(std::path::Path::new(&dir), &backend, round, None);
}

/// The backends this platform runs.
const BACKENDS: &[&str] = &[
    "threaded",
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    "lio",
    #[cfg(target_os = "linux")]
    "uring",
];

/// 16 tasks append records and atomic pairs while a checkpointer truncates.
/// Without a deadline every ack is printed (`ACK lsn task i len`) and the
/// workload runs until the process is killed; with one, the acks are
/// returned and the log is closed.
fn run_workload(
    dir: &std::path::Path,
    backend: &str,
    round: u64,
    deadline: Option<std::time::Instant>,
) -> Vec<(u64, u64, u64, usize)> {
    let backend = backend_from(backend);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let wal = Wal::open(dir, options(backend)).await.unwrap();
        if deadline.is_none() {
            println!("OPEN {}", wal.recovery_report().records);
        }
        // Checkpoint like a database, so crashes also hit recycled segments.
        let checkpointer = {
            let wal = wal.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    let keep = wal.durable_lsn().get().saturating_sub(2000);
                    wal.truncate_before(Lsn::new(keep)).await.unwrap();
                }
            })
        };
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let wal = wal.clone();
                tokio::spawn(async move {
                    let task = round * 100 + t;
                    let mut rng = Rng(task + 1);
                    let mut acks = Vec::new();
                    for i in 0u64.. {
                        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                            break;
                        }
                        let len = rng.below(3000) as usize;
                        let lsn = if i % 7 == 3 {
                            let recs = [record(task, i, len), record(task, i + 1_000_000, len / 2)];
                            wal.append_batch(&recs).await.unwrap().first()
                        } else {
                            wal.append(&record(task, i, len)).await.unwrap()
                        };
                        if deadline.is_some() {
                            acks.push((lsn.get(), task, i, len));
                        } else {
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "ACK {} {task} {i} {len}", lsn.get()).unwrap();
                            out.flush().unwrap();
                        }
                    }
                    acks
                })
            })
            .collect();
        let mut acks = Vec::new();
        for t in tasks {
            acks.extend(t.await.unwrap());
        }
        checkpointer.abort();
        let _ = checkpointer.await;
        wal.close().await.unwrap();
        acks
    })
}

/// Records an acknowledged append (and its atomic partner, for every 7th).
fn note_ack(acked: &mut HashMap<u64, Vec<u8>>, lsn: u64, task: u64, i: u64, len: usize) {
    acked.insert(lsn, record(task, i, len));
    if i % 7 == 3 {
        acked.insert(lsn + 1, record(task, i + 1_000_000, len / 2));
    }
}

fn kill_and_recover(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x5eed ^ backend.len() as u64);
    // Every acknowledged record so far: LSN -> expected bytes.
    let mut acked: HashMap<u64, Vec<u8>> = HashMap::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("AIOWAL_CRASH_CHILD_BACKEND", backend)
            .env("AIOWAL_CRASH_CHILD_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(30 + rng.below(150)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut opened = false;
        for line in &lines {
            // The test harness may print its own prefix before the first line.
            let start = ["OPEN ", "ACK "].iter().filter_map(|m| line.find(m)).min().unwrap_or(0);
            let f: Vec<&str> = line[start..].split_whitespace().collect();
            match f.as_slice() {
                ["OPEN", _] => opened = true,
                ["ACK", lsn, task, i, len] => {
                    let (lsn, task, i, len): (u64, u64, u64, usize) = (
                        lsn.parse().unwrap(),
                        task.parse().unwrap(),
                        i.parse().unwrap(),
                        len.parse().unwrap(),
                    );
                    note_ack(&mut acked, lsn, task, i, len);
                }
                _ => {}
            }
        }
        assert!(opened || round > 0, "round {round}: the child never opened the log");
        check(dir.path(), backend, round, &acked);
    }
    assert!(acked.len() > 1000, "{backend}: only {} acknowledged records in {ROUNDS} rounds", acked.len());
}

fn check(dir: &std::path::Path, backend: &str, round: u64, acked: &HashMap<u64, Vec<u8>>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let wal = Wal::open(dir, options(backend_from(backend)))
            .await
            .unwrap_or_else(|e| panic!("{backend} round {round}: reopen after SIGKILL failed: {e}"));
        let got = read_all(&wal, Lsn::FIRST);
        let first = wal.first_lsn().get();
        for (i, (lsn, _)) in got.iter().enumerate() {
            assert_eq!(*lsn, first + i as u64, "{backend} round {round}: LSNs must be dense");
        }
        let by_lsn: HashMap<u64, &Vec<u8>> = got.iter().map(|(l, d)| (*l, d)).collect();
        // The checkpointer keeps the newest 2000 durable LSNs at least.
        let newest = acked.keys().max().copied().unwrap_or(0);
        assert!(first <= newest.saturating_sub(2000).max(1), "{backend} round {round}: truncated too much");
        for (lsn, data) in acked.iter().filter(|(l, _)| **l >= first) {
            match by_lsn.get(lsn) {
                Some(d) => assert_eq!(*d, data, "{backend} round {round}: LSN {lsn} came back different"),
                None => {
                    panic!("{backend} round {round}: acknowledged LSN {lsn} lost ({} recovered)", got.len())
                }
            }
        }
        wal.close().await.unwrap();
    });
}

#[test]
fn sigkill_threaded() {
    kill_and_recover("threaded");
}

#[cfg(any(target_os = "linux", target_os = "freebsd"))]
#[test]
fn sigkill_lio() {
    kill_and_recover("lio");
}

#[cfg(target_os = "linux")]
#[test]
fn sigkill_uring() {
    kill_and_recover("uring");
}
