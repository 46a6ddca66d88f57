//! The POSIX AIO backend: each batch goes to the kernel as one `lio_listio`.
//!
//! A batch becomes one `aiocb` per aligned buffer, submitted with
//! `lio_listio(LIO_NOWAIT)` (split into lists of at most `AIO_LISTIO_MAX`),
//! then, once every write completed, an `aio_fsync(O_DSYNC)`. Every control
//! block's result is read with `aio_error` / `aio_return`; a failed or short
//! write, or a failed sync, poisons the log. `EAGAIN` (the kernel's AIO queue
//! is full) is handled by waiting for what was queued and resubmitting only
//! the control blocks that were not.
//!
//! How completion reaches the pipeline differs per platform:
//!
//! * FreeBSD (the default there): the list is registered with tokio's
//!   `Aio` with LIO interest; `lio_listio`'s own sigevent is
//!   `SIGEV_KEVENT` with tokio's kqueue and token, so kqueue wakes the task
//!   when the list completes; no thread waits. See `freebsd.rs`.
//! * Linux (`Backend::Lio`, for running the shared code everywhere): glibc
//!   implements POSIX AIO with its own helper threads, so a signal or
//!   callback would only add hand-offs. A dedicated thread per log blocks in
//!   `aio_suspend` instead: no runtime worker blocks and nothing polls. See
//!   `linux.rs`.
//!
//! In-flight control blocks and buffers are owned by [`AioBatch`]; dropping
//! it while the kernel still uses them waits for them first.

#[cfg(target_os = "freebsd")]
mod freebsd;
#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "freebsd")]
pub(crate) use freebsd::Lio;
#[cfg(target_os = "linux")]
pub(crate) use linux::start;

use std::cell::UnsafeCell;
use std::io;
use std::sync::Arc;

use super::{IoBatch, IoFailure};
use crate::error::IoOp;
use crate::vfs::SegFile;

/// Most control blocks one `lio_listio` call may carry here.
fn listio_max() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_AIO_LISTIO_MAX) };
    // glibc reports no limit (-1); POSIX guarantees at least 2; 16 is
    // FreeBSD's default. Our batches carry one or a few buffers.
    if n > 0 { usize::try_from(n).unwrap_or(16).min(1024) } else { 16 }
}

fn zeroed_aiocb() -> libc::aiocb {
    // SAFETY: aiocb is a plain C struct; all-zero is a valid value
    // (null pointers, zero lengths, SIGEV_NONE is 0 on Linux and FreeBSD).
    unsafe { std::mem::zeroed::<libc::aiocb>() }
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// Why a submission did not go through.
pub(crate) enum Submit {
    /// The kernel's queue is full: wait for queued work, then try again.
    Again,
    /// A hard failure: poison.
    Failed(IoFailure),
}

/// One batch as POSIX AIO control blocks, owned until every one completes.
/// It borrows the batch, whose buffers the kernel reads: the borrow (and
/// Drop, which waits for the kernel) keeps them alive long enough.
pub(crate) struct AioBatch<'a> {
    _batch: &'a IoBatch,
    /// Keeps the descriptor open while the kernel uses it.
    _file: Arc<SegFile>,
    fd: libc::c_int,
    /// One control block per buffer; never resized once built, so the
    /// addresses given to the kernel stay valid. In cells: the AIO
    /// implementation writes their status fields while we hold them.
    writes: Vec<UnsafeCell<libc::aiocb>>,
    /// Whether each write was accepted by the kernel (and not yet reaped).
    queued: Vec<bool>,
    reaped: bool,
    sync: Option<Box<UnsafeCell<libc::aiocb>>>,
}

// SAFETY: the raw pointers in the control blocks point into the borrowed
// batch's buffers and the blocks' own boxes; the kernel uses them whatever
// thread the owner runs on, and only the owner (`&mut self`) touches them.
unsafe impl Send for AioBatch<'_> {}

impl<'a> AioBatch<'a> {
    /// Control blocks for every buffer of `batch`, written to `file`.
    pub(crate) fn new(batch: &'a IoBatch, file: Arc<SegFile>) -> Result<AioBatch<'a>, IoFailure> {
        let fd = file.raw_fd().map_err(|error| IoFailure { op: IoOp::Write, error })?;
        let mut writes = Vec::with_capacity(batch.writes.len());
        for w in &batch.writes {
            let Ok(offset) = libc::off_t::try_from(w.offset) else {
                let error = io::Error::other("write offset beyond off_t");
                return Err(IoFailure { op: IoOp::Write, error });
            };
            let mut cb = zeroed_aiocb();
            cb.aio_fildes = fd;
            cb.aio_offset = offset;
            // The kernel only reads through this pointer (LIO_WRITE).
            cb.aio_buf = w.data().as_ptr().cast_mut().cast();
            cb.aio_nbytes = w.data().len();
            cb.aio_lio_opcode = libc::LIO_WRITE;
            cb.aio_sigevent.sigev_notify = libc::SIGEV_NONE;
            writes.push(UnsafeCell::new(cb));
        }
        let queued = vec![false; writes.len()];
        Ok(AioBatch { _batch: batch, _file: file, fd, writes, queued, reaped: false, sync: None })
    }

    /// Submits the writes not yet queued, in lists of at most `AIO_LISTIO_MAX`.
    /// `sigev` is passed to each `lio_listio` (FreeBSD: the kevent to post
    /// when that list completes); `None` means no notification.
    pub(crate) fn submit_writes(&mut self, sigev: Option<libc::sigevent>) -> Result<(), Submit> {
        let pending: Vec<usize> = (0..self.writes.len()).filter(|&i| !self.queued[i]).collect();
        for chunk in pending.chunks(listio_max()) {
            let mut list: Vec<*mut libc::aiocb> = Vec::with_capacity(chunk.len());
            for &i in chunk {
                if let Some(cb) = self.writes.get(i) {
                    list.push(cb.get());
                }
            }
            let mut sev = sigev;
            let sevp = sev.as_mut().map_or(std::ptr::null_mut(), |s| s as *mut libc::sigevent);
            let n = libc::c_int::try_from(list.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `list` holds pointers to boxed control blocks owned by
            // `self`, which outlives the operations (Drop waits for them);
            // their buffers live in the borrowed batch. The list array
            // itself is only read during the call.
            let r = unsafe { libc::lio_listio(libc::LIO_NOWAIT, list.as_mut_ptr(), n, sevp) };
            if r == 0 {
                for &i in chunk {
                    self.queued[i] = true;
                }
                continue;
            }
            let e = errno();
            // Which of the list the kernel took: the others report EAGAIN.
            for &i in chunk {
                if let Some(cb) = self.writes.get(i) {
                    // SAFETY: `cb` is a valid control block owned by `self`.
                    let status = unsafe { libc::aio_error(cb.get()) };
                    self.queued[i] = status != libc::EAGAIN && status != -1;
                }
            }
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Err(Submit::Again),
                // EIO: some request failed to start; its aio_error tells which,
                // read when the batch completes.
                Some(libc::EIO) if self.queued.iter().all(|q| *q) => Ok(()),
                _ => Err(Submit::Failed(IoFailure { op: IoOp::Write, error: e })),
            };
        }
        Ok(())
    }

    /// Control blocks the kernel holds that have not completed yet.
    pub(crate) fn in_progress(&self) -> Vec<*const libc::aiocb> {
        let writes = self
            .writes
            .iter()
            .zip(&self.queued)
            .filter(|(_, q)| **q && !self.reaped)
            .map(|(cb, _)| cb.get().cast_const());
        writes
            .chain(self.sync.iter().map(|cb| cb.get().cast_const()))
            // SAFETY: every pointer is a live control block owned by `self`.
            .filter(|&cb| unsafe { libc::aio_error(cb) } == libc::EINPROGRESS)
            .collect()
    }

    /// Whether every write was queued and has completed.
    pub(crate) fn writes_done(&self) -> bool {
        self.queued.iter().all(|q| *q) && self.writes_in_progress() == 0
    }

    fn writes_in_progress(&self) -> usize {
        self.writes
            .iter()
            .zip(&self.queued)
            // SAFETY: a live control block owned by `self`.
            .filter(|(cb, q)| {
                **q && !self.reaped && unsafe { libc::aio_error(cb.get()) } == libc::EINPROGRESS
            })
            .count()
    }

    /// Reads every write's result once (releasing the kernel's record of it);
    /// the first error, or a short write, is the batch's failure.
    pub(crate) fn reap_writes(&mut self) -> Result<(), IoFailure> {
        let mut result = Ok(());
        for cb in &self.writes {
            // SAFETY: the write completed (writes_done); aio_error then
            // aio_return, once, on a control block owned by `self`.
            let (status, n, want) =
                unsafe { (libc::aio_error(cb.get()), libc::aio_return(cb.get()), (*cb.get()).aio_nbytes) };
            if result.is_ok() {
                result = check(status, n, want, IoOp::Write);
            }
        }
        self.reaped = true;
        result
    }

    /// Queues `aio_fsync(O_DSYNC)` for the file, after all writes completed.
    pub(crate) fn submit_sync(&mut self, sigev: Option<libc::sigevent>) -> Result<(), Submit> {
        let mut raw = zeroed_aiocb();
        raw.aio_fildes = self.fd;
        raw.aio_sigevent = sigev.unwrap_or(raw.aio_sigevent);
        if sigev.is_none() {
            raw.aio_sigevent.sigev_notify = libc::SIGEV_NONE;
        }
        let cb = Box::new(UnsafeCell::new(raw));
        // SAFETY: `cb` is boxed and kept in `self.sync` until it completes.
        let r = unsafe { libc::aio_fsync(libc::O_DSYNC, cb.get()) };
        if r == 0 {
            self.sync = Some(cb);
            return Ok(());
        }
        let e = errno();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => Err(Submit::Again),
            _ => Err(Submit::Failed(IoFailure { op: IoOp::Sync, error: e })),
        }
    }

    /// Whether the sync was queued and has completed.
    pub(crate) fn sync_done(&self) -> bool {
        // SAFETY: a live control block owned by `self`.
        self.sync.as_ref().is_some_and(|cb| unsafe { libc::aio_error(cb.get()) } != libc::EINPROGRESS)
    }

    /// Reads the sync's result once.
    pub(crate) fn reap_sync(&mut self) -> Result<(), IoFailure> {
        let Some(cb) = self.sync.take() else {
            return Err(IoFailure { op: IoOp::Sync, error: io::Error::other("sync was never queued") });
        };
        // SAFETY: the sync completed (sync_done); read its status, then
        // release it with aio_return.
        let (status, n) = unsafe { (libc::aio_error(cb.get()), libc::aio_return(cb.get())) };
        check(status, n.max(0), 0, IoOp::Sync)
    }

    /// Blocks until every queued operation completed (for Drop, and for
    /// Linux's waiting thread): `aio_suspend` over what is still in progress.
    pub(crate) fn wait_all(&self) {
        loop {
            let list = self.in_progress();
            if list.is_empty() {
                return;
            }
            let n = libc::c_int::try_from(list.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `list` points at live control blocks owned by `self`;
            // a null timeout waits until one completes (EINTR just loops).
            unsafe { libc::aio_suspend(list.as_ptr(), n, std::ptr::null()) };
        }
    }
}

/// An operation's outcome from its `aio_error` status and `aio_return` value.
fn check(status: libc::c_int, n: libc::ssize_t, want: usize, op: IoOp) -> Result<(), IoFailure> {
    if status != 0 {
        return Err(IoFailure { op, error: io::Error::from_raw_os_error(status) });
    }
    if op == IoOp::Write && usize::try_from(n).ok() != Some(want) {
        let error = io::Error::new(io::ErrorKind::WriteZero, format!("short write: {n} of {want} bytes"));
        return Err(IoFailure { op, error });
    }
    Ok(())
}

impl Drop for AioBatch<'_> {
    fn drop(&mut self) {
        // The kernel may still be writing from our buffers (the task driving
        // this batch was dropped): wait, then release what was not reaped.
        self.wait_all();
        if !self.reaped {
            for (cb, q) in self.writes.iter().zip(&self.queued) {
                if *q {
                    // SAFETY: completed control block owned by `self`, reaped once.
                    unsafe { libc::aio_return(cb.get()) };
                }
            }
        }
        if let Some(cb) = self.sync.as_ref() {
            // SAFETY: completed control block owned by `self`, reaped once.
            unsafe { libc::aio_return(cb.get()) };
        }
    }
}
