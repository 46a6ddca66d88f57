//! Log storage for [openraft](https://docs.rs/openraft/0.9) on aiowal
//! (feature `openraft`, openraft 0.9 with its `storage-v2` API).
//!
//! [`RaftLog`] implements `RaftLogStorage` and `RaftLogReader`: Raft's
//! entries, vote and committed log id are records of one aiowal log, so
//! appends from Raft share group commits with everything else in flight.
//!
//! # Records
//!
//! Every record is one operation, encoded with postcard after a format
//! byte. An entry is its log id, then the entry (opening reads the log id
//! only, never decoding a payload); the other operations are `Vote(vote)`,
//! `Committed(log id)`,
//! `Truncate(log id)` (remove entries with index `>=` its index) and
//! `Purge(log id)` (remove entries with index `<=` its index). `append`
//! stages its entries as one atomic batch and calls openraft's flush
//! callback when the batch is durable; `save_vote`, `truncate` and `purge`
//! return once their record is durable.
//!
//! `save_committed` writes nothing and waits for nothing: the committed log
//! id rides in the batch of the next record the adapter writes (an append,
//! a vote, a truncate, a purge's checkpoint) or at [`RaftLog::close`].
//! openraft documents persisting it as optional: after a crash,
//! `read_committed` may return an older committed id, and openraft then
//! re-applies a little less at startup and learns the rest from the
//! leader. Waiting for it cost every client write a second sync.
//!
//! # Entries larger than a record
//!
//! An entry whose encoding exceeds `Options::max_record_bytes` is stored as
//! consecutive part records (first, middle..., last: a format byte each,
//! then a piece of the encoding), so a client write of any size the
//! application accepts is stored instead of failing the node (openraft
//! treats a storage error as fatal). Parts that do not fit one atomic batch
//! go in consecutive batches; the flush is reported once the last part is
//! durable, and replay keeps an entry only with all its parts: a crash
//! between parts leaves the entry out, as if it had never been appended.
//! [`RaftLog::max_record_bytes`] tells applications where splitting starts
//! (a split entry costs a copy to reassemble on every read).
//!
//! # The index, and recovery
//!
//! In memory the adapter keeps, per live entry, its log id and the LSN of
//! its record (no entry bytes: reads go to the log through this index, and
//! `read_from` seeks within a segment, so reading the newest entries does
//! not scan the segment from its start), plus
//! the encoded bytes of records not yet durable (a log reads only durable
//! records, and openraft may read entries as soon as `append` returns).
//!
//! Opening replays the log in LSN order with the same rules as the live
//! calls, so the state after a crash is the state after some prefix of the
//! operations. aiowal recovers a prefix of the records and every durable
//! one, and an `append` is one atomic batch where it fits one (else its
//! entries go in consecutive batches, and a crash can keep a prefix of
//! them, whole entries only: as if the append had been cut short), so:
//!
//! * entries whose flush was reported are there, and none after a hole;
//! * a `Truncate` that returned is there, and so is everything before it;
//!   entries appended after a truncate are recovered only if the truncate
//!   is (they follow it in the log), and entries it removed stay removed;
//!   if the crash took the truncate record, the entries it would have
//!   removed are back, and so is the state before it, exactly as if the
//!   truncate had never been called (it had not returned);
//! * an entry on replay must follow the last live one (index + 1) unless
//!   no entry is live; anything else is reported as corruption.
//!
//! `purge` writes one atomic checkpoint batch (the current vote and
//! committed log id, then the `Purge`) and returns once it is durable; a
//! task then calls [`Wal::truncate_before`] with the LSN of the oldest
//! record still needed (the first live entry or the checkpoint), so whole
//! segments are reclaimed in the background and the vote is never lost
//! with them. The next purge and [`RaftLog::close`] wait for it; a failure
//! is traced and the next purge retries.
//!
//! # Purging needs a durable state machine or snapshot
//!
//! After a purge, openraft rebuilds a restarted node's state machine from
//! the state machine itself or its snapshot, not from the purged entries: a
//! state machine kept only in memory, without a persisted snapshot, cannot
//! restart once the log was purged (`Raft::new` fails with `expected
//! index: [0, N)`). Persist the snapshot before `build_snapshot` and
//! `install_snapshot` return (the `raft_kv` example shows how).
//!
//! One [`RaftLog`] per aiowal directory: the log holds one Raft group.

// openraft's traits return its `StorageError` (large); helpers return it too.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, LogId, OptionalSend, RaftLogId, RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};

use crate::error::{CorruptKind, Error};
use crate::lsn::Lsn;
use crate::options::Options;
use crate::wal::Wal;

/// The first byte of every record this adapter writes: a whole operation,
const FORMAT: u8 = 1;
/// or the first part of an operation's encoding (more parts follow),
const PART_FIRST: u8 = 2;
/// a middle part,
const PART_MORE: u8 = 3;
/// or the last part.
const PART_LAST: u8 = 4;
/// The smallest `max_record_bytes` the adapter accepts: the first part of a
/// split entry holds its log id (a few dozen bytes at most).
const MIN_RECORD_BYTES: usize = 128;

/// An entry: its log id, then the entry. (Entries written as a `FORMAT`
/// operation, `Op::Entry`, by earlier versions are read too.)
const ENTRY: u8 = 5;

fn encode_entry<E: Serialize, L: Serialize>(id: &L, entry: &E) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![ENTRY];
    out = postcard::to_extend(id, out)?;
    postcard::to_extend(entry, out)
}

/// An entry's log id, and the rest of the record: read without decoding
/// the entry.
fn entry_id<L: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<(L, &[u8])> {
    match bytes.split_first() {
        Some((&ENTRY, rest)) => postcard::take_from_bytes(rest).ok(),
        _ => None,
    }
}

/// A record of an entry: its whole encoding (shared with the pending
/// copy), or a part of it.
enum Rec {
    Whole(Arc<Vec<u8>>),
    Part(Vec<u8>),
}

impl AsRef<[u8]> for Rec {
    fn as_ref(&self) -> &[u8] {
        match self {
            Rec::Whole(b) => b,
            Rec::Part(b) => b,
        }
    }
}

/// An entry's encoding as records of at most `max` bytes: itself, or parts.
fn split(bytes: &Arc<Vec<u8>>, max: usize) -> Vec<Rec> {
    if bytes.len() <= max {
        return vec![Rec::Whole(Arc::clone(bytes))];
    }
    let piece = max.saturating_sub(1).max(1);
    let count = bytes.len().div_ceil(piece);
    bytes
        .chunks(piece)
        .enumerate()
        .map(|(i, c)| {
            let tag = match i {
                0 => PART_FIRST,
                i if i + 1 == count => PART_LAST,
                _ => PART_MORE,
            };
            let mut r = Vec::with_capacity(c.len() + 1);
            r.push(tag);
            r.extend_from_slice(c);
            Rec::Part(r)
        })
        .collect()
}

/// Joins part records back into operations, in log order.
#[derive(Default)]
struct Joiner {
    /// The LSN of the first part and the pieces so far.
    open: Option<(Lsn, Vec<u8>)>,
    /// Keeps only the first part of split entries (where their log id
    /// is): what replay needs, without copying the rest.
    first_only: bool,
    /// Inside parts whose first part is gone (retired with an older
    /// segment by a purge: below the oldest live entry): skipped.
    skipping: bool,
}

impl Joiner {
    /// Feeds one record; an operation's encoding and the LSN it starts at
    /// when complete. A record that starts something new abandons parts
    /// left open (a crash between the parts of an append that was never
    /// reported flushed), which are dropped.
    fn feed<'a>(&mut self, lsn: Lsn, data: &'a [u8]) -> Option<(Lsn, std::borrow::Cow<'a, [u8]>)> {
        let (tag, rest) = data.split_first()?;
        match *tag {
            PART_FIRST => {
                self.skipping = false;
                self.open = Some((lsn, rest.to_vec()));
                None
            }
            PART_MORE | PART_LAST => {
                let last = *tag == PART_LAST;
                match &mut self.open {
                    Some(_) if self.first_only && !self.skipping => {}
                    Some((_, bytes)) if !self.skipping => bytes.extend_from_slice(rest),
                    _ => {
                        self.skipping = !last;
                        return None;
                    }
                }
                if last { self.open.take().map(|(at, b)| (at, std::borrow::Cow::Owned(b))) } else { None }
            }
            _ => {
                self.open = None;
                self.skipping = false;
                Some((lsn, std::borrow::Cow::Borrowed(data)))
            }
        }
    }
}

/// One logged operation. Variant order is the on-disk tag: append only.
#[derive(Serialize, Deserialize)]
enum Op<E, V, L> {
    Entry(E),
    Vote(V),
    Committed(Option<L>),
    Truncate(L),
    Purge(L),
}

type OpOf<C, E> = Op<E, Vote<<C as RaftTypeConfig>::NodeId>, LogId<<C as RaftTypeConfig>::NodeId>>;

fn encode<T: Serialize>(op: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![FORMAT];
    out.extend(postcard::to_stdvec(op)?);
    Ok(out)
}

/// What replay and the live calls maintain.
struct State<C: RaftTypeConfig> {
    /// Live entries, consecutive, oldest first: log id and record LSN.
    entries: VecDeque<(LogId<C::NodeId>, Lsn)>,
    purged: Option<LogId<C::NodeId>>,
    vote: Option<Vote<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
    /// Whether `committed` changed since it was last written.
    committed_unsaved: bool,
    /// Encoded entries staged but maybe not durable yet, by the LSN of
    /// their (first) record: the LSN of their last record and the bytes.
    pending: BTreeMap<Lsn, (Lsn, Arc<Vec<u8>>)>,
}

impl<C: RaftTypeConfig> State<C> {
    fn new() -> State<C> {
        State {
            entries: VecDeque::new(),
            purged: None,
            vote: None,
            committed: None,
            committed_unsaved: false,
            pending: BTreeMap::new(),
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(id, _)| id.index)
    }

    fn last_log_id(&self) -> Option<LogId<C::NodeId>> {
        self.entries.back().map(|(id, _)| id.clone()).or_else(|| self.purged.clone())
    }

    /// The index the next entry must have: after the last live entry, or
    /// (with none live) right after the last purged one; any index on a
    /// log that never held an entry.
    fn expected_index(&self) -> Option<u64> {
        match (self.entries.back(), &self.purged) {
            (Some((last, _)), _) => Some(last.index + 1),
            (None, Some(p)) => Some(p.index + 1),
            (None, None) => None,
        }
    }

    /// Adds an entry; false if it does not follow the last live one.
    ///
    /// Not checked against the last purged id here: on replay, a kept
    /// segment can begin with an older checkpoint's `Purge` whose later
    /// entries were retired with the segment before it, so entries after it
    /// may start above its index until the newer `Purge` arrives.
    /// [`State::check_continuity`] checks the outcome; `append` checks
    /// [`State::expected_index`] before anything is written.
    fn push(&mut self, id: LogId<C::NodeId>, lsn: Lsn) -> bool {
        if let Some((last, _)) = self.entries.back() {
            if id.index != last.index + 1 {
                return false;
            }
        } else if self.purged.as_ref().is_some_and(|p| id.index <= p.index) {
            return true; // covered by the purge (as `append` drops it)
        }
        self.entries.push_back((id, lsn));
        true
    }

    /// After replay: live entries start right after the last purged id
    /// (openraft's `last_log_id >= last_purged_log_id`, with no hole
    /// between them). The LSN of the first entry that breaks it, if any.
    fn check_continuity(&self) -> Option<Lsn> {
        match (self.entries.front(), &self.purged) {
            (Some((first, lsn)), Some(p)) if first.index != p.index + 1 => Some(*lsn),
            _ => None,
        }
    }

    fn truncate(&mut self, since: u64) {
        while self.entries.back().is_some_and(|(id, _)| id.index >= since) {
            self.entries.pop_back();
        }
    }

    fn purge(&mut self, upto: LogId<C::NodeId>) {
        while self.entries.front().is_some_and(|(id, _)| id.index <= upto.index) {
            self.entries.pop_front();
        }
        // By index: the purged prefix only grows. (In a valid Raft log the
        // log ids of its entries order the same way by index and by term;
        // a purge id whose term is higher but index lower must not move
        // the purged point back.)
        if self.purged.as_ref().is_none_or(|p| upto.index > p.index) {
            self.purged = Some(upto);
        }
    }

    /// Live entries with index in `range`, with their LSNs.
    fn select(&self, range: &impl RangeBounds<u64>) -> Vec<(u64, Lsn)> {
        let Some(first) = self.first_index() else { return Vec::new() };
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => first,
        }
        .max(first);
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        self.entries
            .iter()
            .skip(skip)
            .take_while(|(id, _)| range.contains(&id.index))
            .map(|(id, lsn)| (id.index, *lsn))
            .collect()
    }
}

/// openraft log storage backed by an aiowal log. Cheap to clone; clones
/// share the log and its index (the clone is openraft's `LogReader`).
///
/// # Examples
///
/// ```
/// # use std::io::Cursor;
/// openraft::declare_raft_types!(pub Config: D = String, R = String);
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aiowal::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let log = aiowal::raft::RaftLog::<Config>::open(dir.path(), aiowal::Options::default()).await?;
/// // Give `log` to `openraft::Raft::new(id, config, network, log, state_machine)`.
/// log.close().await?;
/// # Ok(()) }
/// ```
pub struct RaftLog<C: RaftTypeConfig> {
    wal: Wal,
    state: Arc<Mutex<State<C>>>,
    /// Held by every call that writes, from its checks to its index update,
    /// so that clones writing at once cannot interleave them.
    writer: Arc<tokio::sync::Mutex<Reclaim>>,
    /// The log's `max_record_bytes`: larger entries are split into parts.
    max_record: usize,
}

/// Segment removal that a purge left running in the background.
#[derive(Default)]
struct Reclaim(Option<tokio::task::JoinHandle<()>>);

impl Reclaim {
    /// Waits for the removal a previous purge started, if any.
    async fn finish(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.await;
        }
    }
}

impl<C: RaftTypeConfig> Clone for RaftLog<C> {
    fn clone(&self) -> Self {
        RaftLog {
            wal: self.wal.clone(),
            state: Arc::clone(&self.state),
            writer: Arc::clone(&self.writer),
            max_record: self.max_record,
        }
    }
}

impl<C: RaftTypeConfig> Debug for RaftLog<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("RaftLog")
            .field("wal", &self.wal)
            .field("entries", &st.entries.len())
            .field("last_log_id", &st.last_log_id())
            .field("purged", &st.purged)
            .field("vote", &st.vote)
            .finish()
    }
}

/// A record that breaks the adapter's rules, named by segment and LSN.
fn corrupt(wal: &Wal, lsn: Lsn, why: &'static str) -> Error {
    Error::Corrupt {
        segment: wal.segment_of(lsn),
        offset: 0,
        lsn: lsn.get(),
        kind: CorruptKind::Mismatch(why),
    }
}

fn write_err<NID: openraft::NodeId>(e: impl std::error::Error + 'static) -> StorageError<NID> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// A failed write of a vote (`vote`) or of anything else in the log.
fn op_err<NID: openraft::NodeId>(vote: bool, e: &(impl std::error::Error + 'static)) -> StorageError<NID> {
    let any = AnyError::new(e);
    if vote { StorageIOError::write_vote(any).into() } else { StorageIOError::write_logs(any).into() }
}

fn read_err<NID: openraft::NodeId>(e: impl std::error::Error + 'static) -> StorageError<NID> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

impl<C: RaftTypeConfig> RaftLog<C> {
    /// Opens (or creates) the Raft log in `dir` and rebuilds the index by
    /// replaying it.
    ///
    /// Damage to acknowledged records is [`Error::RaftLogDamaged`], which
    /// tells the operator what to do: remove the node's data and re-add it
    /// as a new learner. [`RecoveryMode::PointInTime`](crate::RecoveryMode)
    /// is refused: cutting a Raft node's log can drop a vote or entries it
    /// acknowledged (see [`RaftLog::open_allowing_loss`] for the explicit
    /// opt-in).
    ///
    /// # Errors
    /// Those of [`Wal::open`], [`Error::InvalidOption`] for `PointInTime`,
    /// and [`Error::RaftLogDamaged`] for damage, a record that does not
    /// decode or an entry that breaks the log's sequence.
    pub async fn open(dir: impl AsRef<Path>, opts: Options) -> Result<RaftLog<C>, Error> {
        if opts.get_recovery_mode() == crate::RecoveryMode::PointInTime {
            return Err(Error::InvalidOption {
                name: "recovery_mode",
                reason: "PointInTime can drop a vote or entries this node acknowledged to a leader, after which it can vote twice or help elect a leader missing a committed entry; remove the node's data and re-add it as a new learner instead (RaftLog::open_allowing_loss opts in explicitly)".into(),
            });
        }
        Self::open_allowing_loss(dir, opts).await
    }

    /// [`RaftLog::open`] without refusing
    /// [`RecoveryMode::PointInTime`](crate::RecoveryMode): for salvaging the
    /// entries of a damaged node for inspection, never for a node that
    /// rejoins its cluster under the same identity.
    ///
    /// # Errors
    /// As for [`RaftLog::open`].
    pub async fn open_allowing_loss(dir: impl AsRef<Path>, opts: Options) -> Result<RaftLog<C>, Error> {
        Self::replay(dir, opts).await.map_err(|e| match e {
            Error::Corrupt { segment, offset, lsn, kind } => {
                Error::RaftLogDamaged { segment, offset, lsn, kind }
            }
            e => e,
        })
    }

    async fn replay(dir: impl AsRef<Path>, opts: Options) -> Result<RaftLog<C>, Error> {
        let max_record = usize::try_from(opts.get_max_record_bytes()).unwrap_or(usize::MAX);
        if max_record < MIN_RECORD_BYTES {
            return Err(Error::InvalidOption {
                name: "max_record_bytes",
                reason: format!(
                    "{max_record} is too small for Raft records: the adapter needs at least {MIN_RECORD_BYTES} (a part record carries a tag and the first part an entry's log id)"
                ),
            });
        }
        let wal = Wal::open(dir, opts).await?;
        let mut st = State::new();
        let mut joiner = Joiner { first_only: true, ..Joiner::default() };
        for rec in wal.read_from(Lsn::FIRST)? {
            let rec = rec?;
            let Some((lsn, bytes)) = joiner.feed(rec.lsn(), rec.data()) else { continue };
            if let Some((id, _)) = entry_id::<LogId<C::NodeId>>(&bytes) {
                if !st.push(id, lsn) {
                    return Err(corrupt(&wal, lsn, "raft entry does not follow the previous one"));
                }
                continue;
            }
            if bytes.first() == Some(&ENTRY) {
                return Err(corrupt(&wal, lsn, "raft entry's log id does not decode"));
            }
            let op: OpOf<C, C::Entry> =
                decode(&bytes).ok_or_else(|| corrupt(&wal, lsn, "not an openraft record"))?;
            match op {
                Op::Entry(e) => {
                    if !st.push(e.get_log_id().clone(), lsn) {
                        return Err(corrupt(&wal, lsn, "raft entry does not follow the previous one"));
                    }
                }
                Op::Vote(v) => st.vote = Some(v),
                Op::Committed(c) => st.committed = c,
                Op::Truncate(id) => st.truncate(id.index),
                Op::Purge(id) => st.purge(id),
            }
        }
        if let Some(lsn) = st.check_continuity() {
            return Err(corrupt(&wal, lsn, "raft entries do not continue from the last purged entry"));
        }
        Ok(RaftLog { wal, state: Arc::new(Mutex::new(st)), writer: Default::default(), max_record })
    }

    /// The aiowal log underneath (for stats and the recovery report).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The largest entry encoding stored as one record (the log's
    /// `Options::max_record_bytes`). Larger entries are stored too, split
    /// into part records and joined again on every read; an application
    /// that wants to refuse oversized requests checks their size against
    /// its own limit before `client_write` (the `raft_kv` example does).
    pub fn max_record_bytes(&self) -> usize {
        self.max_record
    }

    /// Writes the committed log id if it changed since it was last
    /// written, then closes the log; see [`Wal::close`].
    ///
    /// # Errors
    /// As for [`Wal::close`], and a failed write of the committed id.
    pub async fn close(&self) -> Result<(), Error> {
        let mut writer = self.writer.lock().await;
        writer.finish().await;
        let saved = self.save_unsaved_committed().await;
        // Closed even if that failed: the error is returned after.
        let closed = self.wal.close().await;
        saved.and(closed)
    }

    /// Writes the committed log id if it changed since it was last written.
    async fn save_unsaved_committed(&self) -> Result<(), Error> {
        let unsaved = self.take_unsaved_committed();
        let bytes =
            unsaved.map_err(|e| Error::io(crate::IoOp::Write, self.wal.dir(), io::Error::other(e)))?;
        if let Some(bytes) = bytes {
            let staged = self.wal.stage(&bytes).await;
            if staged.is_err() {
                self.lock().committed_unsaved = true;
            }
            staged?.durable().await?;
        }
        Ok(())
    }

    /// The encoded committed log id if it changed since it was last
    /// written (then counted as written: the caller stages it, or puts the
    /// flag back if it cannot).
    fn take_unsaved_committed(&self) -> Result<Option<Vec<u8>>, postcard::Error> {
        let mut st = self.lock();
        if !st.committed_unsaved {
            return Ok(None);
        }
        let bytes = encode(&OpOf::<C, &C::Entry>::Committed(st.committed.clone()))?;
        st.committed_unsaved = false;
        Ok(Some(bytes))
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        crate::sync::lock(&self.state)
    }

    /// Appends one operation record and waits until it is durable. A
    /// failure names what was being written (openraft tells a vote's from
    /// the log's).
    /// An unsaved committed log id goes first, in the same atomic batch.
    /// The caller holds the writer lock.
    async fn log_op(&self, op: &OpOf<C, &C::Entry>) -> Result<Lsn, StorageError<C::NodeId>> {
        let vote = matches!(op, Op::Vote(_));
        let bytes = encode(op).map_err(|e| op_err(vote, &e))?;
        let mut batch = Vec::with_capacity(2);
        batch.extend(self.take_unsaved_committed().map_err(|e| op_err(vote, &e))?);
        let carried = batch.len() == 1;
        batch.push(bytes);
        let staged = match self.wal.stage_batch(&batch).await {
            Ok(s) => s,
            Err(e) => {
                self.lock().committed_unsaved |= carried;
                return Err(op_err(vote, &e));
            }
        };
        staged.durable().await.map_err(|e| op_err(vote, &e)).map(|r| r.last())
    }

    /// Forgets pending bytes that the log now serves.
    fn prune(&self) {
        let durable = self.wal.durable_lsn();
        let mut st = self.lock();
        st.pending.retain(|_, (last, _)| *last > durable);
    }

    /// Reads the entries at `want` (index, LSN), from pending bytes or the log.
    fn read_entries(&self, want: &[(u64, Lsn)]) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let Some(&(_, first_lsn)) = want.first() else { return Ok(Vec::new()) };
        // Copy pending bytes first: what is not pending any more is durable.
        let pending: BTreeMap<Lsn, Arc<Vec<u8>>> = {
            let st = self.lock();
            want.iter()
                .filter_map(|(_, lsn)| st.pending.get(lsn).map(|(_, b)| (*lsn, Arc::clone(b))))
                .collect()
        };
        let mut out = Vec::with_capacity(want.len());
        let mut iter = None;
        for &(index, lsn) in want {
            let entry = if let Some(bytes) = pending.get(&lsn) {
                decode_entry::<C>(&self.wal, bytes, lsn)?
            } else {
                let it = match &mut iter {
                    Some(it) => it,
                    None => iter.insert(self.wal.read_from(first_lsn.max(lsn)).map_err(read_err)?),
                };
                let mut joiner = Joiner::default();
                let found = loop {
                    match it.next() {
                        Some(Ok(r)) if r.lsn() < lsn => continue,
                        Some(Ok(r)) => match joiner.feed(r.lsn(), r.data()) {
                            Some((at, bytes)) if at == lsn => break Some(Ok(bytes.into_owned())),
                            Some(_) => break None, // past it
                            None => continue,
                        },
                        Some(Err(e)) => break Some(Err(e)),
                        None => break None,
                    }
                };
                let bytes = match found {
                    Some(Ok(bytes)) => bytes,
                    // A purge that ran since the index was read may have
                    // retired it (the iterator then starts past it, ends
                    // early, or fails to map a segment deleted under it):
                    // the reader contract allows fewer entries than asked
                    // for; anything else is damage.
                    _ if self.lock().first_index().is_none_or(|f| index < f) => return Ok(out),
                    Some(Err(e)) => return Err(read_err(e)),
                    None => return Err(read_err(corrupt(&self.wal, lsn, "raft entry missing from the log"))),
                };
                decode_entry::<C>(&self.wal, &bytes, lsn)?
            };
            if entry.get_log_id().index != index {
                return Err(read_err(corrupt(&self.wal, lsn, "raft entry index differs from the index")));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

fn decode_entry<C: RaftTypeConfig>(
    wal: &Wal,
    bytes: &[u8],
    lsn: Lsn,
) -> Result<C::Entry, StorageError<C::NodeId>> {
    if let Some((_, rest)) = entry_id::<LogId<C::NodeId>>(bytes) {
        return postcard::from_bytes(rest)
            .map_err(|_| read_err(corrupt(wal, lsn, "raft entry does not decode")));
    }
    match decode::<OpOf<C, C::Entry>>(bytes) {
        Some(Op::Entry(e)) => Ok(e),
        _ => Err(read_err(corrupt(wal, lsn, "record is not a raft entry"))),
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for RaftLog<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let want = self.lock().select(&range);
        self.read_entries(&want)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for RaftLog<C> {
    type LogReader = RaftLog<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let st = self.lock();
        Ok(LogState { last_purged_log_id: st.purged.clone(), last_log_id: st.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let _writer = self.writer.lock().await;
        self.log_op(&Op::Vote(vote.clone())).await?;
        self.lock().vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.lock().vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        // Written with the next record (or at close), never waited for:
        // see the module docs.
        let mut st = self.lock();
        if st.committed != committed {
            st.committed = committed;
            st.committed_unsaved = true;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.lock().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut items = Vec::new();
        for e in entries {
            let bytes = encode_entry(e.get_log_id(), &e).map_err(write_err)?;
            items.push((e.get_log_id().clone(), Arc::new(bytes)));
        }
        // From the checks to the index update: no other write in between.
        let _writer = self.writer.lock().await;
        {
            let st = self.lock();
            // With no entry live, entries at or below the last purged one
            // are already covered by the purge (openraft's own suite appends
            // such an entry after its state machine moved past the log):
            // dropped.
            if st.entries.is_empty() {
                if let Some(p) = st.purged.as_ref().map(|p| p.index) {
                    items.retain(|(id, _)| id.index > p);
                }
            }
            // Refuse a hole (after the last entry, or after the last purged
            // one when none is live) before anything reaches the log.
            let mut expected = st.expected_index();
            for (id, _) in &items {
                if let Some(e) = expected.filter(|&e| id.index != e) {
                    let e = io::Error::other(format!("raft entry {id} does not follow: expected index {e}"));
                    return Err(StorageIOError::write_log_entry(id.clone(), AnyError::new(&e)).into());
                }
                expected = Some(id.index + 1);
            }
        }
        if items.is_empty() {
            // Flushed means everything before it is durable too: wait for
            // what earlier calls staged (nothing, usually: then at once).
            let wal = self.wal.clone();
            tokio::spawn(async move {
                let result = wal.sync().await.map(|_| ()).map_err(|e| io::Error::other(e.to_string()));
                callback.log_io_completed(result);
            });
            return Ok(());
        }
        // Each entry's records: one, or its parts when it is larger than
        // a record may be.
        let mut parts = Vec::with_capacity(items.len());
        let mut records = Vec::with_capacity(items.len() + 1);
        // An unsaved committed log id rides first in the batch.
        let committed = self.take_unsaved_committed().map_err(write_err)?;
        let carried = committed.is_some();
        records.extend(committed.map(|c| Rec::Whole(Arc::new(c))));
        for (_, bytes) in &items {
            let r = split(bytes, self.max_record);
            parts.push(r.len());
            records.extend(r);
        }
        let staged = match self.wal.stage_batch(&records).await {
            Ok(s) => vec![s],
            // More than one batch holds: stage them one by one (still in
            // order; nothing else of this log is staged in between, since
            // openraft's calls take `&mut self`).
            Err(Error::BatchTooLarge { .. }) => {
                let mut v = Vec::with_capacity(records.len());
                for r in &records {
                    match self.wal.stage(r.as_ref()).await {
                        Ok(s) => v.push(s),
                        Err(e) => {
                            self.lock().committed_unsaved |= carried && v.is_empty();
                            return Err(write_err(e));
                        }
                    }
                }
                v
            }
            Err(e) => {
                self.lock().committed_unsaved |= carried;
                return Err(write_err(e));
            }
        };
        let mut lsns = staged.iter().flat_map(|s| s.lsns().iter()).skip(usize::from(carried));
        {
            let mut st = self.lock();
            for ((id, bytes), n) in items.into_iter().zip(parts) {
                let Some(first) = lsns.next() else { break };
                let last = lsns.by_ref().take(n - 1).last().unwrap_or(first);
                st.pending.insert(first, (last, bytes));
                // Checked above under the same writer lock: cannot fail.
                if !st.push(id.clone(), first) {
                    let e = io::Error::other(format!("raft entry {id} does not follow the index"));
                    return Err(StorageIOError::write_log_entry(id, AnyError::new(&e)).into());
                }
            }
        }
        let this = self.clone();
        let last = staged.into_iter().last();
        tokio::spawn(async move {
            let result = match last {
                Some(s) => s.durable().await.map(|_| ()).map_err(|e| io::Error::other(e.to_string())),
                None => Ok(()),
            };
            this.prune();
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let _writer = self.writer.lock().await;
        self.log_op(&Op::Truncate(log_id.clone())).await?;
        self.lock().truncate(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let mut writer = self.writer.lock().await;
        // The checkpoint may be all that is left of older purges once
        // segments are retired: it records the furthest purge, not this call's.
        let (vote, committed, log_id) = {
            let st = self.lock();
            let furthest = match &st.purged {
                Some(p) if p.index >= log_id.index => p.clone(),
                _ => log_id,
            };
            (st.vote.clone(), st.committed.clone(), furthest)
        };

        let mut batch = Vec::new();
        if let Some(v) = vote {
            batch.push(encode(&OpOf::<C, &C::Entry>::Vote(v)).map_err(write_err)?);
        }
        let committed_written = committed.clone();
        batch.push(encode(&OpOf::<C, &C::Entry>::Committed(committed)).map_err(write_err)?);
        batch.push(encode(&OpOf::<C, &C::Entry>::Purge(log_id.clone())).map_err(write_err)?);
        let staged = self.wal.stage_batch(&batch).await.map_err(write_err)?;
        // The checkpoint carries the committed id, unless a clone saved a
        // newer one meanwhile (then that one is still unsaved).
        {
            let mut st = self.lock();
            if st.committed == committed_written {
                st.committed_unsaved = false;
            }
        }
        let checkpoint = staged.durable().await.map_err(write_err)?.first();
        let keep = {
            let mut st = self.lock();
            st.purge(log_id);
            st.entries.front().map_or(checkpoint, |(_, lsn)| (*lsn).min(checkpoint))
        };
        // Whole segments before `keep` are removed in the background, so
        // that openraft's core does not wait for the file system (measured:
        // 95 ms for 298 segments). One removal at a time: the next purge
        // or `close` waits for this one. Nothing depends on it having
        // happened: a failure leaves segments that the next purge retires.
        writer.finish().await;
        let wal = self.wal.clone();
        writer.0 = Some(tokio::spawn(async move {
            if let Err(e) = wal.truncate_before(keep).await {
                tracing::warn!(dir = %wal.dir().display(), error = %e, "aiowal raft: purge could not remove old segments; the next purge retries");
            }
        }));
        Ok(())
    }
}
