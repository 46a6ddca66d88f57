//! A replicated key-value store: three openraft nodes in one process, each
//! keeping its Raft log in its own aiowal directory (`aiowal::raft::RaftLog`),
//! replicating the key-value example's operations.
//!
//! It elects a leader, commits a write on a majority, shows every replica
//! applied it, stores a write larger than one log record (split into part
//! records by the adapter) and refuses one above the application's own
//! limit before `client_write`, stops a follower, commits another write on
//! the remaining two, restarts the follower from its directory (its
//! snapshot file is loaded, its log recovered and the committed entries
//! after the snapshot re-applied) and reads the keys there. Snapshots are
//! taken every 100 entries and the log purged up to them, so a restart
//! always starts from a purged log: run it twice on one directory.
//!
//! ```sh
//! cargo run --release --features openraft,cli --example raft_kv [-- DIR]
//! ```
//!
//! Its burst of concurrent writes shows where group commit helps Raft:
//! followers get entries in AppendEntries batches and write many per sync,
//! while openraft 0.9's leader waits for each append's flush before it
//! appends again (`RaftCore::append_to_log`), so it syncs once per entry.
#![forbid(unsafe_code)]
// openraft's RPC errors are large, and its traits return them as they are.
#![allow(clippy::result_large_err)]

mod sm;

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiowal::raft::RaftLog;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, InstallSnapshotRequest,
    InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Raft};
use sm::{Config, KvStateMachine, NodeId, Op, Request};

/// Concurrent client writes in the group-commit demonstration.
const CLIENTS: usize = 500;

/// The largest request this application accepts. The log stores entries
/// of any size (larger than a record, it splits them), but every node holds
/// each in memory several times on its way: an application refuses what it
/// will not replicate before `client_write`, never by failing storage.
const MAX_REQUEST_BYTES: usize = 8 << 20;

type BoxError = Box<dyn Error + Send + Sync>;

type Rpc<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, BasicNode, E>>;

/// In-process "network": calls go straight to the target node's `Raft`.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft<Config>>>>,
}

impl Router {
    fn get<E: Error>(&self, id: NodeId) -> Result<Raft<Config>, RPCError<NodeId, BasicNode, E>> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(&id).cloned().ok_or_else(|| {
            let down = std::io::Error::new(std::io::ErrorKind::NotConnected, format!("node {id} is down"));
            RPCError::Unreachable(Unreachable::new(&down))
        })
    }

    /// The leader some node knows of (else any node: the write is redirected).
    fn leader(&self) -> NodeId {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let known = nodes.values().find_map(|r| r.metrics().borrow().current_leader);
        known.or_else(|| nodes.keys().next().copied()).unwrap_or(1)
    }

    /// A client write through the leader, following `ForwardToLeader`:
    /// leadership can move (a node too busy to send heartbeats loses it).
    /// Requests over [`MAX_REQUEST_BYTES`] are refused here.
    async fn write(&self, req: Request) -> Result<ClientWriteResponse<Config>, BoxError> {
        if req.0.len() > MAX_REQUEST_BYTES {
            return Err(format!(
                "request of {} bytes refused: larger than this application's limit of {MAX_REQUEST_BYTES}",
                req.0.len()
            )
            .into());
        }
        let mut to = self.leader();
        for _ in 0..50 {
            let raft = self.get::<std::io::Error>(to)?;
            match raft.client_write(req.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(e) => match e.forward_to_leader::<BasicNode>() {
                    Some(hint) => to = hint.leader_id.unwrap_or(to),
                    None => return Err(e.into()),
                },
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("no stable leader after 50 redirects".into())
    }

    fn set(&self, id: NodeId, raft: Option<Raft<Config>>) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        match raft {
            Some(r) => nodes.insert(id, r),
            None => nodes.remove(&id),
        };
    }
}

struct Connection {
    router: Router,
    target: NodeId,
}

fn remote<E: Error>(
    target: NodeId,
    e: RaftError<NodeId, E>,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::RemoteError(RemoteError::new(target, e))
}

impl RaftNetworkFactory<Config> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Connection {
        Connection { router: self.clone(), target }
    }
}

impl RaftNetwork<Config> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Config>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc).await.map_err(|e| remote(self.target, e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Config>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let raft = self.router.get(self.target)?;
        raft.install_snapshot(rpc).await.map_err(|e| remote(self.target, e))
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _option: RPCOption) -> Rpc<VoteResponse<NodeId>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc).await.map_err(|e| remote(self.target, e))
    }
}

/// A running node: its Raft, its log and its state machine.
struct Node {
    raft: Raft<Config>,
    log: RaftLog<Config>,
    sm: KvStateMachine,
}

async fn start(
    id: NodeId,
    dir: &Path,
    router: &Router,
    config: &Arc<openraft::Config>,
) -> Result<Node, BoxError> {
    let mut log = RaftLog::<Config>::open(dir, aiowal::Options::default().segment_bytes(8 << 20)).await?;
    let r = log.wal().recovery_report().clone();
    let state = log.get_log_state().await?;
    let index =
        |id: Option<openraft::LogId<NodeId>>| id.map_or_else(|| "none".to_string(), |l| l.index.to_string());
    println!(
        "node {id}: log {} recovered: {} records, LSN {} to {}; entries purged up to index {}, last index {}",
        dir.display(),
        r.records,
        r.first_lsn,
        r.last_lsn,
        index(state.last_purged_log_id),
        index(state.last_log_id),
    );
    // The snapshot beside the log: without it a node whose log was purged
    // could not rebuild its state machine.
    let sm = KvStateMachine::open(dir.with_extension("snapshot"))?;
    if let Some(at) = sm.snapshot_last_log_id() {
        println!("node {id}: snapshot loaded, applied up to index {}", at.index);
    }
    let raft = Raft::new(id, Arc::clone(config), router.clone(), log.clone(), sm.clone()).await?;
    router.set(id, Some(raft.clone()));
    Ok(Node { raft, log, sm })
}

fn put(key: &str, value: &str) -> Request {
    Request::new(&Op::Put(key.as_bytes().to_vec(), value.as_bytes().to_vec()))
}

fn text(v: Option<Vec<u8>>) -> String {
    v.map_or_else(|| "(none)".into(), |v| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let tmp;
    let base: PathBuf = match std::env::args_os().nth(1) {
        Some(d) => d.into(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let config = Arc::new(
        openraft::Config {
            // Generous for a debug build on a loaded machine: three nodes
            // and 500 clients share one process.
            heartbeat_interval: 200,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            // Snapshot often and purge what a snapshot covers, so that
            // every restart starts from a purged log.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(100),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()?,
    );
    let router = Router::default();
    let dir = |id: NodeId| base.join(format!("node{id}"));
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, &dir(id), &router, &config).await?);
    }
    let members: BTreeMap<NodeId, BasicNode> = (1..=3).map(|id| (id, BasicNode::default())).collect();
    let first = &nodes[&1].raft;
    if let Err(e) = first.initialize(members).await {
        println!("cluster already initialized in {} ({e})", base.display());
    }
    let m =
        first.wait(Some(Duration::from_secs(10))).metrics(|m| m.current_leader.is_some(), "a leader").await?;
    let leader = m.current_leader.ok_or("no leader")?;
    println!("leader elected: node {leader} (term {})", m.vote.leader_id().term);

    let reply = router.write(put("greeting", "hello, raft")).await?;
    let index = reply.log_id.index;
    println!("write committed by a majority at log index {index} (log id {})", reply.log_id);
    for (id, n) in &nodes {
        n.raft.wait(Some(Duration::from_secs(10))).applied_index_at_least(Some(index), "applied").await?;
        println!("  node {id} applied it: greeting = {}", text(n.sm.get(b"greeting")));
    }

    // An entry larger than one log record (1 MiB by default): stored in
    // parts, replicated, applied. One above the application's limit is
    // refused before it reaches Raft.
    let big = vec![b'b'; 3 << 20];
    let reply = router.write(Request::new(&Op::Put(b"big".to_vec(), big.clone()))).await?;
    let index = reply.log_id.index;
    for (id, n) in &nodes {
        n.raft.wait(Some(Duration::from_secs(30))).applied_index_at_least(Some(index), "applied").await?;
        let same = n.sm.get(b"big").is_some_and(|v| v == big);
        println!(
            "  node {id} applied a {} byte write larger than a log record: {}",
            big.len(),
            if same { "intact" } else { "DIFFERENT" }
        );
        if !same {
            return Err(format!("node {id} applied the large write differently").into());
        }
    }
    match router.write(Request::new(&Op::Put(b"huge".to_vec(), vec![0; MAX_REQUEST_BYTES + 1]))).await {
        Err(e) => println!("  {e}"),
        Ok(_) => return Err("a request over the limit was accepted".into()),
    }

    // Many clients at once: their entries share Raft batches and log syncs.
    let before = nodes[&leader].log.wal().stats();
    let started = std::time::Instant::now();
    let writes: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let router = router.clone();
            tokio::spawn(async move { router.write(put(&format!("client-{i}"), "x")).await })
        })
        .collect();
    for w in writes {
        w.await??;
    }
    let took = started.elapsed();
    let after = nodes[&leader].log.wal().stats();
    // The raw write+fdatasync group commit of as many writers on the same
    // disk, for scale (a Raft commit needs the leader's and a follower's sync).
    let raw = aiowal::bench::baseline(&base, 100, CLIENTS, Duration::from_secs(1))?;
    let rate = CLIENTS as f64 / took.as_secs_f64();
    println!(
        "{CLIENTS} concurrent writes committed in {took:.2?} ({rate:.0}/s, {:.2}x the raw write+fdatasync baseline of {:.0}/s); leader log: {} records in {} syncs",
        rate / raw.per_sec(),
        raw.per_sec(),
        after.appends - before.appends,
        after.syncs - before.syncs
    );

    // Stop a follower; the other two still form a majority.
    let leader = router.leader();
    let down = (1..=3).find(|id| *id != leader).ok_or("no follower")?;
    let node = nodes.remove(&down).ok_or("no such node")?;
    router.set(down, None);
    node.raft.shutdown().await?;
    node.log.close().await?;
    println!("node {down} stopped");
    let reply = router.write(put("while-down", "written on 2 of 3")).await?;
    let index = reply.log_id.index;
    println!("write committed by nodes {:?} at log index {index}", nodes.keys().collect::<Vec<_>>());

    // Restart it from its directory: the log comes back from aiowal, the map
    // is rebuilt from committed entries, and replication catches it up.
    let node = start(down, &dir(down), &router, &config).await?;
    node.raft.wait(Some(Duration::from_secs(10))).applied_index_at_least(Some(index), "caught up").await?;
    println!(
        "node {down} restarted: greeting = {}, while-down = {}, big = {} bytes",
        text(node.sm.get(b"greeting")),
        text(node.sm.get(b"while-down")),
        node.sm.get(b"big").map_or(0, |v| v.len())
    );
    nodes.insert(down, node);

    for (id, n) in &nodes {
        let s = n.log.wal().stats();
        println!(
            "node {id}: {} log records, {} syncs ({:.1} records per sync)",
            s.appends, s.syncs, s.records_per_sync
        );
        n.raft.shutdown().await?;
        n.log.close().await?;
    }
    Ok(())
}
