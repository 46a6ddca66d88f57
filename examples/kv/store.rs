//! A small durable key-value store on aiowal: the pattern most storage
//! engines follow.
//!
//! * Every mutation is a log record; `put`, `delete` and `write_batch`
//!   return only after the record is durable (an atomic batch for
//!   `write_batch`), and only then does the change become visible.
//! * Concurrent writers share group commits. The in-memory map keeps each
//!   key's LSN, so changes may be applied in any order after their acks and
//!   the map still ends up as a replay in LSN order would leave it.
//! * `checkpoint` writes a snapshot (temporary file, fsync, rename, directory
//!   fsync, CRC32 over the contents) tagged with the LSN it covers, then
//!   `truncate_before` lets the log drop what the snapshot holds.
//! * `open` loads the snapshot and replays the log from the snapshot's LSN.

#![allow(dead_code)] // each example uses a different part of the store

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::sync::Arc;

use aiowal::{Lsn, Options, Wal};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

const SNAPSHOT: &str = "snapshot";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KVSNAP1\n";
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_CLEAR: u8 = 3;

/// Errors of the store: the log's, the file system's, or a bad snapshot/record.
#[derive(Debug)]
pub enum StoreError {
    Wal(aiowal::Error),
    Io(std::io::Error),
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Wal(e) => write!(f, "log: {e}"),
            StoreError::Io(e) => write!(f, "snapshot: {e}"),
            StoreError::Corrupt(what) => write!(f, "corrupt: {what}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<aiowal::Error> for StoreError {
    fn from(e: aiowal::Error) -> Self {
        StoreError::Wal(e)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// One mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Removes every key written before this record.
    Clear,
}

impl Op {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, key, value): (u8, &[u8], &[u8]) = match self {
            Op::Put(k, v) => (OP_PUT, k, v),
            Op::Delete(k) => (OP_DELETE, k, &[]),
            Op::Clear => (OP_CLEAR, &[], &[]),
        };
        let mut out = Vec::with_capacity(5 + key.len() + value.len());
        out.push(tag);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Op, StoreError> {
        let bad = || StoreError::Corrupt("malformed log record".into());
        let (&tag, rest) = b.split_first().ok_or_else(bad)?;
        let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let klen = u32::from_le_bytes(*len) as usize;
        let key = rest.get(..klen).ok_or_else(bad)?.to_vec();
        let value = rest.get(klen..).ok_or_else(bad)?.to_vec();
        match tag {
            OP_PUT => Ok(Op::Put(key, value)),
            OP_DELETE if value.is_empty() => Ok(Op::Delete(key)),
            OP_CLEAR if key.is_empty() && value.is_empty() => Ok(Op::Clear),
            _ => Err(bad()),
        }
    }
}

/// A value (or a deletion) and the LSN of the record that set it.
#[derive(Debug, Clone)]
struct Versioned {
    lsn: u64,
    value: Option<Vec<u8>>,
}

/// A write staged by [`Store::stage`]; it holds off checkpoints until
/// finished, so a snapshot never misses a durable but unapplied record.
pub struct StagedWrite {
    staged: aiowal::Staged,
    ops: Vec<Op>,
    _checkpoint: OwnedRwLockReadGuard<()>,
}

impl StagedWrite {
    /// LSN of the last staged record.
    pub fn lsn(&self) -> Lsn {
        self.staged.lsns().last()
    }
}

/// What `open` found.
#[derive(Debug, Clone, Copy)]
pub struct Recovered {
    /// Keys loaded from the snapshot.
    pub snapshot_keys: usize,
    /// The LSN the snapshot covers (0 without one).
    pub snapshot_lsn: u64,
    /// Log records replayed after the snapshot.
    pub replayed: u64,
}

/// The map and the LSN of the newest `Clear` applied to it.
#[derive(Debug, Default)]
struct Map {
    entries: BTreeMap<Vec<u8>, Versioned>,
    cleared_at: u64,
}

pub struct Store {
    dir: PathBuf,
    wal: Wal,
    map: Mutex<Map>,
    /// Writers hold it shared across append + apply; `checkpoint` takes it
    /// exclusively so that the map holds exactly the durable LSNs.
    writes: Arc<RwLock<()>>,
    recovered: Recovered,
}

impl Store {
    /// Opens (or creates) the store in `dir`: snapshot, then log replay.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        // 4 MiB segments: the log preallocates its current segment and the
        // next one, so a small store takes about 8 MiB on disk instead of
        // the 128 MiB of the default 64 MiB segments. (A store that writes
        // more than a few MB/s wants larger ones: fewer segment switches.)
        Store::open_with(dir, Options::default().segment_bytes(4 << 20)).await
    }

    /// [`Store::open`] with the log's options chosen by the caller.
    pub async fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        // Not synced here: `Wal::open` below makes every directory on the
        // path to its log durable, this one included.
        fs::create_dir_all(&dir)?;
        let (entries, snapshot_lsn) = load_snapshot(&dir.join(SNAPSHOT))?;
        let snapshot_keys = entries.len();
        let mut map = Map { entries, cleared_at: 0 };
        let wal = Wal::open(dir.join("wal"), options).await?;
        let mut replayed = 0;
        for rec in wal.read_from(Lsn::new(snapshot_lsn + 1))? {
            let rec = rec?;
            apply(&mut map, rec.lsn().get(), Op::decode(rec.data())?);
            replayed += 1;
        }
        let recovered = Recovered { snapshot_keys, snapshot_lsn, replayed };
        Ok(Store { dir, wal, map: Mutex::new(map), writes: Arc::new(RwLock::new(())), recovered })
    }

    /// What `open` loaded.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// The log underneath (for stats).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Lsn, StoreError> {
        self.write_batch(vec![Op::Put(key.to_vec(), value.to_vec())]).await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<Lsn, StoreError> {
        self.write_batch(vec![Op::Delete(key.to_vec())]).await
    }

    /// Applies `ops` atomically: after a crash, all of them or none. Returns
    /// the LSN of the last one, once durable.
    pub async fn write_batch(&self, ops: Vec<Op>) -> Result<Lsn, StoreError> {
        let _shared = self.writes.read().await;
        let records: Vec<Vec<u8>> = ops.iter().map(Op::encode).collect();
        let range = match &records[..] {
            [one] => self.wal.append(one).await?.into(),
            many => self.wal.append_batch(many).await?,
        };
        Ok(self.apply_range(range, ops))
    }

    /// Makes durable ops visible, each under its LSN.
    fn apply_range(&self, range: aiowal::LsnRange, ops: Vec<Op>) -> Lsn {
        let mut map = self.map.lock().unwrap();
        for (lsn, op) in range.iter().zip(ops) {
            apply(&mut map, lsn.get(), op);
        }
        range.last()
    }

    /// Stages `ops` as one atomic record batch: LSNs assigned, not yet
    /// durable or visible. Finish it with [`Store::finish`]. Lets a caller
    /// order a read-modify-write under its own lock and release the lock
    /// before the durable wait, so such writes still share group commits.
    pub async fn stage(&self, ops: Vec<Op>) -> Result<StagedWrite, StoreError> {
        let guard = Arc::clone(&self.writes).read_owned().await;
        let records: Vec<Vec<u8>> = ops.iter().map(Op::encode).collect();
        let staged = match &records[..] {
            [one] => self.wal.stage(one).await?,
            many => self.wal.stage_batch(many).await?,
        };
        Ok(StagedWrite { staged, ops, _checkpoint: guard })
    }

    /// Waits until a staged write is durable, then makes it visible.
    pub async fn finish(&self, w: StagedWrite) -> Result<Lsn, StoreError> {
        let StagedWrite { staged, ops, _checkpoint } = w;
        let range = staged.durable().await?;
        Ok(self.apply_range(range, ops))
    }

    /// A key's durable value (or deletion) and the LSN that set it.
    pub fn get_versioned(&self, key: &[u8]) -> Option<(u64, Option<Vec<u8>>)> {
        self.map.lock().unwrap().entries.get(key).map(|v| (v.lsn, v.value.clone()))
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.lock().unwrap().entries.get(key).and_then(|v| v.value.clone())
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap().entries.values().filter(|v| v.value.is_some()).count()
    }

    /// Live entries in key order.
    pub fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let map = self.map.lock().unwrap();
        map.entries.iter().filter_map(|(k, v)| v.value.clone().map(|v| (k.clone(), v))).collect()
    }

    /// Writes a snapshot of everything durable, then lets the log forget it.
    /// Returns the LSN the snapshot covers.
    pub async fn checkpoint(&self) -> Result<Lsn, StoreError> {
        let _exclusive = self.writes.write().await;
        let lsn = self.wal.sync().await?;
        let entries = self.entries();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_snapshot(&dir, lsn.get(), &entries))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        self.wal.truncate_before(lsn.next()).await?;
        Ok(lsn)
    }

    pub async fn close(&self) -> Result<(), StoreError> {
        Ok(self.wal.close().await?)
    }
}

/// Last writer (by LSN) wins, whatever order acks arrive in.
fn apply(map: &mut Map, lsn: u64, op: Op) {
    let (key, value) = match op {
        Op::Put(k, v) => (k, Some(v)),
        Op::Delete(k) => (k, None),
        Op::Clear => {
            map.cleared_at = map.cleared_at.max(lsn);
            map.entries.retain(|_, v| v.lsn > lsn);
            return;
        }
    };
    if lsn < map.cleared_at {
        return; // a later Clear already removed it
    }
    let slot = map.entries.entry(key).or_insert(Versioned { lsn: 0, value: None });
    if slot.lsn < lsn {
        *slot = Versioned { lsn, value };
    }
}

/// Snapshot file: magic, covered LSN, entry count, entries (key length,
/// value length, key, value; little-endian u32s), CRC32 of all before it.
fn write_snapshot(dir: &Path, lsn: u64, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
    let mut b = Vec::new();
    b.extend_from_slice(SNAPSHOT_MAGIC);
    b.extend_from_slice(&lsn.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, v) in entries {
        b.extend_from_slice(&(k.len() as u32).to_le_bytes());
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(k);
        b.extend_from_slice(v);
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("snapshot.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&b)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(SNAPSHOT))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn load_snapshot(path: &Path) -> Result<(BTreeMap<Vec<u8>, Versioned>, u64), StoreError> {
    let b = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((BTreeMap::new(), 0)),
        Err(e) => return Err(e.into()),
    };
    let bad = |what: &str| StoreError::Corrupt(format!("snapshot {}: {what}", path.display()));
    let (body, crc) = b.split_last_chunk::<4>().ok_or_else(|| bad("too short"))?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(bad("checksum mismatch"));
    }
    let rest = body.strip_prefix(SNAPSHOT_MAGIC).ok_or_else(|| bad("not a snapshot"))?;
    let (lsn, rest) = rest.split_first_chunk::<8>().ok_or_else(|| bad("truncated"))?;
    let (count, mut rest) = rest.split_first_chunk::<8>().ok_or_else(|| bad("truncated"))?;
    let lsn = u64::from_le_bytes(*lsn);
    let mut map = BTreeMap::new();
    for _ in 0..u64::from_le_bytes(*count) {
        let (kl, r) = rest.split_first_chunk::<4>().ok_or_else(|| bad("truncated"))?;
        let (vl, r) = r.split_first_chunk::<4>().ok_or_else(|| bad("truncated"))?;
        let (kl, vl) = (u32::from_le_bytes(*kl) as usize, u32::from_le_bytes(*vl) as usize);
        let key = r.get(..kl).ok_or_else(|| bad("truncated"))?.to_vec();
        let value = r.get(kl..kl + vl).ok_or_else(|| bad("truncated"))?.to_vec();
        rest = &r[kl + vl..];
        map.insert(key, Versioned { lsn, value: Some(value) });
    }
    Ok((map, lsn))
}
