//! A batch the I/O backend loses (its task dropped with the runtime that ran
//! it) poisons the log: appenders get an error instead of waiting forever,
//! `close` returns, and the directory can be opened again. A `close` that
//! is cancelled half-way, or a handle dropped without one, still lets go of
//! the directory.

use std::time::Duration;

use aiowal::{Error, Options, Wal};

/// Opens a log on a runtime that is then shut down, with batches in flight
/// or about to be; appends from another runtime must fail, not hang.
fn runtime_shutdown_poisons(opts: Options) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let opts_again = opts.clone();
    let first = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let wal = first.block_on(async {
        let wal = Wal::open(&path, opts.clone()).await.unwrap();
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
        let closed = tokio::time::timeout(Duration::from_secs(10), wal.close()).await;
        assert!(closed.is_ok(), "close hung after the log's I/O task was lost");
        drop(wal);
        let reopened = tokio::time::timeout(Duration::from_secs(10), reopen(&path, opts_again)).await;
        let wal = reopened.expect("the directory stayed locked");
        assert!(
            wal.read_from(aiowal::Lsn::FIRST).unwrap().next().is_some(),
            "the acknowledged record is there"
        );
        wal.close().await.unwrap();
    });
}

/// Opens `dir`, waiting while a dropped handle of this process shuts down.
async fn reopen(dir: &std::path::Path, opts: Options) -> Wal {
    loop {
        match Wal::open(dir, opts.clone()).await {
            Ok(w) => return w,
            Err(Error::Locked { shutting_down: true, .. }) => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
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

/// A `close` dropped after its first poll (a timeout, a `select!`): the
/// shutdown it started still finishes, a second `close` returns, and the
/// directory opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_close_still_shuts_down() {
    for backend in [aiowal::Backend::Threaded, aiowal::Backend::Uring, aiowal::Backend::Lio] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::default()
            .backend(backend)
            .segment_bytes(1 << 20)
            .batch_bytes_max(64 << 10)
            .max_record_bytes(4096);
        let wal = Wal::open(dir.path(), opts.clone()).await.unwrap();
        for i in 0..50u32 {
            wal.append(&i.to_le_bytes()).await.unwrap();
        }
        let mut close = Box::pin(wal.close());
        let _ = futures_poll_once(&mut close).await;
        drop(close);
        tokio::time::timeout(Duration::from_secs(10), wal.close()).await.expect("second close hung").unwrap();
        drop(wal);
        let wal = tokio::time::timeout(Duration::from_secs(10), reopen(dir.path(), opts.clone()))
            .await
            .expect("locked");
        assert_eq!(wal.read_from(aiowal::Lsn::FIRST).unwrap().count(), 50, "{backend:?}");
        // And dropped after a cancelled close, without a second one.
        let mut close = Box::pin(wal.close());
        let _ = futures_poll_once(&mut close).await;
        drop(close);
        drop(wal);
        let wal =
            tokio::time::timeout(Duration::from_secs(10), reopen(dir.path(), opts)).await.expect("locked");
        assert_eq!(wal.read_from(aiowal::Lsn::FIRST).unwrap().count(), 50, "{backend:?}");
        wal.close().await.unwrap();
    }
}

/// A blocking handle dropped without `close` (its runtime goes with it)
/// lets go of the directory.
#[test]
fn blocking_handle_dropped_without_close_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(1 << 20).batch_bytes_max(64 << 10).max_record_bytes(4096);
    let wal = aiowal::blocking::Wal::open(dir.path(), opts.clone()).unwrap();
    wal.append(b"kept").unwrap();
    drop(wal);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let wal = loop {
        match aiowal::blocking::Wal::open(dir.path(), opts.clone()) {
            Ok(w) => break w,
            Err(Error::Locked { shutting_down: true, .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("reopen after dropping a blocking handle: {e}"),
        }
    };
    assert_eq!(wal.read_from(aiowal::Lsn::FIRST).unwrap().count(), 1);
    wal.close().unwrap();
}

/// Polls a future once; returns its output if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    use std::task::Poll;
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}
