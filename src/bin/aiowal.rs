//! `aiowal`: benchmark, verify and dump write-ahead logs.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aiowal::{Backend, Lsn, Options, RecoveryMode, StopReason, bench};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "aiowal", version, about = "aiowal write-ahead log tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Threaded,
    Uring,
    Lio,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Ckpt,
    Grow,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectArg {
    Auto,
    On,
    Off,
}

/// `immediate`, `none` or `periodic:MS`.
fn parse_durability(s: &str) -> Result<aiowal::Durability, String> {
    match s {
        "immediate" => Ok(aiowal::Durability::Immediate),
        "none" => Ok(aiowal::Durability::None),
        _ => match s.strip_prefix("periodic:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(aiowal::Durability::Periodic(Duration::from_millis(ms))),
            _ => Err(format!("{s:?}: expected immediate, none or periodic:MS (MS > 0 milliseconds)")),
        },
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PreallocateArg {
    Auto,
    Zeroes,
    Allocate,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Lz4,
}

#[derive(Clone, Copy, ValueEnum)]
enum PayloadArg {
    Fill,
    Text,
}

#[derive(Clone, Copy, ValueEnum)]
enum SyncArg {
    Fsync,
    Dsync,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    TolerateTornTail,
    AbsoluteConsistency,
    PointInTime,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable appends/s and latency from N concurrent appenders, against a
    /// raw write+fdatasync group-commit baseline measured in the same run.
    Bench {
        /// Seconds each run appends.
        #[arg(long, default_value_t = 1.0)]
        duration_secs: f64,
        /// Runs of each point, baseline and aiowal interleaved (the table
        /// shows medians and the spread).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// ckpt: a checkpoint every 100 ms, segments recycled; grow: no
        /// checkpoints, the log grows; both.
        #[arg(long, value_enum, default_value = "both")]
        workload: WorkloadArg,
        /// Concurrent appenders, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
        concurrency: Vec<usize>,
        /// Record sizes in bytes, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "100,4096")]
        sizes: Vec<usize>,
        /// I/O backend to measure (`all`: every backend this platform has).
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendArg,
        /// io_uring sync mode.
        #[arg(long, value_enum, default_value = "dsync")]
        uring_sync: SyncArg,
        /// Whether the log writes with O_DIRECT.
        #[arg(long, value_enum, default_value = "auto")]
        direct: DirectArg,
        /// Directory to create the temporary log in (default: the current one).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Segment size in MiB.
        #[arg(long, default_value_t = 64)]
        segment_mib: u64,
        /// How new segments get their space: auto (zeroes, or only
        /// allocated after large batches), written zeroes, or only
        /// allocated (fallocate).
        #[arg(long, value_enum, default_value = "auto")]
        preallocate: PreallocateArg,
        /// What an acknowledged append promises: immediate (durable),
        /// periodic:MS (written; synced at least every MS milliseconds) or
        /// none (written; synced at segment switches).
        #[arg(long, default_value = "immediate", value_parser = parse_durability)]
        durability: aiowal::Durability,
        /// Batch compression: none, or lz4.
        #[arg(long, value_enum, default_value = "none")]
        compression: CompressionArg,
        /// What the records hold: fill (one repeated byte) or text (JSON
        /// rows, every record different: what compression is measured with).
        #[arg(long, value_enum, default_value = "fill")]
        payload: PayloadArg,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Print every run's absolute numbers as CSV instead of the table
        /// (for scripts such as scripts/peers).
        #[arg(long)]
        csv: bool,
    },
    /// How long `open` (recovery) takes on logs of given sizes, warm and with
    /// the page cache dropped, against reading the same files sequentially,
    /// and after a crash.
    BenchOpen {
        /// Log sizes in GiB, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        gib: Vec<f64>,
        /// Record size of the logs written.
        #[arg(long, default_value_t = 4096)]
        record_bytes: usize,
        /// Runs of each measurement (the table gives medians).
        #[arg(long, default_value_t = 2)]
        repeat: usize,
        /// Skip the cold (page cache dropped) measurements, which need root.
        #[arg(long)]
        warm_only: bool,
        /// Directory to create the temporary logs in (default: the current one).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Internal: appends to a log and exits without closing it (bench-open's crash).
    #[command(hide = true)]
    AppendAndDie {
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        records: usize,
        #[arg(long, default_value_t = 4096)]
        record_bytes: usize,
    },
    /// Checks every frame of a log, read-only; exits 1 if it is damaged.
    Verify {
        /// The log directory.
        dir: PathBuf,
        /// Recovery rules to judge by.
        #[arg(long, value_enum, default_value = "tolerate-torn-tail")]
        mode: ModeArg,
    },
    /// Prints the records of a log, read-only.
    Dump {
        /// The log directory.
        dir: PathBuf,
        /// First LSN to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most records to print.
        #[arg(long)]
        limit: Option<usize>,
        /// Print each record's bytes in full, as hex.
        #[arg(long, conflicts_with = "json")]
        hex: bool,
        /// One JSON object per record: lsn, len, crc32, data_hex.
        #[arg(long, conflicts_with = "text")]
        json: bool,
        /// Each record's bytes as text (UTF-8; other bytes and control
        /// characters escaped).
        #[arg(long, conflicts_with = "hex")]
        text: bool,
    },
    /// Makes a log openable: cuts a torn tail (what open would do); with
    /// --force, also cuts at a corruption after copying the damaged segment
    /// aside (records after the corruption are set aside, not deleted).
    Repair {
        /// The log directory.
        dir: PathBuf,
        /// Cut at a corruption too (PointInTime recovery).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aiowal: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error in a command-line user's terms: damage is followed by the
/// commands that deal with it, not by a library enum.
fn describe(e: &aiowal::Error) -> String {
    match e {
        aiowal::Error::Corrupt { segment, offset, lsn, kind } => format!(
            "corrupt log: segment {}, offset {offset}, near LSN {lsn}: {kind}\n\
             `aiowal verify DIR --mode point-in-time` shows what would remain; \
             `aiowal repair DIR --force` cuts there (after copying the damaged segment aside)",
            segment.display()
        ),
        other => other.to_string(),
    }
}

/// A record's bytes as one line of text: UTF-8 shown as is, control
/// characters and bytes that are not UTF-8 escaped (`\n`, `\x00`).
fn as_text_line(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for chunk in data.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Whether `dir` holds any segment file.
fn holds_a_log(dir: &std::path::Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.filter_map(|e| e.ok()).any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.len() == 24 && name.ends_with(".wal") && name[..20].bytes().all(|b| b.is_ascii_digit())
    }))
}

/// For a tool given a directory that holds no log (a mistyped path): says
/// so and returns the exit code; `None` if there is a log.
fn no_log_here(dir: &std::path::Path) -> Option<ExitCode> {
    match holds_a_log(dir) {
        Ok(true) => None,
        Ok(false) => {
            eprintln!("aiowal: {} holds no aiowal log (no segment files)", dir.display());
            Some(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("aiowal: cannot read {}: {e}", dir.display());
            Some(ExitCode::FAILURE)
        }
    }
}

/// Options that fit the log in `dir`: its newest segment's alignment,
/// segment size and record limit, so that a repair prepares segments like
/// the ones the log has (the defaults otherwise).
fn options_for(dir: &std::path::Path) -> Options {
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .filter_map(|p| {
            let mut head = vec![0u8; aiowal::format::SEGMENT_HEADER_LEN];
            let mut f = std::fs::File::open(&p).ok()?;
            std::io::Read::read_exact(&mut f, &mut head).ok()?;
            aiowal::format::SegmentHeader::decode(&head).ok()
        })
        .max_by_key(|h| h.sequence);
    let Some(h) = newest else { return Options::default() };
    let align = u64::from(h.alignment);
    let batch = (2u64 << 20).min(h.segment_bytes - align);
    let room = batch - align - align_up(aiowal::format::BATCH_HEADER_LEN as u64 + 24, align);
    let record =
        if h.record_bytes_max > 0 { u64::from(h.record_bytes_max).min(room) } else { room.min(1 << 20) };
    Options::default()
        .alignment(h.alignment)
        .segment_bytes(h.segment_bytes)
        .batch_bytes_max(u32::try_from(batch).unwrap_or(u32::MAX))
        .max_record_bytes(u32::try_from(record).unwrap_or(1 << 20).max(1))
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Copies a damaged segment next to itself before repair cuts it.
fn copy_aside(segment: &std::path::Path) -> Result<PathBuf, String> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut name = segment.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".damaged-{secs}"));
    let to = segment.with_file_name(name);
    std::fs::copy(segment, &to).map_err(|e| format!("copying {} aside failed: {e}", segment.display()))?;
    Ok(to)
}

fn run(cli: Cli) -> Result<ExitCode, aiowal::Error> {
    match cli.cmd {
        Cmd::Bench {
            duration_secs,
            repeat,
            workload,
            concurrency,
            sizes,
            backend,
            uring_sync,
            direct,
            dir,
            segment_mib,
            preallocate,
            durability,
            compression,
            payload,
            quiet,
            csv,
        } => {
            let compression = match compression {
                CompressionArg::None => aiowal::Compression::None,
                CompressionArg::Lz4 => aiowal::Compression::Lz4,
            };
            if !duration_secs.is_finite() || duration_secs <= 0.0 {
                eprintln!("aiowal: --duration-secs must be a positive number of seconds");
                return Ok(ExitCode::from(2));
            }
            let backends = match backend {
                BackendArg::Auto => vec![Backend::Auto],
                BackendArg::Threaded => vec![Backend::Threaded],
                BackendArg::Uring => vec![Backend::Uring],
                BackendArg::Lio => vec![Backend::Lio],
                BackendArg::All if cfg!(target_os = "linux") => {
                    vec![Backend::Uring, Backend::Threaded, Backend::Lio]
                }
                BackendArg::All if cfg!(target_os = "freebsd") => vec![Backend::Lio, Backend::Threaded],
                BackendArg::All => vec![Backend::Threaded],
            };
            let cfg = bench::Config {
                dir,
                duration: Duration::from_secs_f64(duration_secs),
                concurrency,
                sizes,
                backends,
                segment_bytes: segment_mib << 20,
                progress: !quiet,
                uring_sync: match uring_sync {
                    SyncArg::Fsync => aiowal::UringSync::Fsync,
                    SyncArg::Dsync => aiowal::UringSync::Dsync,
                },
                direct_io: match direct {
                    DirectArg::Auto => aiowal::DirectIo::Auto,
                    DirectArg::On => aiowal::DirectIo::On,
                    DirectArg::Off => aiowal::DirectIo::Off,
                },
                preallocate: match preallocate {
                    PreallocateArg::Auto => aiowal::Preallocate::Auto,
                    PreallocateArg::Zeroes => aiowal::Preallocate::Zeroes,
                    PreallocateArg::Allocate => aiowal::Preallocate::Allocate,
                },
                durability,
                compression,
                payload: match payload {
                    PayloadArg::Fill => bench::Payload::Fill,
                    PayloadArg::Text => bench::Payload::Text,
                },
                repeat,
                workloads: match workload {
                    WorkloadArg::Ckpt => vec![bench::Workload::Checkpointed],
                    WorkloadArg::Grow => vec![bench::Workload::Growing],
                    WorkloadArg::Both => vec![bench::Workload::Checkpointed, bench::Workload::Growing],
                },
            };
            if csv {
                println!("{}", bench::csv_header());
                bench::run(&cfg, |row| println!("{}", bench::format_csv(row)))?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}", bench::environment(&cfg.dir));
            println!(
                "{repeat} runs of {duration_secs} s per point, baseline and aiowal interleaved; ratios are aiowal / baseline of the same runs\n"
            );
            println!("{}", bench::header());
            let rows = bench::run(&cfg, |row| println!("{}", bench::format_row(row)))?;
            println!("\n{}", bench::legend());
            for w in bench::warnings(&rows) {
                println!("WARNING: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchOpen { gib, record_bytes, repeat, warm_only, dir } => {
            if gib.iter().any(|g| !g.is_finite() || *g <= 0.0) || record_bytes == 0 {
                eprintln!("aiowal: --gib takes positive sizes and --record-bytes a positive size");
                return Ok(ExitCode::from(2));
            }
            let cold = !warm_only;
            if cold && std::fs::OpenOptions::new().write(true).open("/proc/sys/vm/drop_caches").is_err() {
                eprintln!(
                    "aiowal: cold measurements drop the page cache, which needs root: run as root or pass --warm-only"
                );
                return Ok(ExitCode::from(2));
            }
            let cfg = bench::RecoveryConfig {
                dir,
                sizes: gib.iter().map(|g| (g * f64::from(1u32 << 30)) as u64).collect(),
                record_bytes,
                repeat,
                cold,
            };
            println!("{}", bench::environment(&cfg.dir));
            println!(
                "{repeat} runs per figure (median); x = throughput of the open / sequential read of the same files, same run\n"
            );
            println!(
                "{:>8} {:>10} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>10} {:>10}",
                "log",
                "records",
                "read w s",
                "open w s",
                "x",
                "read c s",
                "open c s",
                "x",
                "crash w s",
                "crash c s"
            );
            bench::recovery(&cfg, |r| {
                let c = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
                let x = |o: Option<f64>, rd: Option<f64>| match (o, rd) {
                    (Some(o), Some(rd)) => format!("{:.2}x", bench::RecoveryRow::ratio(o, rd)),
                    _ => "-".to_string(),
                };
                println!(
                    "{:>6.2}GiB {:>10} | {:>9.3} {:>9.3} {:>6} | {:>9} {:>9} {:>6} | {:>10.3} {:>10}",
                    r.bytes as f64 / f64::from(1u32 << 30),
                    r.records,
                    r.read.0,
                    r.open.0,
                    format!("{:.2}x", bench::RecoveryRow::ratio(r.open.0, r.read.0)),
                    c(r.read.1),
                    c(r.open.1),
                    x(r.open.1, r.read.1),
                    r.open_after_crash.0,
                    c(r.open_after_crash.1),
                );
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::AppendAndDie { dir, records, record_bytes } => {
            bench::append_and_die(&dir, records, record_bytes)
        }
        Cmd::Verify { dir, mode } => {
            let mode = match mode {
                ModeArg::TolerateTornTail => RecoveryMode::TolerateTornTail,
                ModeArg::AbsoluteConsistency => RecoveryMode::AbsoluteConsistency,
                ModeArg::PointInTime => RecoveryMode::PointInTime,
            };
            if let Some(code) = no_log_here(&dir) {
                return Ok(code);
            }
            let opts = Options::default().recovery_mode(mode);
            let r = aiowal::verify(&dir, &opts)?;
            println!(
                "{}: {} segments, {} records, {} bytes, LSN {}..={}",
                dir.display(),
                r.segments,
                r.records,
                r.bytes,
                r.first_lsn,
                r.last_lsn
            );
            match &r.stop {
                StopReason::Empty => println!("empty log"),
                StopReason::Clean => println!("clean"),
                StopReason::TornTail { segment, offset, lsn, records_cut, cause } => {
                    println!(
                        "torn tail at {}:{offset}, LSN {lsn} ({cause}; {records_cut} later records seen); open will cut it: nothing proves it acknowledged",
                        segment.display()
                    );
                }
                StopReason::PointInTime { segment, offset, kind, .. } => {
                    println!("damaged at {}:{offset} ({kind}); records after it are lost", segment.display());
                    return Ok(ExitCode::FAILURE);
                }
                other => println!("{other:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dump { dir, from, limit, hex, json, text: as_text } => {
            if let Some(code) = no_log_here(&dir) {
                return Ok(code);
            }
            let opts = Options::default();
            let (_, iter) = aiowal::dump(&dir, &opts, Lsn::new(from))?;
            let mut out = std::io::stdout().lock();
            for rec in iter.take(limit.unwrap_or(usize::MAX)) {
                let rec = rec?;
                let data = rec.data();
                if as_text {
                    let line = format!("{} {}", rec.lsn(), as_text_line(data));
                    if writeln!(out, "{line}").is_err() {
                        break;
                    }
                    continue;
                }
                let shown = if hex || json { data.len() } else { 32 };
                let text = data.iter().take(shown).fold(String::new(), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                });
                let crc = crc32fast::hash(data);
                let line = if json {
                    format!(
                        r#"{{"lsn":{},"len":{},"crc32":"{crc:08x}","data_hex":"{text}"}}"#,
                        rec.lsn(),
                        data.len()
                    )
                } else {
                    let more = if data.len() > shown { "..." } else { "" };
                    format!("{} len={} crc32={crc:08x} {text}{more}", rec.lsn(), data.len())
                };
                if writeln!(out, "{line}").is_err() {
                    break; // stdout closed (e.g. piped into head)
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Repair { dir, force } => {
            // Never create a log where the user meant to repair one.
            if let Some(code) = no_log_here(&dir) {
                return Ok(code);
            }
            let mode = if force { RecoveryMode::PointInTime } else { RecoveryMode::TolerateTornTail };
            let opts = options_for(&dir).recovery_mode(mode);
            let before = match aiowal::verify(&dir, &opts) {
                Ok(r) => r,
                Err(aiowal::Error::Corrupt { segment, offset, lsn, kind }) => {
                    eprintln!(
                        "aiowal: corrupt log: segment {}, offset {offset}, near LSN {lsn}: {kind}\nrepair refuses to cut acknowledged data; rerun with --force to cut there (the damaged segment is copied aside first)",
                        segment.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e),
            };
            if let StopReason::PointInTime { segment, offset, .. } = &before.stop {
                match copy_aside(segment) {
                    Ok(copy) => println!(
                        "copied {} to {} before cutting at offset {offset}",
                        segment.display(),
                        copy.display()
                    ),
                    Err(e) => {
                        eprintln!("aiowal: {e}; nothing was changed");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("aiowal: cannot start a runtime: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let report = rt.block_on(async {
                let wal = aiowal::Wal::open(&dir, opts.backend(Backend::Threaded)).await?;
                let report = wal.recovery_report().clone();
                wal.close().await?;
                Ok::<_, aiowal::Error>(report)
            })?;
            match &report.stop {
                StopReason::Clean | StopReason::Empty => println!("nothing to repair: the log ends cleanly"),
                StopReason::TornTail { segment, offset, lsn, cause, .. } => {
                    println!("cut a torn tail at {}:{offset}, LSN {lsn} ({cause})", segment.display());
                }
                StopReason::PointInTime { segment, offset, kind, .. } => {
                    println!("cut at {}:{offset} ({kind})", segment.display());
                }
                other => println!("{other:?}"),
            }
            for p in &report.set_aside {
                println!("set aside {}", p.display());
            }
            println!("{} records kept, LSN {}..={}", report.records, report.first_lsn, report.last_lsn);
            Ok(ExitCode::SUCCESS)
        }
    }
}
