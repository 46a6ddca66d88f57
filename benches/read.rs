//! `cargo bench --features cli --bench read`: how long `read_from(lsn)` takes to yield its
//! first record, for LSNs spread over one full 64 MiB segment of 100-byte
//! records, against the raw baseline of the same run: reading that segment's
//! bytes once (a `read` of the file from the page cache), which is what
//! finding a record by scanning from the segment's start costs at least.

use std::time::{Duration, Instant};

use aiowal::{Lsn, Options, Wal};

const RECORDS: u64 = 400_000;

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    println!("{}", aiowal::bench::environment(dir.path()));
    let wal = Wal::open(dir.path(), Options::default()).await?;
    let record = [7u8; 100];
    let mut hs = Vec::new();
    for t in 0..64 {
        let wal = wal.clone();
        hs.push(tokio::spawn(async move {
            for _ in 0..RECORDS / 64 {
                let _ = wal.append(&record).await;
            }
            t
        }));
    }
    for h in hs {
        h.await?;
    }
    let last = wal.durable_lsn().get();
    let segment = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .ok_or("no segment")?;
    for run in 1..=2 {
        let mut raw = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let bytes = std::fs::read(&segment)?;
            std::hint::black_box(&bytes);
            raw.push(t.elapsed());
        }
        let mut seek = Vec::new();
        for i in 0..2000u64 {
            let from = 1 + (i * 7919) % last;
            let t = Instant::now();
            let rec = wal.read_from(Lsn::new(from))?.next().ok_or("no record")??;
            std::hint::black_box(rec.data());
            seek.push(t.elapsed());
        }
        let (raw, seek) = (p50(raw), p50(seek));
        println!(
            "run {run}: {last} records; read_from(any LSN) to first record p50 {seek:?}; raw segment read p50 {raw:?}; ratio {:.4}x",
            seek.as_secs_f64() / raw.as_secs_f64()
        );
    }
    wal.close().await?;
    Ok(())
}
