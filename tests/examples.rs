//! The examples run and check themselves (they assert what they recover).

use std::process::Command;

fn run_example(name: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", name, "--"])
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
}

#[test]
fn kv_recovers_from_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    run_example("kv", &[dir.path().to_str().unwrap()]);
    assert!(dir.path().join("snapshot").exists());
    // Run again over the same directory: it starts from the earlier state.
    run_example("kv", &[dir.path().to_str().unwrap()]);
}
