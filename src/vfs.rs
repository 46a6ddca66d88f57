//! The file-system seam: every file and directory call aiowal makes goes
//! through [`Vfs`], so that the crash simulator (feature `sim`) can stand in
//! for the operating system without a second copy of the segment, recovery
//! or pipeline code.
//!
//! Without the `sim` feature each enum has one variant and every call is a
//! direct `std::fs` / `libc` call.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::fd::RawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use nix::fcntl::{Flock, FlockArg};

/// Where a log's files live: the real file system, or a simulated disk.
#[derive(Clone, Default)]
pub(crate) enum Vfs {
    /// The operating system's file system.
    #[default]
    Os,
    /// The crash simulator's in-memory disk.
    #[cfg(feature = "sim")]
    Sim(crate::sim::SimDisk),
}

impl fmt::Debug for Vfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vfs::Os => f.write_str("Os"),
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => f.debug_tuple("Sim").field(&d.seed()).finish(),
        }
    }
}

impl PartialEq for Vfs {
    fn eq(&self, other: &Vfs) -> bool {
        match (self, other) {
            (Vfs::Os, Vfs::Os) => true,
            #[cfg(feature = "sim")]
            (Vfs::Sim(a), Vfs::Sim(b)) => a.same_disk(b),
            #[cfg(feature = "sim")]
            _ => false,
        }
    }
}

impl Eq for Vfs {}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    File,
    Symlink,
    Other,
}

/// An open segment file.
#[derive(Debug)]
pub(crate) enum SegFile {
    Os(File),
    #[cfg(feature = "sim")]
    Sim(crate::sim::SimFile),
}

impl SegFile {
    /// Writes all of `buf` at `offset`, looping over short writes.
    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            SegFile::Os(f) => f.write_all_at(buf, offset),
            #[cfg(feature = "sim")]
            SegFile::Sim(f) => {
                let (mut done, mut off) = (0usize, offset);
                while let Some(rest) = buf.get(done..).filter(|r| !r.is_empty()) {
                    let n = f.write_at(rest, off)?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    done += n;
                    off += n as u64;
                }
                Ok(())
            }
        }
    }

    /// `fdatasync`.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        match self {
            SegFile::Os(f) => f.sync_data(),
            #[cfg(feature = "sim")]
            SegFile::Sim(f) => f.sync(),
        }
    }

    /// `fsync`.
    pub(crate) fn sync_all(&self) -> io::Result<()> {
        match self {
            SegFile::Os(f) => f.sync_all(),
            #[cfg(feature = "sim")]
            SegFile::Sim(f) => f.sync(),
        }
    }

    /// Allocates the file's first `len` bytes (unwritten extents that read
    /// as zeroes; the file's size becomes `len`) with Linux `fallocate`.
    /// `Ok(false)`, with nothing done, where the file system cannot
    /// (`EOPNOTSUPP`), on other systems, and in the simulator.
    pub(crate) fn allocate(&self, len: u64) -> io::Result<bool> {
        match self {
            #[cfg(target_os = "linux")]
            SegFile::Os(f) => {
                let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                match nix::fcntl::fallocate(f, nix::fcntl::FallocateFlags::empty(), 0, len) {
                    Ok(()) => Ok(true),
                    Err(nix::errno::Errno::EOPNOTSUPP) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            #[cfg(not(target_os = "linux"))]
            SegFile::Os(_) => {
                let _ = len;
                Ok(false)
            }
            #[cfg(feature = "sim")]
            SegFile::Sim(_) => Ok(false),
        }
    }

    /// The file's length.
    pub(crate) fn len(&self) -> io::Result<u64> {
        match self {
            SegFile::Os(f) => f.metadata().map(|m| m.len()),
            #[cfg(feature = "sim")]
            SegFile::Sim(f) => f.len(),
        }
    }

    /// The descriptor, for backends that hand it to the kernel. A simulated
    /// file has none (only the simulator's backend writes to it).
    #[cfg_attr(not(any(target_os = "linux", target_os = "freebsd")), allow(dead_code))]
    pub(crate) fn raw_fd(&self) -> io::Result<RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            SegFile::Os(f) => Ok(f.as_raw_fd()),
            #[cfg(feature = "sim")]
            SegFile::Sim(_) => Err(io::Error::other("a simulated file has no descriptor")),
        }
    }
}

/// A segment's bytes for reading: a read-only map, or the simulator's copy.
#[derive(Debug)]
pub(crate) enum Mapped {
    Os(Mmap),
    #[cfg(feature = "sim")]
    Mem(Vec<u8>),
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Os(m) => m,
            #[cfg(feature = "sim")]
            Mapped::Mem(v) => v,
        }
    }
}

/// Holds a directory's exclusive lock while alive.
#[derive(Debug)]
pub(crate) enum DirLock {
    Os(#[allow(dead_code)] Flock<File>),
    #[cfg(feature = "sim")]
    Sim(#[allow(dead_code)] crate::sim::LockGuard),
}

impl Vfs {
    /// Whether aiowal may run file work on threads of its own. The simulator
    /// says no: everything runs on the caller's task, so a seed replays exactly.
    pub(crate) fn threads(&self) -> bool {
        match self {
            Vfs::Os => true,
            #[cfg(feature = "sim")]
            Vfs::Sim(_) => false,
        }
    }

    /// Runs blocking file work on tokio's blocking pool, or right here
    /// where the file system allows no threads (the simulator).
    pub(crate) async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> crate::Result<T> + Send + 'static,
    ) -> crate::Result<T> {
        if !self.threads() {
            return f();
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| crate::Error::io(crate::IoOp::Spawn, "spawn_blocking", io::Error::other(e)))?
    }

    /// Creates `dir` and any missing ancestors. Not durable by itself: the
    /// new names are in their parents' page cache until [`Vfs::sync_path`]
    /// (which `open` runs on every log directory, new or not) syncs every
    /// directory on the path. (ext4's journal commits a new directory's
    /// entry with the next fsync of anything and so hides a missing sync;
    /// btrfs's log tree does not: the kernel crash lab found it there.)
    pub(crate) fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut at = dir;
        while !self.dir_exists(at)? {
            missing.push(at);
            match at.parent() {
                Some(p) => at = p,
                None => break,
            }
        }
        for d in missing.into_iter().rev() {
            match self.mkdir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.dir_exists(d)? => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether `dir` is an existing directory; an error if it is something
    /// else or cannot be looked at.
    fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
        match self {
            Vfs::Os => match fs::metadata(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
                Ok(m) if m.is_dir() => Ok(true),
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", dir.display()),
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => Ok(d.dir_exists(dir)),
        }
    }

    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        match self {
            Vfs::Os => fs::create_dir(dir),
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.mkdir(dir),
        }
    }

    /// Takes the exclusive lock of the file at `path` without waiting;
    /// `Ok(None)` if someone else holds it.
    pub(crate) fn try_lock(&self, path: &Path) -> io::Result<Option<DirLock>> {
        match self {
            Vfs::Os => {
                let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
                match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(lock) => Ok(Some(DirLock::Os(lock))),
                    Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
                    Err((_, errno)) => Err(errno.into()),
                }
            }
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.try_lock(path).map(|g| g.map(DirLock::Sim)),
        }
    }

    /// Syncs every directory on the path to `dir`, from its parent up to
    /// the root of its file system: a process that died after a `mkdir`
    /// (ours, or the application's `mkdir -p`) may have left a name on that
    /// path in the page cache only, and records acknowledged into `dir`
    /// must not vanish with it. Stops at a mount point (a name in another
    /// file system is not this one's to lose). Costs a few clean-directory
    /// syncs per open.
    pub(crate) fn sync_path(&self, dir: &Path) -> io::Result<()> {
        // The real path: a relative one has the working directory's
        // ancestors too, `..` is not an ancestor, and through a symlink
        // the entry that matters is the target's.
        let real = match self {
            Vfs::Os => fs::canonicalize(dir)?,
            #[cfg(feature = "sim")]
            Vfs::Sim(_) => dir.to_path_buf(),
        };
        let mut at = real.as_path();
        while at.parent().is_some() && at != Path::new(".") {
            let parent = parent_of(at);
            if !self.same_file_system(at, parent) {
                break;
            }
            self.sync_dir_if_allowed(parent)?;
            at = parent;
        }
        Ok(())
    }

    /// Syncs directory `dir`, except where that cannot be done and is not
    /// ours to do: a directory this process may not open (its owner made
    /// what is below it), or a file system whose directories take no fsync
    /// (EINVAL) or that is read-only (nothing there can change).
    fn sync_dir_if_allowed(&self, dir: &Path) -> io::Result<()> {
        match self.sync_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EROFS)) => Ok(()),
            r => r,
        }
    }

    /// Whether `a` and its parent `b` are on one file system.
    fn same_file_system(&self, a: &Path, b: &Path) -> bool {
        match self {
            Vfs::Os => {
                use std::os::unix::fs::MetadataExt;
                match (fs::metadata(a), fs::metadata(b)) {
                    (Ok(x), Ok(y)) => x.dev() == y.dev(),
                    _ => true,
                }
            }
            #[cfg(feature = "sim")]
            Vfs::Sim(_) => true,
        }
    }

    /// The file system's magic number (`statfs`'s `f_type`) for `dir` on
    /// Linux (0, matching no file system, if `statfs` fails); `None`
    /// elsewhere and in the simulator.
    pub(crate) fn fs_magic(&self, dir: &Path) -> Option<u64> {
        match self {
            #[cfg(target_os = "linux")]
            Vfs::Os => Some(nix::sys::statfs::statfs(dir).map_or(0, |st| st.filesystem_type().0 as u64)),
            #[cfg(not(target_os = "linux"))]
            Vfs::Os => {
                let _ = dir;
                None
            }
            #[cfg(feature = "sim")]
            Vfs::Sim(_) => None,
        }
    }

    /// fsyncs a directory.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self {
            Vfs::Os => File::open(dir)?.sync_all(),
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.sync_dir(dir),
        }
    }

    /// Names, paths and kinds of a directory's entries.
    pub(crate) fn read_dir(&self, dir: &Path) -> io::Result<Vec<(String, PathBuf, EntryKind)>> {
        match self {
            Vfs::Os => {
                let mut out = Vec::new();
                for entry in fs::read_dir(dir)? {
                    let entry = entry?;
                    let Ok(name) = entry.file_name().into_string() else { continue };
                    let t = entry.file_type()?;
                    let kind = if t.is_file() {
                        EntryKind::File
                    } else if t.is_symlink() {
                        EntryKind::Symlink
                    } else {
                        EntryKind::Other
                    };
                    out.push((name, entry.path(), kind));
                }
                Ok(out)
            }
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.read_dir(dir),
        }
    }

    /// Creates (or truncates) a file for reading and writing.
    pub(crate) fn create(&self, path: &Path) -> io::Result<SegFile> {
        match self {
            Vfs::Os => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map(SegFile::Os),
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.create(path).map(SegFile::Sim),
        }
    }

    /// Opens an existing file for reading and writing, with `O_DIRECT` if `direct`.
    pub(crate) fn open(&self, path: &Path, direct: bool) -> io::Result<SegFile> {
        match self {
            Vfs::Os => {
                let mut o = OpenOptions::new();
                o.read(true).write(true);
                if direct {
                    let Some(flag) = crate::io::direct_io_flag() else {
                        return Err(io::Error::new(
                            io::ErrorKind::Unsupported,
                            "O_DIRECT is not available on this platform",
                        ));
                    };
                    o.custom_flags(flag);
                }
                o.open(path).map(SegFile::Os)
            }
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.open(path, direct).map(SegFile::Sim),
        }
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            Vfs::Os => fs::rename(from, to),
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.rename(from, to),
        }
    }

    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        match self {
            Vfs::Os => fs::remove_file(path),
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.remove(path),
        }
    }

    /// The length of the file at `path`.
    pub(crate) fn len(&self, path: &Path) -> io::Result<u64> {
        match self {
            Vfs::Os => fs::metadata(path).map(|m| m.len()),
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.len(path),
        }
    }

    /// The file's bytes, read-only. This is aiowal's one mmap site. With
    /// `check`, every page is read first ([`populate`]), so that an
    /// unreadable one is an error here instead of a SIGBUS later: recovery
    /// (`open`, `verify`, `dump`, `repair`) asks for it, since it reads
    /// every segment anyway. Readers do not (a read of the newest records
    /// must not copy a whole segment): the segments they map were checked
    /// by the open that found them or written by this process, so a SIGBUS
    /// there needs a page evicted and then unreadable.
    pub(crate) fn map(&self, path: &Path, check: bool) -> io::Result<Mapped> {
        match self {
            Vfs::Os => {
                let file = File::open(path)?;
                if file.metadata()?.len() == 0 {
                    // mmap of an empty file fails on some systems; an empty map is what we mean.
                    return memmap2::MmapOptions::new()
                        .len(0)
                        .map_anon()
                        .and_then(|m| m.make_read_only())
                        .map(Mapped::Os);
                }
                // SAFETY: the map is read-only. While the log is open, its one
                // owner (the directory lock) never rewrites bytes below a
                // segment's durable end as long as the segment is live; a
                // segment retired by `truncate_before` may be reused, which is
                // why its docs tell callers not to keep records of retired
                // segments. A file truncated by someone else under us is
                // outside the contract (SIGBUS, as for any mmap).
                let map = unsafe { Mmap::map(&file) }?;
                if check {
                    populate(&map, &file)?;
                }
                Ok(Mapped::Os(map))
            }
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => {
                let _ = check;
                d.read_all(path).map(Mapped::Mem)
            }
        }
    }

    /// Whether files at `path` can be opened with `O_DIRECT`; the reason when not.
    pub(crate) fn probe_direct_io(&self, path: &Path) -> Result<(), String> {
        match self {
            Vfs::Os => {
                let Some(flag) = crate::io::direct_io_flag() else {
                    return Err("O_DIRECT is not available on this platform".into());
                };
                match OpenOptions::new().read(true).custom_flags(flag).open(path) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("the file system refuses O_DIRECT ({e})")),
                }
            }
            // The simulator checks O_DIRECT's alignment rules on every write.
            #[cfg(feature = "sim")]
            Vfs::Sim(_) => Ok(()),
        }
    }

    /// A random number: from the OS, or from the simulator's seed.
    pub(crate) fn random_u64(&self) -> u64 {
        match self {
            Vfs::Os => crate::commit::random_salt(),
            #[cfg(feature = "sim")]
            Vfs::Sim(d) => d.random_u64(),
        }
    }
}

/// Reads every page of a fresh mapping's file before anyone touches the
/// mapping, so that a device that cannot read part of it (a media error,
/// or a checksum failure on btrfs after writes were lost) is an `EIO` here,
/// returned as such, and not a SIGBUS that kills the process where a byte
/// of the mapping is first read. The kernel crash lab found that SIGBUS: a
/// log reopened on btrfs after the device had dropped writes.
///
/// `pread` into a scratch buffer, which leaves the pages in the page cache
/// for the mapping. Not `MADV_POPULATE_READ`: on Linux 6.1 it never
/// returned on such a page (the lab's watchdog showed it waiting in
/// `filemap_read_folio`). A page evicted afterwards and then unreadable
/// can still raise SIGBUS: that is the nature of a mapping.
fn populate(map: &Mmap, file: &File) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    let len = map.len() as u64;
    while at < len {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break; // truncated under us: what the mapping shows is the contract's concern
        }
        at += n as u64;
    }
    Ok(())
}

/// File systems (`statfs` magic, name) on which the kernel crash lab showed
/// `O_DIRECT` writes carrying `RWF_DSYNC` durable once they complete.
pub(crate) const DSYNC_DIRECT_VERIFIED: &[(u64, &str)] = &[(0xEF53, "ext4"), (0x5846_5342, "xfs")];

/// The directory holding `path` (`.` for a bare relative name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        Some(_) => Path::new("."),
        None => path,
    }
}
