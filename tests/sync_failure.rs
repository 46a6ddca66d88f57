//! A sync that really fails: the log lives on a FUSE pass-through file
//! system (tests/support/faultfs.py) that returns EIO from fsync/fdatasync
//! (and from the syncs behind O_DSYNC writes) while a control file exists.
//! This machine's kernel has no device-mapper, so dm-error/dm-flakey are not
//! available; FUSE puts the failure on the same kernel path. Needs root,
//! FUSE, Python and fusepy, so a plain `cargo test` lists it as ignored,
//! with that reason; `scripts/test` installs them and runs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aiowal::{Backend, Error, Lsn, Wal};
use common::*;

per_backend!(
    #[ignore = "needs root, FUSE (fuse, libfuse2) and python3-fusepy: scripts/test installs them and runs it"]
    failed_sync_poisons_every_waiter_and_reopen_recovers
);

struct FaultFs {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    child: Child,
}

impl FaultFs {
    fn mount() -> FaultFs {
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/faultfs.py");
        let child = Command::new("python3")
            .arg(&script)
            .arg(&backing)
            .arg(&mnt)
            .stdout(Stdio::null())
            .spawn()
            .expect("start python3 tests/support/faultfs.py (needs fusepy)");
        let fs = FaultFs { _dir: dir, backing, mnt, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let target = fs.mnt.to_string_lossy().into_owned();
        while !std::fs::read_to_string("/proc/mounts").unwrap().contains(&target) {
            assert!(Instant::now() < deadline, "faultfs did not mount (FUSE, fusepy and root are needed)");
            std::thread::sleep(Duration::from_millis(20));
        }
        fs
    }

    fn fail_syncs(&self, on: bool) {
        let flag = self.backing.join(".fail-sync");
        if on {
            std::fs::write(flag, b"").unwrap();
        } else {
            std::fs::remove_file(flag).unwrap();
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A segment the device cannot read: recovery maps segments, and a read
/// error through a mapping is a SIGBUS that kills the process (the kernel
/// crash lab hit it on btrfs after dropped writes). `open` must return a
/// typed error naming the file instead; once the device reads again, the
/// log opens with every record.
#[test]
#[ignore = "needs root, FUSE (fuse, libfuse2) and python3-fusepy: scripts/test installs them and runs it"]
fn unreadable_segment_is_an_error_not_a_crash() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let fs = FaultFs::mount();
        let log = fs.mnt.join("log");
        let opts = small(Backend::Threaded).segment_bytes(128 << 10).batch_bytes_max(16 << 10);
        let wal = Wal::open(&log, opts.clone()).await.unwrap();
        for i in 0..50u64 {
            wal.append(&record(1, i, 100)).await.unwrap();
        }
        wal.close().await.unwrap();
        let flag = fs.backing.join(".fail-read");
        std::fs::write(&flag, b"").unwrap();
        // Nothing of the segments may come from the page cache.
        std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        match Wal::open(&log, opts.clone()).await {
            Err(Error::Io { source, path, .. }) => {
                assert_eq!(source.raw_os_error(), Some(5), "{source}");
                assert!(path.to_string_lossy().ends_with(".wal"), "{}", path.display());
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("opened a log whose segments cannot be read"),
        }
        assert!(aiowal::verify(&log, &opts).is_err());
        std::fs::remove_file(&flag).unwrap();
        let wal = Wal::open(&log, opts).await.unwrap();
        let n = wal.read_from(Lsn::FIRST).unwrap().count();
        assert_eq!(n, 50);
        wal.close().await.unwrap();
    });
}

fn is_eio(e: &Error) -> bool {
    matches!(e, Error::Poisoned { cause, .. } if cause.raw_os_error() == Some(5))
}

async fn failed_sync_poisons_every_waiter_and_reopen_recovers(b: Backend) {
    let fs = FaultFs::mount();
    let log = fs.mnt.join("log");
    let opts = small(b).segment_bytes(128 << 10).batch_bytes_max(16 << 10);
    let wal = Wal::open(&log, opts.clone()).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..30u64 {
        let r = record(1, i, 300);
        acked.push((wal.append(&r).await.unwrap().get(), r));
    }

    fs.fail_syncs(true);
    // Many waiters in flight when the sync fails: every one gets the error.
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let wal = wal.clone();
            tokio::spawn(async move { wal.append(&record(2, t, 300)).await })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            Err(e) => assert!(is_eio(&e), "{b:?}: expected Poisoned by EIO, got {e}"),
            Ok(lsn) => panic!("{b:?}: LSN {lsn} acknowledged although syncs fail"),
        }
    }
    // Poisoned for good: no retry succeeds, even once syncs work again.
    fs.fail_syncs(false);
    assert!(matches!(wal.append(b"later").await, Err(Error::Poisoned { .. })));
    assert!(matches!(wal.sync().await, Err(Error::Poisoned { .. })));
    assert!(wal.close().await.is_err());
    drop(wal);

    // Reopen recovers what is on disk: every acknowledged record.
    let wal = Wal::open(&log, opts).await.unwrap();
    let got = read_all(&wal, Lsn::FIRST);
    assert_eq!(got[..acked.len()], acked[..], "{b:?}: acknowledged records lost");
    wal.append(b"after").await.unwrap();
    wal.close().await.unwrap();
}
