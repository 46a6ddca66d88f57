//! An embedded key-value store on aiowal, run through a short scripted
//! session twice: the second run recovers from a snapshot plus the log.
//!
//! ```sh
//! cargo run --example kv -- /tmp/kv-demo     # default: a temporary directory
//! ```
#![forbid(unsafe_code)]

mod store;

use store::{Op, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };

    // First run: a few writes, a checkpoint, more writes after it.
    let kv = Store::open(&dir).await?;
    println!("first open: {:?}", kv.recovered());
    kv.put(b"apple", b"red").await?;
    kv.put(b"banana", b"yellow").await?;
    kv.write_batch(vec![
        Op::Put(b"cherry".to_vec(), b"dark red".to_vec()),
        Op::Put(b"date".to_vec(), b"brown".to_vec()),
        Op::Delete(b"apple".to_vec()),
    ])
    .await?;
    let covered = kv.checkpoint().await?;
    println!("checkpoint covers LSN {covered}");
    kv.put(b"elderberry", b"purple").await?;
    kv.put(b"banana", b"green").await?;
    let before = kv.entries();
    kv.close().await?;

    // Second run: snapshot + replay of the records after it.
    let kv = Store::open(&dir).await?;
    let r = kv.recovered();
    println!(
        "second open: {} keys from the snapshot (LSN {}), {} log records replayed",
        r.snapshot_keys, r.snapshot_lsn, r.replayed
    );
    for (k, v) in kv.entries() {
        println!("  {} = {}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v));
    }
    assert_eq!(kv.entries(), before, "recovered state must equal the state before closing");
    assert_eq!(r.replayed, 2, "only the records after the checkpoint are replayed");
    kv.close().await?;
    Ok(())
}
