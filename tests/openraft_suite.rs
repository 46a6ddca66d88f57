//! openraft's own storage test suite (`openraft::testing::Suite`, openraft
//! 0.9) against `aiowal::raft::RaftLog`, each test on a fresh aiowal
//! directory; the state machine is the replicated key-value example's.

#[path = "../examples/raft_kv/sm.rs"]
mod sm;

use aiowal::raft::RaftLog;
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use sm::{Config, KvStateMachine, NodeId};

struct Builder;

fn opts() -> aiowal::Options {
    // Small segments, so that purges retire segments during the suite.
    aiowal::Options::default().segment_bytes(64 << 10).batch_bytes_max(16 << 10).max_record_bytes(8 << 10)
}

impl StoreBuilder<Config, RaftLog<Config>, KvStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RaftLog<Config>, KvStateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = RaftLog::open(dir.path(), opts()).await.expect("open the raft log");
        Ok((dir, log, KvStateMachine::default()))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
