//! A batch the I/O backend loses (its task dropped with the runtime that ran
//! it) poisons the log: appenders get an error instead of waiting forever.

use std::time::Duration;

use aiowal::{Error, Options, Wal};

/// Opens a log on a runtime that is then shut down, with batches in flight
/// or about to be; appends from another runtime must fail, not hang.
fn runtime_shutdown_poisons(opts: Options) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let first = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let wal = first.block_on(async {
        let wal = Wal::open(&path, opts).await.unwrap();
        wal.append(b"before").await.unwrap();
        // Staged, not awaited: its batch task (or completion task) dies with the runtime.
        let _staged = wal.stage(b"in flight").await.unwrap();
        wal
    });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    second.block_on(async {
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            for i in 0..100u32 {
                wal.append(format!("after {i}").as_bytes()).await?;
            }
            wal.sync().await
        })
        .await
        .expect("appends hung after the runtime that ran the log's I/O shut down");
        match outcome {
            Err(Error::Poisoned { .. }) => {}
            other => panic!("expected Poisoned, got {other:?}"),
        }
    });
}

#[cfg(target_os = "linux")]
#[test]
fn uring_runtime_shutdown_poisons() {
    runtime_shutdown_poisons(
        Options::default()
            .backend(aiowal::Backend::Uring)
            .segment_bytes(1 << 20)
            .batch_bytes_max(64 << 10)
            .max_record_bytes(4096),
    );
}

#[cfg(feature = "sim")]
#[test]
fn sim_runtime_shutdown_poisons() {
    let disk = aiowal::sim::SimDisk::new(3);
    runtime_shutdown_poisons(
        Options::default().segment_bytes(1 << 20).batch_bytes_max(64 << 10).max_record_bytes(4096).sim(&disk),
    );
}
