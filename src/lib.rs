//! aiowal: a write-ahead log for databases.
//!
//! Append records, await a durable commit, recover the log on startup.
//!
//! * [`Wal::append`] resolves with an [`Lsn`] only once the record and every
//!   record before it are on disk (written and data-synced). Concurrent
//!   appends share one write and one sync per batch (group commit). That is
//!   [`Durability::Immediate`], the default; the relaxed levels
//!   ([`Options::durability`]) acknowledge written records and sync less
//!   often ([`Wal::written_lsn`] beside [`Wal::durable_lsn`]).
//! * [`Wal::append_batch`] is atomic: after a crash, all of it or none.
//! * [`Wal::open`] verifies every checksummed frame, cuts the torn tail a
//!   crash leaves, and refuses (or, in [`RecoveryMode::PointInTime`], stops
//!   before) damage to acknowledged data. It tells them apart by what proves
//!   a record acknowledged — a later batch's durable watermark, the
//!   clean-end mark `close` writes, a later segment — never by where the
//!   bytes sit (the table is in [`RecoveryMode`]). Every record `open`
//!   returns is durable before it returns, and `open` never writes over a
//!   block that holds records, so a crash during recovery loses nothing.
//! * After a failed write or sync the log is poisoned: every call fails with
//!   [`Error::Poisoned`] and nothing is retried; reopening recovers what is
//!   really on disk.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), aiowal::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! let wal = aiowal::Wal::open(dir.path(), aiowal::Options::default()).await?;
//! let lsn = wal.append(b"hello").await?;
//! assert_eq!(lsn, aiowal::Lsn::FIRST);
//! for rec in wal.read_from(aiowal::Lsn::FIRST)? {
//!     let rec = rec?;
//!     assert_eq!(rec.data(), b"hello");
//! }
//! wal.close().await?;
//! # Ok(()) }
//! ```
//!
//! Thread-based code uses [`blocking::Wal`], which owns a small runtime.
//!
//! `close().await` is the deterministic end of a log: when it returns,
//! nothing of the log touches the directory and a reopen succeeds.
//! Dropping the last handle without it stops the log in the background
//! (never blocking in `Drop`); see [`Wal::close`].
//!
//! # Backends
//!
//! [`Backend::Auto`] picks io_uring on Linux (falling back to the threaded
//! backend, with the reason logged, where io_uring is blocked), POSIX AIO
//! (`lio_listio`, completion by kqueue) on FreeBSD, and the threaded
//! backend (`pwrite` + `fdatasync` on one thread per log) elsewhere. Every
//! backend can be chosen explicitly; an explicit choice that cannot work is
//! an error. The FreeBSD backend has never run on a FreeBSD kernel: CI
//! compiles, lints and links it for FreeBSD and runs its logic on Linux
//! over a model of FreeBSD's AIO and kqueue (see the README). Segments are
//! written with `O_DIRECT` where the file system takes it ([`DirectIo`]).
//!
//! # Checkpoints, suffix truncation, following the log
//!
//! [`Wal::truncate_before`] retires whole segments below a checkpoint LSN;
//! a few are kept and reused for new segments instead of zero-filling new
//! space ([`Options::segments_recycled_max`]). [`Wal::truncate_after`]
//! drops the newest records durably, and their LSNs are reused.
//! [`Wal::tail`] follows the durable records as they come (with the
//! `stream` feature, also as a `futures_core::Stream`).
//!
//! # Compression
//!
//! With the `compression` feature, [`Options::compression`] stores write
//! batches LZ4-compressed where that saves a block; records of such
//! batches are read back as owned bytes ([`Compression`]).
//!
//! # Tools
//!
//! With the `cli` feature, the `aiowal` binary runs the benchmark
//! (`aiowal bench`) and inspects logs read-only (`aiowal verify`, `aiowal
//! dump`) or repairs them (`aiowal repair`); [`verify`] and [`dump`] are the
//! same functions for programs.
//!
//! # Crash simulation
//!
//! With the `sim` feature, `aiowal::sim` provides an in-memory disk that loses
//! power and fails on demand, and a checker of the durability invariant, so
//! that a store built on aiowal can be run through crashes deterministically.
//!
//! # Raft
//!
//! With the `openraft` feature, `aiowal::raft::RaftLog` is log storage for
//! openraft 0.9: entries, votes and the committed id are records of one log.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
#[doc(hidden)]
pub mod bench;
pub mod blocking;
mod commit;
mod error;
#[doc(hidden)]
pub mod format;
mod io;
mod lsn;
mod options;
#[cfg(feature = "openraft")]
#[cfg_attr(docsrs, doc(cfg(feature = "openraft")))]
pub mod raft;
mod recovery;
mod registry;
mod segment;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
mod sync;
mod tail;
mod vfs;
mod wal;

pub use commit::Stats;
pub use error::{CorruptKind, Error, IoOp, Result};
pub use lsn::{Lsn, LsnRange};
pub use options::{
    Backend, Compression, DirectIo, Durability, Options, Preallocate, RecoveryMode, UringSync,
};
pub use recovery::{ReadIter, Record, RecoveryReport, StopReason};
pub use tail::Tail;
#[cfg(feature = "stream")]
pub use tail::TailStream;
pub use wal::{Staged, Wal, dump, verify};

#[cfg(not(unix))]
compile_error!("aiowal supports Unix systems only (Linux, FreeBSD; others with the threaded backend)");

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
