//! The replicated key-value state machine: the `Op`s of the key-value
//! example (put, delete, clear), carried in Raft entries and applied to an
//! in-memory map. The Raft log itself is `aiowal::raft::RaftLog`; this map
//! is rebuilt from it after a restart (openraft re-applies committed
//! entries), or from a snapshot.
//!
//! Shared by `examples/raft_kv` and `tests/openraft_suite.rs`.

#![allow(dead_code)] // the test uses part of it

use std::collections::BTreeMap;
use std::io::Cursor;
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
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

impl KvStateMachine {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
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
        inner.snapshot = Some((meta.clone(), bytes.clone()));
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
