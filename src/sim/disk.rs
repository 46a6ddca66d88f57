//! The simulated disk's state: files as page cache plus what is durable,
//! directories as names plus what a directory sync made durable, and the
//! crash image built from them (DESIGN.md §5).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Fault, OpInfo, Rng, SimStats};
use crate::error::IoOp;

/// Sector size of the failure model: a torn write is torn at these boundaries.
pub(crate) const SECTOR: usize = 512;

/// A write that completed but is not yet covered by a completed sync.
#[derive(Debug, Clone)]
struct Pending {
    offset: u64,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What reads see (the page cache).
    data: Vec<u8>,
    /// What survives any crash.
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

/// A change to a directory entry since the directory's last sync.
#[derive(Debug, Clone)]
enum DirOp {
    Link {
        path: PathBuf,
        ino: usize,
    },
    Unlink {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    /// A directory created in its parent.
    Mkdir {
        path: PathBuf,
    },
}

impl DirOp {
    /// The directory whose sync makes this change durable (`.` for a bare
    /// relative name, as the log syncs it).
    fn dir(&self) -> Option<&Path> {
        let parent = match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } | DirOp::Mkdir { path } => path.parent(),
            DirOp::Rename { to, .. } => to.parent(),
        };
        parent.map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>, dirs: &mut BTreeSet<PathBuf>) {
        match self {
            DirOp::Mkdir { path } => {
                dirs.insert(path.clone());
            }
            DirOp::Link { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to } => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }
}

/// A fault waiting for its turn: `left` more operations of its kind pass first.
#[derive(Debug, Clone, Copy)]
struct Armed {
    fault: Fault,
    left: u64,
}

/// A crash trigger set with `SimDisk::crash_when`.
pub(crate) struct Trigger(pub Box<dyn FnMut(&OpInfo) -> bool + Send>);

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trigger(..)")
    }
}

#[derive(Debug)]
pub(crate) struct Disk {
    pub seed: u64,
    pub rng: Rng,
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dir_log: Vec<DirOp>,
    /// Directories as the process sees them.
    dirs: BTreeSet<PathBuf>,
    /// Directories whose entry in their parent survives a power loss.
    durable_dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    ops: u64,
    crash_at: Option<u64>,
    /// The write the crash cut off, if it cut one off.
    interrupted: Option<(usize, Pending)>,
    pub trigger: Option<Trigger>,
    crashed: bool,
    faults: Vec<Armed>,
    capacity_bytes: Option<u64>,
    pub latency: Option<Duration>,
    pub stats: SimStats,
}

/// The directories that always exist: the root and the current directory
/// (`""` is a bare name's parent, `.` what the log syncs for it).
fn roots() -> BTreeSet<PathBuf> {
    [PathBuf::from("/"), PathBuf::new(), PathBuf::from(".")].into_iter().collect()
}

fn power_loss() -> io::Error {
    io::Error::other("simulated power loss: the disk is down until SimDisk::restart")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file on the simulated disk", path.display()))
}

impl Disk {
    pub(crate) fn new(seed: u64) -> Disk {
        Disk {
            seed,
            rng: Rng::new(seed),
            inodes: Vec::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            dir_log: Vec::new(),
            dirs: roots(),
            durable_dirs: roots(),
            locks: BTreeSet::new(),
            ops: 0,
            crash_at: None,
            interrupted: None,
            trigger: None,
            crashed: false,
            faults: Vec::new(),
            capacity_bytes: None,
            latency: None,
            stats: SimStats::default(),
        }
    }

    pub(crate) fn ops(&self) -> u64 {
        self.ops
    }

    pub(crate) fn crashed(&self) -> bool {
        self.crashed
    }

    pub(crate) fn crash_after(&mut self, ops: u64) {
        self.crash_at = Some(self.ops + ops.max(1));
    }

    pub(crate) fn disarm(&mut self) {
        self.crash_at = None;
        self.trigger = None;
        self.faults.clear();
    }

    pub(crate) fn crash_now(&mut self) {
        if !self.crashed {
            self.crashed = true;
            self.stats.crashes += 1;
        }
    }

    pub(crate) fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::NoSpace { capacity_bytes } => self.capacity_bytes = Some(capacity_bytes),
            Fault::Latency(d) => self.latency = Some(d),
            Fault::WriteError { after }
            | Fault::SyncError { after }
            | Fault::ShortWrite { after }
            | Fault::OpError { after, .. } => {
                self.faults.push(Armed { fault, left: after });
            }
        }
    }

    /// Counts one operation; fails if the power is (or just went) out.
    /// Returns whether this very operation is the one the crash interrupts.
    fn step(&mut self, kind: IoOp, path: &Path) -> io::Result<bool> {
        if self.crashed {
            return Err(power_loss());
        }
        self.ops += 1;
        let mut hit = self.crash_at == Some(self.ops);
        if let Some(t) = self.trigger.as_mut() {
            hit |= (t.0)(&OpInfo { kind, path: path.to_path_buf(), index: self.ops });
        }
        if hit {
            self.trigger = None;
            self.crash_now();
        }
        Ok(hit)
    }

    /// An operation that fails when the power is out.
    fn meta_op(&mut self, kind: IoOp, path: &Path) -> io::Result<()> {
        if self.step(kind, path)? {
            return Err(power_loss());
        }
        if kind != IoOp::Sync && self.fire(kind).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// The current name of inode `ino` (empty if it has none), for triggers.
    fn name_of(&self, ino: usize) -> PathBuf {
        if self.trigger.is_none() {
            return PathBuf::new();
        }
        self.names.iter().find(|(_, i)| **i == ino).map(|(p, _)| p.clone()).unwrap_or_default()
    }

    /// The armed fault of `kind`'s operation that fires now, if any.
    fn fire(&mut self, op: IoOp) -> Option<Fault> {
        let mut fired = None;
        for a in &mut self.faults {
            let kind = match a.fault {
                Fault::WriteError { .. } | Fault::ShortWrite { .. } => IoOp::Write,
                Fault::SyncError { .. } => IoOp::Sync,
                Fault::OpError { op, .. } => op,
                _ => continue,
            };
            if kind != op {
                continue;
            }
            if a.left == 0 && fired.is_none() {
                fired = Some(a.fault);
                a.left = u64::MAX; // fired: removed below
            } else if a.left != u64::MAX {
                a.left -= 1;
            }
        }
        self.faults.retain(|a| a.left != u64::MAX);
        if fired.is_some() {
            self.stats.faults_fired += 1;
        }
        fired
    }

    /// Whether `dir` exists (as the process sees it).
    pub(crate) fn dir_exists(&self, dir: &Path) -> bool {
        self.dirs.contains(dir)
    }

    /// Creates one directory in an existing parent. Like a file's name,
    /// its entry survives a power loss only once the parent is synced.
    pub(crate) fn mkdir(&mut self, dir: &Path) -> io::Result<()> {
        self.meta_op(IoOp::CreateDir, dir)?;
        self.check_dir(dir)?;
        if !self.dirs.insert(dir.to_path_buf()) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: exists", dir.display())));
        }
        self.dir_log.push(DirOp::Mkdir { path: dir.to_path_buf() });
        Ok(())
    }

    fn check_dir(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(d) if self.dirs.contains(d) => Ok(()),
            _ => Err(not_found(path.parent().unwrap_or(path))),
        }
    }

    pub(crate) fn try_lock(&mut self, path: &Path) -> io::Result<bool> {
        self.meta_op(IoOp::Lock, path)?;
        self.check_dir(path)?;
        Ok(self.locks.insert(path.to_path_buf()))
    }

    pub(crate) fn unlock(&mut self, path: &Path) {
        self.locks.remove(path);
    }

    pub(crate) fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.meta_op(IoOp::SyncDir, dir)?;
        if !self.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        self.stats.dir_syncs += 1;
        let log = std::mem::take(&mut self.dir_log);
        for op in log {
            if op.dir() == Some(dir) {
                op.apply(&mut self.durable_names, &mut self.durable_dirs);
            } else {
                self.dir_log.push(op);
            }
        }
        Ok(())
    }

    pub(crate) fn read_dir(&mut self, dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
        self.meta_op(IoOp::Read, dir)?;
        if !self.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(self
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p.clone())))
            .collect())
    }

    /// Creates an empty file at `path` (replacing any), returning its inode.
    pub(crate) fn create(&mut self, path: &Path) -> io::Result<usize> {
        self.meta_op(IoOp::Open, path)?;
        self.check_dir(path)?;
        let ino = self.inodes.len();
        self.inodes.push(Inode::default());
        self.names.insert(path.to_path_buf(), ino);
        self.dir_log.push(DirOp::Link { path: path.to_path_buf(), ino });
        Ok(ino)
    }

    pub(crate) fn lookup(&mut self, path: &Path) -> io::Result<usize> {
        self.meta_op(IoOp::Open, path)?;
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.meta_op(IoOp::Rename, to)?;
        self.check_dir(to)?;
        let ino = self.names.remove(from).ok_or_else(|| not_found(from))?;
        self.names.insert(to.to_path_buf(), ino);
        self.dir_log.push(DirOp::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
        Ok(())
    }

    pub(crate) fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.meta_op(IoOp::Remove, path)?;
        self.names.remove(path).ok_or_else(|| not_found(path))?;
        self.dir_log.push(DirOp::Unlink { path: path.to_path_buf() });
        Ok(())
    }

    pub(crate) fn put_file(&mut self, path: &Path, bytes: &[u8]) {
        if let Some(dir) = path.parent() {
            self.dirs.extend(dir.ancestors().map(Path::to_path_buf));
            self.durable_dirs.extend(dir.ancestors().map(Path::to_path_buf));
        }
        let ino = self.inodes.len();
        self.inodes.push(Inode { data: bytes.to_vec(), durable: bytes.to_vec(), pending: Vec::new() });
        self.names.insert(path.to_path_buf(), ino);
        self.durable_names.insert(path.to_path_buf(), ino);
    }

    pub(crate) fn files(&self) -> Vec<(PathBuf, u64)> {
        self.names.iter().map(|(p, &i)| (p.clone(), self.inode(i).data.len() as u64)).collect()
    }

    pub(crate) fn contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let ino = self.names.get(path).copied().ok_or_else(|| not_found(path))?;
        Ok(self.inode(ino).data.clone())
    }

    pub(crate) fn read_all(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        let ino = self.lookup(path)?;
        Ok(self.inode(ino).data.clone())
    }

    fn inode(&self, ino: usize) -> &Inode {
        static EMPTY: Inode = Inode { data: Vec::new(), durable: Vec::new(), pending: Vec::new() };
        self.inodes.get(ino).unwrap_or(&EMPTY)
    }

    pub(crate) fn len(&mut self, ino: usize) -> io::Result<u64> {
        let path = self.name_of(ino);
        self.meta_op(IoOp::Read, &path)?;
        Ok(self.inode(ino).data.len() as u64)
    }

    /// Bytes held by linked files, for the ENOSPC fault.
    fn used_bytes(&self) -> u64 {
        let live: BTreeSet<usize> = self.names.values().copied().collect();
        live.iter().map(|&i| self.inode(i).data.len() as u64).sum()
    }

    /// One `pwrite`: may write less than asked (a short-write fault).
    pub(crate) fn write_at(
        &mut self,
        ino: usize,
        buf: &[u8],
        offset: u64,
        direct: bool,
    ) -> io::Result<usize> {
        let path = self.name_of(ino);
        let interrupted = self.step(IoOp::Write, &path)?;
        let aligned = |n: u64| n % SECTOR as u64 == 0;
        if direct && !(aligned(offset) && aligned(buf.len() as u64) && aligned(buf.as_ptr() as usize as u64))
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        if interrupted {
            // Cut off during this write: settled by the restart (a power loss
            // may keep any part of it; a dead process wrote all of it or none).
            self.interrupted = Some((ino, Pending { offset, bytes: buf.to_vec() }));
            return Err(power_loss());
        }
        let mut n = buf.len();
        match self.fire(IoOp::Write) {
            Some(Fault::WriteError { .. }) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(Fault::ShortWrite { .. }) if n > 1 => {
                n = if direct { (n / 2).max(SECTOR) / SECTOR * SECTOR } else { n / 2 };
            }
            _ => {}
        }
        let end = start + n;
        let grow = (end as u64).saturating_sub(self.inode(ino).data.len() as u64);
        if let Some(cap) = self.capacity_bytes {
            if grow > 0 && self.used_bytes() + grow > cap {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        let bytes = buf.get(..n).unwrap_or_default();
        let inode = self.inodes.get_mut(ino).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        if let Some(dst) = inode.data.get_mut(start..end) {
            dst.copy_from_slice(bytes);
        }
        inode.pending.push(Pending { offset, bytes: bytes.to_vec() });
        self.stats.writes += 1;
        self.stats.bytes_written += n as u64;
        Ok(n)
    }

    /// `fsync`/`fdatasync` of one file.
    pub(crate) fn sync(&mut self, ino: usize) -> io::Result<()> {
        let path = self.name_of(ino);
        self.meta_op(IoOp::Sync, &path)?;
        let fault = self.fire(IoOp::Sync);
        if matches!(fault, Some(Fault::SyncError { .. })) {
            // Like Linux after a failed fsync: whatever part of the pending
            // writes reached the disk stays there, the rest never will (the
            // pages are marked clean), yet reads keep returning the new bytes.
            let settled = self.file_image(ino);
            let inode = self.inodes.get_mut(ino).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
            inode.durable = settled;
            inode.pending.clear();
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let inode = self.inodes.get_mut(ino).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        for p in std::mem::take(&mut inode.pending) {
            apply(&mut inode.durable, p.offset, &p.bytes);
        }
        self.stats.syncs += 1;
        Ok(())
    }

    /// The disk after the process died but the machine did not: every
    /// write is still readable (the page cache survives), and durable is
    /// exactly what was durable; a later power loss can still lose the rest.
    pub(crate) fn process_image(&mut self) -> Disk {
        if let Some((ino, p)) = self.interrupted.take() {
            if self.rng.below(2) == 0 {
                if let Some(inode) = self.inodes.get_mut(ino) {
                    apply(&mut inode.data, p.offset, &p.bytes);
                    inode.pending.push(p);
                }
            }
        }
        self.stats.process_restarts += 1;
        let (inodes, names, durable_names) =
            (self.inodes.clone(), self.names.clone(), self.durable_names.clone());
        let dir_log = self.dir_log.clone();
        let dirs = (self.dirs.clone(), self.durable_dirs.clone());
        self.successor(inodes, names, durable_names, dir_log, dirs)
    }

    /// What the disk holds after the power comes back (see DESIGN.md §5).
    pub(crate) fn crash_image(&mut self) -> Disk {
        if let Some((ino, p)) = self.interrupted.take() {
            if let Some(inode) = self.inodes.get_mut(ino) {
                inode.pending.push(p);
            }
        }
        let mut names = self.durable_names.clone();
        let mut dirs = self.durable_dirs.clone();
        for op in &self.dir_log {
            if self.rng.below(2) == 0 {
                op.apply(&mut names, &mut dirs);
            } else {
                self.stats.dir_ops_lost += 1;
            }
        }
        // A directory whose own entry (or an ancestor's) was lost is gone
        // with everything in it.
        let reachable = |d: &Path, dirs: &BTreeSet<PathBuf>| d.ancestors().all(|a| dirs.contains(a));
        let dirs: BTreeSet<PathBuf> = dirs.iter().filter(|d| reachable(d, &dirs)).cloned().collect();
        names.retain(|p, _| p.parent().is_some_and(|d| dirs.contains(d)));
        let mut inodes = Vec::new();
        let mut renumber = BTreeMap::new();
        let mut out_names = BTreeMap::new();
        for (path, ino) in names {
            let new = *renumber.entry(ino).or_insert_with(|| {
                let image = self.file_image(ino);
                inodes.push(Inode { data: image.clone(), durable: image, pending: Vec::new() });
                inodes.len() - 1
            });
            out_names.insert(path, new);
        }
        self.successor(inodes, out_names.clone(), out_names, Vec::new(), (dirs.clone(), dirs))
    }

    /// The disk after a restart, holding these files: same seed, directories,
    /// capacity and latency; a fresh op count, no locks, faults or crash.
    fn successor(
        &mut self,
        inodes: Vec<Inode>,
        names: BTreeMap<PathBuf, usize>,
        durable_names: BTreeMap<PathBuf, usize>,
        dir_log: Vec<DirOp>,
        (dirs, durable_dirs): (BTreeSet<PathBuf>, BTreeSet<PathBuf>),
    ) -> Disk {
        let mut next = Disk::new(self.seed);
        next.rng = Rng::new(self.rng.next_u64());
        (next.inodes, next.names, next.durable_names, next.dir_log) = (inodes, names, durable_names, dir_log);
        (next.dirs, next.durable_dirs) = (dirs, durable_dirs);
        (next.capacity_bytes, next.latency) = (self.capacity_bytes, self.latency);
        next.stats = self.stats;
        next.stats.restarts += 1;
        next
    }

    /// One file after a crash: its durable bytes plus any subset of its
    /// pending writes, each kept whole, dropped, or torn at sectors holding
    /// old bytes, new bytes or garbage.
    fn file_image(&mut self, ino: usize) -> Vec<u8> {
        let Some(inode) = self.inodes.get(ino) else { return Vec::new() };
        let mut img = inode.durable.clone();
        let pending = inode.pending.clone();
        for p in pending {
            match self.rng.below(3) {
                0 => self.stats.writes_lost += 1,
                1 => apply(&mut img, p.offset, &p.bytes),
                _ => self.tear(&mut img, &p),
            }
        }
        img
    }

    fn tear(&mut self, img: &mut Vec<u8>, p: &Pending) {
        let Ok(start) = usize::try_from(p.offset) else { return };
        let end = start + p.bytes.len();
        if img.len() < end {
            img.resize(end, 0);
        }
        let mut pos = start;
        while pos < end {
            let sector_end = ((pos / SECTOR + 1) * SECTOR).min(end);
            let (Some(dst), Some(src)) =
                (img.get_mut(pos..sector_end), p.bytes.get(pos - start..sector_end - start))
            else {
                return;
            };
            match self.rng.below(3) {
                0 => {} // old bytes
                1 => dst.copy_from_slice(src),
                _ => {
                    self.stats.sectors_garbled += 1;
                    for b in dst.iter_mut() {
                        *b = self.rng.next_u64() as u8;
                    }
                }
            }
            pos = sector_end;
        }
        self.stats.writes_torn += 1;
    }
}

fn apply(img: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let Ok(start) = usize::try_from(offset) else { return };
    let end = start + bytes.len();
    if img.len() < end {
        img.resize(end, 0);
    }
    if let Some(dst) = img.get_mut(start..end) {
        dst.copy_from_slice(bytes);
    }
}
