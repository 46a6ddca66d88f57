//! Log shipping with a live tail: a primary log takes appends from eight
//! tasks while a follower reads it with `Wal::tail` and copies every durable
//! record, in order, into a replica log in another directory, the way a
//! database ships its log to a standby (here a channel stands in for the
//! network). The primary checkpoints only what the follower has copied, so
//! the tail never falls behind a truncation. At the end the replica is
//! reopened from disk and compared with what the primary acknowledged.
//!
//!     cargo run --example ship [DIR]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aiowal::{Lsn, Options, Wal};

#[tokio::main]
async fn main() -> aiowal::Result<()> {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let base = std::env::args().nth(1).map_or_else(|| tmp.path().to_path_buf(), Into::into);
    // Small segments, so the primary rotates and retires several while it runs.
    let opts =
        Options::default().segment_bytes(1 << 20).batch_bytes_max(256 << 10).max_record_bytes(64 << 10);
    let primary = Wal::open(base.join("primary"), opts.clone()).await?;
    let replica = Wal::open(base.join("replica"), opts.clone()).await?;
    let start = primary.durable_lsn().get() + 1;
    let first_replica = replica.durable_lsn().get() + 1;

    // The follower: tail the primary, send each record over the "network",
    // append it to the replica, report what the replica has made durable.
    let shipped = Arc::new(AtomicU64::new(start - 1));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Lsn, Vec<u8>)>(1024);
    let reader = {
        let mut tail = primary.tail(Lsn::new(start));
        tokio::spawn(async move {
            while let Some(record) = tail.next().await {
                let record = record?;
                if tx.send((record.lsn(), record.to_vec())).await.is_err() {
                    break;
                }
            }
            Ok::<_, aiowal::Error>(())
        })
    };
    let applier = {
        let (replica, shipped) = (replica.clone(), Arc::clone(&shipped));
        tokio::spawn(async move {
            while let Some((lsn, bytes)) = rx.recv().await {
                replica.append(&bytes).await?;
                shipped.store(lsn.get(), Ordering::Release);
            }
            Ok::<_, aiowal::Error>(())
        })
    };

    // The primary's writers and its checkpointer.
    let mut writers = Vec::new();
    for task in 0..8u64 {
        let primary = primary.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..500u64 {
                let record = format!("task {task} update {i} ").repeat(1 + (i % 20) as usize).into_bytes();
                acked.push((primary.append(&record).await?.get(), record));
            }
            Ok::<_, aiowal::Error>(acked)
        }));
    }
    let checkpointer = {
        let (primary, shipped) = (primary.clone(), Arc::clone(&shipped));
        tokio::spawn(async move {
            let mut retired = 0;
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                match primary.truncate_before(Lsn::new(shipped.load(Ordering::Acquire).max(1))).await {
                    Ok(n) => retired += n,
                    Err(aiowal::Error::Closed) => return retired,
                    Err(e) => panic!("checkpoint: {e}"),
                }
            }
        })
    };
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.expect("writer")?);
    }
    let last = *acked.keys().last().expect("appended");
    while shipped.load(Ordering::Acquire) < last {
        if reader.is_finished() || applier.is_finished() {
            break; // an error: reported below
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    println!(
        "primary: {} records acknowledged; follower: shipped up to LSN {}, lag 0",
        acked.len(),
        shipped.load(Ordering::Acquire)
    );
    primary.close().await?; // the tail ends, then the follower
    reader.await.expect("reader")?;
    applier.await.expect("applier")?;
    let retired = checkpointer.await.expect("checkpointer");
    replica.close().await?;
    println!("primary retired {retired} segments behind the follower while it ran");

    // The replica, from disk: the primary's records, in the primary's order.
    let replica = Wal::open(base.join("replica"), opts).await?;
    let mut n = 0u64;
    for record in replica.read_from(Lsn::new(first_replica))? {
        let record = record?;
        let want = acked.get(&(start + n)).expect("no more records than the primary");
        assert_eq!(record.data(), want.as_slice(), "replica LSN {}", record.lsn());
        n += 1;
    }
    assert_eq!(n, acked.len() as u64, "every acknowledged record reached the replica");
    replica.close().await?;
    println!("replica: {n} records, identical to the primary's, after a reopen");
    Ok(())
}
