//! `Backend::Lio` on Linux: glibc's POSIX AIO driven from one thread per log.
//!
//! glibc runs AIO requests on its own helper threads, so completion
//! notification by signal (a realtime signal read through tokio's signal
//! stream) or by `SIGEV_THREAD` would add hand-offs and process-wide signal
//! state to a path that is already thread-based. The log's I/O thread (the
//! same worker as the threaded backend) submits each batch with
//! `lio_listio` and blocks in `aio_suspend` until it completes: no runtime
//! worker blocks, nothing polls.

use std::sync::Arc;

use super::sys::Libc;
use super::{AioBatch, Notify, Submit};
use crate::error::Result;
use crate::io::threaded::Threaded;
use crate::io::{Completion, IoBatch, IoFailure};

/// Starts the Linux lio backend.
pub(crate) fn start(sink: Arc<dyn Completion>) -> Result<Threaded> {
    // Never inline: the point of this backend is to run the shared AIO code.
    Threaded::start_with(sink, "lio", write_and_sync, false).map(Threaded::always_syncing)
}

/// Submits with `lio_listio`, waits with `aio_suspend`, then `aio_fsync`.
fn write_and_sync(batch: &mut IoBatch) -> std::result::Result<(), IoFailure> {
    let file = batch.file.resolve()?;
    // SAFETY: `batch` (and so its buffers) outlives `aio`, whose Drop waits
    // for whatever the kernel still holds.
    let mut aio = unsafe { AioBatch::new(Arc::new(Libc), batch, file)? };
    run(&mut aio)
}

fn run(aio: &mut AioBatch<Libc>) -> std::result::Result<(), IoFailure> {
    loop {
        match aio.submit_writes(Notify::None) {
            Ok(()) => break,
            // The queue is full: let what was queued finish and reap it
            // (finished jobs count against the queue until reaped), then
            // resubmit the rest.
            Err(Submit::Again) => {
                wait_some(aio);
                aio.reap_finished_writes();
            }
            Err(Submit::Failed(f)) => return Err(f),
        }
    }
    aio.wait_all();
    aio.reap_writes()?;
    loop {
        match aio.submit_sync(Notify::None) {
            Ok(()) => break,
            Err(Submit::Again) => std::thread::sleep(std::time::Duration::from_micros(50)),
            Err(Submit::Failed(f)) => return Err(f),
        }
    }
    aio.wait_all();
    aio.reap_sync()
}

fn wait_some(aio: &AioBatch<Libc>) {
    if aio.in_progress().is_empty() {
        // Nothing of ours in flight: others fill the queue; back off briefly.
        std::thread::sleep(std::time::Duration::from_micros(50));
    } else {
        aio.wait_all();
    }
}
