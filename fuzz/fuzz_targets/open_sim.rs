//! `Wal::open` itself (recovery, then the tail repair it writes: sealing a
//! torn tail, setting damaged segments aside) on arbitrary segment files,
//! on the crash simulator's in-memory disk: never a panic; and a log that
//! opens takes an append, and reopens with exactly its records plus that one.
//!
//! Input as for `open_dir`; the second byte picks the alignment (512 or 4096).
#![no_main]

use std::sync::OnceLock;

use aiowal::sim::SimDisk;
use aiowal::{Lsn, Options, RecoveryMode, Wal};
use libfuzzer_sys::fuzz_target;

const DIR: &str = "/fuzz/wal";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

fn records(wal: &Wal) -> Option<Vec<(Lsn, Vec<u8>)>> {
    let mut out = Vec::new();
    for r in wal.read_from(Lsn::FIRST).ok()? {
        let r = r.ok()?;
        out.push((r.lsn(), r.to_vec()));
    }
    Some(out)
}

async fn check(files: &[Vec<u8>], align: u32, mode: RecoveryMode) {
    let disk = SimDisk::new(1);
    for (i, f) in files.iter().enumerate() {
        disk.put_file(format!("{DIR}/{:020}.wal", i + 1), f);
    }
    let opts = Options::default()
        .recovery_mode(mode)
        .alignment(align)
        .batch_bytes_max(64 << 10)
        .segment_bytes(256 << 10)
        .max_record_bytes(16 << 10);
    let Ok(wal) = Wal::open(DIR, opts.clone().sim(&disk)).await else { return };
    let Some(mut before) = records(&wal) else { panic!("a log that opened cannot be read back") };
    let lsn = wal.append(b"fuzz").await.expect("a log that opened takes an append");
    before.push((lsn, b"fuzz".to_vec()));
    wal.close().await.expect("close");
    drop(wal);
    let wal = Wal::open(DIR, opts.sim(&disk)).await.expect("a log that opened and closed cleanly reopens");
    let after = records(&wal).expect("read after reopen");
    assert_eq!(after, before, "reopen shows exactly the records before plus the append");
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let Some((&a, rest)) = rest.split_first() else { return };
    let align = if a % 2 == 0 { 4096 } else { 512 };
    let count = usize::from(n % 3) + 1;
    let chunk = rest.len().div_ceil(count).max(1);
    let files: Vec<Vec<u8>> = rest
        .chunks(chunk)
        .map(|part| {
            let mut bytes = part.to_vec();
            let len = bytes.len().max(8192).div_ceil(4096) * 4096;
            bytes.resize(len, 0);
            bytes
        })
        .collect();
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::PointInTime, RecoveryMode::AbsoluteConsistency] {
        runtime().block_on(check(&files, align, mode));
    }
});
