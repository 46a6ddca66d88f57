//! The real POSIX AIO calls (glibc's on Linux, the system calls on FreeBSD).

use super::{Kernel, Notify};

/// The operating system's AIO.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Libc;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// The sigevent that asks for `notify`.
fn sigevent(notify: Notify) -> libc::sigevent {
    // SAFETY: sigevent is a plain C struct; all-zero is a valid value.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    match notify {
        Notify::None => sev.sigev_notify = libc::SIGEV_NONE,
        #[cfg(target_os = "freebsd")]
        Notify::Kevent { kq, token } => {
            // FreeBSD's sigevent(3): SIGEV_KEVENT posts to the kqueue in
            // sigev_notify_kqueue (aliased to sigev_signo) with udata
            // sigev_value.sival_ptr.
            sev.sigev_notify = libc::SIGEV_KEVENT;
            sev.sigev_signo = kq;
            sev.sigev_value = libc::sigval { sival_ptr: token as *mut libc::c_void };
        }
        #[cfg(not(target_os = "freebsd"))]
        Notify::Kevent { .. } => sev.sigev_notify = libc::SIGEV_NONE,
    }
    sev
}

impl Kernel for Libc {
    unsafe fn lio_listio(&self, list: &[*mut libc::aiocb], notify: Notify) -> i32 {
        let mut sev = sigevent(notify);
        let sevp = if notify == Notify::None { std::ptr::null_mut() } else { &raw mut sev };
        let n = libc::c_int::try_from(list.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the caller guarantees the list and its control blocks;
        // lio_listio does not write through the array pointer (the const
        // cast matches the C prototype's `struct aiocb * const list[]`).
        let r = unsafe { libc::lio_listio(libc::LIO_NOWAIT, list.as_ptr().cast_mut(), n, sevp) };
        if r == 0 { 0 } else { errno() }
    }

    unsafe fn aio_error(&self, cb: *const libc::aiocb) -> i32 {
        // SAFETY: the caller guarantees `cb`.
        let r = unsafe { libc::aio_error(cb) };
        if r == -1 { errno() } else { r }
    }

    unsafe fn aio_return(&self, cb: *mut libc::aiocb) -> Result<isize, i32> {
        // SAFETY: the caller guarantees `cb`.
        let r = unsafe { libc::aio_return(cb) };
        if r == -1 { Err(errno()) } else { Ok(r) }
    }

    unsafe fn aio_fsync(&self, cb: *mut libc::aiocb, notify: Notify) -> i32 {
        // SAFETY: the caller guarantees `cb`; only its sigevent is set here.
        unsafe { (*cb).aio_sigevent = sigevent(notify) };
        // SAFETY: as above.
        let r = unsafe { libc::aio_fsync(libc::O_DSYNC, cb) };
        if r == 0 { 0 } else { errno() }
    }

    unsafe fn aio_suspend(&self, list: &[*const libc::aiocb]) {
        let n = libc::c_int::try_from(list.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the caller guarantees the control blocks; a null timeout
        // waits until one completes (EINTR: the caller loops).
        unsafe { libc::aio_suspend(list.as_ptr(), n, std::ptr::null()) };
    }

    fn listio_max(&self) -> usize {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_AIO_LISTIO_MAX) };
        // glibc reports no limit (-1); POSIX guarantees at least 2; 16 is
        // FreeBSD's AIO_LISTIO_MAX. Our batches carry one or a few buffers.
        if n > 0 { usize::try_from(n).unwrap_or(16).min(1024) } else { 16 }
    }

    #[cfg(target_os = "freebsd")]
    fn local_file_system(&self, fd: std::os::fd::RawFd) -> Result<bool, i32> {
        // SAFETY: statfs is a plain C struct; fstatfs fills it.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open descriptor; `st` is a valid out pointer.
        if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
            return Err(errno());
        }
        Ok(st.f_flags & libc::MNT_LOCAL != 0)
    }

    /// glibc runs AIO on its own threads with ordinary system calls: any
    /// file system will do.
    #[cfg(not(target_os = "freebsd"))]
    fn local_file_system(&self, _fd: std::os::fd::RawFd) -> Result<bool, i32> {
        Ok(true)
    }
}
