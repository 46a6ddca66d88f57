//! A real full file system: a small tmpfs mounted by the test. Needs root,
//! so a plain `cargo test` lists it as ignored; `scripts/test` runs it.

mod common;

use std::path::Path;
use std::process::Command;

use aiowal::{Backend, Error, IoOp, Lsn, Wal};
use common::*;

per_backend!(
    #[ignore = "needs root (mounts a tmpfs): scripts/test runs it"]
    full_disk_poisons_and_recovers
);

struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mounting a tmpfs failed (needs root)");
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

async fn full_disk_poisons_and_recovers(b: Backend) {
    let fs = Tmpfs::mount(1 << 20);
    let log = fs.path().join("log");
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; 160 << 10]).unwrap();
    let opts = small(b);
    let wal = Wal::open(&log, opts.clone()).await.unwrap();
    let mut acked = Vec::new();
    let err = loop {
        let r = record(9, acked.len() as u64, 2000);
        match wal.append(&r).await {
            Ok(lsn) => acked.push((lsn.get(), r)),
            Err(e) => break e,
        }
        assert!(acked.len() < 10_000, "the disk never filled up");
    };
    assert!(acked.len() > 100, "only {} appends before the disk filled", acked.len());
    match &err {
        Error::Poisoned { cause, .. } => {
            assert_eq!(cause.raw_os_error(), Some(libc_enospc()), "{err}");
            assert!(err.to_string().contains("reopen"), "{err}");
        }
        other => panic!("expected Poisoned by ENOSPC, got {other:?}"),
    }
    // Poisoned: every later call fails the same way, nothing is retried.
    assert!(matches!(wal.append(b"x").await, Err(Error::Poisoned { .. })));
    assert!(matches!(wal.sync().await, Err(Error::Poisoned { .. })));
    assert!(matches!(wal.close().await, Err(Error::Poisoned { op: IoOp::Write, .. }) | Ok(())));

    // Free space, reopen: every acknowledged record is there, appends work again.
    std::fs::remove_file(&filler).unwrap();
    let wal = Wal::open(&log, opts).await.unwrap();
    let got = read_all(&wal, Lsn::FIRST);
    assert_eq!(got[..acked.len()], acked[..]);
    for i in 0..50 {
        wal.append(&record(10, i, 2000)).await.unwrap();
    }
    wal.close().await.unwrap();
}

fn libc_enospc() -> i32 {
    28
}
