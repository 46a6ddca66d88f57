//! A blocking handle for thread-based callers.
//!
//! Many storage engines are not async. [`Wal`] here owns a small tokio
//! runtime (one worker) and blocks the calling thread on each call; any
//! number of threads may call it at once and still share group commits.
//!
//! ```
//! # let tmp = tempfile::tempdir().unwrap();
//! let wal = aiowal::blocking::Wal::open(tmp.path(), aiowal::Options::default())?;
//! let lsn = wal.append(b"record")?;
//! assert_eq!(wal.sync()?, lsn);
//! wal.close()?;
//! # Ok::<(), aiowal::Error>(())
//! ```
//!
//! Do not call it from inside an async task: it blocks the thread.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, IoOp, Result};
use crate::{Lsn, LsnRange, Options, ReadIter, RecoveryReport, Stats};

/// Blocking counterpart of [`crate::Wal`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Wal {
    // Dropped before the runtime (fields drop in order): a log dropped
    // without `close` stops its backend, which may need the runtime.
    inner: crate::Wal,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Wal {
    /// Opens the log in `dir`; see [`crate::Wal::open`].
    ///
    /// # Errors
    /// As [`crate::Wal::open`], plus [`Error::Io`] if the runtime cannot start.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("aiowal-rt")
            .enable_all()
            .build()
            .map_err(|e| Error::io(IoOp::Spawn, "tokio runtime", e))?;
        let inner = rt.block_on(crate::Wal::open(dir, opts))?;
        Ok(Wal { inner, rt: Arc::new(rt) })
    }

    /// Appends one record and blocks until it is durable; see [`crate::Wal::append`].
    ///
    /// # Errors
    /// As [`crate::Wal::append`].
    pub fn append(&self, record: &[u8]) -> Result<Lsn> {
        self.rt.block_on(self.inner.append(record))
    }

    /// Appends records atomically; see [`crate::Wal::append_batch`].
    ///
    /// # Errors
    /// As [`crate::Wal::append_batch`].
    pub fn append_batch<I, R>(&self, records: I) -> Result<LsnRange>
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[u8]>,
    {
        self.rt.block_on(self.inner.append_batch(records))
    }

    /// Stages one record without waiting for durability; see
    /// [`crate::Wal::stage`]. Wait with [`Staged::durable`].
    ///
    /// # Errors
    /// As [`crate::Wal::stage`].
    pub fn stage(&self, record: &[u8]) -> Result<Staged> {
        let inner = self.rt.block_on(self.inner.stage(record))?;
        Ok(Staged { inner, rt: Arc::clone(&self.rt) })
    }

    /// Stages an atomic batch without waiting; see [`crate::Wal::stage_batch`].
    ///
    /// # Errors
    /// As [`crate::Wal::stage_batch`].
    pub fn stage_batch<I, R>(&self, records: I) -> Result<Staged>
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[u8]>,
    {
        let inner = self.rt.block_on(self.inner.stage_batch(records))?;
        Ok(Staged { inner, rt: Arc::clone(&self.rt) })
    }

    /// The highest durable LSN; see [`crate::Wal::durable_lsn`].
    pub fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn()
    }

    /// The oldest LSN still in the log; see [`crate::Wal::first_lsn`].
    pub fn first_lsn(&self) -> Lsn {
        self.inner.first_lsn()
    }

    /// Blocks until everything appended so far is durable; see [`crate::Wal::sync`].
    ///
    /// # Errors
    /// As [`crate::Wal::sync`].
    pub fn sync(&self) -> Result<Lsn> {
        self.rt.block_on(self.inner.sync())
    }

    /// Iterates over durable records from `from`; see [`crate::Wal::read_from`].
    ///
    /// # Errors
    /// As [`crate::Wal::read_from`].
    pub fn read_from(&self, from: Lsn) -> Result<ReadIter> {
        self.inner.read_from(from)
    }

    /// Removes whole segments below `lsn`; see [`crate::Wal::truncate_before`].
    ///
    /// # Errors
    /// As [`crate::Wal::truncate_before`].
    pub fn truncate_before(&self, lsn: Lsn) -> Result<u64> {
        self.rt.block_on(self.inner.truncate_before(lsn))
    }

    /// What recovery found; see [`crate::Wal::recovery_report`].
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.inner.recovery_report()
    }

    /// Counters since open; see [`crate::Wal::stats`].
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The async handle this one wraps.
    pub fn as_async(&self) -> &crate::Wal {
        &self.inner
    }

    /// Flushes and closes; see [`crate::Wal::close`].
    ///
    /// # Errors
    /// As [`crate::Wal::close`].
    pub fn close(&self) -> Result<()> {
        self.rt.block_on(self.inner.close())
    }
}

/// Records staged by [`Wal::stage`]: LSNs assigned, durability pending.
#[derive(Debug)]
#[must_use = "a staged record is not durable until `durable()` returns"]
pub struct Staged {
    inner: crate::Staged,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Staged {
    /// The LSNs the staged records got.
    pub fn lsns(&self) -> LsnRange {
        self.inner.lsns()
    }

    /// Blocks until the staged records (and everything before them) are durable.
    ///
    /// # Errors
    /// As [`crate::Staged::durable`].
    pub fn durable(self) -> Result<LsnRange> {
        self.rt.block_on(self.inner.durable())
    }
}
