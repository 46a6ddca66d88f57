//! The `Wal` handle.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::commit::{Active, Core, Next, Place, Start, Stats};
use crate::error::{CorruptKind, Error, IoOp, Result};
use crate::format::{self, FRAME_HEADER_LEN};
use crate::io;
use crate::lsn::{Lsn, LsnRange};
use crate::options::Options;
use crate::recovery::{self, Plan, ReadIter, RecoveryReport, SegmentMeta, Tail};
use crate::segment;
use crate::vfs::Vfs;

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
    /// # Errors
    /// [`Error::Locked`] if another handle has the directory open,
    /// [`Error::Corrupt`] if acknowledged data is damaged (see
    /// [`crate::RecoveryMode`]), [`Error::ForeignFile`] for a segment-named file
    /// that is not a segment, [`Error::InvalidOption`] for inconsistent
    /// options, and [`Error::Io`] / [`Error::NoSpace`] for failing file calls.
    pub async fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        let (o, d) = (opts.clone(), dir.clone());
        let (start, report, opts) = opts.vfs.run_blocking(move || recover(&d, o)).await?;
        let core = Core::new(dir, opts.clone(), start);
        let sink: Arc<dyn io::Completion> = core.clone();
        core.set_backend(io::start(opts.backend, sink, &opts)?);
        Ok(Wal { handle: Arc::new(Handle { core, report }) })
    }

    /// Appends one record and waits until it (and everything before it) is durable.
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
        let range = core.reserve(&[record], false, false).await?;
        Ok(Staged { range, wal: self.clone() })
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
        let range = self.handle.core.reserve(&batch_refs(&owned)?, true, false).await?;
        Ok(Staged { range, wal: self.clone() })
    }

    /// Waits until everything appended so far is durable; returns the durable LSN
    /// ([`Lsn::ZERO`] for a log that never held a record).
    ///
    /// # Errors
    /// [`Error::Poisoned`] after a failed write or sync.
    ///
    /// # Cancel safety
    /// Safe to drop at any point.
    pub async fn sync(&self) -> Result<Lsn> {
        self.handle.core.sync().await
    }

    /// Iterates over the durable records with LSN `>= from`, in order.
    ///
    /// Records below the oldest segment still in the log (see
    /// [`Wal::truncate_before`]) are gone; the iterator starts at the oldest
    /// record available, which [`Wal::first_lsn`] tells. Records appended
    /// after this call are not included.
    ///
    /// # Errors
    /// The iterator's items fail with [`Error::Corrupt`] or [`Error::Io`] if a
    /// segment was damaged or removed after open.
    pub fn read_from(&self, from: Lsn) -> Result<ReadIter> {
        let core = &self.handle.core;
        let until = core.durable_lsn();
        let max = u64::from(core.opts.max_record_bytes);
        Ok(ReadIter::new(core.opts.vfs.clone(), core.segments(), from.0, until, max))
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
        core.segments().first().map_or(Lsn(core.next_lsn()), |s| Lsn(s.header.first_lsn))
    }

    /// The highest durable LSN.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.handle.core.durable_lsn())
    }

    /// Retires whole segments whose records all precede `lsn` (a checkpoint),
    /// never the segment being written. Records `>= lsn` are never lost, and
    /// some below it may remain. Returns how many segments were retired.
    ///
    /// Up to [`Options::segments_recycled_max`] retired segments are kept as
    /// spares and reused for new segments (no zero-filling); the rest are
    /// deleted. [`Record`](crate::Record)s read earlier from a retired segment
    /// must not be used afterwards: their bytes live in a file that may be
    /// reused (copy them out with `to_vec` first).
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be removed or the directory synced.
    ///
    /// # Cancel safety
    /// The removal runs on a blocking thread and completes even if the future is dropped.
    pub async fn truncate_before(&self, lsn: Lsn) -> Result<u64> {
        let core = Arc::clone(&self.handle.core);
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

    /// The log directory.
    pub fn dir(&self) -> &Path {
        self.handle.core.dir()
    }

    /// Makes every staged record durable, stops the I/O backend and releases
    /// the directory lock. Later calls on any clone fail with [`Error::Closed`].
    ///
    /// # Errors
    /// [`Error::Poisoned`] if records could not be made durable.
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
    wal: Wal,
}

impl Staged {
    /// The LSNs the staged records got.
    pub fn lsns(&self) -> LsnRange {
        self.range
    }

    /// Waits until the staged records (and everything before them) are durable.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if a write or sync failed first.
    ///
    /// # Cancel safety
    /// Safe to drop; the records become durable regardless.
    pub async fn durable(self) -> Result<LsnRange> {
        self.wal.handle.core.wait_durable(self.range.last.0).await?;
        Ok(self.range)
    }
}

/// Recovery plus the tail repair it calls for; runs on a blocking thread.
fn recover(dir: &Path, mut opts: Options) -> Result<(Start, RecoveryReport, Options)> {
    opts.validate()?;
    let vfs = &opts.vfs.clone();
    if opts.create {
        vfs.create_dir_all(dir).map_err(|e| Error::io(IoOp::CreateDir, dir, e))?;
    }
    let lock = segment::lock_dir(vfs, dir)?;
    opts.direct = resolve_direct_io(dir, &opts)?;
    let opts = &opts;
    let mut plan = recovery::plan(vfs, dir, opts.recovery_mode, u64::from(opts.max_record_bytes))?;
    segment::remove(vfs, dir, &plan.leftovers)?;
    if !plan.discard.is_empty() {
        plan.report.set_aside = segment::set_aside(vfs, dir, &plan.discard)?;
    }
    let report = std::mem::replace(&mut plan.report, empty_report());
    let start = apply(dir, opts, plan, lock)?;
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

fn empty_report() -> RecoveryReport {
    RecoveryReport {
        segments: 0,
        records: 0,
        bytes: 0,
        first_lsn: Lsn::ZERO,
        last_lsn: Lsn::ZERO,
        stop: recovery::StopReason::Empty,
        set_aside: Vec::new(),
    }
}

/// Writes what the plan needs (a seal) and sets up where appends go next.
fn apply(dir: &Path, opts: &Options, plan: Plan, lock: segment::DirLock) -> Result<Start> {
    let Plan { segments, unused, next_lsn, tail, mut spares, .. } = plan;
    let last = segments.last().cloned();
    // A new log gets a random id; an existing one keeps its first segment's.
    let vfs = &opts.vfs;
    let log_id = segments.first().map_or_else(|| vfs.random_u64() as u32, |s| s.header.log_id);
    // Continue in the last segment only if it was written with today's
    // settings: its header's window and alignment drive its recovery.
    let same_settings = last.as_ref().is_some_and(|l| {
        l.header.alignment == opts.alignment && l.header.window_bytes >= opts.window_bytes()
    });
    // A segment not continued is sealed: what a recycled file holds after
    // its last batch must not look like damage once a later segment exists.
    let tail = match tail {
        Tail::Continue { offset } if !same_settings => Tail::Seal { offset },
        t => t,
    };
    if let Some(last) = &last {
        let (end, seal) = match tail {
            Tail::Continue { offset } => (offset, None),
            Tail::Seal { offset } => (offset, Some(next_lsn)),
            Tail::Full | Tail::Fresh => (last.header.segment_bytes, None),
        };
        finish_tail(vfs, last, end, seal)?;
    }
    // Directory entries recovery saw may be cached only, too.
    segment::sync_dir(vfs, dir)?;
    if let (Tail::Continue { offset }, Some(last)) = (tail, &last) {
        let file = segment::open_for_write(vfs, &last.path, opts.direct)?;
        let place =
            Place { seq: last.seq, salt: last.header.salt, offset, seg_end: last.header.segment_bytes };
        let active = Active { seq: last.seq, file: Arc::new(file), marks: Arc::clone(&last.marks) };
        let next = reuse_or_prepare(dir, opts, unused, last.seq + 1, false, &mut spares)?;
        return Ok(Start { next_lsn, log_id, spares, place, active: Some(active), next, segments, lock });
    }
    let seq = last.map_or_else(|| unused.first().map_or(1, |u| u.0), |l| l.seq + 1);
    let next = reuse_or_prepare(dir, opts, unused, seq, true, &mut spares)?;
    let place = Place { seq, salt: 0, offset: 0, seg_end: opts.segment_bytes };
    Ok(Start { next_lsn, log_id, spares, place, active: None, next, segments, lock })
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
) -> Result<Next> {
    let mut reuse = None;
    let mut remove = Vec::new();
    for (s, path) in unused {
        let len = opts.vfs.len(&path).unwrap_or(0);
        if s == seq && len == opts.segment_bytes && reuse.is_none() {
            reuse = Some(path);
        } else {
            remove.push(path);
        }
    }
    let vfs = &opts.vfs;
    segment::remove(vfs, dir, &remove)?;
    if let Some(path) = reuse {
        return Ok(Next::Ready(seq, segment::open_for_write(vfs, &path, opts.direct)?));
    }
    let (bytes, spare) = (opts.segment_bytes, spares.pop());
    if now {
        return Ok(Next::Ready(seq, segment::prepare(vfs, dir, seq, bytes, opts.direct, spare)?));
    }
    Ok(Next::Preparing(segment::Preparing::start(vfs, dir.to_path_buf(), seq, bytes, opts.direct, spare)?))
}

/// Writes the last in-flight window before `end` again, with the bytes
/// recovery read, and syncs it; with `seal` (the next LSN), also cuts the
/// segment at `end` in the same write: a padding frame from there to the
/// segment's end, so the scan skips whatever the crash left after it.
///
/// The rewrite: what recovery reads after the process (not the machine)
/// died may exist only in the page cache, and after a failed sync Linux
/// keeps such pages readable but clean, so no later sync would write them.
/// Records acknowledged after them must not rest on them. Only the last
/// segment can hold such bytes (a new segment's first batch waits for every
/// earlier write and sync), and only its last window.
fn finish_tail(vfs: &Vfs, seg: &SegmentMeta, end: u64, seal: Option<u64>) -> Result<()> {
    let h = &seg.header;
    let align = u64::from(h.alignment);
    let padding = match seal {
        Some(next_lsn) if end + FRAME_HEADER_LEN as u64 <= h.segment_bytes => {
            Some(format::padding_header(h.salt, next_lsn, h.segment_bytes - end).map_err(|e| {
                Error::Corrupt {
                    segment: seg.path.clone(),
                    offset: end,
                    lsn: next_lsn,
                    kind: CorruptKind::Frame(e),
                }
            })?)
        }
        _ => None,
    };
    // From block 0 when the window reaches it: the header went out with the
    // segment's first batch and may be as little durable as the batch.
    let start = end.saturating_sub(h.window_bytes) / align * align;
    // Frames are 8-aligned, not block-aligned: a padding header may cross
    // into the next block (the segment ends on a block boundary after it).
    let covered = if padding.is_some() { end + FRAME_HEADER_LEN as u64 } else { end };
    let stop = covered.div_ceil(align).saturating_mul(align).min(h.segment_bytes);
    let file = segment::open_for_write(vfs, &seg.path, false)?;
    // A file shorter than its segment (cut by hand, or by a copy) ends early.
    let len = file.len().map_err(|e| Error::io(IoOp::Read, &seg.path, e))?;
    let stop = if padding.is_some() { stop } else { stop.min(len) };
    if stop <= start {
        return Ok(());
    }
    let mut buf = vec![0u8; usize::try_from(stop - start).unwrap_or(0)];
    let readable = usize::try_from(stop.min(len).saturating_sub(start)).unwrap_or(0);
    file.read_exact_at(&mut buf[..readable], start).map_err(|e| Error::io(IoOp::Read, &seg.path, e))?;
    if let Some(hdr) = padding {
        let at = usize::try_from(end - start).unwrap_or(0);
        buf[at..].fill(0);
        buf[at..at + FRAME_HEADER_LEN].copy_from_slice(&hdr);
    }
    file.write_all_at(&buf, start).map_err(|e| Error::io(IoOp::Write, &seg.path, e))?;
    file.sync_data().map_err(|e| Error::io(IoOp::Sync, &seg.path, e))
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
    let max = u64::from(opts.max_record_bytes);
    let plan = recovery::plan(&opts.vfs, dir.as_ref(), opts.recovery_mode, max)?;
    let until = plan.next_lsn - 1;
    Ok((plan.report, ReadIter::new(opts.vfs.clone(), plan.segments, from.0, until, max)))
}
