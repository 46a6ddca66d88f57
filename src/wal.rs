//! The `Wal` handle.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::commit::{Active, Core, Next, Place, Start, Stats};
use crate::error::{Error, IoOp, Result};
use crate::format;
use crate::io;
use crate::lsn::{Lsn, LsnRange};
use crate::options::Options;
use crate::recovery::{self, Plan, ReadIter, RecoveryReport, SegmentMeta, Tail};
use crate::registry::DirEntry;
use crate::segment::{self, HeldLock};

/// A write-ahead log. Cheap to clone; all clones share one log.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aiowal::Error> {
/// # let tmp = tempfile::tempdir().unwrap();
/// let wal = aiowal::Wal::open(tmp.path(), aiowal::Options::default()).await?;
/// let lsn = wal.append(b"put k1 v1").await?; // durable when this returns
/// let batch = wal.append_batch([&b"put k2 v2"[..], &b"del k1"[..]]).await?;
/// assert_eq!(batch.first(), lsn.next());
/// wal.close().await?;
///
/// let wal = aiowal::Wal::open(tmp.path(), aiowal::Options::default()).await?;
/// let replayed: Vec<Vec<u8>> = wal
///     .read_from(aiowal::Lsn::FIRST)?
///     .map(|r| r.map(|r| r.to_vec()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(replayed, [&b"put k1 v1"[..], b"put k2 v2", b"del k1"]);
/// wal.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Wal {
    handle: Arc<Handle>,
}

struct Handle {
    core: Arc<Core>,
    report: RecoveryReport,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.shutdown();
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.handle.core.dir())
            .field("backend", &self.handle.core.backend_name())
            .field("durable_lsn", &self.handle.core.durable_lsn())
            .finish()
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering what is on disk first.
    ///
    /// Recovery verifies every frame, cuts a torn tail left by a crash and
    /// reports what it found in [`Wal::recovery_report`].
    ///
    /// Call it from within a tokio runtime: the log's background work (the
    /// I/O backend's completions, file preparation) runs on it. io_uring and
    /// FreeBSD's AIO also need the runtime's I/O driver (`enable_io`);
    /// without it `Backend::Auto` uses the threaded backend and an explicit
    /// `Backend::Uring` or `Backend::Lio` is an error. (tokio reports a
    /// missing I/O driver by panicking, which `open` catches; the panic
    /// still goes through the panic hook, so the default hook prints
    /// tokio's message on stderr, and in a program built with `panic =
    /// "abort"` it aborts the process: give such a program's runtime the
    /// I/O driver.)
    ///
    /// # Errors
    /// [`Error::Locked`] if another handle has the directory open,
    /// [`Error::Corrupt`] if acknowledged data is damaged (see
    /// [`crate::RecoveryMode`]), [`Error::ForeignFile`] for a segment-named file
    /// that is not a segment, [`Error::InvalidOption`] for inconsistent
    /// options, [`Error::BackendUnavailable`] for an explicit backend that
    /// cannot run here, [`Error::Runtime`] outside a tokio runtime, and
    /// [`Error::Io`] / [`Error::NoSpace`] for failing file calls.
    pub async fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Runtime(
                "Wal::open must be called from within a tokio runtime (or use aiowal::blocking::Wal)",
            ));
        }
        let dir = dir.as_ref().to_path_buf();
        let (o, d) = (opts.clone(), dir.clone());
        let started = std::time::Instant::now();
        let span = tracing::info_span!("aiowal_recovery", dir = %dir.display());
        let (start, mut report, opts) =
            opts.vfs.run_blocking(move || span.in_scope(|| recover(&d, o))).await.inspect_err(
                |e| tracing::error!(dir = %dir.display(), error = %e, "aiowal: recovery refused to open"),
            )?;
        report.elapsed = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            records = report.records,
            segments = report.segments,
            copied_forward = report.copied_forward,
            stop = ?report.stop,
            elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
            "aiowal: recovered"
        );
        let core = Core::new(dir, opts.clone(), start);
        let sink: Arc<dyn io::Completion> = core.clone();
        core.set_backend(io::start(opts.backend, sink, &opts)?);
        if let crate::Durability::Periodic(every) = opts.durability {
            // Made here, where a runtime without timers is an error rather
            // than a panic in a task (which would leave the log unsynced).
            let every = every.max(std::time::Duration::from_micros(100));
            let Ok(mut tick) = std::panic::catch_unwind(|| tokio::time::interval(every)) else {
                core.shutdown();
                return Err(Error::Runtime(
                    "Durability::Periodic needs a tokio runtime with its time driver (Builder::enable_time or enable_all)",
                ));
            };
            // Holds the core weakly: the log closes when its handles go.
            let core = Arc::downgrade(&core);
            tokio::spawn(async move {
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match core.upgrade() {
                        Some(core) if core.periodic_sync() => {}
                        _ => return,
                    }
                }
            });
        }
        Ok(Wal { handle: Arc::new(Handle { core, report }) })
    }

    /// Appends one record and waits until it (and everything before it) is
    /// durable; under a relaxed [`Durability`](crate::Durability) level,
    /// until it is written (then [`Wal::written_lsn`] covers it, and
    /// [`Wal::durable_lsn`] once a sync did).
    ///
    /// Concurrent appends share group commits: one write and one data sync
    /// per batch, however many records it holds.
    ///
    /// # Errors
    /// [`Error::RecordTooLarge`] above `max_record_bytes`; [`Error::Poisoned`]
    /// after a failed write or sync; [`Error::Closed`] after `close`.
    ///
    /// # Cancel safety
    /// Dropping the future before its first poll does nothing. Once polled,
    /// the record is staged: dropping the future then does not withdraw it,
    /// so it may still become durable (and recovered) under its LSN. Its
    /// buffer is owned by the pipeline, never by the future.
    pub async fn append(&self, record: &[u8]) -> Result<Lsn> {
        self.handle.core.append(&[record], false).await.map(|r| r.last())
    }

    /// Appends records atomically: after a crash, recovery yields all or none.
    ///
    /// The batch is written in one piece, so its encoded size must fit
    /// `batch_bytes_max`.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`], [`Error::BatchTooLarge`], and those of [`Wal::append`].
    ///
    /// # Cancel safety
    /// As for [`Wal::append`]: once polled, the batch may become durable.
    pub async fn append_batch<I, R>(&self, records: I) -> Result<LsnRange>
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[u8]>,
    {
        let owned: Vec<R> = records.into_iter().collect();
        self.handle.core.append(&batch_refs(&owned)?, true).await
    }

    /// Stages one record without waiting for it to become durable: when this
    /// returns, the record has its LSN and its place in the log (records
    /// staged later get higher LSNs), and its batch is on its way to disk.
    /// Await [`Staged::durable`] before acknowledging it to anyone.
    ///
    /// This lets a caller order log records with its own state under its own
    /// lock (stage while holding it, wait for durability after releasing it)
    /// and still share group commits with everyone else.
    ///
    /// # Errors
    /// As for [`Wal::append`].
    ///
    /// # Cancel safety
    /// As for [`Wal::append`]: once polled, the record may become durable.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), aiowal::Error> {
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let wal = aiowal::Wal::open(tmp.path(), aiowal::Options::default()).await?;
    /// let a = wal.stage(b"first").await?;  // LSN 1, not yet durable
    /// let b = wal.stage(b"second").await?; // LSN 2
    /// assert_eq!(b.lsns().first(), a.lsns().last().next());
    /// b.durable().await?;                  // 2 durable, so 1 is too
    /// assert_eq!(wal.durable_lsn(), aiowal::Lsn::new(2));
    /// # Ok(()) }
    /// ```
    pub async fn stage(&self, record: &[u8]) -> Result<Staged> {
        let core = &self.handle.core;
        let (range, epoch) = core.reserve(&[record], false, false).await?;
        Ok(Staged { range, epoch, wal: self.clone() })
    }

    /// Stages an atomic batch without waiting for durability; see [`Wal::stage`].
    ///
    /// # Errors
    /// As for [`Wal::append_batch`].
    pub async fn stage_batch<I, R>(&self, records: I) -> Result<Staged>
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[u8]>,
    {
        let owned: Vec<R> = records.into_iter().collect();
        let (range, epoch) = self.handle.core.reserve(&batch_refs(&owned)?, true, false).await?;
        Ok(Staged { range, epoch, wal: self.clone() })
    }

    /// Waits until everything appended so far is durable; returns the durable LSN
    /// ([`Lsn::ZERO`] for a log that never held a record).
    ///
    /// # Errors
    /// [`Error::Poisoned`] after a failed write or sync; [`Error::Closed`]
    /// after `close`.
    ///
    /// # Cancel safety
    /// Safe to drop at any point.
    pub async fn sync(&self) -> Result<Lsn> {
        self.handle.core.sync().await
    }

    /// Drops every record above `lsn`, durably: the next append gets
    /// `lsn + 1`, and after a crash the dropped records never come back,
    /// under their old LSNs or the new ones. What a Raft follower does with
    /// entries that conflict with its leader's; a database undoing a
    /// transaction it logged but must not commit. Returns the last LSN the
    /// log now holds (`lsn`, or the last one if it holds none above `lsn`).
    ///
    /// Everything appended before the call is made durable first. Then the
    /// log continues in a new segment whose header says that every record
    /// from `lsn + 1` on in the segments before it is void; the call
    /// returns once that header is durable. A crash before that leaves the
    /// log as it was (the call had not returned); after it, recovery ends
    /// the older segments' records at `lsn` and removes segments that start
    /// above it. Appends that race the call land either before the cut (and
    /// are dropped with it) or after it; run it when nothing else appends.
    ///
    /// The durable (and written) watermark goes back to `lsn`. Waiting for
    /// a record that was dropped (a [`Staged`] not yet awaited, an append
    /// racing the call) ends with [`Error::DroppedByCut`]. Readers made
    /// after the call never see a dropped record; readers and
    /// [`Tail`](crate::Tail)s made before it are not told, and may return
    /// records above `lsn` that the cut dropped (the LSNs then name other
    /// records). Segment files that start above `lsn` are removed once the
    /// cut is durable. One cut runs at a time.
    ///
    /// # Errors
    /// [`Error::CutBeforeStart`] if `lsn + 1` is below the oldest record
    /// still held ([`Wal::first_lsn`]); [`Error::CutInsideBatch`] if `lsn`
    /// is inside an atomic batch; [`Error::Poisoned`] after a failed write
    /// or sync; [`Error::Closed`] after `close`; [`Error::Io`] if a voided
    /// segment file cannot be removed (the cut itself is durable then).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), aiowal::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use aiowal::{Lsn, Options, Wal};
    ///
    /// let wal = Wal::open(dir.path(), Options::default()).await?;
    /// for r in [&b"begin"[..], b"write x", b"write y"] {
    ///     wal.append(r).await?;
    /// }
    /// // Undo the two writes: LSNs 2 and 3 are dropped, durably.
    /// wal.truncate_after(Lsn::new(1)).await?;
    /// assert_eq!(wal.append(b"abort").await?, Lsn::new(2));
    /// let got: Vec<Vec<u8>> = wal.read_from(Lsn::FIRST)?.map(|r| r.map(|r| r.to_vec())).collect::<Result<_, _>>()?;
    /// assert_eq!(got, [b"begin".to_vec(), b"abort".to_vec()]);
    /// wal.close().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// Once the new segment is queued the cut happens even if the future is
    /// dropped; before that, dropping it leaves the log as it was.
    pub async fn truncate_after(&self, lsn: Lsn) -> Result<Lsn> {
        self.handle.core.truncate_after(lsn.0).await
    }

    /// Iterates over the durable records with LSN `>= from`, in order.
    ///
    /// Records below the oldest segment still in the log (see
    /// [`Wal::truncate_before`]) are gone; the iterator starts at the oldest
    /// record available, which [`Wal::first_lsn`] tells. Records appended
    /// after this call are not included.
    ///
    /// The records' bytes never change while a [`Record`](crate::Record)
    /// or the iterator lives: segments they may map are never recycled
    /// (`truncate_before` deletes them instead, and a deleted file keeps
    /// its bytes for whoever maps it).
    ///
    /// The iterator is synchronous: it reads memory-mapped segments, and a
    /// page not in memory is read from disk on the calling thread. In async
    /// code, move a long scan of a cold log to a blocking thread:
    /// `tokio::task::spawn_blocking(move || iter.count())` (the iterator is
    /// `Send + 'static`).
    ///
    /// # Errors
    /// [`Error::Closed`] after `close` (or once the last handle was
    /// dropped). The iterator's items fail with [`Error::Truncated`] if
    /// `truncate_before` removed a segment before the iterator reached it
    /// (segments it is reading stay readable), and with [`Error::Corrupt`]
    /// or [`Error::Io`] if a segment was damaged or removed otherwise.
    pub fn read_from(&self, from: Lsn) -> Result<ReadIter> {
        let core = &self.handle.core;
        core.ensure_open()?;
        Ok(core.reader(from.0, core.durable_lsn()))
    }

    /// A live tail: every durable record from `from` on, in order, then
    /// each new one as it becomes durable, until the log is closed. See
    /// [`Tail`](crate::Tail) for what it returns and when it ends.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> aiowal::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let wal = aiowal::Wal::open(dir.path(), aiowal::Options::default()).await?;
    /// let mut tail = wal.tail(aiowal::Lsn::FIRST);
    /// let follower = tokio::spawn(async move {
    ///     let mut got = Vec::new();
    ///     while let Some(record) = tail.next().await {
    ///         got.push(record?.to_vec()); // ship it to a replica, apply it...
    ///     }
    ///     Ok::<_, aiowal::Error>(got) // the log was closed
    /// });
    /// wal.append(b"one").await?;
    /// wal.append(b"two").await?;
    /// wal.close().await?;
    /// assert_eq!(follower.await.unwrap()?, vec![b"one".to_vec(), b"two".to_vec()]);
    /// # Ok(()) }
    /// ```
    pub fn tail(&self, from: Lsn) -> crate::Tail {
        crate::Tail::new(Arc::clone(&self.handle.core), from)
    }

    /// The segment file holding `lsn` (the log directory if no segment does),
    /// for errors about a record.
    #[cfg_attr(not(feature = "openraft"), allow(dead_code))]
    pub(crate) fn segment_of(&self, lsn: Lsn) -> PathBuf {
        let segs = self.handle.core.segments();
        match segs.iter().rev().find(|s| s.header.first_lsn <= lsn.0) {
            Some(s) => s.path.clone(),
            None => self.dir().to_path_buf(),
        }
    }

    /// The oldest LSN still in the log, or the next LSN if it holds none.
    pub fn first_lsn(&self) -> Lsn {
        let core = &self.handle.core;
        Lsn(core.first_segment_lsn().unwrap_or_else(|| core.next_lsn()))
    }

    /// The highest durable LSN: every record up to it survives a power
    /// loss (the synced watermark).
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.handle.core.durable_lsn())
    }

    /// The highest written LSN: every record up to it was written and, under
    /// a relaxed [`Durability`](crate::Durability) level, acknowledged,
    /// though maybe not synced yet. Equal to [`Wal::durable_lsn`] under
    /// `Durability::Immediate`; never below it.
    pub fn written_lsn(&self) -> Lsn {
        Lsn(self.handle.core.written_lsn())
    }

    /// Retires whole segments whose records all precede `lsn` (a checkpoint),
    /// never the segment being written. Records `>= lsn` are never lost, and
    /// some below it may remain. Returns how many segments were retired.
    ///
    /// Up to [`Options::segments_recycled_max`] retired segments are kept as
    /// spares and reused for new segments (no zero-filling); the rest are
    /// deleted. A segment that a live [`Record`](crate::Record) or
    /// [`ReadIter`] may still map is always deleted, never reused, so the
    /// bytes they hold never change.
    ///
    /// # Errors
    /// [`Error::Closed`] after `close`; [`Error::Poisoned`] after a failed
    /// write or sync; [`Error::Io`] if a file cannot be removed or the
    /// directory synced.
    ///
    /// # Cancel safety
    /// The removal runs on a blocking thread and completes even if the
    /// future is dropped; `close` waits for it.
    pub async fn truncate_before(&self, lsn: Lsn) -> Result<u64> {
        let core = Arc::clone(&self.handle.core);
        core.ensure_open()?;
        let vfs = core.opts.vfs.clone();
        vfs.run_blocking(move || core.truncate_before(lsn.0)).await
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.handle.report
    }

    /// Counters and sync latency since open.
    pub fn stats(&self) -> Stats {
        self.handle.core.stats()
    }

    /// The backend in use (`"threaded"`, ...).
    pub fn backend_name(&self) -> &'static str {
        self.handle.core.backend_name()
    }

    /// Whether segments are written with `O_DIRECT` (see [`crate::DirectIo`]).
    pub fn direct_io(&self) -> bool {
        self.handle.core.opts.direct
    }

    /// How the io_uring backend makes batches durable in this log (`None`
    /// when the log runs another backend): the configured
    /// [`UringSync`](crate::UringSync), except that `Dsync` with `O_DIRECT`
    /// becomes `Fsync` on file systems where `RWF_DSYNC` direct writes are
    /// not verified durable (see [`Options::uring_sync`]).
    pub fn uring_sync(&self) -> Option<crate::UringSync> {
        (self.backend_name() == "uring").then_some(self.handle.core.opts.uring_sync)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        self.handle.core.dir()
    }

    /// Makes every staged record durable, writes a clean-end mark (so the
    /// next `open` writes nothing and can prove every record acknowledged),
    /// stops the I/O backend and releases the directory lock. When it
    /// returns, nothing of this log touches the directory any more: a
    /// reopen succeeds at once. Later fallible calls on any clone fail with
    /// [`Error::Closed`]; closing again is a no-op.
    ///
    /// Dropping the last clone without `close` also stops the log, in the
    /// background and without the clean-end mark (the next `open` treats it
    /// as after a crash: it copies the newest records into a new segment).
    /// The lock is released once the backend and any segment preparation
    /// or truncation in progress are done; a reopen in this process before
    /// then fails with [`Error::Locked`] saying so. `Drop` never blocks.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if records could not be made durable.
    ///
    /// # Cancel safety
    /// Once polled, the log is closing: later calls fail with `Closed`
    /// whether or not this future completes; another `close` waits for the
    /// shutdown.
    pub async fn close(&self) -> Result<()> {
        self.handle.core.close().await
    }
}

/// The records of an atomic batch as slices; a batch needs at least one.
fn batch_refs<R: AsRef<[u8]>>(owned: &[R]) -> Result<Vec<&[u8]>> {
    if owned.is_empty() {
        return Err(Error::EmptyBatch);
    }
    Ok(owned.iter().map(AsRef::as_ref).collect())
}

/// Records staged by [`Wal::stage`]: LSNs assigned, durability pending.
#[derive(Debug)]
#[must_use = "a staged record is not durable until `durable()` resolves"]
pub struct Staged {
    range: LsnRange,
    /// The cut epoch the LSNs were given in (see `Wal::truncate_after`).
    epoch: u64,
    wal: Wal,
}

impl Staged {
    /// The LSNs the staged records got.
    pub fn lsns(&self) -> LsnRange {
        self.range
    }

    /// Waits until the staged records (and everything before them) are
    /// durable, under every [`Durability`](crate::Durability) level (a
    /// relaxed level starts a sync for them).
    ///
    /// # Errors
    /// [`Error::Poisoned`] if a write or sync failed first.
    ///
    /// # Cancel safety
    /// Safe to drop; the records become durable regardless under
    /// `Immediate` (under a relaxed level, at the sync already started).
    pub async fn durable(self) -> Result<LsnRange> {
        self.wal.handle.core.sync_upto(self.range.last.0, self.epoch).await?;
        Ok(self.range)
    }
}

/// Recovery plus the tail handling it calls for; runs on a blocking thread.
fn recover(dir: &Path, mut opts: Options) -> Result<(Start, RecoveryReport, Options)> {
    opts.validate()?;
    let vfs = &opts.vfs.clone();
    if opts.create {
        vfs.create_dir_all(dir).map_err(|e| Error::io(IoOp::CreateDir, dir, e))?;
    }
    let held = HeldLock::new(segment::lock_dir(vfs, dir)?);
    // The directory's own name, or an ancestor's, may not be durable yet
    // (just created above, or by a process that died before syncing its
    // parent): records acknowledged into it must not vanish with it.
    vfs.sync_path(dir).map_err(|e| Error::io(IoOp::SyncDir, dir, e))?;
    opts.direct = resolve_direct_io(dir, &opts)?;
    opts.uring_sync = resolve_uring_sync(dir, &opts);
    opts.lio_probe = io::probe_lio(&opts, dir);
    // An explicit lio that cannot work is refused before recovery writes
    // anything (copy-forward, removals).
    if let (crate::Backend::Lio, Some(Err(reason))) = (opts.backend, &opts.lio_probe) {
        return Err(Error::BackendUnavailable { backend: "lio", reason: reason.clone() });
    }
    let opts = &opts;
    let mut plan = recovery::plan(vfs, dir, opts.recovery_mode)?;
    // The names recovery saw may be cached only (a process died between a
    // rename and its directory sync): make them durable before anything is
    // written under them, e.g. a spare whose retirement could still revert
    // to the live segment it was.
    segment::sync_dir(vfs, dir)?;
    segment::remove(vfs, dir, &plan.leftovers)?;
    if !plan.discard.is_empty() {
        plan.report.set_aside = segment::set_aside(vfs, dir, &plan.discard)?;
    }
    let mut report = plan.report.clone();
    let entry = DirEntry::of(vfs, dir);
    let (start, copied, set_aside) = apply(dir, opts, plan, held, entry)?;
    report.copied_forward = copied;
    report.set_aside.extend(set_aside);
    Ok((start, report, opts.clone()))
}

/// Whether this log's segments can use O_DIRECT: the file system is asked
/// by opening the lock file with the flag.
fn resolve_direct_io(dir: &Path, opts: &Options) -> Result<bool> {
    use crate::options::DirectIo;
    let probe = || segment::probe_direct_io(&opts.vfs, dir);
    match opts.direct_io {
        DirectIo::Off => Ok(false),
        DirectIo::Auto if opts.alignment < 4096 => Ok(false),
        DirectIo::Auto => match probe() {
            Ok(()) => Ok(true),
            Err(reason) => {
                tracing::info!("aiowal: buffered writes in {}: {reason}", dir.display());
                Ok(false)
            }
        },
        DirectIo::On => {
            probe().map(|()| true).map_err(|reason| Error::InvalidOption { name: "direct_io", reason })
        }
    }
}

/// `RWF_DSYNC` on an `O_DIRECT` write asks the file system to make the
/// write durable with no separate sync: a FUA write when the blocks are
/// allocated and written, a sync of the mapping otherwise. The kernel crash
/// lab (lab/README.md) showed ext4 and xfs keeping that promise and btrfs
/// breaking it (Debian's 6.1: the io_uring writes were acknowledged, and
/// after a power loss the segment held the old zeroes, because btrfs copies
/// the overwrite to a new extent whose mapping nothing synced). So
/// [`UringSync::Dsync`](crate::UringSync) applies to `O_DIRECT` only on the
/// file systems the lab verified; elsewhere the batch is followed by an
/// `fdatasync` ([`UringSync::Fsync`](crate::UringSync)), which every file
/// system honours. Buffered `RWF_DSYNC` writes go through the file system's
/// own fsync and keep `Dsync` everywhere.
fn resolve_uring_sync(dir: &Path, opts: &Options) -> crate::UringSync {
    use crate::UringSync;
    if opts.uring_sync == UringSync::Fsync || !opts.direct {
        return opts.uring_sync;
    }
    match opts.vfs.fs_magic(dir) {
        Some(m) if crate::vfs::DSYNC_DIRECT_VERIFIED.iter().any(|(magic, _)| *magic == m) => UringSync::Dsync,
        Some(m) => {
            tracing::info!(
                "aiowal: {} is on a file system (magic {m:#x}) where O_DIRECT RWF_DSYNC writes are not verified \
                 durable; syncing each batch with fdatasync instead",
                dir.display()
            );
            UringSync::Fsync
        }
        // Not a real file system (the simulator): its writes mean what they say.
        None => opts.uring_sync,
    }
}

/// Sets up where appends go next, writing only what a crash requires
/// (the tail's uncertain records, copied forward), and removes segments a
/// later segment voided once that is durable. Returns the pipeline's start
/// how many records were copied forward and what was set aside.
///
/// `open` never writes over a block that holds records: after a crash, what
/// recovery reads may exist only in the page cache (after a failed sync,
/// Linux keeps such pages readable but clean, and no later sync writes
/// them), so records that no batch header or clean-end mark proves durable
/// are written again, into new space, synced before `open` returns; the new
/// segment's header voids the old copies. A crash during that leaves the
/// old copies in force (a torn new segment is set aside at the next open).
fn apply(
    dir: &Path,
    opts: &Options,
    plan: Plan,
    held: segment::LockRef,
    entry: Arc<DirEntry>,
) -> Result<(Start, u64, Vec<PathBuf>)> {
    let Plan { mut segments, unused, void, next_lsn, tail, mut spares, .. } = plan;
    let mut set_aside = Vec::new();
    let vfs = &opts.vfs;
    // A new log gets a random id; an existing one keeps its first segment's.
    let log_id = segments.first().map_or_else(|| vfs.random_u64() as u32, |s| s.header.log_id);
    let last = segments.last().cloned();
    let start = |place, active, next, segments, spares, held| Start {
        next_lsn,
        log_id,
        spares,
        place,
        active,
        next,
        segments,
        lock: held,
        entry: Arc::clone(&entry),
    };
    match (tail, last) {
        (Tail::Continue { offset }, Some(last)) if offset == u64::from(last.header.alignment) => {
            // The clean-end mark is all the segment holds (`close` started
            // a segment for it). It may be readable yet not durable, header
            // included: the segment starts over, header and all.
            segments.pop();
            let same_size = vfs.len(&last.path).ok() == Some(opts.segment_bytes);
            let next = if same_size {
                Next::Ready(last.seq, segment::open_for_write(vfs, &last.path, opts.direct)?)
            } else {
                segment::remove(vfs, dir, std::slice::from_ref(&last.path))?;
                reuse_or_prepare(dir, opts, unused, last.seq, true, &mut spares, &held)?
            };
            segment::remove(vfs, dir, &void)?;
            let place =
                Place { seq: last.seq, salt: 0, offset: 0, seg_end: opts.segment_bytes, compress: false };
            Ok((start(place, None, next, segments, spares, held), 0, set_aside))
        }
        (Tail::Continue { offset }, Some(last)) if last.header.alignment == opts.alignment => {
            // A clean close left it here: nothing to write.
            let file = segment::open_for_write(vfs, &last.path, opts.direct)?;
            let h = &last.header;
            let place = Place {
                seq: last.seq,
                salt: h.salt,
                offset,
                seg_end: h.segment_bytes,
                compress: compresses(opts, h),
            };
            let active = Active { seq: last.seq, file: Arc::new(file), marks: Arc::clone(&last.marks) };
            let next = reuse_or_prepare(dir, opts, unused, last.seq + 1, false, &mut spares, &held)?;
            segment::remove(vfs, dir, &void)?;
            Ok((start(place, Some(active), next, segments, spares, held), 0, set_aside))
        }
        (Tail::CopyForward { from, damaged }, Some(last)) => {
            let copied = copy_forward(dir, opts, &last, from, next_lsn, unused, &mut spares, log_id)?;
            segment::remove(vfs, dir, &void)?;
            if from <= last.header.first_lsn {
                // The new segment voids every record of the last one: it
                // holds the copies, and only damage or debris was cut.
                segments.pop();
                let last = std::slice::from_ref(&last.path);
                if damaged {
                    set_aside.extend(segment::set_aside(vfs, dir, last)?);
                } else {
                    segment::remove(vfs, dir, last)?;
                }
            }
            let (seq, h) = (copied.meta.seq, copied.meta.header);
            let place = Place {
                seq,
                salt: h.salt,
                offset: copied.offset,
                seg_end: h.segment_bytes,
                compress: compresses(opts, &h),
            };
            let active = Active { seq, file: Arc::new(copied.file), marks: Arc::clone(&copied.meta.marks) };
            segments.push(copied.meta);
            let next = reuse_or_prepare(dir, opts, Vec::new(), seq + 1, false, &mut spares, &held)?;
            Ok((start(place, Some(active), next, segments, spares, held), next_lsn - from, set_aside))
        }
        (_, last) => {
            // A new log, a full segment that ended cleanly, or a clean end
            // written with another alignment: appends start a new segment
            // (its first LSN says where the last one's records end).
            let seq = last.map_or_else(|| unused.first().map_or(1, |u| u.0), |l| l.seq + 1);
            let next = reuse_or_prepare(dir, opts, unused, seq, true, &mut spares, &held)?;
            segment::remove(vfs, dir, &void)?;
            let place = Place { seq, salt: 0, offset: 0, seg_end: opts.segment_bytes, compress: false };
            Ok((start(place, None, next, segments, spares, held), 0, set_aside))
        }
    }
}

/// Whether appends continuing in the segment with header `h` may compress:
/// the options ask for it and the header allows it (a segment written
/// without compression stays readable by builds without the feature).
fn compresses(opts: &Options, h: &format::SegmentHeader) -> bool {
    opts.compression != crate::Compression::None && h.flags & format::SEGMENT_COMPRESSED != 0
}

/// A segment `open` wrote the uncertain records into.
struct Copied {
    meta: SegmentMeta,
    /// Opened for the pipeline (with O_DIRECT if the log uses it).
    file: crate::vfs::SegFile,
    /// Where appends continue in it.
    offset: u64,
}

/// Copies the records `from..next_lsn` of `last` into a new segment whose
/// header voids them (and whatever follows them) in `last`, as one batch,
/// and syncs it and the directory.
#[allow(clippy::too_many_arguments)]
fn copy_forward(
    dir: &Path,
    opts: &Options,
    last: &SegmentMeta,
    from: u64,
    next_lsn: u64,
    unused: segment::Numbered,
    spares: &mut Vec<PathBuf>,
    log_id: u32,
) -> Result<Copied> {
    let vfs = &opts.vfs;
    let map = recovery::map(vfs, &last.path)?;
    let align = u64::from(opts.alignment);
    let salt = vfs.random_u64();
    let mut frames = Vec::new();
    recovery::copy_records(&map, last, from, next_lsn, |lsn, kind, payload| {
        // Cannot fail: the payload came out of a frame.
        let _ = format::encode_frame(&mut frames, salt, lsn, kind, payload);
    })?;
    drop(map);
    let batch_bytes = format::align_up((format::BATCH_HEADER_LEN + frames.len()) as u64, align);
    // Large enough for the copies even if the options shrank since they were written.
    let segment_bytes = opts.segment_bytes.max(align + batch_bytes);
    let seq = last.seq + 1;
    let header = format::SegmentHeader {
        version: format::VERSION,
        alignment: opts.alignment,
        sequence: seq,
        first_lsn: from,
        salt,
        segment_bytes,
        flags: format::SEGMENT_CUTS
            | if opts.compression == crate::Compression::None { 0 } else { format::SEGMENT_COMPRESSED },
        record_bytes_max: opts.max_record_bytes,
        window_bytes: 0,
        log_id,
    };
    let batch = format::BatchHeader {
        first_lsn: from,
        end_lsn: next_lsn,
        synced_lsn: from - 1,
        acked_lsn: from - 1,
        batch_bytes: u32::try_from(batch_bytes)
            .ok()
            .filter(|_| segment_bytes <= u64::from(u32::MAX))
            .ok_or_else(|| Error::InvalidOption {
                name: "segment_bytes",
                reason: format!("{batch_bytes} bytes of records to copy forward exceed 4 GiB"),
            })?,
        flags: 0,
    };
    let mut buf = header.encode().to_vec();
    buf.resize(align as usize, 0);
    buf.extend_from_slice(&batch.encode(salt));
    buf.extend_from_slice(&frames);
    buf.resize((align + batch_bytes) as usize, 0);
    let path = segment::segment_path(dir, seq);
    // Buffered: `open` writes from an ordinary buffer.
    let file = match reuse_or_prepare_sized(dir, opts, unused, seq, segment_bytes, false, spares)? {
        Next::Ready(_, f) => f,
        _ => segment::open_for_write(vfs, &path, false)?,
    };
    file.write_all_at(&buf, 0).map_err(|e| Error::io(IoOp::Write, &path, e))?;
    file.sync_data().map_err(|e| Error::io(IoOp::Sync, &path, e))?;
    segment::sync_dir(vfs, dir)?;
    let file = if opts.direct { segment::open_for_write(vfs, &path, true)? } else { file };
    let marks = Arc::new(recovery::SeekMarks::default());
    marks.add(from, align);
    tracing::info!(
        segment = %path.display(),
        records = next_lsn - from,
        "aiowal: copied records not proven durable into a new segment"
    );
    Ok(Copied { meta: SegmentMeta { seq, path, header, marks }, file, offset: align + batch_bytes })
}

/// Reuses a never-written trailing segment as segment `seq` if it fits the
/// options, removing the others; otherwise prepares `seq` from a spare or by
/// zero-filling (now, or in the background when `now` is false).
fn reuse_or_prepare(
    dir: &Path,
    opts: &Options,
    unused: segment::Numbered,
    seq: u64,
    now: bool,
    spares: &mut Vec<PathBuf>,
    held: &segment::LockRef,
) -> Result<Next> {
    if now {
        return reuse_or_prepare_sized(dir, opts, unused, seq, opts.segment_bytes, opts.direct, spares);
    }
    let vfs = &opts.vfs;
    let (bytes, direct) = (opts.segment_bytes, opts.direct);
    if let Some(path) = take_unused(dir, opts, unused, seq, bytes)? {
        return Ok(Next::Ready(seq, segment::open_for_write(vfs, &path, direct)?));
    }
    let p = segment::Preparing::start(
        vfs,
        dir.to_path_buf(),
        seq,
        bytes,
        direct,
        spares.pop(),
        opts.preallocate,
        Arc::clone(held),
    )?;
    Ok(Next::Preparing(p))
}

/// [`reuse_or_prepare`] now, for a segment of `bytes`, opened with
/// O_DIRECT if `direct`.
fn reuse_or_prepare_sized(
    dir: &Path,
    opts: &Options,
    unused: segment::Numbered,
    seq: u64,
    bytes: u64,
    direct: bool,
    spares: &mut Vec<PathBuf>,
) -> Result<Next> {
    let vfs = &opts.vfs;
    if let Some(path) = take_unused(dir, opts, unused, seq, bytes)? {
        return Ok(Next::Ready(seq, segment::open_for_write(vfs, &path, direct)?));
    }
    let spare = if bytes == opts.segment_bytes { spares.pop() } else { None };
    Ok(Next::Ready(seq, segment::prepare(vfs, dir, seq, bytes, direct, spare, opts.preallocate)?))
}

/// The never-written segment `seq` of `bytes`, if there is one; every other
/// never-written segment is removed.
fn take_unused(
    dir: &Path,
    opts: &Options,
    unused: segment::Numbered,
    seq: u64,
    bytes: u64,
) -> Result<Option<PathBuf>> {
    let mut reuse = None;
    let mut remove = Vec::new();
    for (s, path) in unused {
        let len = opts.vfs.len(&path).unwrap_or(0);
        if s == seq && len == bytes && reuse.is_none() {
            reuse = Some(path);
        } else {
            remove.push(path);
        }
    }
    segment::remove(&opts.vfs, dir, &remove)?;
    Ok(reuse)
}

/// Scans the log in `dir` without writing anything and without taking the
/// lock: what [`Wal::open`] would find, as a report (the `aiowal verify` tool).
///
/// Damage that `open` would cut (a torn tail) is reported in
/// [`RecoveryReport::stop`]; damage it would refuse is returned as the same
/// error `open` gives in `opts`' recovery mode.
///
/// # Errors
/// [`Error::Corrupt`], [`Error::ForeignFile`] and [`Error::Io`] as for `open`.
///
/// ```
/// # let tmp = tempfile::tempdir().unwrap();
/// let report = aiowal::verify(tmp.path(), &aiowal::Options::default())?;
/// assert_eq!(report.records, 0);
/// # Ok::<(), aiowal::Error>(())
/// ```
pub fn verify(dir: impl AsRef<Path>, opts: &Options) -> Result<RecoveryReport> {
    dump(dir, opts, Lsn::FIRST).map(|(r, _)| r)
}

/// Reads the records of the log in `dir` from `from` on, read-only and
/// without the lock (the `aiowal dump` tool). Stops where recovery would.
///
/// # Errors
/// As [`verify`].
pub fn dump(dir: impl AsRef<Path>, opts: &Options, from: Lsn) -> Result<(RecoveryReport, ReadIter)> {
    let plan = recovery::plan(&opts.vfs, dir.as_ref(), opts.recovery_mode)?;
    let until = plan.next_lsn - 1;
    let pin = plan
        .segments
        .first()
        .zip(plan.segments.last())
        .map(|(f, l)| DirEntry::of(&opts.vfs, dir.as_ref()).pin(f.seq, l.seq));
    Ok((plan.report, ReadIter::new(opts.vfs.clone(), plan.segments, from.0, until, pin, None)))
}
