//! The runtime contract: what `Wal::open` needs from tokio, said with typed
//! errors instead of panics, and the blocking handle's API.

use aiowal::{Error, Lsn, Options, Wal};

fn opts() -> Options {
    Options::default().segment_bytes(1 << 20).batch_bytes_max(64 << 10).max_record_bytes(4096)
}

/// Outside any tokio runtime: a typed error, not a panic.
#[test]
fn open_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut fut = Box::pin(Wal::open(dir.path(), opts()));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::future::Future::poll(fut.as_mut(), &mut cx) {
        std::task::Poll::Ready(Err(e @ Error::Runtime(_))) => {
            assert!(
                e.to_string().contains("tokio runtime") && e.to_string().contains("blocking::Wal"),
                "{e}"
            );
        }
        other => panic!("expected Error::Runtime, got {other:?}"),
    }
}

/// A runtime without the I/O driver: `Auto` falls back to the threaded
/// backend; an explicit io_uring is an error that says what to enable.
#[cfg(target_os = "linux")]
#[test]
fn runtime_without_io_driver() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), opts()).await.unwrap();
        assert_eq!(wal.backend_name(), "threaded");
        wal.append(b"works").await.unwrap();
        wal.close().await.unwrap();
        match Wal::open(dir.path(), opts().backend(aiowal::Backend::Uring)).await {
            Err(e @ Error::BackendUnavailable { backend: "uring", .. }) => {
                assert!(e.to_string().contains("enable_io"), "{e}");
            }
            other => panic!("expected BackendUnavailable, got {other:?}"),
        }
        let wal = Wal::open(dir.path(), opts().backend(aiowal::Backend::Threaded)).await.unwrap();
        assert_eq!(wal.read_from(Lsn::FIRST).unwrap().count(), 1);
        wal.close().await.unwrap();
    });
}

/// The blocking handle stages, reports its watermarks and reads.
#[test]
fn blocking_handle_stages_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let wal = aiowal::blocking::Wal::open(dir.path(), opts()).unwrap();
    assert_eq!((wal.first_lsn(), wal.durable_lsn()), (Lsn::FIRST, Lsn::ZERO));
    let a = wal.stage(b"first").unwrap();
    let b = wal.stage_batch([&b"second"[..], b"third"]).unwrap();
    assert_eq!(b.lsns().first(), a.lsns().last().next());
    assert_eq!(b.durable().unwrap().last(), Lsn::new(3));
    assert_eq!(a.durable().unwrap().first(), Lsn::FIRST);
    assert_eq!(wal.durable_lsn(), Lsn::new(3));
    wal.close().unwrap();
}

/// A long scan of a cold log belongs on a blocking thread (its page faults
/// block the calling thread): the iterator moves there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_iter_moves_to_a_blocking_thread() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    for i in 0..100u32 {
        wal.append(&i.to_le_bytes()).await.unwrap();
    }
    let iter = wal.read_from(Lsn::FIRST).unwrap();
    let sum = tokio::task::spawn_blocking(move || {
        iter.map(|r| u64::from(u32::from_le_bytes(r.unwrap().data().try_into().unwrap()))).sum::<u64>()
    })
    .await
    .unwrap();
    assert_eq!(sum, (0..100).sum::<u64>());
    wal.close().await.unwrap();
}

/// Dropping the last handle stops the log in the background: a reopen in
/// the same process before that finished is told so (`Locked` with
/// `shutting_down`), and succeeds once it has; `close().await` instead
/// returns only when the directory is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    wal.append(b"one").await.unwrap();
    drop(wal);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let wal = loop {
        match Wal::open(dir.path(), opts()).await {
            Ok(w) => break w,
            Err(Error::Locked { shutting_down: true, .. }) => {
                assert!(std::time::Instant::now() < deadline, "the dropped handle never finished");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(e) => panic!("reopen after drop: {e}"),
        }
    };
    assert_eq!(wal.read_from(Lsn::FIRST).unwrap().count(), 1);
    wal.close().await.unwrap();
    // After close().await the directory is free at once.
    let wal = Wal::open(dir.path(), opts()).await.unwrap();
    wal.close().await.unwrap();
}
