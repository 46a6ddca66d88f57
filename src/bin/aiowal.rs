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
enum DirectArg {
    Auto,
    On,
    Off,
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
        #[arg(long, default_value_t = 2.0)]
        duration_secs: f64,
        /// Concurrent appenders, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
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
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
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
        #[arg(long)]
        json: bool,
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
            eprintln!("aiowal: {e}");
            ExitCode::FAILURE
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
            concurrency,
            sizes,
            backend,
            uring_sync,
            direct,
            dir,
            segment_mib,
            quiet,
        } => {
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
            };
            println!("{}", bench::environment(&cfg.dir));
            println!(
                "each run {duration_secs} s, checkpoint (truncate_before) every 100 ms; ratios are aiowal / baseline from the same run\n"
            );
            println!("{}", bench::header());
            bench::run(&cfg, |row| println!("{}", bench::format_row(row)))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { dir, mode } => {
            let mode = match mode {
                ModeArg::TolerateTornTail => RecoveryMode::TolerateTornTail,
                ModeArg::AbsoluteConsistency => RecoveryMode::AbsoluteConsistency,
                ModeArg::PointInTime => RecoveryMode::PointInTime,
            };
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
        Cmd::Dump { dir, from, limit, hex, json } => {
            let opts = Options::default();
            let (_, iter) = aiowal::dump(&dir, &opts, Lsn::new(from))?;
            let mut out = std::io::stdout().lock();
            for rec in iter.take(limit.unwrap_or(usize::MAX)) {
                let rec = rec?;
                let data = rec.data();
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
            let mode = if force { RecoveryMode::PointInTime } else { RecoveryMode::TolerateTornTail };
            let opts = options_for(&dir).recovery_mode(mode);
            let before = match aiowal::verify(&dir, &opts) {
                Ok(r) => r,
                Err(e @ aiowal::Error::Corrupt { .. }) => {
                    eprintln!(
                        "aiowal: {e}\nrepair refuses to cut acknowledged data; rerun with --force to cut there (the damaged segment is copied aside first)"
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
