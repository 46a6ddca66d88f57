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
    // The whole cluster again from the same directories.
    let out = run_example_with("raft_kv", &["--all-features"], &[dir.path().to_str().unwrap()]);
    assert!(out.contains("cluster already initialized"), "{out}");
    assert!(out.contains("while-down = written on 2 of 3"), "{out}");
}

#[test]
fn ship_copies_a_live_log_into_a_replica() {
    let out = run_example("ship", &[]);
    assert!(out.contains("identical to the primary's"), "{out}");
}
