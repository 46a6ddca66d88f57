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
//! The calls go through [`Kernel`], a narrow interface over the C calls, so
//! that the same driver logic runs over the real calls and, in tests, over
//! a model of FreeBSD's AIO and kqueue (`model.rs`).
//!
//! How completion reaches the pipeline differs per platform:
//!
//! * FreeBSD (the default there): `driver.rs`. Each list's `lio_listio`
//!   carries a `SIGEV_KEVENT` sigevent naming tokio's kqueue and the token of
//!   a long-lived `Aio` registration, so kqueue wakes the batch's task when
//!   the list completes; no thread waits. `freebsd.rs` binds it to tokio.
//! * Linux (`Backend::Lio`, for running the shared code everywhere): glibc
//!   implements POSIX AIO with its own helper threads, so a signal or
//!   callback would only add hand-offs. A dedicated thread per log blocks in
//!   `aio_suspend` instead: no runtime worker blocks and nothing polls. See
//!   `linux.rs`.

#[cfg(any(target_os = "freebsd", test))]
pub(crate) mod driver;
#[cfg(target_os = "freebsd")]
mod freebsd;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod model;
mod sys;

#[cfg(target_os = "freebsd")]
pub(crate) use freebsd::start;
#[cfg(target_os = "linux")]
pub(crate) use linux::start;
pub(crate) use sys::Libc;

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use super::{IoBatch, IoFailure};
use crate::error::IoOp;
use crate::vfs::SegFile;

/// How the kernel should report a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notify {
    /// Not at all (`SIGEV_NONE`): the caller polls or suspends.
    None,
    /// FreeBSD's `SIGEV_KEVENT`: post a kevent to kqueue `kq` with `udata`
    /// set to `token` (for a list: `EVFILT_LIO`, keyed by the list's address;
    /// for one control block: `EVFILT_AIO`, keyed by its address).
    #[cfg_attr(not(any(test, target_os = "freebsd")), allow(dead_code))]
    Kevent { kq: RawFd, token: usize },
}

/// The POSIX AIO calls the backend makes, each as its C function behaves
/// on the platform (the real calls, or a model of FreeBSD's in tests).
///
/// # Safety
/// Implementations receive raw control blocks; callers guarantee what each
/// method's safety section says.
pub(crate) trait Kernel: Send + Sync + 'static {
    /// `lio_listio(LIO_NOWAIT, list, list.len(), sig)`: 0, or the `errno`
    /// of a failure (`EAGAIN`, `EIO`: some entries may have been queued;
    /// `aio_error` tells which).
    ///
    /// # Safety
    /// Every pointer in `list` is a control block that stays valid and
    /// unmoved until it is reaped with [`Kernel::aio_return`]; so does its
    /// buffer. The list array itself stays valid and unmoved until every
    /// job it queued is reaped (FreeBSD keys the list's kevent by its
    /// address: `kern_lio_listio`, `kev.ident = (uintptr_t)uacb_list`).
    unsafe fn lio_listio(&self, list: &[*mut libc::aiocb], notify: Notify) -> i32;

    /// `aio_error(cb)`: `EINPROGRESS`, 0, or the job's error; `EINVAL` (as
    /// a value on FreeBSD, `kern_aio_error`) for a block it does not know.
    ///
    /// # Safety
    /// `cb` points to a valid control block.
    unsafe fn aio_error(&self, cb: *const libc::aiocb) -> i32;

    /// `aio_return(cb)`: the job's result, releasing it; `Err(errno)` if it
    /// failed or is unknown or unfinished (`EINVAL`, `kern_aio_return`).
    ///
    /// # Safety
    /// `cb` points to a valid control block.
    unsafe fn aio_return(&self, cb: *mut libc::aiocb) -> Result<isize, i32>;

    /// `aio_fsync(O_DSYNC, cb)` with `cb`'s sigevent set from `notify`: 0 or
    /// the `errno`.
    ///
    /// # Safety
    /// As for [`Kernel::lio_listio`], for the one control block.
    unsafe fn aio_fsync(&self, cb: *mut libc::aiocb, notify: Notify) -> i32;

    /// `aio_suspend(list)`: blocks until one of them completed (or a signal).
    ///
    /// # Safety
    /// Every pointer is a valid control block the kernel knows.
    unsafe fn aio_suspend(&self, list: &[*const libc::aiocb]);

    /// Most control blocks one `lio_listio` may carry.
    fn listio_max(&self) -> usize;

    /// Whether the file system holding `fd` is local: FreeBSD refuses AIO on
    /// one without MNT_LOCAL (NFS, fusefs, smbfs: `aio_queue_file` returns
    /// EOPNOTSUPP unless `vfs.aio.enable_unsafe=1`). `Err(errno)` if it
    /// cannot tell.
    fn local_file_system(&self, fd: RawFd) -> Result<bool, i32>;
}

/// Whether the lio backend can work for files like `fd` (the log's lock
/// file): a local file system, and `aio_fsync(O_DSYNC)` accepted and
/// completed (FreeBSD 13.0 added O_DSYNC: `kern_aio_fsync` returns EINVAL
/// before). The reason, in words, when it cannot.
pub(crate) fn probe<K: Kernel>(kernel: &K, fd: RawFd) -> Result<(), String> {
    match kernel.local_file_system(fd) {
        Ok(true) => {}
        Ok(false) => {
            return Err("the log's file system is not local (no MNT_LOCAL): FreeBSD refuses AIO on it \
                 (EOPNOTSUPP) unless vfs.aio.enable_unsafe=1"
                .into());
        }
        Err(e) => return Err(format!("fstatfs failed: {}", io::Error::from_raw_os_error(e))),
    }
    let mut raw = zeroed_aiocb();
    raw.aio_fildes = fd;
    raw.aio_sigevent.sigev_notify = libc::SIGEV_NONE;
    let cb = UnsafeCell::new(raw);
    // SAFETY: `cb` lives on this frame until the job is reaped below.
    let r = unsafe { kernel.aio_fsync(cb.get(), Notify::None) };
    let why = |e: i32| match e {
        libc::EINVAL => "aio_fsync(O_DSYNC) is not supported (FreeBSD before 13.0)".to_string(),
        libc::EOPNOTSUPP => "the file system refuses AIO (EOPNOTSUPP)".to_string(),
        libc::ENOSYS => "POSIX AIO is not available (the aio kernel module is not loaded?)".to_string(),
        e => format!("a test aio_fsync(O_DSYNC) failed: {}", io::Error::from_raw_os_error(e)),
    };
    if r != 0 {
        return Err(why(r));
    }
    loop {
        // SAFETY: as above: the job is queued and `cb` is alive.
        let status = unsafe { kernel.aio_error(cb.get()) };
        if status != libc::EINPROGRESS {
            // SAFETY: finished: release it once.
            let _ = unsafe { kernel.aio_return(cb.get()) };
            return if status == 0 { Ok(()) } else { Err(why(status)) };
        }
        // SAFETY: as above.
        unsafe { kernel.aio_suspend(&[cb.get().cast_const()]) };
    }
}

/// A control block with every field zero (null pointers, zero lengths).
pub(crate) fn zeroed_aiocb() -> libc::aiocb {
    // SAFETY: aiocb is a plain C struct for which all-zero is a valid value.
    // The sigevent's notify field is set explicitly by whoever submits it
    // (SIGEV_NONE is 0 on FreeBSD but 1 on Linux: <bits/sigevent-consts.h>).
    unsafe { std::mem::zeroed::<libc::aiocb>() }
}

/// Why a submission did not go through.
pub(crate) enum Submit {
    /// The kernel's queue is full: wait for queued work, then try again.
    Again,
    /// A hard failure: poison.
    Failed(IoFailure),
}

/// One batch as POSIX AIO control blocks, owned until every one is reaped.
///
/// The control blocks live in their own heap allocation, reached only
/// through raw pointers: the kernel (or glibc's helper threads) writes
/// their status fields while this struct's methods run, so no Rust
/// reference may cover them. The list arrays given to `lio_listio` are kept
/// here, unmoved, until every job is reaped.
pub(crate) struct AioBatch<K: Kernel> {
    kernel: Arc<K>,
    /// Keeps the descriptor open while the kernel uses it.
    _file: Arc<SegFile>,
    fd: libc::c_int,
    /// One control block per buffer, never moved or resized.
    writes: NonNull<[UnsafeCell<libc::aiocb>]>,
    /// Whether each write was accepted by the kernel.
    queued: Vec<bool>,
    /// Whether each write was reaped (its job released).
    reaped: Vec<bool>,
    /// Every list array submitted, kept until the batch is reaped.
    lists: Vec<Box<[*mut libc::aiocb]>>,
    /// The longest list to submit: `AIO_LISTIO_MAX`, less if the kernel
    /// refused a list for its length.
    list_max: usize,
    /// The first failure among the writes reaped so far.
    failure: Option<IoFailure>,
    /// The sync's control block, once queued; and whether it was reaped.
    sync: Option<NonNull<UnsafeCell<libc::aiocb>>>,
    sync_reaped: bool,
}

// SAFETY: the raw pointers point into this struct's own allocations and the
// batch's buffers (which the owner keeps alive); the kernel uses them
// whatever thread the owner runs on, and only the owner touches them.
unsafe impl<K: Kernel> Send for AioBatch<K> {}

impl<K: Kernel> AioBatch<K> {
    /// Control blocks for every buffer of `batch`, written to `file`.
    ///
    /// # Safety
    /// The batch's buffers must stay valid and unmoved until this value is
    /// dropped (which waits for, and reaps, whatever the kernel still holds).
    pub(crate) unsafe fn new(kernel: Arc<K>, batch: &IoBatch, file: Arc<SegFile>) -> Result<Self, IoFailure> {
        let fd = file.raw_fd().map_err(|error| IoFailure { op: IoOp::Write, error })?;
        let mut cbs = Vec::with_capacity(batch.writes.len());
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
            cbs.push(UnsafeCell::new(cb));
        }
        let n = cbs.len();
        let writes = NonNull::from(Box::leak(cbs.into_boxed_slice()));
        let list_max = kernel.listio_max().max(1);
        Ok(AioBatch {
            kernel,
            _file: file,
            fd,
            writes,
            queued: vec![false; n],
            reaped: vec![false; n],
            lists: Vec::new(),
            list_max,
            failure: None,
            sync: None,
            sync_reaped: false,
        })
    }

    /// The `i`-th write's control block.
    fn write_cb(&self, i: usize) -> *mut libc::aiocb {
        assert!(i < self.writes_len(), "control block index out of range");
        let base = self.writes.as_ptr().cast::<UnsafeCell<libc::aiocb>>();
        // SAFETY: `i` is within the allocation (checked above), which lives
        // as long as `self`; only raw pointers are formed, never a reference
        // to a control block the kernel may be writing.
        UnsafeCell::raw_get(unsafe { base.add(i) })
    }

    fn writes_len(&self) -> usize {
        self.queued.len()
    }

    /// Submits the writes not yet queued, in lists of at most
    /// `AIO_LISTIO_MAX`, each list asking for `notify` when it completes.
    /// A list the kernel refuses whole for its length (FreeBSD: EINVAL when
    /// it is longer than `vfs.aio.max_aio_queue_per_proc`, `sys_lio_listio`)
    /// is split in halves.
    pub(crate) fn submit_writes(&mut self, notify: Notify) -> Result<(), Submit> {
        'again: loop {
            let pending: Vec<usize> = (0..self.writes_len()).filter(|&i| !self.queued[i]).collect();
            for chunk in pending.chunks(self.list_max) {
                let list: Box<[*mut libc::aiocb]> = chunk.iter().map(|&i| self.write_cb(i)).collect();
                // SAFETY: the control blocks and their buffers live until
                // reaped (Drop waits). The list array is kept in
                // `self.lists`, unmoved (a boxed slice), until every job is
                // reaped: FreeBSD keys the list's kevent by its address, and
                // a new list at that address with this one's jobs unreaped
                // would share its knote (`kqueue_register` reuses a knote of
                // the same ident and filter).
                let r = unsafe { self.kernel.lio_listio(&list, notify) };
                self.lists.push(list);
                if r == 0 {
                    for &i in chunk {
                        self.queued[i] = true;
                    }
                    continue;
                }
                // SAFETY: valid control blocks owned by `self`.
                let untouched = || {
                    chunk.iter().all(|&i| unsafe { self.kernel.aio_error(self.write_cb(i)) } == libc::EINVAL)
                };
                if r == libc::EINVAL && chunk.len() > 1 && untouched() {
                    self.list_max = chunk.len() / 2;
                    continue 'again;
                }
                return self.sort_out(chunk, r);
            }
            return Ok(());
        }
    }

    /// After a `lio_listio` that failed with `r`: which of `chunk` the
    /// kernel queued. `kern_lio_listio` tries every entry; each one it
    /// refused holds its error (`aio_aqueue` stores it; `kern_aio_error`
    /// reads it back), EAGAIN for a full queue; one it never saw reads
    /// EINVAL. A queued job reads EINPROGRESS, or its result if it already
    /// finished.
    fn sort_out(&mut self, chunk: &[usize], r: i32) -> Result<(), Submit> {
        let mut hard = None;
        for &i in chunk {
            let cb = self.write_cb(i);
            // SAFETY: a valid control block owned by `self`.
            match unsafe { self.kernel.aio_error(cb) } {
                libc::EINPROGRESS | 0 => self.queued[i] = true,
                libc::EAGAIN => {}
                e => {
                    // Refused, or queued and already failed: release it if
                    // the kernel holds it (EINVAL if not: harmless).
                    // SAFETY: as above.
                    let _ = unsafe { self.kernel.aio_return(cb) };
                    hard.get_or_insert(e);
                }
            }
        }
        match (hard, r) {
            (Some(e), _) => {
                Err(Submit::Failed(IoFailure { op: IoOp::Write, error: io::Error::from_raw_os_error(e) }))
            }
            (None, libc::EAGAIN) => Err(Submit::Again),
            (None, libc::EIO) if self.queued.iter().all(|q| *q) => Ok(()),
            (None, r) => {
                Err(Submit::Failed(IoFailure { op: IoOp::Write, error: io::Error::from_raw_os_error(r) }))
            }
        }
    }

    /// Control blocks the kernel holds that have not completed yet.
    pub(crate) fn in_progress(&self) -> Vec<*const libc::aiocb> {
        let writes =
            (0..self.writes_len()).filter(|&i| self.queued[i] && !self.reaped[i]).map(|i| self.write_cb(i));
        let sync = self.sync.filter(|_| !self.sync_reaped).map(|cb| cb.as_ptr().cast::<libc::aiocb>());
        writes
            .chain(sync)
            .map(<*mut libc::aiocb>::cast_const)
            // SAFETY: every pointer is a live control block owned by `self`.
            .filter(|&cb| unsafe { self.kernel.aio_error(cb) } == libc::EINPROGRESS)
            .collect()
    }

    /// Reaps every write that has finished: reads its result once,
    /// releasing the kernel's record of it, and keeps the first failure (or
    /// short write) as the batch's. Called at every wake-up and before
    /// resubmitting after EAGAIN: FreeBSD counts finished, unreaped jobs
    /// against the process's queue (`aio_aqueue`: `max_aio_queue_per_proc`),
    /// and keeps a finished list's level-triggered kevent active until its
    /// last job is reaped (`filt_lio`), so leaving them would refuse the
    /// resubmission forever and wake the reactor at every turn.
    pub(crate) fn reap_finished_writes(&mut self) {
        for i in 0..self.writes_len() {
            if !self.queued[i] || self.reaped[i] {
                continue;
            }
            let cb = self.write_cb(i);
            // SAFETY: a live control block owned by `self`.
            let status = unsafe { self.kernel.aio_error(cb) };
            if status == libc::EINPROGRESS {
                continue;
            }
            // SAFETY: finished: released once (`reaped` records it); the
            // length is read through the raw pointer, no reference formed.
            let (n, want) = unsafe { (self.kernel.aio_return(cb), (*cb).aio_nbytes) };
            self.reaped[i] = true;
            if self.failure.is_none() {
                self.failure = check(status, n, want, IoOp::Write).err();
            }
        }
    }

    /// Whether every write was queued, has completed and was reaped
    #[cfg_attr(not(any(test, target_os = "freebsd")), allow(dead_code))]
    /// (reaping whatever finished since the last call).
    pub(crate) fn writes_done(&mut self) -> bool {
        self.reap_finished_writes();
        self.queued.iter().all(|q| *q) && self.reaped.iter().all(|r| *r)
    }

    /// The writes' outcome once they are all done: the first error, or a
    /// short write, is the batch's failure.
    pub(crate) fn reap_writes(&mut self) -> Result<(), IoFailure> {
        self.reap_finished_writes();
        match self.failure.take() {
            Some(f) => Err(f),
            None if self.reaped.iter().all(|r| *r) => Ok(()),
            None => Err(IoFailure { op: IoOp::Write, error: io::Error::other("writes still in flight") }),
        }
    }

    /// Queues `aio_fsync(O_DSYNC)` for the file, after all writes completed.
    pub(crate) fn submit_sync(&mut self, notify: Notify) -> Result<(), Submit> {
        let mut raw = zeroed_aiocb();
        raw.aio_fildes = self.fd;
        raw.aio_sigevent.sigev_notify = libc::SIGEV_NONE;
        let cb = NonNull::from(Box::leak(Box::new(UnsafeCell::new(raw))));
        // SAFETY: `cb` is heap-allocated and kept in `self.sync` until reaped.
        let r = unsafe { self.kernel.aio_fsync(cb.as_ptr().cast(), notify) };
        if r == 0 {
            self.sync = Some(cb);
            self.sync_reaped = false;
            return Ok(());
        }
        // SAFETY: never queued: ours to free.
        drop(unsafe { Box::from_raw(cb.as_ptr()) });
        match r {
            libc::EAGAIN => Err(Submit::Again),
            _ => Err(Submit::Failed(IoFailure { op: IoOp::Sync, error: io::Error::from_raw_os_error(r) })),
        }
    }

    /// Whether the sync was queued and has completed.
    #[cfg_attr(not(any(test, target_os = "freebsd")), allow(dead_code))]
    pub(crate) fn sync_done(&mut self) -> bool {
        // SAFETY: a live control block owned by `self`.
        self.sync.is_some_and(|cb| unsafe { self.kernel.aio_error(cb.as_ptr().cast()) } != libc::EINPROGRESS)
    }

    /// Reads the sync's result once.
    pub(crate) fn reap_sync(&mut self) -> Result<(), IoFailure> {
        let Some(cb) = self.sync.filter(|_| !self.sync_reaped) else {
            return Err(IoFailure { op: IoOp::Sync, error: io::Error::other("sync was never queued") });
        };
        // SAFETY: the sync completed (sync_done); its status, then released once.
        let (status, n) = unsafe {
            (self.kernel.aio_error(cb.as_ptr().cast()), self.kernel.aio_return(cb.as_ptr().cast()))
        };
        self.sync_reaped = true;
        check(status, n.map(|n| n.max(0)), 0, IoOp::Sync)
    }

    /// Whether the kernel still holds any of this batch's jobs.
    pub(crate) fn outstanding(&self) -> bool {
        (0..self.writes_len()).any(|i| self.queued[i] && !self.reaped[i])
            || self.sync.is_some_and(|_| !self.sync_reaped)
    }

    /// Blocks until every queued operation completed: `aio_suspend` over
    /// what is still in progress.
    pub(crate) fn wait_all(&self) {
        loop {
            let list = self.in_progress();
            if list.is_empty() {
                return;
            }
            // SAFETY: `list` points at live control blocks owned by `self`.
            unsafe { self.kernel.aio_suspend(&list) };
        }
    }

    /// Waits for and reaps whatever the kernel still holds.
    pub(crate) fn release(&mut self) {
        self.wait_all();
        self.reap_finished_writes();
        if self.sync.is_some() && !self.sync_reaped {
            let _ = self.reap_sync();
        }
    }
}

/// An operation's outcome from its `aio_error` status and `aio_return`
/// result. The status carries the error (glibc's `aio_return` leaves
/// `errno` alone; FreeBSD's also returns the job's error).
fn check(status: i32, n: Result<isize, i32>, want: usize, op: IoOp) -> Result<(), IoFailure> {
    if status != 0 {
        return Err(IoFailure { op, error: io::Error::from_raw_os_error(status) });
    }
    let n = n.map_err(|e| IoFailure { op, error: io::Error::from_raw_os_error(e) })?;
    if op == IoOp::Write && usize::try_from(n).ok() != Some(want) {
        let error = io::Error::new(io::ErrorKind::WriteZero, format!("short write: {n} of {want} bytes"));
        return Err(IoFailure { op, error });
    }
    Ok(())
}

impl<K: Kernel> Drop for AioBatch<K> {
    fn drop(&mut self) {
        // The kernel may still be writing from the buffers or into the
        // control blocks (the batch's owner was dropped): wait, and release
        // what was not reaped, before freeing them.
        if self.outstanding() {
            self.release();
        }
        // SAFETY: nothing of the kernel's refers to them any more.
        unsafe {
            drop(Box::from_raw(self.writes.as_ptr()));
            if let Some(cb) = self.sync.take() {
                drop(Box::from_raw(cb.as_ptr()));
            }
        }
    }
}
