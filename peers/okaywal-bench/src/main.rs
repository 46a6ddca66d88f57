//! okaywal under the load `aiowal bench` puts on aiowal: N threads, each
//! writing one entry of SIZE bytes and committing it (okaywal's `commit`
//! returns once the entry is synced), for SECS seconds, in a new log in DIR.
//! The checkpointer holds every full segment until the run ends, so the log
//! grows as it does between a database's checkpoints: okaywal recycles a
//! checkpointed segment file, and a checkpointer that returned at once
//! kept the whole run inside two 1 MiB files (measured: that alone made
//! one appender about 15% faster on this virtual disk, as it does for
//! aiowal with small recycled segments).
//!
//! Prints one line: `okaywal N SIZE <ops/s> <p50 us> <p99 us>`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use okaywal::{Entry, EntryId, LogManager, SegmentReader, WriteAheadLog};

#[derive(Debug)]
struct Nothing;

/// Set when the run ends: checkpoints wait for it.
static STOPPED: AtomicBool = AtomicBool::new(false);

impl LogManager for Nothing {
    fn recover(&mut self, _entry: &mut Entry<'_>) -> io::Result<()> {
        Ok(())
    }

    fn checkpoint_to(
        &mut self,
        _last_checkpointed_id: EntryId,
        _checkpointed_entries: &mut SegmentReader,
        _wal: &WriteAheadLog,
    ) -> io::Result<()> {
        while !STOPPED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: okaywal-bench DIR THREADS SIZE SECS");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let parse = |i: usize| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("okaywal-bench: {:?} is not a number", args[i]);
            std::process::exit(2)
        })
    };
    let (threads, size, secs) = (parse(2) as usize, parse(3) as usize, parse(4));
    let log = WriteAheadLog::recover(&dir, Nothing).unwrap_or_else(|e| {
        eprintln!("okaywal-bench: opening {}: {e}", dir.display());
        std::process::exit(1)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (log, stop) = (log.clone(), Arc::clone(&stop));
            std::thread::spawn(move || -> io::Result<(u64, Histogram<u64>)> {
                let record = vec![0xA5u8; size];
                let mut h = Histogram::<u64>::new(3).expect("valid precision");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let mut w = log.begin_entry()?;
                    w.write_chunk(&record)?;
                    w.commit()?;
                    let _ = h.record(t0.elapsed().as_nanos() as u64);
                    n += 1;
                }
                Ok((n, h))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    STOPPED.store(true, Ordering::Relaxed);
    let mut total = 0u64;
    let mut all = Histogram::<u64>::new(3).expect("valid precision");
    for w in workers {
        match w.join() {
            Ok(Ok((n, h))) => {
                total += n;
                let _ = all.add(h);
            }
            Ok(Err(e)) => {
                eprintln!("okaywal-bench: write failed: {e}");
                std::process::exit(1)
            }
            Err(_) => {
                eprintln!("okaywal-bench: a writer panicked");
                std::process::exit(1)
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let us = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!("okaywal {threads} {size} {:.0} {:.0} {:.0}", total as f64 / elapsed, us(0.5), us(0.99));
}
