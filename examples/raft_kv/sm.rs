//! The replicated key-value state machine: the `Op`s of the key-value
//! example (put, delete, clear), carried in Raft entries and applied to an
//! in-memory map. The Raft log itself is `aiowal::raft::RaftLog`; after a
//! restart this map is loaded from the node's last snapshot file and
//! openraft re-applies the committed entries after it.
//!
//! The snapshot must be durable before openraft purges the entries it
//! covers: `build_snapshot` and `install_snapshot` write it (temporary
//! file, fsync, rename, directory fsync) before they return. A node whose
//! state machine lived only in memory could not restart once its log was
//! purged: openraft would need the purged entries to rebuild it.
//!
//! Shared by `examples/raft_kv` and `tests/openraft_suite.rs`.

#![allow(dead_code)] // the test uses part of it

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

#[path = "../kv/store.rs"]
pub mod store;

pub use store::Op;

/// A request replicated through Raft: one key-value `Op`, in the key-value
/// example's own record encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Vec<u8>);

impl Request {
    pub fn new(op: &Op) -> Request {
        Request(op.encode())
    }
}

/// What applying a request returns: the key's previous value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response(pub Option<Vec<u8>>);

openraft::declare_raft_types!(
    /// Raft types of the replicated key-value store.
    pub Config: D = Request, R = Response
);

pub type NodeId = u64;

/// The map and where it stands in the log.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Data {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Default)]
struct Inner {
    data: Data,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// The state machine; clones share it (the clone is the snapshot builder).
#[derive(Debug, Default, Clone)]
pub struct KvStateMachine {
    inner: Arc<Mutex<Inner>>,
    /// Where the snapshot is kept (none: in memory only, for tests).
    file: Option<Arc<SnapshotFile>>,
}

/// The snapshot file, and the log id of the snapshot it holds. openraft
/// builds snapshots in a task of their own while the state machine may be
/// installing one from the leader: the lock orders the two writers, and an
/// older snapshot never replaces a newer one (openraft may purge up to the
/// newer one as soon as it is written).
#[derive(Debug)]
struct SnapshotFile {
    path: PathBuf,
    holds: Mutex<Option<LogId<NodeId>>>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

/// The first bytes of a snapshot file; a CRC32 of the rest and its length follow.
const SNAPSHOT_MAGIC: &[u8; 8] = b"KVSNAP01";

type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

/// Writes `meta` and `bytes` to `path` durably: a temporary file, fsync,
/// rename over the old snapshot, fsync of the directory.
fn save_snapshot(path: &Path, meta: &Meta, bytes: &[u8]) -> std::io::Result<()> {
    let body = postcard::to_stdvec(&(meta, bytes)).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(SNAPSHOT_MAGIC)?;
    f.write_all(&crc32fast::hash(&body).to_le_bytes())?;
    f.write_all(&(body.len() as u64).to_le_bytes())?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// The snapshot in `path`, if there is one. A damaged file is an error
/// naming it, not an empty state machine: the log before it is purged.
fn load_snapshot(path: &Path) -> std::io::Result<Option<(Meta, Vec<u8>)>> {
    let raw = match std::fs::read(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("snapshot {}: {why}", path.display()))
    };
    let (magic, rest) = raw.split_at_checked(8).ok_or_else(|| bad("shorter than its header"))?;
    if magic != SNAPSHOT_MAGIC {
        return Err(bad("not a key-value snapshot file"));
    }
    let (crc, rest) = rest.split_at_checked(4).ok_or_else(|| bad("shorter than its header"))?;
    let (len, body) = rest.split_at_checked(8).ok_or_else(|| bad("shorter than its header"))?;
    let len = u64::from_le_bytes(len.try_into().map_err(|_| bad("bad length"))?);
    if body.len() as u64 != len {
        return Err(bad("truncated"));
    }
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(bad("checksum mismatch"));
    }
    postcard::from_bytes(body).map(Some).map_err(|e| bad(&format!("does not decode: {e}")))
}

impl KvStateMachine {
    /// A state machine whose snapshots are kept in `path`, starting from
    /// the snapshot there if there is one.
    ///
    /// # Errors
    /// Reading the file, or a file that is damaged or not a snapshot.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<KvStateMachine> {
        let path = path.into();
        let mut inner = Inner::default();
        if let Some((meta, bytes)) = load_snapshot(&path)? {
            inner.data = postcard::from_bytes(&bytes).map_err(std::io::Error::other)?;
            inner.snapshot = Some((meta, bytes));
        }
        let holds = Mutex::new(inner.snapshot.as_ref().and_then(|(m, _)| m.last_log_id));
        Ok(KvStateMachine {
            inner: Arc::new(Mutex::new(inner)),
            file: Some(Arc::new(SnapshotFile { path, holds })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log id the state machine was loaded from or last snapshotted at.
    pub fn snapshot_last_log_id(&self) -> Option<LogId<NodeId>> {
        self.lock().snapshot.as_ref().and_then(|(m, _)| m.last_log_id)
    }

    // openraft's traits return its (large) StorageError as it is.
    #[allow(clippy::result_large_err)]
    fn persist(&self, meta: &Meta, bytes: &[u8]) -> Result<(), StorageError<NodeId>> {
        let Some(file) = &self.file else { return Ok(()) };
        let mut holds = file.holds.lock().unwrap_or_else(PoisonError::into_inner);
        if *holds > meta.last_log_id {
            return Ok(()); // the file holds a newer snapshot already
        }
        save_snapshot(&file.path, meta, bytes).map_err(snapshot_err)?;
        *holds = meta.last_log_id;
        Ok(())
    }

    /// The value of `key`, as applied on this node.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().data.map.get(key).cloned()
    }

    /// How many keys the map holds.
    pub fn len(&self) -> usize {
        self.lock().data.map.len()
    }
}

impl RaftSnapshotBuilder<Config> for KvStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Config>, StorageError<NodeId>> {
        let (meta, bytes) = {
            let mut inner = self.lock();
            let bytes = postcard::to_stdvec(&inner.data).map_err(sm_err)?;
            inner.snapshots_built += 1;
            let last = inner.data.last_applied;
            let id = match last {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.snapshots_built),
                None => format!("empty-{}", inner.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: inner.data.membership.clone(),
                snapshot_id: id,
            };
            (meta, bytes)
        };
        // Durable before openraft purges the entries it covers (outside
        // the state machine's lock: applying goes on meanwhile).
        self.persist(&meta, &bytes)?;
        let mut inner = self.lock();
        if inner.snapshot.as_ref().is_none_or(|(m, _)| m.last_log_id <= meta.last_log_id) {
            inner.snapshot = Some((meta.clone(), bytes.clone()));
        }
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<Config> for KvStateMachine {
    type SnapshotBuilder = KvStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StorageError<NodeId>>
    {
        let inner = self.lock();
        Ok((inner.data.last_applied, inner.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<Config>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for e in entries {
            inner.data.last_applied = Some(e.log_id);
            let resp = match e.payload {
                EntryPayload::Blank => Response(None),
                EntryPayload::Membership(m) => {
                    inner.data.membership = StoredMembership::new(Some(e.log_id), m);
                    Response(None)
                }
                EntryPayload::Normal(Request(bytes)) => match Op::decode(&bytes) {
                    Ok(Op::Put(k, v)) => Response(inner.data.map.insert(k, v)),
                    Ok(Op::Delete(k)) => Response(inner.data.map.remove(&k)),
                    Ok(Op::Clear) => {
                        inner.data.map.clear();
                        Response(None)
                    }
                    // A malformed request is answered, not applied: every
                    // node decides the same, so replicas stay equal.
                    Err(_) => Response(None),
                },
            };
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let data: Data = postcard::from_bytes(&bytes).map_err(sm_err)?;
        self.persist(meta, &bytes)?;
        let mut inner = self.lock();
        inner.data = data;
        inner.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Config>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}
