//! Segment files on disk: naming, preallocation, the directory lock and
//! directory syncs.
//!
//! A segment is named by its sequence number, zero-padded to 20 digits so that
//! names sort like numbers (`00000000000000000001.wal`). A segment is prepared
//! under a temporary name, filled with written zeroes, fsynced, renamed and the
//! directory fsynced: a file with a final name is always fully preallocated.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoOp, Result};

const SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".wal.tmp";
/// Retired segments kept for reuse; never read as segments.
const SPARE_SUFFIX: &str = ".wal.spare";
const LOCK_NAME: &str = "LOCK";
const ZERO_CHUNK: usize = 1 << 20;

/// Segment files with their sequence numbers.
pub(crate) type Numbered = Vec<(u64, PathBuf)>;

/// File name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

/// Path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_name(seq))
}

/// The sequence number of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Holds the exclusive lock on a log directory while alive.
#[derive(Debug)]
pub(crate) struct DirLock {
    _lock: Flock<File>,
}

/// Takes the directory's exclusive lock, failing at once if it is held.
pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(IoOp::Lock, &path, e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(DirLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::Locked { path }),
        Err((_, errno)) => Err(Error::io(IoOp::Lock, &path, errno.into())),
    }
}

/// fsyncs a directory so that entries created, renamed or removed in it persist.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io(IoOp::SyncDir, dir, e))?;
    d.sync_all().map_err(|e| Error::io(IoOp::SyncDir, dir, e))
}

/// What a log directory holds besides its lock.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Segment files, sorted by sequence number.
    pub segments: Numbered,
    /// Temporary files of interrupted preparations.
    pub tmp: Vec<PathBuf>,
    /// Retired segments kept for reuse.
    pub spares: Vec<PathBuf>,
}

/// Lists the files of a log directory. Read-only.
pub(crate) fn list_segments(dir: &Path) -> Result<Listing> {
    let mut out = Vec::new();
    let mut tmp = Vec::new();
    let mut spares = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io(IoOp::Read, dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(IoOp::Read, dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_segment_name(name) {
            let kind = entry.file_type().map_err(|e| Error::io(IoOp::Read, entry.path(), e))?;
            if !kind.is_file() {
                let reason = if kind.is_symlink() {
                    "a symlink in place of a segment (renames and removals would act on the link, not the data)"
                } else {
                    "not a regular file"
                };
                return Err(Error::BadDirectoryEntry { path: entry.path(), reason });
            }
            out.push((seq, entry.path()));
        } else if name.ends_with(TMP_SUFFIX) {
            tmp.push(entry.path());
        } else if name.ends_with(SPARE_SUFFIX) {
            spares.push(entry.path());
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    spares.sort();
    Ok(Listing { segments: out, tmp, spares })
}

/// Creates segment `seq` of `bytes`, durably: from a spare (a retired
/// segment) when one is given, else filled with written zeroes.
///
/// Zeroes are written rather than `fallocate`d: a data sync over unwritten
/// extents costs a journal commit every time (see DESIGN.md §4). A spare
/// already has written blocks; only its header block is zeroed, and the
/// per-segment salt makes its old frames fail their checksums.
///
/// With `direct`, the returned handle is opened with `O_DIRECT`.
pub(crate) fn prepare(
    dir: &Path,
    seq: u64,
    bytes: u64,
    direct: bool,
    spare: Option<PathBuf>,
) -> Result<File> {
    let path = segment_path(dir, seq);
    if let Some(spare) = spare {
        match reuse_spare(dir, &spare, &path, bytes) {
            Ok(true) => return open_for_write(&path, direct),
            Ok(false) => fs::remove_file(&spare).map_err(|e| Error::io(IoOp::Remove, &spare, e))?,
            Err(e) => return Err(e),
        }
    }
    let tmp = dir.join(format!("{seq:020}{TMP_SUFFIX}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(IoOp::Open, &tmp, e))?;
    let zeroes = vec![0u8; ZERO_CHUNK];
    let mut off = 0u64;
    while off < bytes {
        let n = usize::try_from((bytes - off).min(ZERO_CHUNK as u64)).unwrap_or(ZERO_CHUNK);
        file.write_all_at(zeroes.get(..n).unwrap_or_default(), off)
            .map_err(|e| Error::io(IoOp::Write, &tmp, e))?;
        off += n as u64;
    }
    file.sync_all().map_err(|e| Error::io(IoOp::Sync, &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(IoOp::Rename, &path, e))?;
    sync_dir(dir)?;
    if direct { open_for_write(&path, true) } else { Ok(file) }
}

/// Bytes zeroed at the start of a reused segment: its whole header block at
/// the largest alignment, so no old header can be read back.
const SPARE_HEADER_ZERO: usize = 64 << 10;

/// Turns a spare into segment `path`: zero its header block durably, then
/// rename. Returns false (nothing done) if the spare has the wrong size.
fn reuse_spare(dir: &Path, spare: &Path, path: &Path, bytes: u64) -> Result<bool> {
    let file = open_for_write(spare, false)?;
    let len = file.metadata().map_err(|e| Error::io(IoOp::Read, spare, e))?.len();
    if len != bytes {
        return Ok(false);
    }
    // Zeroed and synced before the rename: a crash in between leaves either
    // a spare or an unused segment (zero header), never an old header under
    // a new name.
    let zeroes = vec![0u8; SPARE_HEADER_ZERO.min(usize::try_from(bytes).unwrap_or(SPARE_HEADER_ZERO))];
    file.write_all_at(&zeroes, 0).map_err(|e| Error::io(IoOp::Write, spare, e))?;
    file.sync_data().map_err(|e| Error::io(IoOp::Sync, spare, e))?;
    fs::rename(spare, path).map_err(|e| Error::io(IoOp::Rename, path, e))?;
    sync_dir(dir)?;
    Ok(true)
}

/// Renames retired segments to spares; returns their new paths.
pub(crate) fn retire(dir: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    rename_with_suffix(dir, paths, ".spare")
}

/// Appends `suffix` to each file's name (one directory fsync at the end).
fn rename_with_suffix(dir: &Path, paths: &[PathBuf], suffix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let mut name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(suffix);
        let to = p.with_file_name(name);
        fs::rename(p, &to).map_err(|e| Error::io(IoOp::Rename, p, e))?;
        out.push(to);
    }
    if !paths.is_empty() {
        sync_dir(dir)?;
    }
    Ok(out)
}

/// Opens an existing segment for writing, with `O_DIRECT` if `direct`.
pub(crate) fn open_for_write(path: &Path, direct: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        let Some(flag) = crate::io::direct_io_flag() else {
            let e = std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "O_DIRECT is not available on this platform",
            );
            return Err(Error::io(IoOp::Open, path, e));
        };
        o.custom_flags(flag);
    }
    o.open(path).map_err(|e| Error::io(IoOp::Open, path, e))
}

/// Whether files in `dir` can be opened with `O_DIRECT`, by trying on the
/// lock file; the reason when not.
pub(crate) fn probe_direct_io(dir: &Path) -> std::result::Result<(), String> {
    let Some(flag) = crate::io::direct_io_flag() else {
        return Err("O_DIRECT is not available on this platform".into());
    };
    let path = dir.join(LOCK_NAME);
    match OpenOptions::new().read(true).custom_flags(flag).open(&path) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the file system refuses O_DIRECT ({e})")),
    }
}

/// Removes segment files and fsyncs the directory once.
pub(crate) fn remove(dir: &Path, paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        fs::remove_file(p).map_err(|e| Error::io(IoOp::Remove, p, e))?;
    }
    if !paths.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Renames segments out of the log (PointInTime recovery keeps them for
/// inspection instead of deleting them).
pub(crate) fn set_aside(dir: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    rename_with_suffix(dir, paths, &format!(".discarded-{secs}"))
}

/// A segment being prepared on a background thread.
#[derive(Debug)]
pub(crate) struct Preparing {
    seq: u64,
    handle: JoinHandle<Result<File>>,
}

impl Preparing {
    /// Starts preparing segment `seq` in the background.
    pub(crate) fn start(
        dir: PathBuf,
        seq: u64,
        bytes: u64,
        direct: bool,
        spare: Option<PathBuf>,
    ) -> Result<Preparing> {
        let handle = std::thread::Builder::new()
            .name(format!("aiowal-prep-{seq}"))
            .spawn(move || prepare(&dir, seq, bytes, direct, spare))
            .map_err(|e| Error::io(IoOp::Spawn, PathBuf::from("aiowal-prep"), e))?;
        Ok(Preparing { seq, handle })
    }

    /// The segment's sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Waits for the preparation to finish.
    pub(crate) fn wait(self) -> Result<File> {
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => Err(Error::io(
                IoOp::Spawn,
                PathBuf::from("aiowal-prep"),
                std::io::Error::other("segment preparation thread panicked"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(segment_name(7), "00000000000000000007.wal");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("7.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000007.wal.tmp"), None);
        assert!(segment_name(9) < segment_name(10));
    }
}
