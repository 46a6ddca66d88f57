use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::FormatError;

/// Result type of every fallible aiowal call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The file operation that failed, for [`Error::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoOp {
    /// Creating the log directory.
    CreateDir,
    /// Opening or creating a file.
    Open,
    /// Reading a file or a directory listing.
    Read,
    /// Writing a file.
    Write,
    /// A data sync (fdatasync) of a segment.
    Sync,
    /// An fsync of the log directory.
    SyncDir,
    /// Renaming a file.
    Rename,
    /// Removing a file.
    Remove,
    /// Memory-mapping a segment.
    Map,
    /// Taking the directory lock.
    Lock,
    /// Starting the I/O thread or runtime.
    Spawn,
}

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system call failed.
    #[error("{op:?} failed on {path}: {source}")]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file system is full: free space, then reopen the log.
    #[error(
        "no space left on the device holding {path}; free space, then close and reopen the log (nothing acknowledged was lost)"
    )]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// A write or sync failed earlier; the log refuses further work.
    #[error(
        "the log is poisoned by an earlier failed {op:?} ({cause}); close it and reopen the directory to recover what is on disk"
    )]
    Poisoned {
        /// The operation whose failure poisoned the log.
        op: IoOp,
        /// The original failure.
        cause: Arc<io::Error>,
    },
    /// Another handle (in this or another process) has the directory open.
    #[error("{path} is locked {}", if *shutting_down {
        "by a handle of this process that was dropped without close() and is still shutting down; retry shortly, and await close() before reopening to release it deterministically"
    } else {
        "by another open log; close it first (one process owns a log directory)"
    })]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder is a handle of this process dropped without `close`
        /// that has not finished shutting down yet.
        shutting_down: bool,
    },
    /// Acknowledged data is damaged: the log cannot be opened in this mode.
    #[error(
        "corrupt log: segment {segment}, offset {offset}, near LSN {lsn}: {kind}; open with RecoveryMode::PointInTime to keep the records before it"
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad frame or header in the segment.
        offset: u64,
        /// The LSN expected at that place.
        lsn: u64,
        /// What is wrong.
        kind: CorruptKind,
    },
    /// A Raft node's log ([`crate::raft::RaftLog`]) is damaged where it
    /// holds acknowledged records. Unlike [`Error::Corrupt`], which offers
    /// `PointInTime` recovery, a Raft node must not cut its log: it may
    /// drop a vote or entries it acknowledged to a leader, and a node that
    /// keeps its identity can then vote twice or help elect a leader that
    /// lacks a committed entry.
    #[error(
        "damaged Raft log: segment {segment}, offset {offset}, near LSN {lsn}: {kind}. Do not recover it with RecoveryMode::PointInTime or `aiowal repair --force`: a node that loses a vote or an entry it acknowledged can break the cluster's safety. Remove this node's data directory and add it back to the cluster as a new learner (it catches up from the leader)"
    )]
    RaftLogDamaged {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad frame or header in the segment.
        offset: u64,
        /// The LSN expected at that place.
        lsn: u64,
        /// What is wrong.
        kind: CorruptKind,
    },
    /// The directory holds a segment-named file that is not an aiowal segment.
    #[error("{path} is not an aiowal segment ({reason}); move it out of the log directory")]
    ForeignFile {
        /// The offending file.
        path: PathBuf,
        /// Why it was rejected.
        reason: FormatError,
    },
    /// A segment written by a newer format version than this build reads.
    #[error(
        "{path} uses segment format version {version}, which this aiowal does not read; upgrade aiowal (the file was left untouched)"
    )]
    UnsupportedFormat {
        /// The segment.
        path: PathBuf,
        /// Its format version.
        version: u32,
    },
    /// A segment that needs a cargo feature this build lacks (compressed
    /// batches need `compression`).
    #[error(
        "{path} holds {what}: build aiowal with the `{feature}` feature to read it (the file was left untouched)"
    )]
    NeedsFeature {
        /// The segment.
        path: PathBuf,
        /// What the segment holds.
        what: &'static str,
        /// The cargo feature that reads it.
        feature: &'static str,
    },
    /// A directory entry aiowal will not manage (a symlink in place of a segment).
    #[error("{path}: {reason}; replace it with the segment file itself")]
    BadDirectoryEntry {
        /// The entry.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record larger than `Options::max_record_bytes`.
    #[error("record of {len} bytes exceeds max_record_bytes = {max}")]
    RecordTooLarge {
        /// The record's length.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// An atomic batch whose encoded size exceeds `Options::batch_bytes_max`.
    #[error(
        "atomic batch of {bytes} encoded bytes exceeds batch_bytes_max = {max}; split it or raise the limit"
    )]
    BatchTooLarge {
        /// Encoded size of the batch.
        bytes: u64,
        /// The configured limit.
        max: u64,
    },
    /// `append_batch` with no records.
    #[error("append_batch needs at least one record")]
    EmptyBatch,
    /// An option out of range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option's name.
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The chosen backend cannot run here.
    #[error("backend {backend} is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend asked for.
        backend: &'static str,
        /// Why it cannot run.
        reason: String,
    },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// Records a reader needs were removed by `truncate_before` (a live
    /// tail fell behind a checkpoint, or started before the log's start; a
    /// `read_from` iterator reached a segment a checkpoint removed after
    /// it was created).
    #[error(
        "LSN {lsn} was truncated away (the log now starts at {first}): read from {first} or later, or checkpoint less eagerly"
    )]
    Truncated {
        /// The LSN the reader needed next.
        lsn: u64,
        /// The oldest LSN the log still holds.
        first: u64,
    },
    /// `truncate_after` below the records the log still holds.
    #[error(
        "cannot cut the log after LSN {lsn}: it starts at {first} (truncate_before dropped what precedes it); cut at {} or later",
        first - 1
    )]
    CutBeforeStart {
        /// The LSN asked for.
        lsn: u64,
        /// The oldest LSN the log still holds.
        first: u64,
    },
    /// `truncate_after` at an LSN inside an atomic batch (part of it would
    /// stay).
    #[error(
        "cannot cut the log after LSN {lsn}: it is inside an atomic batch; cut before the batch or after it"
    )]
    CutInsideBatch {
        /// The LSN asked for.
        lsn: u64,
    },
    /// The record waited for was dropped by `truncate_after` before it was
    /// acknowledged: its LSN names another record now (or none yet).
    #[error("record {lsn} was dropped by truncate_after({cut}) before it was acknowledged")]
    DroppedByCut {
        /// The record's LSN.
        lsn: u64,
        /// The LSN the log was cut after.
        cut: u64,
    },
    /// Called outside a tokio runtime (or on one that cannot run the log).
    #[error("{0}")]
    Runtime(&'static str),
}

/// What kind of damage [`Error::Corrupt`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// A frame failed to decode, with valid frames after it beyond the
    /// in-flight window (format v1), or while reading a segment after open.
    Frame(FormatError),
    /// A frame failed to decode although a later batch header (its synced
    /// watermark) or a clean-end mark proves it was acknowledged.
    Acknowledged {
        /// What the bad bytes looked like.
        cause: FormatError,
        /// The watermark that proves it: every LSN up to here was durable.
        proven: u64,
    },
    /// A segment header failed to decode.
    Header(FormatError),
    /// LSNs do not continue from the previous frame or segment.
    LsnGap {
        /// The LSN found.
        found: u64,
    },
    /// An earlier segment ends damaged while a later one holds data.
    DamagedBeforeLaterSegment(FormatError),
    /// The segment tail is damaged (reported in `AbsoluteConsistency` mode).
    TornTail(FormatError),
    /// A segment's sequence number or settings disagree with its file.
    Mismatch(&'static str),
}

impl std::fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "bad frame ({e}) followed by valid data"),
            Self::Acknowledged { cause, proven } => write!(
                f,
                "bad frame ({cause}) in a record acknowledged as durable (a later batch proves every LSN up to {proven} was synced)"
            ),
            Self::Header(e) => write!(f, "bad segment header ({e})"),
            Self::LsnGap { found } => write!(f, "LSN gap: found {found}"),
            Self::DamagedBeforeLaterSegment(e) => {
                write!(f, "damaged frame ({e}) while a later segment holds data")
            }
            Self::TornTail(e) => write!(f, "torn tail ({e}) and AbsoluteConsistency was requested"),
            Self::Mismatch(what) => write!(f, "mismatch: {what}"),
        }
    }
}

impl Error {
    pub(crate) fn io(op: IoOp, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return Error::NoSpace { path };
        }
        Error::Io { op, path, source }
    }
}
