//! Segment files on disk: naming, preallocation, the directory lock and
//! directory syncs.
//!
//! A segment is named by its sequence number, zero-padded to 20 digits so that
//! names sort like numbers (`00000000000000000001.wal`). A segment is prepared
//! under a temporary name, given its space (written zeroes, or allocated
//! space that reads as zeroes: [`Preallocate`]), fsynced, renamed and the
//! directory fsynced: a file with a final name always has all its space.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::error::{Error, IoOp, Result};
use crate::options::Preallocate;
use crate::registry::DirEntry;
pub(crate) use crate::vfs::DirLock;
use crate::vfs::{EntryKind, SegFile, Vfs};

const SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".wal.tmp";
/// Retired segments kept for reuse; never read as segments.
const SPARE_SUFFIX: &str = ".wal.spare";
const LOCK_NAME: &str = "LOCK";
/// Bytes per zero-filling write: the most the log's own writes queue
/// behind while the next segment is prepared. Measured on the reference
/// machine (a growing log of 4 KiB records, p99 append latency at 64 and
/// 256 appenders): buffered 1 MiB writes then one fsync (earlier versions)
/// 3.8 and 26 ms; `O_DIRECT` 1 MiB 2.3 and 3.0 ms; 256 KiB 1.2 and 2.5 ms;
/// 128 KiB 1.4 and 11 ms (too slow to finish a segment in time at 256).
const ZERO_CHUNK: usize = 256 << 10;

/// The zeroes every preparation writes from: one static buffer (in `.bss`,
/// so it costs no binary size), aligned for `O_DIRECT` at any block size
/// the log accepts.
#[repr(C, align(65536))] // format::ALIGNMENT_MAX
struct Zeroes([u8; ZERO_CHUNK]);
static ZEROES: Zeroes = Zeroes([0; ZERO_CHUNK]);

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

/// Takes the directory's exclusive lock, failing at once if it is held.
///
/// Whether a handle of this process dropped without `close` holds it is
/// read before and after trying: a dropped handle releases the lock, then
/// clears its mark, so a lock found held with the mark set before or after
/// was that handle's (and if the mark went away meanwhile, the lock is
/// tried once more: it was just released).
pub(crate) fn lock_dir(vfs: &Vfs, dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_NAME);
    let entry = DirEntry::of(vfs, dir);
    let before = entry.dropping();
    let mut lock = vfs.try_lock(&path);
    let after = entry.dropping();
    if matches!(lock, Ok(None)) && before && !after {
        lock = vfs.try_lock(&path);
    }
    match lock {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(Error::Locked { path, shutting_down: before || after || entry.dropping() }),
        Err(e) => Err(Error::io(IoOp::Lock, &path, e)),
    }
}

/// The directory lock of an open log, shared by everything that may still
/// touch the directory: the pipeline, a segment being prepared, a
/// truncation in progress. The lock is released when the last of them lets
/// go, never while one of them can still rename or write a file.
#[derive(Debug)]
pub(crate) struct HeldLock {
    /// Taken in `drop`, to release the lock before telling the registry.
    lock: Option<DirLock>,
    /// Closed when this drops: `close` waits for it.
    released: watch::Sender<()>,
    /// Set when the last handle was dropped without `close`.
    dropped: std::sync::Mutex<Option<Arc<DirEntry>>>,
}

/// A share of the directory lock.
pub(crate) type LockRef = Arc<HeldLock>;

impl HeldLock {
    pub(crate) fn new(lock: DirLock) -> LockRef {
        Arc::new(HeldLock {
            lock: Some(lock),
            released: watch::Sender::new(()),
            dropped: std::sync::Mutex::new(None),
        })
    }

    /// Ends (with an error) once the lock is released.
    pub(crate) fn released(&self) -> watch::Receiver<()> {
        self.released.subscribe()
    }

    /// The last handle was dropped without `close`: until the lock is
    /// released, a reopen in this process is told a handle is shutting down.
    pub(crate) fn dropped(&self, entry: &Arc<DirEntry>) {
        let mut dropped = crate::sync::lock(&self.dropped);
        if dropped.is_none() {
            entry.dropping_started();
            *dropped = Some(Arc::clone(entry));
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Released first: a reopen that still finds it held is told a
        // dropped handle is shutting down.
        drop(self.lock.take());
        if let Some(entry) = crate::sync::lock(&self.dropped).take() {
            entry.dropping_finished();
        }
    }
}

/// fsyncs a directory so that entries created, renamed or removed in it persist.
pub(crate) fn sync_dir(vfs: &Vfs, dir: &Path) -> Result<()> {
    vfs.sync_dir(dir).map_err(|e| Error::io(IoOp::SyncDir, dir, e))
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
pub(crate) fn list_segments(vfs: &Vfs, dir: &Path) -> Result<Listing> {
    let mut out = Vec::new();
    let mut tmp = Vec::new();
    let mut spares = Vec::new();
    let entries = vfs.read_dir(dir).map_err(|e| Error::io(IoOp::Read, dir, e))?;
    for (name, path, kind) in entries {
        if let Some(seq) = parse_segment_name(&name) {
            if kind != EntryKind::File {
                let reason = if kind == EntryKind::Symlink {
                    "a symlink in place of a segment (renames and removals would act on the link, not the data)"
                } else {
                    "not a regular file"
                };
                return Err(Error::BadDirectoryEntry { path, reason });
            }
            out.push((seq, path));
        } else if name.ends_with(TMP_SUFFIX) {
            tmp.push(path);
        } else if name.ends_with(SPARE_SUFFIX) {
            spares.push(path);
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    spares.sort();
    tmp.sort();
    Ok(Listing { segments: out, tmp, spares })
}

/// Creates segment `seq` of `bytes`, durably: from a spare (a retired
/// segment) when one is given, else as `how` says.
///
/// Zeroes are written rather than only allocated by default: a data sync
/// over unwritten extents costs a journal commit every time (see DESIGN.md
/// §4). A spare already has written blocks; only its header block is
/// zeroed, and the per-segment salt makes its old frames fail their
/// checksums.
///
/// With `direct`, the zeroes are written with `O_DIRECT` (no page cache:
/// no copy of `bytes` of zeroes, no burst of dirty pages for the sync to
/// push out ahead of the log's own writes) and the returned handle is
/// opened with `O_DIRECT`.
pub(crate) fn prepare(
    vfs: &Vfs,
    dir: &Path,
    seq: u64,
    bytes: u64,
    direct: bool,
    spare: Option<PathBuf>,
    how: Preallocate,
) -> Result<SegFile> {
    let path = segment_path(dir, seq);
    if let Some(spare) = spare {
        match reuse_spare(vfs, dir, &spare, &path, bytes) {
            Ok(true) => return open_for_write(vfs, &path, direct),
            Ok(false) => remove(vfs, dir, std::slice::from_ref(&spare))?,
            Err(e) => return Err(e),
        }
    }
    if how.resolve(None) == Preallocate::Allocate {
        if let Some(file) = allocate(vfs, dir, seq, bytes, direct)? {
            return Ok(file);
        }
    }
    let tmp = dir.join(format!("{seq:020}{TMP_SUFFIX}"));
    let file = vfs.create(&tmp).map_err(|e| Error::io(IoOp::Open, &tmp, e))?;
    // Opened O_DIRECT only if it can be: `direct` says the log writes with
    // O_DIRECT, so the file system takes it; a refusal falls back to the
    // page cache (the zeroes are the same).
    let direct_file = if direct { vfs.open(&tmp, true).ok() } else { None };
    let writer = direct_file.as_ref().unwrap_or(&file);
    let mut off = 0u64;
    while off < bytes {
        let n = usize::try_from((bytes - off).min(ZERO_CHUNK as u64)).unwrap_or(ZERO_CHUNK);
        writer
            .write_all_at(ZEROES.0.get(..n).unwrap_or_default(), off)
            .map_err(|e| Error::io(IoOp::Write, &tmp, e))?;
        off += n as u64;
    }
    // fsync, not fdatasync: the file's size and block map are new.
    file.sync_all().map_err(|e| Error::io(IoOp::Sync, &tmp, e))?;
    vfs.rename(&tmp, &path).map_err(|e| Error::io(IoOp::Rename, &path, e))?;
    sync_dir(vfs, dir)?;
    match direct_file {
        Some(f) => Ok(f),
        None if direct => open_for_write(vfs, &path, true),
        None => Ok(file),
    }
}

/// Creates segment `seq` as `bytes` of allocated space (reads as zeroes),
/// durably: allocated, fsynced, renamed, directory fsynced. `None`, with
/// nothing left behind, where the file system cannot allocate.
fn allocate(vfs: &Vfs, dir: &Path, seq: u64, bytes: u64, direct: bool) -> Result<Option<SegFile>> {
    let tmp = dir.join(format!("{seq:020}{TMP_SUFFIX}"));
    let file = vfs.create(&tmp).map_err(|e| Error::io(IoOp::Open, &tmp, e))?;
    if !file.allocate(bytes).map_err(|e| Error::io(IoOp::Write, &tmp, e))? {
        drop(file);
        vfs.remove(&tmp).map_err(|e| Error::io(IoOp::Remove, &tmp, e))?;
        return Ok(None);
    }
    file.sync_all().map_err(|e| Error::io(IoOp::Sync, &tmp, e))?;
    let path = segment_path(dir, seq);
    vfs.rename(&tmp, &path).map_err(|e| Error::io(IoOp::Rename, &path, e))?;
    sync_dir(vfs, dir)?;
    if direct { open_for_write(vfs, &path, true).map(Some) } else { Ok(Some(file)) }
}

/// Bytes zeroed at the start of a reused segment: its header block and
/// where its first batch goes at the largest alignment, so no old header
/// can be read back and recovery sees a never-written segment.
const SPARE_HEADER_ZERO: usize = crate::format::UNWRITTEN_PREFIX_BYTES;
const _: () =
    assert!(SPARE_HEADER_ZERO <= ZERO_CHUNK && ZERO_CHUNK % crate::format::ALIGNMENT_MAX as usize == 0);

/// Turns a spare into segment `path`: zero its header block durably, then
/// rename. Returns false (nothing done) if the spare has the wrong size.
fn reuse_spare(vfs: &Vfs, dir: &Path, spare: &Path, path: &Path, bytes: u64) -> Result<bool> {
    let file = open_for_write(vfs, spare, false)?;
    let len = file.len().map_err(|e| Error::io(IoOp::Read, spare, e))?;
    if len != bytes {
        return Ok(false);
    }
    // Zeroed and synced before the rename: a crash in between leaves either
    // a spare or an unused segment (zero header), never an old header under
    // a new name.
    let n = SPARE_HEADER_ZERO.min(usize::try_from(bytes).unwrap_or(SPARE_HEADER_ZERO));
    file.write_all_at(ZEROES.0.get(..n).unwrap_or_default(), 0)
        .map_err(|e| Error::io(IoOp::Write, spare, e))?;
    file.sync_data().map_err(|e| Error::io(IoOp::Sync, spare, e))?;
    vfs.rename(spare, path).map_err(|e| Error::io(IoOp::Rename, path, e))?;
    sync_dir(vfs, dir)?;
    Ok(true)
}

/// Renames retired segments to spares; returns their new paths.
pub(crate) fn retire(vfs: &Vfs, dir: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    rename_with_suffix(vfs, dir, paths, ".spare")
}

/// Appends `suffix` to each file's name, in order, with a directory fsync
/// after each: nothing orders directory changes between two syncs, and a
/// crash must never leave a later segment gone while an earlier one stays
/// (a gap in the log).
fn rename_with_suffix(vfs: &Vfs, dir: &Path, paths: &[PathBuf], suffix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let mut name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(suffix);
        let to = p.with_file_name(name);
        vfs.rename(p, &to).map_err(|e| Error::io(IoOp::Rename, p, e))?;
        sync_dir(vfs, dir)?;
        out.push(to);
    }
    Ok(out)
}

/// Opens an existing segment for writing, with `O_DIRECT` if `direct`.
pub(crate) fn open_for_write(vfs: &Vfs, path: &Path, direct: bool) -> Result<SegFile> {
    vfs.open(path, direct).map_err(|e| Error::io(IoOp::Open, path, e))
}

/// Whether files in `dir` can be opened with `O_DIRECT`, by trying on the
/// lock file; the reason when not.
pub(crate) fn probe_direct_io(vfs: &Vfs, dir: &Path) -> std::result::Result<(), String> {
    vfs.probe_direct_io(&dir.join(LOCK_NAME))
}

/// Removes files in order, with a directory fsync after each (see
/// [`rename_with_suffix`] for why one sync at the end is not enough).
pub(crate) fn remove(vfs: &Vfs, dir: &Path, paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        vfs.remove(p).map_err(|e| Error::io(IoOp::Remove, p, e))?;
        sync_dir(vfs, dir)?;
    }
    Ok(())
}

/// Renames segments out of the log (PointInTime recovery keeps them for
/// inspection instead of deleting them).
pub(crate) fn set_aside(vfs: &Vfs, dir: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    rename_with_suffix(vfs, dir, paths, &format!(".discarded-{secs}"))
}

/// A segment being prepared.
#[derive(Debug)]
pub(crate) struct Preparing {
    seq: u64,
    work: Work,
}

#[derive(Debug)]
enum Work {
    /// On a background thread.
    Thread(JoinHandle<Result<SegFile>>),
    /// Already done, on the caller's thread (the simulator runs no threads).
    Done(Result<SegFile>),
}

impl Preparing {
    /// Starts preparing segment `seq` in the background (or, where `vfs`
    /// allows no threads, prepares it now). The thread holds a share of the
    /// directory lock until it is done.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        vfs: &Vfs,
        dir: PathBuf,
        seq: u64,
        bytes: u64,
        direct: bool,
        spare: Option<PathBuf>,
        how: Preallocate,
        held: LockRef,
    ) -> Result<Preparing> {
        if !vfs.threads() {
            let done = prepare(vfs, &dir, seq, bytes, direct, spare, how);
            return Ok(Preparing { seq, work: Work::Done(done) });
        }
        let vfs = vfs.clone();
        let handle = std::thread::Builder::new()
            .name(format!("aiowal-prep-{seq}"))
            .spawn(move || {
                let _held = held;
                prepare(&vfs, &dir, seq, bytes, direct, spare, how)
            })
            .map_err(|e| Error::io(IoOp::Spawn, PathBuf::from("aiowal-prep"), e))?;
        Ok(Preparing { seq, work: Work::Thread(handle) })
    }

    /// The segment's sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the preparation has finished (the wait would not block).
    pub(crate) fn is_done(&self) -> bool {
        match &self.work {
            Work::Done(_) => true,
            Work::Thread(h) => h.is_finished(),
        }
    }

    /// Waits for the preparation to finish.
    pub(crate) fn wait(self) -> Result<SegFile> {
        match self.work {
            Work::Done(r) => r,
            Work::Thread(handle) => match handle.join() {
                Ok(r) => r,
                Err(_) => Err(Error::io(
                    IoOp::Spawn,
                    PathBuf::from("aiowal-prep"),
                    std::io::Error::other("segment preparation thread panicked"),
                )),
            },
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
