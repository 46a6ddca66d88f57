//! The operator tools: `aiowal verify`, `dump` and `repair`, their output
//! and exit codes. Verify and dump never write.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use aiowal::{Backend, Lsn, Wal};
use common::*;

fn aiowal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aiowal")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

async fn make_log(dir: &Path, n: u64) -> Vec<(u64, Vec<u8>)> {
    let wal = Wal::open(dir, small(Backend::Threaded)).await.unwrap();
    let mut want = Vec::new();
    for i in 0..n {
        let r = record(21, i, 900);
        want.push((wal.append(&r).await.unwrap().get(), r));
    }
    wal.close().await.unwrap();
    want
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_dump_a_clean_log_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let want = make_log(dir.path(), 150).await;
    let before = snapshot(dir.path());
    let d = dir.path().to_str().unwrap();
    let v = aiowal(&["verify", d]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    assert!(
        text(&v).contains("150 records") && text(&v).contains("LSN 1..=150") && text(&v).contains("clean")
    );
    let j = aiowal(&["dump", d, "--json", "--from", "149"]);
    assert_eq!(j.status.code(), Some(0));
    let lines: Vec<String> = String::from_utf8_lossy(&j.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with(r#"{"lsn":149,"len":900,"crc32":""#), "{}", lines[0]);
    let hex: String = want[148].1.iter().map(|b| format!("{b:02x}")).collect();
    assert!(lines[0].contains(&hex));
    let h = aiowal(&["dump", d, "--hex", "--limit", "1"]);
    assert!(String::from_utf8_lossy(&h.stdout).starts_with("1 len=900 "));
    assert_eq!(snapshot(dir.path()), before, "verify and dump must not write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_reported_then_repaired() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 100).await;
    let seg = last_used_segment(dir.path());
    let (_, fr) = frames(&seg);
    let cut = fr.last().unwrap().offset - 100;
    let mut b = std::fs::read(&seg).unwrap();
    for x in &mut b[cut as usize..cut as usize + 300] {
        *x ^= 0x5a;
    }
    std::fs::write(&seg, b).unwrap();
    let d = dir.path().to_str().unwrap();
    let v = aiowal(&["verify", d]);
    assert_eq!(v.status.code(), Some(0), "a torn tail is what a crash leaves: {}", text(&v));
    assert!(text(&v).contains("torn tail at"), "{}", text(&v));
    let r = aiowal(&["repair", d]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(text(&r).contains("cut a torn tail"), "{}", text(&r));
    let v = aiowal(&["verify", d, "--mode", "absolute-consistency"]);
    assert_eq!(v.status.code(), Some(0), "after repair the log is clean: {}", text(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_fails_verify_and_needs_force_to_repair() {
    let dir = tempfile::tempdir().unwrap();
    let want = make_log(dir.path(), 300).await;
    let first = segments(dir.path())[0].clone();
    let (_, fr) = frames(&first);
    let victim = fr[10];
    let mut b = std::fs::read(&first).unwrap();
    b[victim.offset as usize + 40] ^= 1;
    std::fs::write(&first, b).unwrap();
    let d = dir.path().to_str().unwrap();
    let v = aiowal(&["verify", d]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    let msg = text(&v);
    assert!(
        msg.contains(first.file_name().unwrap().to_str().unwrap())
            && msg.contains(&format!("offset {}", victim.offset)),
        "{msg}"
    );
    let r = aiowal(&["repair", d]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("--force"));
    let r = aiowal(&["repair", d, "--force"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(text(&r).contains("copied") && text(&r).contains("set aside"), "{}", text(&r));
    assert!(
        std::fs::read_dir(d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".damaged-"))
    );
    let v = aiowal(&["verify", d]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    let wal = Wal::open(dir.path(), small(Backend::Threaded)).await.unwrap();
    assert_eq!(read_all(&wal, Lsn::FIRST), want[..victim.lsn as usize - 1]);
    wal.close().await.unwrap();
}

/// The record limit is not a recovery criterion: a valid 3 MiB record is a
/// record for `verify` and `repair`, whatever their defaults (before, verify
/// called it a torn tail and repair cut it and the records after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_valid_records_are_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let opts =
        small(Backend::Threaded).segment_bytes(16 << 20).batch_bytes_max(4 << 20).max_record_bytes(3 << 20);
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    wal.append(&record(30, 0, 100)).await.unwrap();
    wal.append(&vec![7u8; 3 << 20]).await.unwrap();
    for i in 1..6 {
        wal.append(&record(30, i, 100)).await.unwrap();
    }
    wal.close().await.unwrap();
    let d = dir.path().to_str().unwrap();
    let v = aiowal(&["verify", d, "--mode", "absolute-consistency"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    assert!(text(&v).contains("7 records") && text(&v).contains("clean"), "{}", text(&v));
    let r = aiowal(&["repair", d]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(text(&r).contains("nothing to repair") && text(&r).contains("7 records kept"), "{}", text(&r));
    let j = aiowal(&["dump", d, "--json", "--from", "2", "--limit", "1"]);
    assert!(String::from_utf8_lossy(&j.stdout).starts_with(r#"{"lsn":2,"len":3145728,"#));
}

/// A directory that holds no log is an error, not an "empty log" that
/// passes: a mistyped path must not verify, dump nothing, or get a new log
/// created by repair.
#[test]
fn tools_on_a_directory_without_a_log_fail() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    for tool in ["verify", "dump", "repair"] {
        let o = aiowal(&[tool, dir.path().to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{tool}: {}", text(&o));
        assert!(text(&o).contains("holds no aiowal log"), "{tool}: {}", text(&o));
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["notes.txt"], "a tool wrote into the directory");
}

/// `dump --text` shows text payloads as text, escaping what is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_text_view() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small(Backend::Threaded)).await.unwrap();
    wal.append("put k1 héllo".as_bytes()).await.unwrap();
    wal.append(b"bin\x00\xff\n").await.unwrap();
    wal.close().await.unwrap();
    let o = aiowal(&["dump", dir.path().to_str().unwrap(), "--text"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["1 put k1 héllo", r"2 bin\u{0}\xff\n"], "{out}");
}

/// The CLI names its own commands for damage, not a library enum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_errors_name_cli_commands() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 300).await;
    let first = segments(dir.path())[0].clone();
    let (_, fr) = frames(&first);
    let victim = fr.iter().find(|f| f.kind.is_record()).unwrap();
    let mut b = std::fs::read(&first).unwrap();
    b[victim.offset as usize + 40] ^= 1;
    std::fs::write(&first, b).unwrap();
    let o = aiowal(&["dump", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("aiowal repair DIR --force") && !t.contains("RecoveryMode"), "{t}");
}

#[test]
fn bad_usage_and_missing_directory_fail_clearly() {
    let o = aiowal(&["verify"]);
    assert_eq!(o.status.code(), Some(2));
    let o = aiowal(&["verify", "/nonexistent/aiowal-log"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("/nonexistent/aiowal-log"), "{}", text(&o));
    let o = aiowal(&["bench", "--duration-secs", "-1"]);
    assert_ne!(o.status.code(), Some(0));
}

/// `aiowal bench-open` writes a log, opens it warm and after a crash of a
/// child process that appends and exits without closing, and prints the
/// timings; bad sizes are refused.
#[test]
fn bench_open_measures_a_small_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = aiowal(&["bench-open", "--gib", "0.01", "--repeat", "1", "--warm-only", "--dir", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    let row = out.lines().find(|l| l.contains("GiB")).unwrap_or_else(|| panic!("no result row: {out}"));
    // log, records | read, open, ratio | cold - - - | crash warm, crash cold -
    let fields: Vec<&str> = row.split_whitespace().filter(|f| *f != "|").collect();
    assert!(fields[1].parse::<u64>().unwrap() > 0, "{row}");
    for f in [fields[2], fields[3], fields[8]] {
        assert!(f.parse::<f64>().unwrap() > 0.0, "{row}");
    }
    // Nothing is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let o = aiowal(&["bench-open", "--gib", "0", "--warm-only", "--dir", d]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// The tools read compressed logs (the `cli` feature brings `compression`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_dump_a_compressed_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(Backend::Threaded).compression(aiowal::Compression::Lz4);
    let wal = Wal::open(dir.path(), opts).await.unwrap();
    let rec = |i: u64| format!("row {i}: status=shipped warehouse=lisbon ").repeat(200).into_bytes();
    for i in 0..40 {
        wal.append(&rec(i)).await.unwrap();
    }
    assert_eq!(wal.stats().batches_compressed, 40);
    wal.close().await.unwrap();
    let d = dir.path().to_str().unwrap();
    let v = aiowal(&["verify", d]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    assert!(text(&v).contains("40 records") && text(&v).contains("clean"), "{}", text(&v));
    let j = aiowal(&["dump", d, "--json", "--from", "40"]);
    assert_eq!(j.status.code(), Some(0), "{}", text(&j));
    let hex: String = rec(39).iter().map(|b| format!("{b:02x}")).collect();
    let out = String::from_utf8_lossy(&j.stdout).into_owned();
    assert!(out.starts_with(r#"{"lsn":40,"#) && out.contains(&hex), "{out}");
}
