//! The examples run and check themselves (they assert what they recover).

use std::process::Command;

fn run_example(name: &str, args: &[&str]) -> String {
    run_example_with(name, &[], args)
}

/// `cargo_args` such as `--all-features` (the features `cargo test` was
/// given, so that the library is not built again).
fn run_example_with(name: &str, cargo_args: &[&str], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", name])
        .args(cargo_args)
        .arg("--")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "example {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kv_recovers_from_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    run_example("kv", &[dir.path().to_str().unwrap()]);
    assert!(dir.path().join("snapshot").exists());
    // Run again over the same directory: it starts from the earlier state.
    run_example("kv", &[dir.path().to_str().unwrap()]);
}

#[cfg(feature = "openraft")]
#[test]
fn raft_kv_commits_on_a_majority_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example_with("raft_kv", &["--all-features"], &[dir.path().to_str().unwrap()]);
    assert!(out.contains("node 1 applied it: greeting = hello, raft"), "{out}");
    assert!(out.contains("greeting = hello, raft, while-down = written on 2 of 3"), "{out}");
    // A write larger than a log record is stored (in parts) and applied
    // everywhere; one above the application's limit is refused before Raft.
    assert_eq!(out.matches("byte write larger than a log record: intact").count(), 3, "{out}");
    assert!(out.contains("refused: larger than this application's limit"), "{out}");
    // One sync per client write on the leader: the committed id is not
    // synced on its own (it was: two per write).
    let (records, syncs) = leader_records_and_syncs(&out);
    assert!(syncs <= records && syncs < 600, "{records} records in {syncs} syncs for 500 writes: {out}");
    // The whole cluster again from the same directories, whose logs were
    // purged up to a snapshot: every node loads its snapshot and restarts.
    let out = run_example_with("raft_kv", &["--all-features"], &[dir.path().to_str().unwrap()]);
    assert!(out.contains("cluster already initialized"), "{out}");
    assert_eq!(out.matches("snapshot loaded, applied up to index").count(), 4, "{out}");
    assert!(!out.contains("entries purged up to index none, last"), "every log was purged: {out}");
    assert!(out.contains("while-down = written on 2 of 3, big = 3145728 bytes"), "{out}");
}

/// `leader log: R records in S syncs` from raft_kv's output.
#[cfg(feature = "openraft")]
fn leader_records_and_syncs(out: &str) -> (u64, u64) {
    let line = out.lines().find(|l| l.contains("leader log:")).unwrap_or_else(|| panic!("{out}"));
    let words: Vec<&str> = line.rsplit("leader log: ").next().unwrap_or("").split_whitespace().collect();
    (words[0].parse().unwrap(), words[3].parse().unwrap())
}

#[test]
fn ship_copies_a_live_log_into_a_replica() {
    let out = run_example("ship", &[]);
    assert!(out.contains("identical to the primary's"), "{out}");
}
