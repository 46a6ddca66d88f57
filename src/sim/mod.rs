//! The crash simulator (feature `sim`): an in-memory disk that loses power
//! on demand, and a checker for what must survive.
//!
//! A log opened with [`Options::sim`](crate::Options::sim) does every file
//! call on a [`SimDisk`] and writes its batches through the simulator's
//! backend. A seed drives every choice the simulator makes, and nothing runs
//! on a thread of aiowal's own: on a current-thread tokio runtime, a seed
//! replays exactly.
//!
//! # Failure model (DESIGN.md §5)
//!
//! After a crash ([`SimDisk::crash_after`], [`SimDisk::crash_now`]) every
//! call fails until [`SimDisk::restart`] returns the disk as the power left
//! it (or [`SimDisk::restart_process`], as a dead process left it: every
//! write still readable, nothing more durable):
//!
//! * each file keeps what its last completed sync covered, plus any subset of
//!   the writes after it; each of those is kept whole, lost, or torn at
//!   512-byte sectors, a torn sector holding the old bytes, the new bytes or
//!   garbage; a write the crash interrupted counts as one of them;
//! * each directory change (create, rename, remove, and `mkdir`) since the
//!   directory's last sync survives or vanishes independently of the
//!   others; a directory whose own name vanished takes everything under it;
//! * when a sync fails, each write it should have covered is settled at
//!   once as a crash would settle it (whole, lost or torn) and is never
//!   written again, while reads keep returning its new bytes: Linux marks
//!   such pages clean after a writeback error.
//!
//! A file created over an existing name gets a new inode. Faults on demand ([`Fault`]): EIO on the
//! k-th write or sync, ENOSPC past a capacity, short writes, added latency.
//! Writes through a file opened with `O_DIRECT` must be 512-byte aligned in
//! offset, length and memory, or fail with EINVAL, as on Linux.
//!
//! # Checking a crash
//!
//! [`Checker`] records what was staged, what was acknowledged and where the
//! log was truncated, and after recovery verifies the invariant: the
//! recovered log is a prefix of what was appended (dense LSNs, identical
//! bytes), it holds every acknowledged record, and every atomic batch is all
//! or nothing.
//!
//! ```
//! use aiowal::sim::{Checker, SimDisk};
//! use aiowal::{Options, Wal};
//!
//! fn opts(disk: &SimDisk) -> Options {
//!     Options::default().segment_bytes(64 << 10).batch_bytes_max(16 << 10).max_record_bytes(4 << 10).sim(disk)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = SimDisk::new(42);
//! let mut checker = Checker::new();
//! let wal = Wal::open("/log", opts(&disk)).await?;
//! disk.crash_after(40); // the power goes out at the 40th disk operation from now
//! for i in 0..100u32 {
//!     let rec = i.to_le_bytes();
//!     let Ok(staged) = wal.stage(&rec).await else { break };
//!     checker.staged(staged.lsns(), [&rec[..]], false);
//!     match staged.durable().await {
//!         Ok(range) => checker.acked(range.last()),
//!         Err(_) => break, // poisoned: the power went out
//!     }
//! }
//! drop(wal);
//!
//! let disk = disk.restart(); // what survived the power loss
//! let wal = Wal::open("/log", opts(&disk)).await?;
//! let report = checker.check(&wal)?;
//! assert!(report.recovered >= report.acked);
//! # Ok(()) }
//! ```

mod check;
mod disk;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use check::{CheckReport, Checker, Violation};

use crate::error::IoOp;
use crate::vfs::EntryKind;
use disk::Disk;

/// A fault to inject into a [`SimDisk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The write after the next `after` writes fails with EIO (nothing written).
    WriteError {
        /// Writes that succeed first.
        after: u64,
    },
    /// The sync after the next `after` syncs fails with EIO; the writes it
    /// should have covered are settled as a crash would settle them and are
    /// never written again (reads still see them).
    SyncError {
        /// Syncs that succeed first.
        after: u64,
    },
    /// The write after the next `after` writes writes only half its bytes
    /// (whole sectors under `O_DIRECT`) and reports that.
    ShortWrite {
        /// Writes that succeed first.
        after: u64,
    },
    /// The file or directory operation of kind `op` after the next `after`
    /// such operations fails with EIO and does nothing: opening or
    /// creating a file (`IoOp::Open`), `Rename`, `Remove`, a directory sync
    /// (`SyncDir`), reading a file, its length or a directory (`Read`),
    /// `Lock`, `CreateDir`. (Writes and syncs of files: `WriteError`,
    /// `SyncError`.)
    OpError {
        /// The kind of operation.
        op: IoOp,
        /// Operations of that kind that succeed first.
        after: u64,
    },
    /// From now on, a write that would make the files hold more than this
    /// many bytes fails with ENOSPC.
    NoSpace {
        /// Total bytes of all files the disk holds.
        capacity_bytes: u64,
    },
    /// The simulator's backend waits this long (tokio time) before each
    /// batch's write and sync.
    Latency(Duration),
}

/// A disk operation about to run, shown to [`SimDisk::crash_when`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpInfo {
    /// What it is, as an [`IoOp`] names it: creating a file is an `Open`,
    /// reading a file, its length or a directory a `Read`, taking the
    /// directory lock a `Lock`.
    pub kind: IoOp,
    /// The file or directory it acts on (a file's current name; the new
    /// name for a rename; empty for a file that has no name any more).
    pub path: PathBuf,
    /// Its number since the disk was created or restarted, from 1.
    pub index: u64,
}

/// What a [`SimDisk`] did, summed over its restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Writes that completed.
    pub writes: u64,
    /// Bytes those writes wrote.
    pub bytes_written: u64,
    /// File syncs that completed.
    pub syncs: u64,
    /// Directory syncs that completed.
    pub dir_syncs: u64,
    /// Injected faults that fired.
    pub faults_fired: u64,
    /// Power losses.
    pub crashes: u64,
    /// Restarts ([`SimDisk::restart`] and [`SimDisk::restart_process`]).
    pub restarts: u64,
    /// Of those, process restarts (the page cache kept).
    pub process_restarts: u64,
    /// Unsynced writes a crash image dropped entirely.
    pub writes_lost: u64,
    /// Unsynced writes a crash image tore at sectors.
    pub writes_torn: u64,
    /// Sectors of torn writes filled with garbage.
    pub sectors_garbled: u64,
    /// Directory changes a crash image dropped.
    pub dir_ops_lost: u64,
}

/// A small deterministic random number generator (SplitMix64), for
/// simulations that must replay from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// An in-memory disk that fails the way DESIGN.md §5 says disks fail.
/// Cheap to clone; clones share the disk.
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<Disk>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.lock();
        f.debug_struct("SimDisk").field("seed", &d.seed).field("ops", &d.ops()).finish()
    }
}

impl SimDisk {
    /// An empty disk whose every random choice derives from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk { inner: Arc::new(Mutex::new(Disk::new(seed))) }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        crate::sync::lock(&self.inner)
    }

    /// The seed the disk was created with.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// Operations (file and directory calls) done since creation or restart.
    pub fn ops(&self) -> u64 {
        self.lock().ops()
    }

    /// Counters, summed over restarts.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Cuts the power during the `ops`-th operation from now (at least the
    /// next one): that operation and every later one fail.
    pub fn crash_after(&self, ops: u64) {
        self.lock().crash_after(ops);
    }

    /// Cuts the power during the first operation for which `trigger`
    /// returns true (it sees every operation until then, in order).
    ///
    /// ```
    /// # use aiowal::{IoOp, sim::SimDisk};
    /// let disk = SimDisk::new(7);
    /// // Power loss at the directory sync that follows the first rename.
    /// let mut renamed = false;
    /// disk.crash_when(move |op| {
    ///     renamed |= op.kind == IoOp::Rename;
    ///     renamed && op.kind == IoOp::SyncDir
    /// });
    /// ```
    pub fn crash_when(&self, trigger: impl FnMut(&OpInfo) -> bool + Send + 'static) {
        self.lock().trigger = Some(disk::Trigger(Box::new(trigger)));
    }

    /// Cancels a pending crash ([`SimDisk::crash_after`],
    /// [`SimDisk::crash_when`]) and every armed write or sync fault that has
    /// not fired yet (capacity and latency stay). For a step that should
    /// run undisturbed after one that might have been cut short.
    pub fn disarm(&self) {
        self.lock().disarm();
    }

    /// Cuts the power now.
    pub fn crash_now(&self) {
        self.lock().crash_now();
    }

    /// Whether the power is out.
    pub fn crashed(&self) -> bool {
        self.lock().crashed()
    }

    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().inject(fault);
    }

    /// The disk after the power comes back: a new disk holding a crash image
    /// of this one, chosen by the seed (cuts the power first if it is on).
    /// Faults armed on this disk are not carried over; its capacity and
    /// latency are. This disk stays down.
    pub fn restart(&self) -> SimDisk {
        let mut d = self.lock();
        d.crash_now();
        SimDisk { inner: Arc::new(Mutex::new(d.crash_image())) }
    }

    /// The disk after the process using it died while the machine kept
    /// running (a `kill -9`, a panic): a new disk on which everything written
    /// is readable, since the page cache survives, but only what a sync
    /// covered is durable; a later [`SimDisk::restart`] of it can still
    /// lose the rest. This disk stays down, so the dead process's tasks
    /// cannot touch the new one. Faults armed here are not carried over.
    pub fn restart_process(&self) -> SimDisk {
        let mut d = self.lock();
        d.crash_now();
        SimDisk { inner: Arc::new(Mutex::new(d.process_image())) }
    }

    /// Puts a file on the disk as if it had been written and synced long
    /// ago, creating its directory (not an operation: no fault or crash
    /// applies). For starting a simulation from given bytes, e.g. a copy
    /// of a real log directory or a fuzzer's input.
    pub fn put_file(&self, path: impl AsRef<Path>, bytes: &[u8]) {
        self.lock().put_file(path.as_ref(), bytes);
    }

    /// The files the disk holds now (page cache view), with their lengths.
    /// Not an operation: it neither counts nor fails after a crash.
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        self.lock().files()
    }

    /// A file's bytes as reads see them now (not an operation).
    ///
    /// # Errors
    /// `NotFound` if there is no such file.
    pub fn contents(&self, path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        self.lock().contents(path.as_ref())
    }

    pub(crate) fn same_disk(&self, other: &SimDisk) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A number that tells this disk from every other one alive.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    pub(crate) fn random_u64(&self) -> u64 {
        self.lock().rng.next_u64()
    }

    /// How many times the backend yields to other tasks before its next step.
    pub(crate) fn yields(&self) -> u64 {
        self.lock().rng.below(4)
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        self.lock().latency
    }

    pub(crate) fn mkdir(&self, dir: &Path) -> io::Result<()> {
        self.lock().mkdir(dir)
    }

    pub(crate) fn dir_exists(&self, dir: &Path) -> bool {
        self.lock().dir_exists(dir)
    }

    pub(crate) fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let took = self.lock().try_lock(path)?;
        Ok(took.then(|| LockGuard { disk: self.clone(), path: path.to_path_buf() }))
    }

    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.lock().sync_dir(dir)
    }

    pub(crate) fn read_dir(&self, dir: &Path) -> io::Result<Vec<(String, PathBuf, EntryKind)>> {
        let entries = self.lock().read_dir(dir)?;
        Ok(entries.into_iter().map(|(n, p)| (n, p, EntryKind::File)).collect())
    }

    pub(crate) fn create(&self, path: &Path) -> io::Result<SimFile> {
        let ino = self.lock().create(path)?;
        Ok(SimFile { disk: self.clone(), ino, direct: false })
    }

    pub(crate) fn open(&self, path: &Path, direct: bool) -> io::Result<SimFile> {
        let ino = self.lock().lookup(path)?;
        Ok(SimFile { disk: self.clone(), ino, direct })
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.lock().rename(from, to)
    }

    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        self.lock().remove(path)
    }

    pub(crate) fn len(&self, path: &Path) -> io::Result<u64> {
        let mut d = self.lock();
        let ino = d.lookup(path)?;
        d.len(ino)
    }

    pub(crate) fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.lock().read_all(path)
    }
}

/// An open file on a [`SimDisk`] (an inode: it outlives renames and removals).
#[derive(Debug)]
pub(crate) struct SimFile {
    disk: SimDisk,
    ino: usize,
    direct: bool,
}

impl SimFile {
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.disk.lock().write_at(self.ino, buf, offset, self.direct)
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.disk.lock().sync(self.ino)
    }

    pub(crate) fn len(&self) -> io::Result<u64> {
        self.disk.lock().len(self.ino)
    }
}

/// The simulated directory lock; released on drop.
#[derive(Debug)]
pub(crate) struct LockGuard {
    disk: SimDisk,
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.disk.lock().unlock(&self.path);
    }
}
