//! The benchmark behind `aiowal bench` and `cargo bench`.
//!
//! For each (record size, concurrency) pair it runs, on the same disk and in
//! the same process, first a raw baseline and then aiowal, and reports
//! aiowal's throughput and latency as ratios to the baseline.
//!
//! aiowal runs as a database would use it: N tasks append and await each
//! ack. Two workloads: `ckpt`, a checkpointer calls
//! `truncate_before(durable_lsn)` every 100 ms, so retired segments are
//! recycled (the steady state between checkpoints; the baseline reuses its
//! file too); `grow`, no checkpoints, so the log grows and every new
//! segment is prepared from scratch (a log between two distant
//! checkpoints).
//!
//! Each point runs `repeat` times, the baseline and aiowal interleaved, so
//! a machine that gets busier part way affects both; the table gives
//! medians and the spread of the per-run ratios, and warns when the spread
//! is wide or the machine was busy.
//!
//! Not a stable API: public for the `aiowal` binary, `cargo bench` and the
//! examples.
//!
//! The baseline is the simplest correct group commit: N threads hand records
//! to one writer thread, which writes everything staged (padded to 4 KiB) with
//! one `pwrite` and one `fdatasync` into a preallocated, zero-filled file, then
//! wakes the threads whose records that sync covered.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::{Backend, Error, Options, Result, Wal};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// Parent directory for the temporary log and baseline file.
    pub dir: PathBuf,
    /// How long each run appends.
    pub duration: Duration,
    /// Concurrent appenders (each waits for its ack before the next append).
    pub concurrency: Vec<usize>,
    /// Record sizes in bytes.
    pub sizes: Vec<usize>,
    /// Backends to measure.
    pub backends: Vec<Backend>,
    /// Segment size of the log.
    pub segment_bytes: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// io_uring sync mode.
    pub uring_sync: crate::UringSync,
    /// Whether the log writes with O_DIRECT.
    pub direct_io: crate::DirectIo,
    /// How new segments get their space.
    pub preallocate: crate::Preallocate,
    /// What an acknowledged append promises (the backend column says when
    /// it is not `Immediate`).
    pub durability: crate::Durability,
    /// Runs of each point (baseline and aiowal interleaved).
    pub repeat: usize,
    /// Which workloads to run.
    pub workloads: Vec<Workload>,
    /// Whether the log compresses its batches (the backend column says
    /// when it does).
    pub compression: crate::Compression,
    /// What the records hold.
    pub payload: Payload,
}

/// What the benchmark's records hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Payload {
    /// One repeated byte (the default; what a log without compression
    /// cannot tell from any other content).
    #[default]
    Fill,
    /// Text-like: JSON rows of words and numbers drawn at random, every
    /// record different (see [`text_record`]); LZ4 shrinks them about 2-3x.
    Text,
}

const WORDS: [&str; 48] = [
    "order",
    "customer",
    "invoice",
    "shipped",
    "pending",
    "warehouse",
    "berlin",
    "lisbon",
    "tokyo",
    "quantity",
    "price",
    "discount",
    "status",
    "created",
    "updated",
    "account",
    "balance",
    "transfer",
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "green",
    "blue",
    "red",
    "small",
    "large",
    "priority",
    "normal",
    "express",
    "refund",
    "credit",
    "debit",
    "session",
    "login",
    "logout",
    "region",
    "north",
    "south",
    "east",
    "west",
    "product",
    "widget",
    "gadget",
    "sprocket",
    "review",
];

/// A text-like record of `size` bytes: JSON rows (`{"id":..,"user":..,
/// "event":"..","amount":..,"note":"..."}`) of words from a fixed list and
/// numbers drawn from `seed`, cut to `size`.
pub fn text_record(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = String::with_capacity(size + 160);
    while out.len() < size {
        let mut word = || WORDS[(next() % WORDS.len() as u64) as usize];
        let (a, b, c, d) = (word(), word(), word(), word());
        let (id, user, cents) = (next() % 10_000_000, next() % 100_000, next() % 1_000_000);
        out.push_str(&format!(
            "{{\"id\":{id},\"user\":\"{a}_{user}\",\"event\":\"{b}\",\"amount\":{}.{:02},\"note\":\"{c} {d}\"}}\n",
            cents / 100,
            cents % 100
        ));
    }
    out.truncate(size);
    out.into_bytes()
}

/// How the log is used during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// A checkpoint (`truncate_before`) every 100 ms: segments recycled.
    Checkpointed,
    /// No checkpoints: the log grows, new segments are prepared.
    Growing,
}

impl Workload {
    /// The workload's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Checkpointed => "ckpt",
            Workload::Growing => "grow",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dir: PathBuf::from("."),
            duration: Duration::from_millis(2000),
            concurrency: vec![1, 16, 64, 256],
            sizes: vec![100, 4096],
            backends: vec![Backend::Auto],
            segment_bytes: 64 << 20,
            progress: true,
            uring_sync: crate::UringSync::Fsync,
            direct_io: crate::DirectIo::Auto,
            preallocate: crate::Preallocate::Auto,
            durability: crate::Durability::Immediate,
            repeat: 3,
            workloads: vec![Workload::Checkpointed, Workload::Growing],
            compression: crate::Compression::None,
            payload: Payload::Fill,
        }
    }
}

/// One run's numbers.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Durable appends completed.
    pub appends: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Data syncs issued.
    pub syncs: u64,
    /// Latency of each append, in nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// CPU time this process used during the run (user + system, all
    /// threads; the appenders' own loop and latency recording included),
    /// where `/proc/self/stat` tells it.
    pub cpu: Option<Duration>,
    /// Bytes the log wrote to its segments (after compression, headers and
    /// padding included); `None` for the baseline.
    pub bytes_written: Option<u64>,
    /// Median time from handing a batch to the backend to handling its
    /// completed sync (`Stats::sync_latency_p50`); `None` for the baseline.
    pub sync_p50: Option<Duration>,
}

impl Measurement {
    /// Durable appends per second.
    pub fn per_sec(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }
    /// CPU microseconds per durable record, where known.
    pub fn cpu_us_per_record(&self) -> Option<f64> {
        self.cpu.filter(|_| self.appends > 0).map(|c| c.as_secs_f64() * 1e6 / self.appends as f64)
    }

    /// Bytes written to segments per record, where known.
    pub fn written_per_record(&self) -> Option<f64> {
        self.bytes_written.filter(|_| self.appends > 0).map(|b| b as f64 / self.appends as f64)
    }

    /// Records per data sync.
    pub fn per_sync(&self) -> f64 {
        if self.syncs == 0 { 0.0 } else { self.appends as f64 / self.syncs as f64 }
    }
    /// Latency at quantile `q`, in microseconds.
    pub fn us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The runs of one configuration: baseline and aiowal, interleaved.
#[derive(Debug, Clone)]
pub struct Row {
    /// Record size in bytes.
    pub size: usize,
    /// Concurrent appenders.
    pub concurrency: usize,
    /// The backend aiowal used.
    pub backend: &'static str,
    /// How the log was used.
    pub workload: Workload,
    /// The raw write+fdatasync baseline, one per run.
    pub baseline: Vec<Measurement>,
    /// aiowal, one per run.
    pub wal: Vec<Measurement>,
    /// The share of the machine's CPU time that other processes used
    /// during these runs (0 to 1).
    pub others_cpu: Option<f64>,
}

impl Row {
    /// The median run of `runs` by throughput.
    fn median(runs: &[Measurement]) -> &Measurement {
        let mut idx: Vec<usize> = (0..runs.len()).collect();
        idx.sort_by(|&a, &b| runs[a].per_sec().total_cmp(&runs[b].per_sec()));
        &runs[idx[idx.len() / 2]]
    }

    /// The per-run throughput ratios aiowal / baseline, sorted.
    pub fn ratios(&self) -> Vec<f64> {
        let mut r: Vec<f64> =
            self.wal.iter().zip(&self.baseline).map(|(w, b)| w.per_sec() / b.per_sec()).collect();
        r.sort_by(f64::total_cmp);
        r
    }

    /// Median of the per-run ratios and their spread (max - min) / median.
    pub fn ratio(&self) -> (f64, f64) {
        let r = self.ratios();
        let median = r[r.len() / 2];
        let spread = (r[r.len() - 1] - r[0]) / median;
        (median, spread)
    }
}

/// CPU time so far, in clock ticks: the machine's total and busy time
/// (`/proc/stat`), and this process's (`/proc/self/stat`).
#[derive(Debug, Clone, Copy, Default)]
struct CpuTicks {
    total: u64,
    busy: u64,
    ours: u64,
}

/// utime + stime from a `/proc/<pid>/stat` line. The fields after the
/// command name (which may hold spaces and parentheses) are counted from
/// its closing parenthesis: state is field 3, utime field 14, stime field
/// 15. (They are taken by position: some fields before them, such as
/// tpgid, are -1 without a controlling terminal.)
fn utime_stime(stat: &str) -> u64 {
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

impl CpuTicks {
    fn now() -> CpuTicks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = fields.iter().take(8).sum();
        // user nice system idle iowait irq softirq steal
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let ours = utime_stime(&me);
        CpuTicks { total, busy: total.saturating_sub(idle), ours }
    }

    /// This process's CPU time since `earlier` (`None` without `/proc`).
    fn ours_since(&self, earlier: &CpuTicks) -> Option<Duration> {
        // USER_HZ, which /proc reports in, is 100 on every Linux ABI.
        (self.total > 0).then(|| Duration::from_millis(self.ours.saturating_sub(earlier.ours) * 10))
    }

    /// The share of the machine's time others kept busy since `earlier`;
    /// `None` where `/proc/stat` does not exist (not Linux).
    fn others_since(&self, earlier: &CpuTicks) -> Option<f64> {
        let total = self.total.saturating_sub(earlier.total);
        let others =
            self.busy.saturating_sub(earlier.busy).saturating_sub(self.ours.saturating_sub(earlier.ours));
        (total > 0).then(|| others as f64 / total as f64)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is a valid precision")
}

fn bench_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::io(crate::IoOp::Write, what, std::io::Error::other(e.to_string()))
}

const BASELINE_FILE_BYTES: u64 = 64 << 20;
const BLOCK: usize = 4096;

struct Staged {
    buf: Vec<u8>,
    staged_seq: u64,
    durable_seq: u64,
    syncs: u64,
    failed: Option<String>,
}

/// The raw group-commit baseline (see the module docs).
pub fn baseline(dir: &Path, size: usize, n: usize, duration: Duration) -> Result<Measurement> {
    let path = dir.join("baseline.dat");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| Error::io(crate::IoOp::Open, &path, e))?;
    let zero = vec![0u8; 1 << 20];
    for i in 0..BASELINE_FILE_BYTES / (1 << 20) {
        file.write_all_at(&zero, i << 20).map_err(|e| Error::io(crate::IoOp::Write, &path, e))?;
    }
    file.sync_all().map_err(|e| Error::io(crate::IoOp::Sync, &path, e))?;
    let shared = Arc::new((
        Mutex::new(Staged { buf: Vec::new(), staged_seq: 0, durable_seq: 0, syncs: 0, failed: None }),
        Condvar::new(),
        Condvar::new(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || baseline_writer(&file, &shared, &stop))
    };
    let cpu0 = CpuTicks::now();
    let start = Instant::now();
    let deadline = start + duration;
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let rec = vec![0xA5u8; size];
                let mut h = histogram();
                let mut count = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let (m, work, done) = &*shared;
                    let mut st = m.lock().unwrap_or_else(PoisonError::into_inner);
                    st.buf.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
                    st.buf.extend_from_slice(&rec);
                    st.staged_seq += 1;
                    let mine = st.staged_seq;
                    work.notify_one();
                    while st.durable_seq < mine && st.failed.is_none() {
                        st = done.wait(st).unwrap_or_else(PoisonError::into_inner);
                    }
                    if st.failed.is_some() {
                        break;
                    }
                    drop(st);
                    let _ = h.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    count += 1;
                }
                (count, h)
            })
        })
        .collect();
    let mut total = 0;
    let mut latency_ns = histogram();
    for t in threads {
        let (c, h) = t.join().map_err(|_| bench_err("baseline", "appender panicked"))?;
        total += c;
        let _ = latency_ns.add(h);
    }
    let elapsed = start.elapsed();
    let cpu = CpuTicks::now().ours_since(&cpu0);
    stop.store(true, Ordering::Release);
    shared.1.notify_one();
    writer.join().map_err(|_| bench_err("baseline", "writer panicked"))?;
    let st = shared.0.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = &st.failed {
        return Err(bench_err("baseline", e));
    }
    let syncs = st.syncs;
    drop(st);
    let _ = std::fs::remove_file(&path);
    Ok(Measurement { appends: total, elapsed, syncs, latency_ns, cpu, bytes_written: None, sync_p50: None })
}

fn baseline_writer(file: &File, shared: &(Mutex<Staged>, Condvar, Condvar), stop: &AtomicBool) {
    let (m, work, done) = shared;
    let mut pos = 0u64;
    let mut out = Vec::new();
    loop {
        let last = {
            let mut st = m.lock().unwrap_or_else(PoisonError::into_inner);
            while st.buf.is_empty() && !stop.load(Ordering::Acquire) {
                st = work.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.buf.is_empty() {
                return;
            }
            std::mem::swap(&mut st.buf, &mut out);
            st.staged_seq
        };
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        if pos + out.len() as u64 > BASELINE_FILE_BYTES {
            pos = 0;
        }
        let r = file.write_all_at(&out, pos).and_then(|()| file.sync_data());
        pos += out.len() as u64;
        out.clear();
        let mut st = m.lock().unwrap_or_else(PoisonError::into_inner);
        match r {
            Ok(()) => {
                st.durable_seq = last;
                st.syncs += 1;
            }
            Err(e) => st.failed = Some(e.to_string()),
        }
        done.notify_all();
    }
}

/// aiowal with `n` concurrent tasks on a 2-worker tokio runtime.
pub fn wal(
    dir: &Path,
    backend: Backend,
    size: usize,
    n: usize,
    workload: Workload,
    cfg: &Config,
) -> Result<(Measurement, &'static str)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io(crate::IoOp::Spawn, "tokio runtime", e))?;
    let log = dir.join("wal");
    let opts = Options::default()
        .backend(backend)
        .uring_sync(cfg.uring_sync)
        .direct_io(cfg.direct_io)
        .preallocate(cfg.preallocate)
        .durability(cfg.durability)
        .compression(cfg.compression)
        .segment_bytes(cfg.segment_bytes)
        .max_record_bytes(u32::try_from(size.max(1 << 16)).unwrap_or(u32::MAX));
    // Compression needs segments of three batches: smaller segments get
    // smaller batches (at most the default 2 MiB).
    let opts = if cfg.compression == crate::Compression::None {
        opts
    } else {
        let third = cfg.segment_bytes.saturating_sub(4096) / 3 / 4096 * 4096;
        opts.batch_bytes_max(u32::try_from(third.min(2 << 20)).unwrap_or(2 << 20))
    };
    let duration = cfg.duration;
    let r = rt.block_on(async move {
        let wal = Wal::open(&log, opts).await?;
        let name = match (wal.backend_name(), wal.direct_io()) {
            ("uring", true) => "uring+dio",
            ("threaded", true) => "thread+dio",
            ("lio", true) => "lio+dio",
            (n, _) => n,
        };
        // The level beside the backend when it is not the default (a
        // handful of rows per run: leaking their names is fine).
        let name: &'static str = match cfg.durability {
            crate::Durability::Immediate => name,
            crate::Durability::Periodic(d) => {
                Box::leak(format!("{name}/periodic-{}ms", d.as_millis()).into_boxed_str())
            }
            crate::Durability::None => Box::leak(format!("{name}/none").into_boxed_str()),
        };
        let name: &'static str = match (cfg.compression, cfg.payload) {
            (crate::Compression::None, Payload::Fill) => name,
            (c, p) => Box::leak(
                format!(
                    "{name}{}{}",
                    if c == crate::Compression::None { "" } else { "+lz4" },
                    if p == Payload::Text { "/text" } else { "" }
                )
                .into_boxed_str(),
            ),
        };
        let payload = cfg.payload;
        let cpu0 = CpuTicks::now();
        let start = Instant::now();
        let deadline = start + duration;
        // Checkpoint like a database: retire what is durable every 100 ms, so
        // the log reaches its steady state of reusing retired segments.
        let checkpointer = {
            let wal = wal.clone();
            tokio::spawn(async move {
                while workload == Workload::Checkpointed && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    wal.truncate_before(wal.durable_lsn()).await?;
                }
                Ok::<_, Error>(())
            })
        };
        let tasks: Vec<_> = (0..n)
            .map(|t| {
                let wal = wal.clone();
                tokio::spawn(async move {
                    // Text: 16 different records per appender, in turn.
                    let recs: Vec<Vec<u8>> = match payload {
                        Payload::Fill => vec![vec![0xA5u8; size]],
                        Payload::Text => (0..16).map(|i| text_record(size, (t * 16 + i) as u64)).collect(),
                    };
                    let mut h = histogram();
                    let mut count = 0u64;
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        let rec = &recs[count as usize % recs.len()];
                        wal.append(rec).await?;
                        let _ = h.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
                        count += 1;
                    }
                    Ok::<_, Error>((count, h))
                })
            })
            .collect();
        let mut appends = 0;
        let mut latency_ns = histogram();
        for t in tasks {
            let (c, h) = t.await.map_err(|e| bench_err("wal", e))??;
            appends += c;
            let _ = latency_ns.add(h);
        }
        let elapsed = start.elapsed();
        let cpu = CpuTicks::now().ours_since(&cpu0);
        checkpointer.await.map_err(|e| bench_err("wal", e))??;
        let stats = wal.stats();
        wal.close().await?;
        let (syncs, bytes_written, sync_p50) =
            (stats.syncs, Some(stats.bytes_written), Some(stats.sync_latency_p50));
        Ok::<_, Error>((
            Measurement { appends, elapsed, syncs, latency_ns, cpu, bytes_written, sync_p50 },
            name,
        ))
    });
    let _ = std::fs::remove_dir_all(dir.join("wal"));
    r
}

/// Where the benchmark runs: machine, filesystem and kernel.
pub fn environment(dir: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = nix::sys::utsname::uname()
        .map(|u| format!("{} {}", u.sysname().to_string_lossy(), u.release().to_string_lossy()))
        .unwrap_or_else(|_| "unknown kernel".into());
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    format!("machine: {host}, {cores} cores, {cpu}\nfilesystem: {}\nkernel: {kernel}", filesystem(dir))
}

/// The mount (device, type) holding `dir`, from /proc/mounts.
fn filesystem(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dev, mnt, fstype, ..] = f[..] else {
            continue;
        };
        if dir.starts_with(mnt) && best.as_ref().is_none_or(|(l, _)| mnt.len() > *l) {
            best = Some((
                mnt.len(),
                format!("{fstype} on {dev} (mounted at {mnt}), bench dir {}", dir.display()),
            ));
        }
    }
    best.map_or_else(|| format!("unknown, bench dir {}", dir.display()), |(_, s)| s)
}

/// Runs every configuration, `repeat` times with baseline and aiowal
/// interleaved; calls `on_row` as each finishes.
///
/// # Errors
/// Any I/O failure of the baseline or the log.
pub fn run(cfg: &Config, mut on_row: impl FnMut(&Row)) -> Result<Vec<Row>> {
    let tmp = tempfile::Builder::new()
        .prefix("aiowal-bench-")
        .tempdir_in(&cfg.dir)
        .map_err(|e| Error::io(crate::IoOp::CreateDir, &cfg.dir, e))?;
    let mut rows = Vec::new();
    let repeat = cfg.repeat.max(1);
    let total = cfg.workloads.len() * cfg.sizes.len() * cfg.concurrency.len() * cfg.backends.len() * repeat;
    let bar = progress_bar(cfg, total);
    for &workload in &cfg.workloads {
        for &size in &cfg.sizes {
            for &n in &cfg.concurrency {
                for &backend in &cfg.backends {
                    let mut row = Row {
                        size,
                        concurrency: n,
                        backend: backend.name(),
                        workload,
                        baseline: Vec::new(),
                        wal: Vec::new(),
                        others_cpu: None,
                    };
                    let before = CpuTicks::now();
                    for rep in 1..=repeat {
                        let what = format!("{} {size} B x {n}, run {rep}/{repeat}", workload.name());
                        bar.set_message(format!("{what}: baseline"));
                        row.baseline.push(baseline(tmp.path(), size, n, cfg.duration)?);
                        bar.set_message(format!("{what}: aiowal {}", backend.name()));
                        let (m, name) = wal(tmp.path(), backend, size, n, workload, cfg)?;
                        row.wal.push(m);
                        row.backend = name;
                        bar.inc(1);
                    }
                    row.others_cpu = CpuTicks::now().others_since(&before);
                    bar.suspend(|| on_row(&row));
                    rows.push(row);
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// Warnings about the runs: a busy machine or a wide spread.
pub fn warnings(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let busiest = rows.iter().filter_map(|r| r.others_cpu).fold(0.0, f64::max);
    if busiest > 0.35 {
        out.push(format!(
            "the machine was busy: others used up to {:.0}% of its CPU time during a point (oth%); rerun on a quiet machine",
            busiest * 100.0
        ));
    }
    for r in rows {
        let (median, spread) = r.ratio();
        if r.wal.len() > 1 && spread > 0.25 {
            out.push(format!(
                "{} {} B x {} {}: the runs' ratios spread {:.0}% around {median:.2}x; treat that row as noisy",
                r.workload.name(),
                r.size,
                r.concurrency,
                r.backend,
                spread * 100.0
            ));
        }
    }
    out
}

/// What the columns mean.
pub fn legend() -> &'static str {
    "columns: base = the raw write+fdatasync group commit, aiowal = this log, both measured in this run;\n\
     /s = durable records per second (median run); p50us/p99us/p999us = append latency in microseconds;\n\
     MB/s = payload throughput; rec/syn = records per data sync; cpuus = CPU microseconds this process used per durable record (all threads, appenders included);\n\
     x thru = aiowal/s divided by base/s (higher is better), median of the runs, with the runs' spread;\n\
     x p50 = aiowal p50 divided by base p50 (lower is better);\n\
     oth% = CPU time others (other processes, the kernel's own threads) used during the point.\n\
     workload: ckpt = checkpoint every 100 ms (segments recycled), grow = no checkpoints (the log grows)."
}

fn progress_bar(cfg: &Config, total: usize) -> indicatif::ProgressBar {
    if !cfg.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    let style =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_times_come_from_their_fields_whatever_comes_before() {
        // tpgid (field 8) is -1 without a controlling terminal.
        let line = "4242 (aio wal (x)) S 1 4242 4242 0 -1 4194560 9000 0 0 0 731 95 0 0 20 0 5 0 100 0 0";
        assert_eq!(super::utime_stime(line), 731 + 95);
    }
}

/// The header of `--csv` output: one line per run of each point.
pub fn csv_header() -> &'static str {
    "workload,backend,size,n,run,raw_per_s,raw_p50_us,raw_p99_us,wal_per_s,wal_p50_us,wal_p99_us,wal_records_per_sync,raw_cpu_us_per_record,wal_cpu_us_per_record,wal_bytes_written_per_record,wal_sync_p50_us"
}

/// A point's runs as CSV lines (see [`csv_header`]), absolute numbers.
pub fn format_csv(r: &Row) -> String {
    let mut s = String::new();
    for (i, (b, w)) in r.baseline.iter().zip(&r.wal).enumerate() {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.0},{:.1},{:.1},{:.0},{:.1},{:.1},{:.1},{},{},{},{}",
            r.workload.name(),
            r.backend,
            r.size,
            r.concurrency,
            i + 1,
            b.per_sec(),
            b.us(0.5),
            b.us(0.99),
            w.per_sec(),
            w.us(0.5),
            w.us(0.99),
            w.per_sync(),
            b.cpu_us_per_record().map_or(String::new(), |c| format!("{c:.2}")),
            w.cpu_us_per_record().map_or(String::new(), |c| format!("{c:.2}")),
            w.written_per_record().map_or(String::new(), |c| format!("{c:.0}")),
            w.sync_p50.map_or(String::new(), |d| format!("{:.1}", d.as_secs_f64() * 1e6)),
        );
    }
    s.pop();
    s
}

/// The table's header line.
pub fn header() -> String {
    format!(
        "{:>4} {:>6} {:>4} {:>10} | {:>10} {:>8} {:>8} | {:>10} {:>7} {:>7} {:>6} {:>8} {:>8} {:>8} | {:>13} {:>7} {:>5}",
        "wkld",
        "size",
        "N",
        "backend",
        "base/s",
        "b.p50us",
        "b.p99us",
        "aiowal/s",
        "MB/s",
        "rec/syn",
        "cpuus",
        "p50us",
        "p99us",
        "p999us",
        "x thru (sprd)",
        "x p50",
        "oth%"
    )
}

/// One formatted table row: medians, then ratios to the baseline.
pub fn format_row(r: &Row) -> String {
    let mut s = String::new();
    let (b, w) = (Row::median(&r.baseline), Row::median(&r.wal));
    let mb = w.per_sec() * r.size as f64 / 1e6;
    let mb = if mb < 10.0 { format!("{mb:.2}") } else { format!("{mb:.1}") };
    let (ratio, spread) = r.ratio();
    let ratio = format!("{ratio:.2}x ({:.0}%)", spread * 100.0);
    let _ = write!(
        s,
        "{:>4} {:>6} {:>4} {:>10} | {:>10.0} {:>8.1} {:>8.1} | {:>10.0} {:>7} {:>7.1} {:>6} {:>8.1} {:>8.1} {:>8.1} | {:>13} {:>6.2}x {:>5}",
        r.workload.name(),
        r.size,
        r.concurrency,
        r.backend,
        b.per_sec(),
        b.us(0.5),
        b.us(0.99),
        w.per_sec(),
        mb,
        w.per_sync(),
        w.cpu_us_per_record().map_or("-".to_string(), |c| format!("{c:.2}")),
        w.us(0.5),
        w.us(0.99),
        w.us(0.999),
        ratio,
        w.us(0.5) / b.us(0.5),
        r.others_cpu.map_or("-".to_string(), |c| format!("{:.0}", c * 100.0)),
    );
    s
}

/// What [`recovery`] measures.
#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    /// Parent directory for the temporary logs.
    pub dir: PathBuf,
    /// Log sizes, in bytes.
    pub sizes: Vec<u64>,
    /// Record size of the log written.
    pub record_bytes: usize,
    /// Runs of each measurement (the table gives the median).
    pub repeat: usize,
    /// Also measure with the page cache dropped (needs root).
    pub cold: bool,
}

/// One log size's timings, in seconds (medians of the runs).
#[derive(Debug, Clone)]
pub struct RecoveryRow {
    /// Bytes of segment files in the log.
    pub bytes: u64,
    /// Records in the log.
    pub records: u64,
    /// Reading every segment file sequentially (1 MiB `pread`s): warm, cold.
    pub read: (f64, Option<f64>),
    /// `Wal::open` of the cleanly closed log: warm, cold.
    pub open: (f64, Option<f64>),
    /// `Wal::open` after a process died mid-write (no clean end): warm, cold.
    pub open_after_crash: (f64, Option<f64>),
}

impl RecoveryRow {
    /// Throughput ratio of an open to the sequential read of the same files.
    pub fn ratio(open: f64, read: f64) -> f64 {
        read / open
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Empties the page cache (`/proc/sys/vm/drop_caches`), after a sync.
fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(|e| Error::io(crate::IoOp::Write, "/proc/sys/vm/drop_caches", e))
}

/// Reads every `.wal` file in `log` sequentially; returns the seconds taken.
fn read_segments(log: &Path) -> Result<f64> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(log)
        .map_err(|e| Error::io(crate::IoOp::Read, log, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    for p in &files {
        let f = File::open(p).map_err(|e| Error::io(crate::IoOp::Open, p, e))?;
        let mut at = 0u64;
        loop {
            let n = f.read_at(&mut buf, at).map_err(|e| Error::io(crate::IoOp::Read, p, e))?;
            if n == 0 {
                break;
            }
            at += n as u64;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Writes a log of about `bytes` of `record_bytes` records into `log`, in
/// large atomic batches, and closes it; returns the records written.
async fn fill_log(log: &Path, bytes: u64, record_bytes: usize) -> Result<u64> {
    let wal = Wal::open(log, Options::default()).await?;
    let rec = vec![0x5Au8; record_bytes];
    let per_batch = ((1usize << 20) / (record_bytes + 64)).max(1);
    let batch: Vec<&[u8]> = vec![&rec[..]; per_batch];
    let mut records = 0u64;
    let mut pending = std::collections::VecDeque::new();
    while records * (record_bytes as u64) < bytes {
        pending.push_back(wal.stage_batch(&batch).await?);
        records += per_batch as u64;
        if pending.len() > 4 {
            if let Some(s) = pending.pop_front() {
                s.durable().await?;
            }
        }
    }
    wal.sync().await?;
    wal.close().await?;
    Ok(records)
}

/// Times `Wal::open` of `log` (recovery reads and checks every segment).
async fn time_open(log: &Path) -> Result<f64> {
    let start = Instant::now();
    let wal = Wal::open(log, Options::default()).await?;
    let t = start.elapsed().as_secs_f64();
    wal.close().await?;
    Ok(t)
}

/// Measures how long `Wal::open` takes on logs of each size in `cfg`,
/// warm and (with `cfg.cold`) with the page cache dropped, against reading
/// the same segment files sequentially in the same run; then the same
/// after a crash: the running executable (the `aiowal` binary) is run as
/// `aiowal append-and-die DIR`, which appends and exits without closing
/// (see [`append_and_die`]). Calls `on_row` as each size finishes.
///
/// # Errors
/// Any I/O failure; dropping the page cache without root.
pub fn recovery(cfg: &RecoveryConfig, mut on_row: impl FnMut(&RecoveryRow)) -> Result<Vec<RecoveryRow>> {
    let me =
        std::env::current_exe().map_err(|e| Error::io(crate::IoOp::Open, "the running executable", e))?;
    let crash = |log: &Path| -> Result<()> {
        let status = std::process::Command::new(&me)
            .arg("append-and-die")
            .arg(log)
            .arg("--record-bytes")
            .arg(cfg.record_bytes.to_string())
            .status()
            .map_err(|e| Error::io(crate::IoOp::Spawn, &me, e))?;
        if status.success() {
            Ok(())
        } else {
            Err(bench_err("append-and-die", format!("{} append-and-die: {status}", me.display())))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io(crate::IoOp::Spawn, "tokio runtime", e))?;
    let tmp = tempfile::Builder::new()
        .prefix("aiowal-bench-")
        .tempdir_in(&cfg.dir)
        .map_err(|e| Error::io(crate::IoOp::CreateDir, &cfg.dir, e))?;
    let repeat = cfg.repeat.max(1);
    let mut rows = Vec::new();
    for &bytes in &cfg.sizes {
        let log = tmp.path().join(format!("log-{bytes}"));
        let records = rt.block_on(fill_log(&log, bytes, cfg.record_bytes))?;
        let on_disk: u64 = std::fs::read_dir(&log)
            .map_err(|e| Error::io(crate::IoOp::Read, &log, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .sum();
        let measure = |cold: bool, what: &dyn Fn() -> Result<f64>| -> Result<f64> {
            let mut runs = Vec::new();
            for _ in 0..repeat {
                if cold {
                    drop_caches()?;
                } else {
                    what()?; // warm the cache
                }
                runs.push(what()?);
            }
            Ok(median(runs))
        };
        let read_w = measure(false, &|| read_segments(&log))?;
        let open_w = measure(false, &|| rt.block_on(time_open(&log)))?;
        let read_c = if cfg.cold { Some(measure(true, &|| read_segments(&log))?) } else { None };
        let open_c = if cfg.cold { Some(measure(true, &|| rt.block_on(time_open(&log)))?) } else { None };
        // A crash, then opens: the first open after it copies the torn tail
        // forward, so each run gets a crash of its own.
        let crashed = |cold: bool| -> Result<f64> {
            let mut runs = Vec::new();
            for _ in 0..repeat {
                crash(&log)?;
                if cold {
                    drop_caches()?;
                } else {
                    read_segments(&log)?;
                }
                runs.push(rt.block_on(time_open(&log))?);
            }
            Ok(median(runs))
        };
        let crash_w = crashed(false)?;
        let crash_c = if cfg.cold { Some(crashed(true)?) } else { None };
        let row = RecoveryRow {
            bytes: on_disk,
            records,
            read: (read_w, read_c),
            open: (open_w, open_c),
            open_after_crash: (crash_w, crash_c),
        };
        on_row(&row);
        rows.push(row);
        let _ = std::fs::remove_dir_all(&log);
    }
    Ok(rows)
}

/// Appends `records` records of `record_bytes` to the log in `dir`, syncs,
/// and ends the process without closing the log (no clean-end mark): the
/// crashing half of [`recovery`], run in a child process.
pub fn append_and_die(dir: &Path, records: usize, record_bytes: usize) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let result = rt.map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let wal = Wal::open(dir, Options::default()).await.map_err(|e| e.to_string())?;
            let rec = vec![0xC3u8; record_bytes];
            for _ in 0..records {
                drop(wal.stage(&rec).await.map_err(|e| e.to_string())?);
            }
            wal.sync().await.map_err(|e| e.to_string())?;
            std::mem::forget(wal);
            Ok::<_, String>(())
        })
    });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("append-and-die: {e}");
            std::process::exit(1)
        }
    }
}
