use crate::error::{Error, Result};
use crate::format::{self, ALIGNMENT_MAX, ALIGNMENT_MIN, BATCH_HEADER_LEN, FRAME_HEADER_LEN};

/// Which I/O backend writes and syncs the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Backend {
    /// The best backend for this platform (see the crate docs).
    #[default]
    Auto,
    /// `pwrite` + `fdatasync` on a dedicated thread per log; works everywhere.
    Threaded,
    /// Linux io_uring: one submission per batch, completion through tokio's
    /// reactor, the next batch's write overlapping the previous sync.
    Uring,
    /// POSIX AIO: one `lio_listio` per batch, then `aio_fsync`. The default
    /// on FreeBSD (completion by kqueue); on Linux it runs over glibc's
    /// thread-based AIO.
    Lio,
}

impl Backend {
    /// The backend's name as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Threaded => "threaded",
            Backend::Uring => "uring",
            Backend::Lio => "lio",
        }
    }
}

/// Whether segment writes bypass the page cache (`O_DIRECT`).
///
/// Measured on this project's reference machine (ext4 on a virtual disk),
/// direct writes made 4 KiB records 15-40% faster and did not slow small
/// ones, so `Auto` uses them where they work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DirectIo {
    /// `O_DIRECT` when the file system accepts it and `alignment >= 4096`
    /// (which every common device's logical block size divides); buffered
    /// otherwise (tmpfs, for one, refuses `O_DIRECT`).
    #[default]
    Auto,
    /// Always `O_DIRECT`; `open` fails if the file system refuses it.
    On,
    /// Always buffered writes.
    Off,
}

/// How a new segment file gets its space, before the log writes into it
/// ([`Options::preallocate`]).
///
/// Written zeroes make the log's data syncs cheapest: a sync over space
/// that is only allocated (unwritten extents) also commits the file
/// system's journal, to record that the space now holds data. But in a log
/// that grows, zeroes double the bytes written, which is what bounds a log
/// writing large batches. Measured on the reference machine (ext4, a
/// growing log of 4 KiB records, io_uring, `O_DIRECT`): with zeroes, 1
/// appender 5.5-5.8k records/s, 64 appenders 120-150k, 256 appenders 234k;
/// allocated only, 3.7k, 100-105k and 308k (README, "Performance").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Preallocate {
    /// The default: each new segment prepared in the background is zeroed
    /// if the batches the log wrote into the previous segment averaged
    /// under 256 KiB, and only allocated if they were larger (where the
    /// journal commit per sync costs less than writing every byte twice).
    /// The first segment of an open, and segments prepared while the log
    /// waits, are zeroed.
    #[default]
    Auto,
    /// Zeroes over the whole segment (with `O_DIRECT` where the log uses
    /// it), synced, before the log uses it.
    Zeroes,
    /// Only allocate (Linux `fallocate`), never write zeroes: half the
    /// bytes of a growing log, but every sync over new space commits the
    /// file system's journal. Also for copy-on-write file systems (btrfs),
    /// where a write never lands on the zeroes anyway. Where `fallocate` is
    /// not available, the same as [`Preallocate::Zeroes`].
    Allocate,
}

/// [`Preallocate::Auto`]'s threshold: segments after batches averaging at
/// least this many bytes are only allocated. Measured (see [`Preallocate`]):
/// about where a journal commit (~0.1 ms here) costs as much as writing the
/// batch's bytes a second time (~1.8 GB/s here).
pub(crate) const AUTO_ALLOCATE_BATCH_BYTES: u64 = 256 << 10;

impl Preallocate {
    /// What to do for one segment, given the mean batch size the log wrote
    /// into the previous one (`None`: not known).
    pub(crate) fn resolve(self, mean_batch_bytes: Option<u64>) -> Preallocate {
        match self {
            Preallocate::Auto => match mean_batch_bytes {
                Some(b) if b >= AUTO_ALLOCATE_BATCH_BYTES => Preallocate::Allocate,
                _ => Preallocate::Zeroes,
            },
            other => other,
        }
    }
}

/// Whether write batches are stored compressed ([`Options::compression`]).
///
/// Compression works per write batch: the records of a batch are
/// compressed together when that saves at least one block (a batch of one
/// block is never compressed, so a lightly loaded log of small records
/// pays nothing). Every frame keeps its own checksum inside the compressed
/// data, and the compressed data has its own. Records read back from a
/// compressed batch own their bytes (decompressed once per batch) instead
/// of borrowing them from the mapped segment.
///
/// The batch is compressed on the write path, under the pipeline's lock
/// (on the thread that seals it: an appender's, or the one handling a
/// completion), at a few hundred MB/s on one core: on a disk faster than
/// that, a compressed log commits fewer records per second than a plain
/// one (measured in the README, "Compression"); it writes 2-2.6x fewer
/// bytes of text-like records.
///
/// After a crash `open` copies what no sync proves forward, uncompressed,
/// in one batch that must fit a segment: with compression, `segment_bytes`
/// must hold a header block plus three `batch_bytes_max` (`open` refuses
/// smaller ones with [`Error::InvalidOption`](crate::Error::InvalidOption)),
/// and under the relaxed durability levels the log also syncs once the
/// uncompressed bytes written since the last sync would no longer fit
/// (`segment_bytes - alignment - 2 * batch_bytes_max` of them; the
/// appends of that batch, and of those behind it, then wait for that
/// sync).
///
/// Segments written with compression carry a flag that makes builds
/// without the `compression` feature refuse them
/// ([`Error::NeedsFeature`](crate::Error::NeedsFeature)) rather
/// than take compressed batches for damage. A log can be reopened with
/// compression turned on or off: batches already written stay as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Batches are written as they are (the default).
    #[default]
    None,
    /// LZ4 (block format, `lz4_flex`): hundreds of MB/s per core, for
    /// records with repetition (text, JSON, row images).
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
    Lz4,
}

/// What an acknowledged append promises: when `append` returns, and when
/// the log syncs.
///
/// | level | `append` returns once the record is | aiowal syncs |
/// |---|---|---|
/// | `Immediate` (default) | durable (its batch synced) | every batch |
/// | `Periodic(d)` | written (in the page cache, or on a device that may still cache it) | at least every `d`, at a segment switch, on `sync()` and `close` |
/// | `None` | written | only at a segment switch, on `sync()` and `close` (compressed: also once `segment_bytes - alignment - 2 * batch_bytes_max` uncompressed bytes are unsynced) |
///
/// Under the relaxed levels a power loss (or a kernel crash) can lose
/// acknowledged records that no sync covered yet: after recovery the log
/// holds every record up to the last completed sync, then possibly more, a
/// prefix as always (atomic batches whole or absent). A process crash loses
/// nothing written. [`Wal::durable_lsn`](crate::Wal::durable_lsn) is the
/// synced watermark, [`Wal::written_lsn`](crate::Wal::written_lsn) the
/// acknowledged one; [`Wal::sync`](crate::Wal::sync) and
/// [`Staged::durable`](crate::Staged::durable) wait for a sync (starting one).
/// Recovery's proof of what must survive uses the synced watermark only, so
/// records lost beyond it are a torn tail, not corruption.
///
/// A segment switch syncs the old segment first under every level: a crash
/// can then tear only the newest segment, which is what lets recovery tell a
/// crash from damage. The `lio` backend syncs every batch under every level
/// (its write-only path is not built): there the relaxed levels act as
/// `Immediate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// Every batch is synced before its records are acknowledged.
    #[default]
    Immediate,
    /// Records are acknowledged once written; everything written is synced
    /// at least this often (and as `None` says).
    Periodic(std::time::Duration),
    /// Records are acknowledged once written; aiowal syncs only at a segment
    /// switch, on `sync()` and at `close`.
    None,
}

/// How the io_uring backend makes a batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UringSync {
    /// Writes linked to one `fdatasync` per batch.
    Fsync,
    /// Each write carries `RWF_DSYNC` (with `O_DIRECT`, a FUA write); no
    /// separate sync operation. The default: measured as fast as `Fsync` with
    /// buffered writes and 15-40% faster with `O_DIRECT`.
    #[default]
    Dsync,
}

/// What `Wal::open` does when it finds damage.
///
/// Recovery decides by **what proves a record acknowledged**, not by where
/// the bytes sit. A record is proven acknowledged by a valid later batch
/// header (every batch carries the durable watermark its writer knew when
/// it submitted it), by the clean-end mark `close` writes, or by a later
/// segment (written only after every earlier write was synced).
///
/// | found | TolerateTornTail | AbsoluteConsistency | PointInTime |
/// |-------|------------------|---------------------|-------------|
/// | clean end: never-written space (or a clean-end mark) after the last batch | open | open | open |
/// | torn tail: damage in the newest batches that nothing later proves acknowledged | cut, report | error | cut, report |
/// | damage to a record something proves acknowledged; a bad header or an LSN gap in the middle | error | error | cut there, report, set later segments aside |
///
/// One case cannot be decided: the newest acknowledged batches damaged
/// after their acknowledgement (a bad sector, not a crash) with nothing
/// intact written after them look exactly like a crash during their write, and
/// are cut as a torn tail ([`StopReason::TornTail`](crate::StopReason)
/// says so). `AbsoluteConsistency` refuses them instead.
///
/// Every cut is reported in the [`RecoveryReport`](crate::RecoveryReport):
/// where, from which LSN, and how many later records were seen and dropped.
/// Logs of format v1 (read, never written) keep v1's rule: damage followed
/// by valid data beyond the in-flight window is corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RecoveryMode {
    /// A crash's torn tail is cut off; damage to acknowledged data is an error.
    #[default]
    TolerateTornTail,
    /// Any damage, even a torn tail, is an error (for logs closed cleanly).
    AbsoluteConsistency,
    /// Recover up to the first damage, whatever it is; set the rest aside
    /// (renamed, not deleted). This drops acknowledged records: use it to
    /// salvage a damaged log, not as a default.
    PointInTime,
}

/// Settings for [`crate::Wal::open`], built with chained setters.
///
/// ```
/// let opts = aiowal::Options::default()
///     .segment_bytes(16 << 20)
///     .max_record_bytes(64 << 10)
///     .backend(aiowal::Backend::Threaded);
/// assert_eq!(opts.get_segment_bytes(), 16 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub(crate) segment_bytes: u64,
    pub(crate) alignment: u32,
    pub(crate) max_record_bytes: u32,
    pub(crate) batch_bytes_max: u32,
    pub(crate) recovery_mode: RecoveryMode,
    pub(crate) backend: Backend,
    pub(crate) create: bool,
    pub(crate) uring_entries: u32,
    pub(crate) uring_sync: UringSync,
    pub(crate) direct_io: DirectIo,
    pub(crate) segments_recycled_max: usize,
    pub(crate) preallocate: Preallocate,
    pub(crate) durability: Durability,
    pub(crate) compression: Compression,
    /// Resolved at open from `direct_io`: whether segments use O_DIRECT.
    pub(crate) direct: bool,
    /// Resolved at open where the lio backend may run: whether it can
    /// work for this log's files (see `io::probe_lio`).
    pub(crate) lio_probe: Option<std::result::Result<(), String>>,
    /// The file system the log lives on (the real one, or the simulator's).
    pub(crate) vfs: crate::vfs::Vfs,
    /// Tests only: `Backend::Lio` runs the kqueue driver over a model of
    /// FreeBSD's AIO and kqueue.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) lio_model: Option<LioModel>,
}

/// A model of FreeBSD's AIO for `Backend::Lio` in tests; options holding
/// the same model compare equal.
#[cfg(all(test, target_os = "linux"))]
#[derive(Debug, Clone)]
pub(crate) struct LioModel(pub std::sync::Arc<crate::io::lio_model::Model>);

#[cfg(all(test, target_os = "linux"))]
impl PartialEq for LioModel {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(all(test, target_os = "linux"))]
impl Eq for LioModel {}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            alignment: 4096,
            max_record_bytes: 1 << 20,
            batch_bytes_max: 2 << 20,
            recovery_mode: RecoveryMode::TolerateTornTail,
            backend: Backend::Auto,
            create: true,
            uring_entries: 64,
            uring_sync: UringSync::Dsync,
            direct_io: DirectIo::Auto,
            segments_recycled_max: 4,
            preallocate: Preallocate::Auto,
            durability: Durability::Immediate,
            compression: Compression::None,
            direct: false,
            lio_probe: None,
            vfs: crate::vfs::Vfs::Os,
            #[cfg(all(test, target_os = "linux"))]
            lio_model: None,
        }
    }
}

impl Options {
    /// Puts the log on a simulated disk (see [`crate::sim`]): every file call
    /// goes to `disk`, batches are written by the simulator's backend (the
    /// `backend` option is ignored), and nothing runs on threads of aiowal's
    /// own, so a seed replays exactly on a current-thread runtime.
    #[cfg(feature = "sim")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
    pub fn sim(mut self, disk: &crate::sim::SimDisk) -> Self {
        self.vfs = crate::vfs::Vfs::Sim(disk.clone());
        self
    }

    /// Size each segment file is preallocated to (default 64 MiB). It must
    /// hold a header block plus `batch_bytes_max`; with compression, a
    /// header block plus three `batch_bytes_max`.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Write alignment: every batch is padded to it (default 4096, a power of
    /// two from 512 to 65536).
    pub fn alignment(mut self, bytes: u32) -> Self {
        self.alignment = bytes;
        self
    }

    /// Largest record accepted by `append` (default 1 MiB). It guards
    /// appends only: recovery and the tools read every record whose checksum
    /// holds, however large, so lowering it never hides records already
    /// written.
    pub fn max_record_bytes(mut self, bytes: u32) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Largest single write (default 2 MiB): a group commit seals its batch
    /// when the next record would not fit. This is the staging memory bound:
    /// at most one batch fills, two sealed batches wait and two are in
    /// flight, so staged and in-flight records never take more than five
    /// of these; appenders beyond that wait.
    pub fn batch_bytes_max(mut self, bytes: u32) -> Self {
        self.batch_bytes_max = bytes;
        self
    }

    /// How recovery treats damage (default [`RecoveryMode::TolerateTornTail`]).
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Self {
        self.recovery_mode = mode;
        self
    }

    /// Which I/O backend to use (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Submission queue size of the io_uring backend (default 64). The kernel
    /// accepts 1..=32768; a size it rejects makes the io_uring probe fail,
    /// so `Backend::Auto` falls back to `Threaded` and `Backend::Uring` errs.
    pub fn uring_entries(mut self, entries: u32) -> Self {
        self.uring_entries = entries;
        self
    }

    /// How the io_uring backend syncs (default [`UringSync::Dsync`]).
    ///
    /// With `O_DIRECT`, `Dsync` is used only on file systems where the
    /// kernel crash lab showed `RWF_DSYNC` direct writes durable (ext4 and
    /// xfs); on others (btrfs lost acknowledged records this way in the lab)
    /// the log uses `Fsync`. [`Wal::uring_sync`](crate::Wal::uring_sync)
    /// says which one a log uses.
    pub fn uring_sync(mut self, mode: UringSync) -> Self {
        self.uring_sync = mode;
        self
    }

    /// Whether segments are written with `O_DIRECT`, bypassing the page cache
    /// (default [`DirectIo::Auto`]). Buffers, offsets and lengths are aligned
    /// to `alignment`, which must be a multiple of the device's logical block
    /// size. Durability still comes from the sync after each batch.
    pub fn direct_io(mut self, mode: DirectIo) -> Self {
        self.direct_io = mode;
        self
    }

    /// How many segments retired by `truncate_before` are kept as spares for
    /// reuse (default 4). A reused segment costs a header write and a rename
    /// instead of zero-filling `segment_bytes` of new space, which halves the
    /// bytes written by a log that is checkpointed in a steady state.
    pub fn segments_recycled_max(mut self, n: usize) -> Self {
        self.segments_recycled_max = n;
        self
    }

    /// How new segments get their space (default
    /// [`Preallocate::Auto`]; see [`Preallocate`]).
    pub fn preallocate(mut self, how: Preallocate) -> Self {
        self.preallocate = how;
        self
    }

    /// What an acknowledged append promises (default
    /// [`Durability::Immediate`]: durable). See [`Durability`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), aiowal::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::time::Duration;
    /// use aiowal::{Durability, Options, Wal};
    ///
    /// let opts = Options::default().durability(Durability::Periodic(Duration::from_millis(10)));
    /// let wal = Wal::open(dir.path(), opts).await?;
    /// let lsn = wal.append(b"fast, written").await?; // in the page cache now
    /// assert!(wal.written_lsn() >= lsn);
    /// wal.sync().await?; // durable now (the periodic sync would get there too)
    /// assert!(wal.durable_lsn() >= lsn);
    /// wal.close().await?;
    /// # Ok(()) }
    /// ```
    pub fn durability(mut self, level: Durability) -> Self {
        self.durability = level;
        self
    }

    /// Whether write batches are compressed (default [`Compression::None`];
    /// `Compression::Lz4` needs the `compression` feature).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> aiowal::Result<()> {
    /// # #[cfg(feature = "compression")] {
    /// use aiowal::{Compression, Options, Wal};
    /// let dir = tempfile::tempdir().unwrap();
    /// let opts = Options::default().compression(Compression::Lz4);
    /// let wal = Wal::open(dir.path(), opts.clone()).await?;
    /// let row = br#"{"user": 42, "name": "ada", "balance": 100}"#.repeat(100);
    /// let lsns = wal.append_batch([&row[..], &row[..]]).await?;
    /// wal.close().await?;
    ///
    /// let wal = Wal::open(dir.path(), opts).await?;
    /// for r in wal.read_from(lsns.first())? {
    ///     assert_eq!(r?.data(), &row[..]); // the bytes given, decompressed
    /// }
    /// wal.close().await?;
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn compression(mut self, codec: Compression) -> Self {
        self.compression = codec;
        self
    }

    /// Whether `open` may create the directory and the first segment (default true).
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// The configured segment size.
    pub fn get_segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// The configured maximum record size.
    pub fn get_max_record_bytes(&self) -> u32 {
        self.max_record_bytes
    }

    /// The configured backend.
    pub fn get_backend(&self) -> Backend {
        self.backend
    }

    /// The configured recovery mode.
    pub fn get_recovery_mode(&self) -> RecoveryMode {
        self.recovery_mode
    }

    /// The configured block alignment ([`Options::alignment`]).
    pub fn get_alignment(&self) -> u32 {
        self.alignment
    }

    /// The configured largest write batch ([`Options::batch_bytes_max`]).
    pub fn get_batch_bytes_max(&self) -> u32 {
        self.batch_bytes_max
    }

    /// The configured compression ([`Options::compression`]).
    pub fn get_compression(&self) -> Compression {
        self.compression
    }

    /// The configured durability level.
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// Checks that the settings fit together.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(Error::InvalidOption { name, reason });
        let a = u64::from(self.alignment);
        if !self.alignment.is_power_of_two() || !(ALIGNMENT_MIN..=ALIGNMENT_MAX).contains(&self.alignment) {
            return invalid(
                "alignment",
                format!("{} is not a power of two in {ALIGNMENT_MIN}..={ALIGNMENT_MAX}", self.alignment),
            );
        }
        if self.max_record_bytes == 0 {
            return invalid("max_record_bytes", "must be at least 1".into());
        }
        let one_record = self.largest_single_write();
        if u64::from(self.batch_bytes_max) < one_record {
            return invalid(
                "batch_bytes_max",
                format!(
                    "{} cannot hold one record of max_record_bytes = {} with its header block and padding (needs {one_record})",
                    self.batch_bytes_max, self.max_record_bytes
                ),
            );
        }
        if self.segment_bytes % a != 0 || self.segment_bytes < u64::from(self.batch_bytes_max) + a {
            return invalid(
                "segment_bytes",
                format!(
                    "{} must be a multiple of the alignment ({a}) and hold a header block plus batch_bytes_max ({})",
                    self.segment_bytes, self.batch_bytes_max
                ),
            );
        }
        if self.segment_bytes > u64::from(u32::MAX) {
            return invalid("segment_bytes", format!("{} exceeds 4 GiB - 1", self.segment_bytes));
        }
        // After a crash `open` copies what no sync covered forward, in one
        // uncompressed batch: up to two batches and what a relaxed level
        // left unsynced, which a compressed log bounds by the room left.
        let batch = u64::from(self.batch_bytes_max);
        if self.compression != Compression::None && self.segment_bytes < a + 3 * batch {
            return invalid(
                "segment_bytes",
                format!(
                    "with compression, {} must hold a header block plus three batch_bytes_max ({}): lower batch_bytes_max or raise segment_bytes",
                    self.segment_bytes, self.batch_bytes_max
                ),
            );
        }
        Ok(())
    }

    /// Bytes of the largest possible write holding one record: a segment
    /// header block, the batch header, the frame, zero-filled to a block.
    fn largest_single_write(&self) -> u64 {
        let a = u64::from(self.alignment);
        let frame = format::frame_len(self.max_record_bytes as usize) as u64;
        a + format::align_up(BATCH_HEADER_LEN as u64 + frame, a)
    }
}

const _: () = assert!(FRAME_HEADER_LEN < ALIGNMENT_MIN as usize);

#[cfg(test)]
mod preallocate_tests {
    use super::{AUTO_ALLOCATE_BATCH_BYTES, Preallocate};

    #[test]
    fn auto_zeroes_after_small_batches_and_allocates_after_large_ones() {
        let auto = Preallocate::Auto;
        assert_eq!(auto.resolve(None), Preallocate::Zeroes);
        assert_eq!(auto.resolve(Some(4096)), Preallocate::Zeroes);
        assert_eq!(auto.resolve(Some(AUTO_ALLOCATE_BATCH_BYTES - 1)), Preallocate::Zeroes);
        assert_eq!(auto.resolve(Some(AUTO_ALLOCATE_BATCH_BYTES)), Preallocate::Allocate);
        for fixed in [Preallocate::Zeroes, Preallocate::Allocate] {
            assert_eq!(fixed.resolve(None), fixed);
            assert_eq!(fixed.resolve(Some(u64::MAX)), fixed);
        }
    }
}
