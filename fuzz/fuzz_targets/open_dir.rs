//! Recovery of a directory of arbitrary segment files: `verify` and `dump`
//! (the read-only scan `open` runs first) must return records or a typed
//! error, never panic, hang or allocate without bound.
//!
//! Input: the first byte picks how many segment files (1-3) the rest is cut
//! into; each file is padded with zeroes to a plausible segment size so that
//! headers, frames and preallocated tails all get exercised.
#![no_main]

use std::sync::OnceLock;

use aiowal::{Lsn, Options, RecoveryMode};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let d = std::path::PathBuf::from(base).join(format!("aiowal-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let files = usize::from(n % 3) + 1;
    let d = dir();
    for e in std::fs::read_dir(d).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let chunk = rest.len().div_ceil(files).max(1);
    for (i, part) in rest.chunks(chunk).enumerate() {
        let mut bytes = part.to_vec();
        // Pad to a whole number of 4 KiB blocks (at least two): a segment's size.
        let len = bytes.len().max(8192).div_ceil(4096) * 4096;
        bytes.resize(len, 0);
        std::fs::write(d.join(format!("{:020}.wal", i + 1)), bytes).unwrap();
    }
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::PointInTime, RecoveryMode::AbsoluteConsistency] {
        let opts = Options::default().recovery_mode(mode).max_record_bytes(1 << 16);
        let _ = aiowal::verify(d, &opts);
        if let Ok((report, iter)) = aiowal::dump(d, &opts, Lsn::FIRST) {
            let mut n = 0u64;
            for rec in iter {
                match rec {
                    Ok(r) => {
                        assert!(r.data().len() <= 1 << 16);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            assert!(n <= report.records, "dump yielded more records than the scan found");
        }
    }
});
