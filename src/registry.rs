//! What this process knows about each log directory it opened, shared by
//! every handle on the directory (a closed handle's readers and the handle
//! that reopened the directory see the same entry):
//!
//! * reader pins: the segments a live [`ReadIter`](crate::ReadIter) or
//!   [`Record`](crate::Record) may map. `truncate_before` never recycles a
//!   pinned segment (it deletes it instead, and an unlinked file keeps its
//!   bytes for whoever maps it), so bytes a reader borrowed never change;
//! * whether a handle dropped without `close` is still shutting down, so
//!   that a reopen meanwhile says so instead of a bare "locked".

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::sync::lock;
use crate::vfs::Vfs;

/// One log directory's shared state.
#[derive(Debug, Default)]
pub(crate) struct DirEntry {
    /// Live pins: id -> segment sequence numbers (first, last) they cover.
    pins: Mutex<PinSet>,
    /// Handles dropped without `close` whose lock is not released yet.
    dropping: AtomicUsize,
}

#[derive(Debug, Default)]
struct PinSet {
    next_id: u64,
    ranges: BTreeMap<u64, (u64, u64)>,
}

/// Keeps segments `first..=last` of a directory from being recycled while alive.
#[derive(Debug)]
pub(crate) struct Pin {
    dir: Arc<DirEntry>,
    id: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        lock(&self.dir.pins).ranges.remove(&self.id);
    }
}

type Registry = Mutex<HashMap<String, Weak<DirEntry>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The key of `dir` on `vfs`: its canonical path on the real file system
/// (so two spellings of one directory share an entry), or the simulated
/// disk's identity and the path.
fn key(vfs: &Vfs, dir: &Path) -> String {
    match vfs {
        Vfs::Os => {
            let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| PathBuf::from(dir));
            format!("os:{}", canonical.display())
        }
        #[cfg(feature = "sim")]
        Vfs::Sim(d) => format!("sim:{}:{}", d.identity(), dir.display()),
    }
}

impl DirEntry {
    /// The shared entry of `dir` (created on first use, dropped with its last user).
    pub(crate) fn of(vfs: &Vfs, dir: &Path) -> Arc<DirEntry> {
        let key = key(vfs, dir);
        let mut reg = lock(registry());
        if let Some(e) = reg.get(&key).and_then(Weak::upgrade) {
            return e;
        }
        reg.retain(|_, w| w.strong_count() > 0);
        let e = Arc::new(DirEntry::default());
        reg.insert(key, Arc::downgrade(&e));
        e
    }

    /// Pins segments `first..=last` until the returned pin drops.
    pub(crate) fn pin(self: &Arc<Self>, first: u64, last: u64) -> Arc<Pin> {
        let mut p = lock(&self.pins);
        let id = p.next_id;
        p.next_id += 1;
        p.ranges.insert(id, (first, last));
        Arc::new(Pin { dir: Arc::clone(self), id })
    }

    /// Whether a live reader may map segment `seq`.
    pub(crate) fn pinned(&self, seq: u64) -> bool {
        lock(&self.pins).ranges.values().any(|&(f, l)| (f..=l).contains(&seq))
    }

    /// A handle was dropped without `close` and is shutting down.
    pub(crate) fn dropping_started(&self) {
        self.dropping.fetch_add(1, Ordering::AcqRel);
    }

    /// A dropped handle released its lock.
    pub(crate) fn dropping_finished(&self) {
        let _ = self.dropping.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Whether a dropped handle of this process still holds the lock.
    pub(crate) fn dropping(&self) -> bool {
        self.dropping.load(Ordering::Acquire) > 0
    }
}
