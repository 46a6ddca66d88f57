//! Shared helpers for the behavioural tests. Every case is an `async fn
//! case(backend: Backend)`; `per_backend!` instantiates it once per backend
//! available on this platform, so a new backend runs every test by adding one
//! arm here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use aiowal::format::{self, FrameKind, SegmentHeader};
use aiowal::{Lsn, Options, Wal};

/// Instantiates each listed case for every backend. Attributes written
/// before the cases go on every instance, e.g. `per_backend!(#[ignore =
/// "needs ...: run by scripts/test"] case)` for a case that needs what a
/// plain `cargo test` machine may lack: it then shows as ignored, with the
/// reason, instead of passing without testing.
#[macro_export]
macro_rules! per_backend {
    ($(#[$attr:meta])* $($case:ident),* $(,)?) => {
        $crate::per_backend!(@modules [$(#[$attr])*] $($case),*);
    };
    (@with [$($attr:tt)*] $item:item) => {
        $($attr)*
        $item
    };
    (@modules $attrs:tt $($case:ident),*) => {
        /// On a multi-thread runtime: a lone appender writes inline.
        mod threaded {
            $($crate::per_backend!(@with $attrs
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(aiowal::Backend::Threaded).await
                }
            );)*
        }
        /// Linux io_uring, on both runtime flavors.
        #[cfg(target_os = "linux")]
        mod uring {
            $($crate::per_backend!(@with $attrs
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(aiowal::Backend::Uring).await
                }
            );)*
        }
        /// io_uring with writes linked to fdatasync: two batches in flight,
        /// the next batch's write overlapping the previous sync.
        #[cfg(target_os = "linux")]
        mod uring_fsync {
            $($crate::per_backend!(@with $attrs
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::common::URING_SYNC
                        .scope(aiowal::UringSync::Fsync, super::$case(aiowal::Backend::Uring))
                        .await
                }
            );)*
        }
        #[cfg(target_os = "linux")]
        mod uring_current_thread {
            $($crate::per_backend!(@with $attrs
                #[tokio::test(flavor = "current_thread")]
                async fn $case() {
                    super::$case(aiowal::Backend::Uring).await
                }
            );)*
        }
        /// POSIX AIO (glibc's on Linux, kqueue-driven on FreeBSD).
        #[cfg(any(target_os = "linux", target_os = "freebsd"))]
        mod lio {
            $($crate::per_backend!(@with $attrs
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(aiowal::Backend::Lio).await
                }
            );)*
        }
        /// On a current-thread runtime: every batch goes to the I/O thread.
        mod threaded_current_thread {
            $($crate::per_backend!(@with $attrs
                #[tokio::test(flavor = "current_thread")]
                async fn $case() {
                    super::$case(aiowal::Backend::Threaded).await
                }
            );)*
        }
    };
}

/// Like `per_backend!` for every case listed, plus a `sim` variant
/// (feature `sim`) on the crash simulator's disk for the cases in `sim:`,
/// which use only the public API (no file inspection): `small()` then puts
/// the log on the simulated disk.
#[macro_export]
macro_rules! per_backend_and_sim {
    (sim: [$($case:ident),* $(,)?], real: [$($real:ident),* $(,)?] $(,)?) => {
        $crate::per_backend!($($case,)* $($real),*);
        /// The crash simulator's disk and backend, on a current-thread runtime.
        #[cfg(feature = "sim")]
        mod sim {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $case() {
                    let disk = aiowal::sim::SimDisk::new(7);
                    $crate::common::SIM.scope(disk, super::$case(aiowal::Backend::Auto)).await
                }
            )*
        }
    };
}

tokio::task_local! {
    /// The io_uring sync mode a `per_backend!` variant runs its case with.
    pub static URING_SYNC: aiowal::UringSync;
}

#[cfg(feature = "sim")]
tokio::task_local! {
    /// The simulated disk a `per_backend_and_sim!` `sim` variant runs on.
    pub static SIM: aiowal::sim::SimDisk;
}

/// Small segments and batches so tests rotate and exercise windows quickly
/// (on the simulated disk, in a `sim` variant).
pub fn small(backend: aiowal::Backend) -> Options {
    let o = Options::default()
        .backend(backend)
        .uring_sync(URING_SYNC.try_with(|s| *s).unwrap_or_default())
        .segment_bytes(256 << 10)
        .batch_bytes_max(32 << 10)
        .max_record_bytes(8 << 10);
    #[cfg(feature = "sim")]
    if let Ok(disk) = SIM.try_with(|d| d.clone()) {
        return o.sim(&disk);
    }
    o
}

/// Deterministic pseudo-random record for (task, index).
pub fn record(task: u64, i: u64, len: usize) -> Vec<u8> {
    let mut x = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Small xorshift generator for sizes and choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every record in the log, in order.
pub fn read_all(wal: &Wal, from: Lsn) -> Vec<(u64, Vec<u8>)> {
    wal.read_from(from)
        .expect("read_from")
        .map(|r| {
            let r = r.expect("record");
            (r.lsn().get(), r.to_vec())
        })
        .collect()
}

/// Segment files of a log directory, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// A frame found by walking a segment: offset, kind, LSN, bytes on disk.
#[derive(Debug, Clone, Copy)]
pub struct FrameAt {
    pub offset: u64,
    pub kind: FrameKind,
    pub lsn: u64,
    pub len: u64,
}

/// Walks the valid frames of a segment file with the public codec: v2
/// batch headers and their records (each batch ends where its header says),
/// or v1 records and padding. Stops at the first frame that does not decode.
pub fn frames(path: &Path) -> (SegmentHeader, Vec<FrameAt>) {
    let bytes = std::fs::read(path).unwrap();
    let h = SegmentHeader::decode(&bytes).unwrap();
    let mut out = Vec::new();
    let mut pos = h.alignment as usize;
    // Inside a v2 batch: its end offset and how many records are left.
    let mut batch: Option<(usize, u64)> = None;
    while pos + format::FRAME_HEADER_LEN <= bytes.len() {
        if let Some((end, 0)) = batch {
            pos = end;
            batch = None;
            continue;
        }
        let Ok(f) = format::decode_frame(&bytes[pos..], h.salt, u64::from(u32::MAX)) else { break };
        out.push(FrameAt { offset: pos as u64, kind: f.kind, lsn: f.lsn, len: f.len_on_disk });
        if f.kind == FrameKind::BatchHeader {
            let Ok(b) = format::BatchHeader::from_frame(&f) else { break };
            batch = Some((pos + b.batch_bytes as usize, b.records()));
        } else if let Some((_, left)) = batch.as_mut() {
            *left -= 1;
        }
        pos += f.len_on_disk as usize;
    }
    (h, out)
}

/// The newest segment whose header was written (the one prepared ahead is not).
pub fn last_used_segment(dir: &Path) -> PathBuf {
    segments(dir)
        .into_iter()
        .rev()
        .find(|p| SegmentHeader::decode(&std::fs::read(p).unwrap()).is_ok())
        .expect("a used segment")
}
