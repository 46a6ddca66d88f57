//! `aiowal-lab`: the guest side of the real-kernel crash and fault lab
//! (`lab/run` builds a kernel, an initramfs and this program into a QEMU
//! guest and boots it once per job; see lab/README.md).
//!
//! A power-loss job runs a workload on a file system over a `dm-log-writes`
//! target, which logs every write the kernel sends to the device. The
//! workload marks the log with what it has acknowledged (`a<LSN>`) and with
//! every truncation it starts (`t<LSN>`). The replayer then rebuilds, at
//! every flush or FUA point of the log, what the device must hold there
//! (the writes that completed flushes and FUA writes made durable, nothing
//! more: see logwrites.rs), and at a sample of points adds a random subset
//! of the writes sent but not yet durable; at each it mounts a throwaway snapshot (the file system replays
//! its journal), verifies and opens the log, and checks that every record
//! acknowledged before that point is there, byte for byte, with dense LSNs.
//!
//! A fault job runs the workload over `dm-flakey` and makes the device fail
//! writes (`error_writes`), fail everything (a `dm-error` table) or
//! silently drop writes (`drop_writes`) part-way; the log must poison
//! without acknowledging anything unsynced. With the device healthy again
//! the log is reopened on the same mount (the page cache as the failure
//! left it), appended to and closed; then, remounted from the device, it
//! must hold every acknowledged record, or (for dropped writes, which no
//! log can survive) say that something is missing rather than open
//! shorter.
//!
//! Every line meant for the host starts with `LAB `.

#[path = "../examples/kv/store.rs"]
mod store;

mod dm;
mod logwrites;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aiowal::{Backend, DirectIo, Lsn, Options, Preallocate, UringSync, Wal};
use logwrites::Log;

/// The guest's disks: the file system's device, the write log, the replay
/// target and the snapshots' copy-on-write store.
const DATA: &str = "/dev/vda";
const LOGDEV: &str = "/dev/vdb";
const REPLAY: &str = "/dev/vdc";
const COW: &str = "/dev/vdd";
const MNT: &str = "/mnt/data";
const CHECK_MNT: &str = "/mnt/check";
const ACKS: &str = "/tmp/acks";

macro_rules! say {
    ($($t:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "LAB {}", format!($($t)*));
        let _ = out.flush();
    }};
}

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fs {
    Ext4,
    Xfs,
    Btrfs,
}

impl Fs {
    fn parse(s: &str) -> Res<Fs> {
        match s {
            "ext4" => Ok(Fs::Ext4),
            "xfs" => Ok(Fs::Xfs),
            "btrfs" => Ok(Fs::Btrfs),
            _ => Err(format!("unknown file system {s:?} (ext4, xfs, btrfs)")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
            Fs::Btrfs => "btrfs",
        }
    }
    /// mkfs without discards (the replay starts from zeroes) and without
    /// lazy initialisation (which would keep writing after mount).
    fn mkfs(self, dev: &str) -> Res<()> {
        match self {
            Fs::Ext4 => {
                run("mkfs.ext4", &["-F", "-q", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", dev])
            }
            Fs::Xfs => run("mkfs.xfs", &["-f", "-q", "-K", dev]),
            Fs::Btrfs => run("mkfs.btrfs", &["-f", "-q", "-K", dev]),
        }
    }
    fn mount(self, dev: &str, at: &str) -> Res<()> {
        std::fs::create_dir_all(at).map_err(err("mkdir"))?;
        let opts = match self {
            Fs::Ext4 => "data=ordered",
            Fs::Xfs | Fs::Btrfs => "defaults",
        };
        run("mount", &["-t", self.name(), "-o", opts, dev, at])
    }
}

/// A backend with its settings, named like `uring-dsync-dio`.
#[derive(Debug, Clone)]
struct BackendSpec {
    name: String,
    backend: Backend,
    sync: UringSync,
    direct: DirectIo,
    /// `-alloc`: segments only allocated (`Preallocate::Allocate`), so the
    /// log writes into unwritten extents.
    preallocate: Preallocate,
}

impl BackendSpec {
    fn parse(s: &str) -> Res<BackendSpec> {
        let (base, preallocate) = match s.strip_suffix("-alloc") {
            Some(b) => (b, Preallocate::Allocate),
            None => (s, Preallocate::Zeroes),
        };
        let parts: Vec<&str> = base.split('-').collect();
        let (backend, sync, io) = match parts.as_slice() {
            ["uring", "dsync", io] => (Backend::Uring, UringSync::Dsync, *io),
            ["uring", "fsync", io] => (Backend::Uring, UringSync::Fsync, *io),
            ["threaded", io] => (Backend::Threaded, UringSync::Dsync, *io),
            ["lio", io] => (Backend::Lio, UringSync::Dsync, *io),
            _ => {
                return Err(format!(
                    "unknown backend {s:?} (uring-dsync-dio, uring-fsync-buf, threaded-dio, lio-buf, ..., each optionally with -alloc)"
                ));
            }
        };
        let direct = match io {
            "dio" => DirectIo::On,
            "buf" => DirectIo::Off,
            _ => return Err(format!("{s:?}: end with -dio or -buf")),
        };
        Ok(BackendSpec { name: s.to_string(), backend, sync, direct, preallocate })
    }

    fn options(&self) -> Options {
        Options::default()
            .backend(self.backend)
            .uring_sync(self.sync)
            .direct_io(self.direct)
            .preallocate(self.preallocate)
            // Small segments: even the quick pass's short workloads rotate,
            // truncate and recycle several times.
            .segment_bytes(64 << 10)
            .batch_bytes_max(16 << 10)
            .max_record_bytes(8 << 10)
            .segments_recycled_max(2)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Workload {
    /// Concurrent appends and atomic pairs, with rotations and truncations.
    Append,
    /// Appends, a process exit without close, then a reopen (recovery's own
    /// writes are logged and crashed into) and more appends.
    OpenCrash,
    /// The kv example's store: puts and checkpoints (snapshot file, rename,
    /// directory sync, `truncate_before`).
    Checkpoint,
    /// dm-flakey fails every write part-way.
    FlakeyError,
    /// dm-flakey drops writes (reporting success) for a while.
    FlakeyDrop,
    /// The device becomes a dm-error target: every read and write fails.
    DmError,
}

impl Workload {
    fn parse(s: &str) -> Res<Workload> {
        match s {
            "append" => Ok(Workload::Append),
            "open-crash" => Ok(Workload::OpenCrash),
            "checkpoint" => Ok(Workload::Checkpoint),
            "flakey-error" => Ok(Workload::FlakeyError),
            "flakey-drop" => Ok(Workload::FlakeyDrop),
            "dm-error" => Ok(Workload::DmError),
            _ => Err(format!(
                "unknown workload {s:?} (append, open-crash, checkpoint, flakey-error, flakey-drop, dm-error)"
            )),
        }
    }
}

/// One job: `fs:backend:workload`.
struct Job {
    fs: Fs,
    backend: BackendSpec,
    workload: Workload,
    name: String,
}

impl Job {
    fn parse(s: &str) -> Res<Job> {
        let p: Vec<&str> = s.split(':').collect();
        let [fs, backend, workload] = p.as_slice() else {
            return Err(format!("job {s:?}: expected fs:backend:workload"));
        };
        Ok(Job {
            fs: Fs::parse(fs)?,
            backend: BackendSpec::parse(backend)?,
            workload: Workload::parse(workload)?,
            name: s.to_string(),
        })
    }
}

/// How much each job does.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Appends acknowledged before the workload stops.
    appends: u64,
    /// Flush points replayed with a random subset of the next writes.
    reorder: usize,
    /// Check every n-th flush point only (1: every one).
    every: usize,
}

fn run(prog: &str, args: &[&str]) -> Res<()> {
    let out = Command::new(prog).args(args).output().map_err(err(prog))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{prog} {}: {} {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
}

fn sectors(dev: &str) -> Res<u64> {
    let name = dev.trim_start_matches("/dev/");
    let s = std::fs::read_to_string(format!("/sys/block/{name}/size")).map_err(err(dev))?;
    s.trim().parse().map_err(err(dev))
}

/// dmsetup without udev: it makes the /dev/mapper nodes itself and must
/// not wait for udev to acknowledge (there is none in the guest).
fn dmsetup(args: &[&str]) -> Res<()> {
    let mut all = vec!["--noudevsync", "--verifyudev"];
    all.extend_from_slice(args);
    run("dmsetup", &all)
}

// ---------------------------------------------------------------- records

/// The bytes of record `i` of task `task` (the same as tests/common's).
/// Record `i` of task `task`: from 16 bytes on it starts with the two
/// (so a recovered record tells whose it is), then pseudo-random bytes.
fn record(task: u64, i: u64, len: usize) -> Vec<u8> {
    let mut x = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut r: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    if len >= 16 {
        r[..8].copy_from_slice(&task.to_le_bytes());
        r[8..16].copy_from_slice(&i.to_le_bytes());
    }
    r
}

/// The task and index a recovered record says it is, if it has them and
/// its bytes are that record's.
fn ident(data: &[u8]) -> Option<(u64, u64)> {
    let task = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let i = u64::from_le_bytes(data.get(8..16)?.try_into().ok()?);
    (data == record(task, i, data.len())).then_some((task, i))
}

/// The second record of an atomic pair is `i + PAIR` of the first.
const PAIR: u64 = 1_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `Ack::task` of a record known by its CRC32 (in `i`) rather than by how
/// to rebuild it.
const CRC: u64 = u64::MAX;

/// An acknowledged record: its LSN and how to rebuild its bytes.
#[derive(Debug, Clone, Copy)]
struct Ack {
    lsn: u64,
    task: u64,
    i: u64,
    len: usize,
}

impl Ack {
    /// Whether `data` is this record's bytes.
    fn matches(&self, data: &[u8]) -> bool {
        if self.task == CRC {
            data.len() == self.len && u64::from(crc32fast::hash(data)) == self.i
        } else {
            data == record(self.task, self.i, self.len)
        }
    }
}

fn write_acks(path: &str, acks: &[Ack], append: bool) -> Res<()> {
    let mut f = File::options()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .map_err(err(path))?;
    let mut s = String::new();
    for a in acks {
        s.push_str(&format!("{} {} {} {}\n", a.lsn, a.task, a.i, a.len));
    }
    f.write_all(s.as_bytes()).map_err(err(path))
}

fn read_acks(path: &str) -> Res<BTreeMap<u64, Ack>> {
    let f = File::open(path).map_err(err(path))?;
    let mut out = BTreeMap::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(err(path))?;
        let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if let [lsn, task, i, len] = v[..] {
            out.insert(lsn, Ack { lsn, task, i, len: len as usize });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- workload (child process)

/// Sends `a<W>` marks as the acknowledged watermark grows, `t<X>` before
/// truncations: one message at a time, so marks are logged in order.
struct Marks {
    dm: Option<dm::Messenger>,
    acked: Mutex<u64>,
}

impl Marks {
    fn acked(&self, w: u64) {
        let mut last = self.acked.lock().unwrap();
        if w > *last {
            *last = w;
            if let Some(dm) = &self.dm {
                if let Err(e) = dm.send(&format!("mark a{w}")) {
                    say!("FAIL mark a{w} failed: {e}");
                    std::process::exit(3);
                }
            }
        }
    }
    fn truncating(&self, x: u64) {
        let _last = self.acked.lock().unwrap();
        if let Some(dm) = &self.dm {
            if let Err(e) = dm.send(&format!("mark t{x}")) {
                say!("FAIL mark t{x} failed: {e}");
                std::process::exit(3);
            }
        }
    }
}

/// The child process: runs one phase of a workload on `dir`, writing every
/// acknowledgement to `ACKS`.
fn workload_main(args: &[String]) -> Res<()> {
    let [dir, backend, workload, phase, dmname, appends, ..] = args else {
        return Err("workload DIR BACKEND WORKLOAD PHASE DMNAME APPENDS".into());
    };
    let spec = BackendSpec::parse(backend)?;
    let workload = Workload::parse(workload)?;
    let phase: u64 = phase.parse().map_err(err("phase"))?;
    let appends: u64 = appends.parse().map_err(err("appends"))?;
    let marks = Arc::new(Marks {
        dm: if dmname == "-" { None } else { Some(dm::Messenger::new(dmname).map_err(err("dm control"))?) },
        acked: Mutex::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(err("runtime"))?;
    rt.block_on(async move {
        match workload {
            Workload::Checkpoint => checkpoint_workload(dir, &spec, appends, &marks).await,
            Workload::FlakeyError | Workload::FlakeyDrop | Workload::DmError if phase == 2 => {
                reopen_workload(dir, &spec, workload).await
            }
            Workload::FlakeyError | Workload::FlakeyDrop | Workload::DmError => {
                flakey_workload(dir, &spec, workload, dmname, appends).await
            }
            Workload::Append | Workload::OpenCrash => {
                append_workload(dir, &spec, phase, appends, marks).await
            }
        }
    })
}

async fn append_workload(
    dir: &str,
    spec: &BackendSpec,
    phase: u64,
    appends: u64,
    marks: Arc<Marks>,
) -> Res<()> {
    say!("phase {phase}: opening {dir}");
    let wal = Wal::open(dir, spec.options()).await.map_err(err("open"))?;
    let report = wal.recovery_report();
    say!(
        "phase {phase}: opened with {} records ({} copied forward, {:?}), {}",
        report.records,
        report.copied_forward,
        report.stop,
        io_mode(&wal)
    );
    // Every record open hands back is durable (open syncs what it copies
    // forward before returning): they count as acknowledged from here on,
    // by their checksum, whether phase 1 saw them acknowledged or not.
    let mut recovered = Vec::new();
    for r in wal.read_from(Lsn::FIRST).map_err(err("read"))? {
        let r = r.map_err(err("read"))?;
        recovered.push(Ack {
            lsn: r.lsn().get(),
            task: CRC,
            i: u64::from(crc32fast::hash(r.data())),
            len: r.data().len(),
        });
    }
    if !recovered.is_empty() {
        write_acks(ACKS, &recovered, true)?;
    }
    marks.acked(wal.durable_lsn().get());
    let done = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let truncations = Arc::new(AtomicU64::new(0));
    let checkpointer = {
        let (wal, marks, truncations) = (wal.clone(), Arc::clone(&marks), Arc::clone(&truncations));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let keep = wal.durable_lsn().get().saturating_sub(40);
                if keep > wal.first_lsn().get() {
                    marks.truncating(keep);
                    if wal.truncate_before(Lsn::new(keep)).await.is_err() {
                        return;
                    }
                    truncations.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (wal, marks, done, acks) =
                (wal.clone(), Arc::clone(&marks), Arc::clone(&done), Arc::clone(&acks));
            tokio::spawn(async move {
                let task = phase * 100 + t;
                let mut rng = Rng(task + 7);
                let mut i = 0u64;
                while done.load(Ordering::Relaxed) < appends {
                    let len = rng.below(3000) as usize;
                    let r = if i % 7 == 3 {
                        // An atomic pair, each naming itself (16 bytes or more).
                        let (len, len2) = (32 + len, 16 + len / 2);
                        let recs = [record(task, i, len), record(task, i + PAIR, len2)];
                        wal.append_batch(&recs).await.map(|r| {
                            let l = r.first().get();
                            vec![
                                Ack { lsn: l, task, i, len },
                                Ack { lsn: l + 1, task, i: i + PAIR, len: len2 },
                            ]
                        })
                    } else {
                        wal.append(&record(task, i, len))
                            .await
                            .map(|l| vec![Ack { lsn: l.get(), task, i, len }])
                    };
                    match r {
                        Ok(a) => {
                            acks.lock().unwrap().extend(a);
                            marks.acked(wal.durable_lsn().get());
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(format!("append: {e}")),
                    }
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(err("task"))??;
    }
    checkpointer.abort();
    let _ = checkpointer.await;
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    write_acks(ACKS, &acks, phase > 1)?;
    say!("phase {phase}: at the end: {}", describe(Path::new(dir), &spec.options()));
    say!(
        "phase {phase}: {} records acknowledged, durable LSN {}, {} truncations, newest segment #{}",
        acks.len(),
        wal.durable_lsn(),
        truncations.load(Ordering::Relaxed),
        newest_segment(dir)
    );
    if phase == 1 && std::env::var_os("AIOWAL_LAB_NO_CLOSE").is_some() {
        // As a crash of the process would: no close, no clean-end mark.
        std::process::exit(0);
    }
    wal.close().await.map_err(err("close"))
}

/// The highest segment number in `dir`: how many segments the log has
/// rotated through (spares prepared ahead included).
fn newest_segment(dir: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".wal")?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// What the log does, as opposed to what it was asked to do (the uring
/// backend may sync with fdatasync where RWF_DSYNC is not trusted).
fn io_mode(wal: &Wal) -> String {
    let sync = wal.uring_sync().map(|s| format!(", {s:?}")).unwrap_or_default();
    format!("backend {}{sync}, O_DIRECT {}", wal.backend_name(), wal.direct_io())
}

/// The kv store: one writer, a put per key, a checkpoint every 40 puts.
/// The ack file lists acknowledged puts as `n 0 n len`.
async fn checkpoint_workload(dir: &str, spec: &BackendSpec, appends: u64, marks: &Marks) -> Res<()> {
    let kv = store::Store::open_with(dir, spec.options()).await.map_err(err("kv open"))?;
    say!("kv store opened, {}", io_mode(kv.wal()));
    let mut acks = Vec::new();
    for n in 0..appends {
        let len = 10 + (n as usize * 37) % 900;
        kv.put(format!("k{n}").as_bytes(), &record(9, n, len)).await.map_err(err("put"))?;
        acks.push(Ack { lsn: n + 1, task: 9, i: n, len });
        marks.acked(n + 1);
        if n % 40 == 39 {
            kv.checkpoint().await.map_err(err("checkpoint"))?;
        }
    }
    write_acks(ACKS, &acks, false)?;
    kv.close().await.map_err(err("kv close"))
}

/// Appends until the device (switched to failing or dropping writes after
/// a third of them) makes the log fail, or, for dropped writes, heals the
/// device again and goes on; writes the acknowledgements.
async fn flakey_workload(
    dir: &str,
    spec: &BackendSpec,
    workload: Workload,
    dmname: &str,
    appends: u64,
) -> Res<()> {
    let wal = Wal::open(dir, spec.options()).await.map_err(err("open"))?;
    say!("opened, {}", io_mode(&wal));
    let sectors = sectors(DATA)?;
    let table = |feature: &str| match feature {
        "" => format!("0 {sectors} linear {DATA} 0"),
        "error" => format!("0 {sectors} error"),
        _ => format!("0 {sectors} flakey {DATA} 0 0 1 1 {feature}"),
    };
    let switch = |feature: &str| -> Res<()> {
        dmsetup(&["suspend", "--nolockfs", dmname])?;
        dmsetup(&["load", dmname, "--table", &table(feature)])?;
        dmsetup(&["resume", dmname])
    };
    let mut acks = Vec::new();
    let mut failed = None;
    let feature = match workload {
        Workload::FlakeyError => "error_writes",
        Workload::DmError => "error",
        _ => "drop_writes",
    };
    let fails = workload != Workload::FlakeyDrop;
    for i in 0..appends {
        if i == appends / 3 {
            switch(feature)?;
            say!("device now {feature}, after {} acknowledged appends", acks.len());
        }
        if workload == Workload::FlakeyDrop && i == 2 * appends / 3 {
            switch("")?;
            say!("device healthy again, after {} acknowledged appends", acks.len());
        }
        let len = 100 + (i as usize * 131) % 2000;
        match wal.append(&record(1, i, len)).await {
            Ok(l) => acks.push(Ack { lsn: l.get(), task: 1, i, len }),
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    if !fails && acks.len() < (2 * appends / 3) as usize {
        // The log failed while the device dropped writes: heal it anyway,
        // so the reopen and the remount run on a healthy device.
        switch("")?;
        say!("device healthy again, after the log failed");
    }
    write_acks(ACKS, &acks, false)?;
    match (&failed, fails) {
        (Some(e), true) => say!("log failed as it must: {e}"),
        (None, true) => {
            return Err("the log kept acknowledging on a device failing every write".into());
        }
        (Some(e), false) => say!("log failed: {e}"),
        (None, false) => say!("the log acknowledged every append (the device lied)"),
    }
    if fails {
        // The log poisoned: nothing more is acknowledged.
        if wal.append(b"after").await.is_ok() {
            return Err("an append after the failure was acknowledged".into());
        }
        switch("")?;
    }
    drop(wal);
    Ok(())
}

/// Phase 2 of a fault job: the device is healthy again and the file system
/// still mounted, its page cache as the failure left it (after a failed
/// writeback Linux keeps the pages readable but clean: what they show may
/// not be on the disk). Reopens the log there, as a process restarted by a
/// supervisor would, checks every acknowledged record, appends more (also
/// acknowledged) and closes. The job then remounts from the device and
/// checks again: what this open wrote must not have built on bytes the disk
/// never got. A file system that refuses the reopen (shut down or read-only
/// after the errors) is reported, not a failure.
async fn reopen_workload(dir: &str, spec: &BackendSpec, workload: Workload) -> Res<()> {
    let wal = match Wal::open(dir, spec.options()).await {
        Ok(w) => w,
        // The device failed (it did not lie): every acknowledged record is
        // on it or in the page cache, and nothing after them was
        // acknowledged, so a corruption error would be a false alarm.
        Err(e @ aiowal::Error::Corrupt { .. }) if workload != Workload::FlakeyDrop => {
            return Err(format!("reopen on the same mount called the log corrupt: {e}"));
        }
        // The file system refusing (shut down, read-only, unreadable after
        // the errors) is reported; anything else from aiowal is a failure.
        Err(
            e @ (aiowal::Error::Io { .. } | aiowal::Error::NoSpace { .. } | aiowal::Error::Corrupt { .. }),
        ) => {
            say!("reopen on the same mount refused: {e}");
            return Ok(());
        }
        Err(e) => return Err(format!("reopen on the same mount: {e}")),
    };
    let acks = read_acks(ACKS)?;
    let mut got = BTreeMap::new();
    for r in wal.read_from(Lsn::FIRST).map_err(err("read"))? {
        let r = r.map_err(err("reopen read"))?;
        got.insert(r.lsn().get(), r.data().to_vec());
    }
    for (lsn, a) in &acks {
        if !got.get(lsn).is_some_and(|d| a.matches(d)) {
            return Err(format!("reopen on the same mount: acknowledged LSN {lsn} missing or different"));
        }
    }
    say!("reopened on the same mount: {} records, {}", got.len(), io_mode(&wal));
    let mut more = Vec::new();
    for i in 0..20u64 {
        let len = 50 + (i as usize * 97) % 3000;
        let lsn = wal.append(&record(2, i, len)).await.map_err(err("append after reopen"))?;
        more.push(Ack { lsn: lsn.get(), task: 2, i, len });
    }
    write_acks(ACKS, &more, true)?;
    wal.close().await.map_err(err("close after reopen"))
}

// ---------------------------------------------------------------- checks

/// What recovery must give back at a point of the log.
struct Expect<'a> {
    acks: &'a BTreeMap<u64, Ack>,
    /// Everything at or below this LSN was acknowledged.
    acked: u64,
    /// The newest truncation started (nothing below it is required).
    truncated: u64,
}

/// Opens the log in `dir` and checks it against `e`. Returns how many
/// acknowledged records were checked.
///
/// An error starting `detected: ` is the log saying that something is
/// missing: a typed corruption error, or a cut reported by recovery at or
/// before the first missing acknowledged record. That is what dropped
/// writes must produce; for every other job it is a failure like any.
fn check_log(dir: &Path, opts: &Options, e: &Expect<'_>) -> Res<u64> {
    let typed = |what: &'static str| {
        move |err: aiowal::Error| match &err {
            aiowal::Error::Corrupt { .. } => format!("detected: {what}: {err}"),
            // The file system's own checksums caught it (btrfs): a typed
            // I/O error naming the segment, not a crash (the mapping is
            // read in first: see Vfs::map).
            aiowal::Error::Io { source, .. } if source.raw_os_error() == Some(libc::EIO) => {
                format!("detected: by the file system: {what}: {err}")
            }
            _ => format!("{what}: {err}"),
        }
    };
    let report = aiowal::verify(dir, opts).map_err(typed("verify"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(err("runtime"))?;
    rt.block_on(async {
        let wal = Wal::open(dir, opts.clone().backend(Backend::Threaded)).await.map_err(typed("open"))?;
        // Whatever the check finds, the log is closed, so the file system
        // unmounts.
        let checked = async {
            let first = wal.first_lsn().get();
            let mut next = first;
            let mut got = BTreeMap::new();
            for r in wal.read_from(Lsn::FIRST).map_err(err("read"))? {
                let r = r.map_err(err("read"))?;
                if r.lsn().get() != next {
                    return Err(format!("LSN {} after {} (not dense)", r.lsn(), next.saturating_sub(1)));
                }
                next += 1;
                got.insert(r.lsn().get(), r.data().to_vec());
            }
            // Atomic pairs (append workload tasks, numbered from 100), whether
            // acknowledged or not: all or nothing.
            for (&lsn, d) in &got {
                let Some((task, i)) = ident(d).filter(|&(task, _)| task >= 100) else { continue };
                let partner = if i >= PAIR {
                    (lsn > first).then(|| (lsn - 1, i - PAIR))
                } else if i % 7 == 3 {
                    Some((lsn + 1, i + PAIR))
                } else {
                    None
                };
                if let Some((at, want)) = partner {
                    if got.get(&at).and_then(|d| ident(d)) != Some((task, want)) {
                        return Err(format!(
                            "LSN {lsn} (task {task} record {i}) is half of an atomic pair without the other half"
                        ));
                    }
                }
            }
            let from = e.truncated.max(1);
            if e.acked >= from && first > from {
                return Err(format!(
                    "log starts at LSN {first}, but only LSNs below {from} were truncated (acknowledged up to {})",
                    e.acked
                ));
            }
            let mut checked = 0;
            for (lsn, a) in e.acks.range(from..=e.acked.max(from)) {
                if *lsn > e.acked {
                    break;
                }
                match got.get(lsn) {
                    None => {
                        let reported = matches!(
                            &report.stop,
                            aiowal::StopReason::TornTail { lsn: cut, .. } if cut.get() <= *lsn
                        );
                        return Err(format!(
                            "{}acknowledged LSN {lsn} lost (recovered {}..{}, verify said {:?})",
                            if reported { "detected: torn-tail cut reported by recovery: " } else { "" },
                            first,
                            next.saturating_sub(1),
                            report.stop
                        ));
                    }
                    Some(d) if !a.matches(d) => {
                        return Err(format!("acknowledged LSN {lsn} came back different"));
                    }
                    Some(_) => checked += 1,
                }
            }
    Ok(checked)
        }
        .await;
        let closed = wal.close().await.map_err(err("close"));
        checked.and_then(|n| closed.map(|()| n))
    })
}

/// The kv store at a point: every acknowledged put is there.
fn check_kv(dir: &Path, opts: &Options, e: &Expect<'_>) -> Res<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(err("runtime"))?;
    rt.block_on(async {
        let kv = store::Store::open_with(dir, opts.clone().backend(Backend::Threaded))
            .await
            .map_err(err("kv open"))?;
        let checked = (|| {
            let mut checked = 0;
            for n in 0..e.acked {
                let Some(a) = e.acks.get(&(n + 1)) else { continue };
                match kv.get(format!("k{n}").as_bytes()) {
                    Some(v) if a.matches(&v) => checked += 1,
                    Some(_) => return Err(format!("acknowledged put k{n} came back different")),
                    None => return Err(format!("acknowledged put k{n} lost ({} keys recovered)", kv.len())),
                }
            }
            Ok(checked)
        })();
        let closed = kv.close().await.map_err(err("kv close"));
        checked.and_then(|n| closed.map(|()| n))
    })
}

/// The files under `root` with their sizes, and what `verify` says of each
/// log directory among them.
fn describe(root: &Path, opts: &Options) -> String {
    fn walk(d: &Path, out: &mut Vec<String>, logs: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            out.push(format!("{}: unreadable", d.display()));
            return;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => {
                    out.push(format!("{}/", p.display()));
                    walk(&p, out, logs);
                }
                Ok(m) => {
                    if p.extension().is_some_and(|x| x == "wal")
                        && !logs.iter().any(|l| Some(l.as_path()) == p.parent())
                    {
                        logs.push(p.parent().unwrap_or(d).to_path_buf());
                    }
                    // A segment's header and where its written bytes end.
                    let seg = std::fs::read(&p)
                        .ok()
                        .filter(|_| p.to_string_lossy().contains(".wal"))
                        .map(|b| {
                            let used = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
                            match aiowal::format::SegmentHeader::decode(&b) {
                                Ok(h) => format!(
                                    " [seq {} first LSN {} flags {} data to {used}]",
                                    h.sequence, h.first_lsn, h.flags
                                ),
                                Err(e) => format!(" [no header: {e}; data to {used}]"),
                            }
                        })
                        .unwrap_or_default();
                    out.push(format!("{} {}{seg}", p.display(), m.len()));
                }
                Err(err) => out.push(format!("{}: {err}", p.display())),
            }
        }
    }
    let (mut out, mut logs) = (Vec::new(), Vec::new());
    walk(root, &mut out, &mut logs);
    for l in logs {
        match aiowal::verify(&l, opts) {
            Ok(r) => out.push(format!("verify {}: {r:?}", l.display())),
            Err(e) => out.push(format!("verify {}: {e}", l.display())),
        }
    }
    let s = out.join("; ");
    if s.chars().count() > 4000 { format!("{}...", s.chars().take(4000).collect::<String>()) } else { s }
}

/// Mounts a snapshot of the replay device (so the file system's journal
/// replay writes nowhere that matters), applies `extra` writes to it
/// first, and runs the check.
fn check_point(job: &Job, log: &Log, extra: &[&logwrites::Entry], e: &Expect<'_>) -> Res<u64> {
    let size = sectors(REPLAY)?;
    dmsetup(&["create", "snap", "--table", &format!("0 {size} snapshot {REPLAY} {COW} N 8")])?;
    let result = (|| {
        if !extra.is_empty() {
            let snap = File::options().write(true).open("/dev/mapper/snap").map_err(err("snapshot"))?;
            for w in extra {
                snap.write_all_at(&log.data(w).map_err(err("log"))?, w.sector * log.block)
                    .map_err(err("snapshot write"))?;
            }
            snap.sync_all().map_err(err("snapshot sync"))?;
        }
        job.fs.mount("/dev/mapper/snap", CHECK_MNT).map_err(|e| format!("mount: {e}"))?;
        let dir = Path::new(CHECK_MNT).join("log");
        let r = match job.workload {
            Workload::Checkpoint => check_kv(&dir, &job.backend.options(), e),
            _ if !dir.exists() => {
                if e.acked > 0 {
                    Err(format!("no log directory, though LSN {} was acknowledged", e.acked))
                } else {
                    Ok(0)
                }
            }
            _ => check_log(&dir, &job.backend.options(), e),
        };
        // What the point held, to tell a file-system loss from a log's.
        let r = r.map_err(|msg| {
            format!("{msg}\n    on disk: {}", describe(Path::new(CHECK_MNT), &job.backend.options()))
        });
        let u = run("umount", &[CHECK_MNT]);
        r.and_then(|n| u.map(|()| n))
    })();
    let removed = dmsetup(&["remove", "snap"]);
    result.and_then(|n| removed.map(|()| n))
}

/// Replays the log of a power-loss job onto the replay device, checking at
/// every flush point (every `scale.every`-th) and at `scale.reorder`
/// sampled points with a random subset of the following writes.
fn replay(job: &Job, acks: &BTreeMap<u64, Ack>, scale: Scale) -> Res<()> {
    let log = Log::open(File::open(LOGDEV).map_err(err(LOGDEV))?).map_err(err("log"))?;
    let dev = File::options().write(true).open(REPLAY).map_err(err(REPLAY))?;
    let points: Vec<usize> =
        log.entries.iter().enumerate().filter(|(_, e)| e.is_point()).map(|(i, _)| i).collect();
    let mkfs_done = log
        .entries
        .iter()
        .position(|e| e.mark.as_deref() == Some("mkfs"))
        .ok_or("no mkfs mark in the log")?;
    // The marks: before each entry index, the acknowledged and truncated watermarks.
    let (mut acked, mut truncated) = (vec![0u64; log.entries.len() + 1], vec![0u64; log.entries.len() + 1]);
    for (i, e) in log.entries.iter().enumerate() {
        let (mut a, mut t) = (acked[i], truncated[i]);
        if let Some(m) = &e.mark {
            if let Some(v) = m.strip_prefix('a').and_then(|v| v.parse().ok()) {
                a = a.max(v);
            }
            if let Some(v) = m.strip_prefix('t').and_then(|v| v.parse().ok()) {
                t = t.max(v);
            }
        }
        acked[i + 1] = a;
        truncated[i + 1] = t;
    }
    // dm-log-writes stops logging, quietly, when its log device fills up
    // or an allocation fails; it logs this mark only when it is removed
    // with everything logged. Without it the replay would check a prefix.
    if log.entries.last().and_then(|e| e.mark.as_deref()) != Some("dm-log-writes-end") {
        return Err("the write log does not end with dm-log-writes-end: logging stopped early".into());
    }
    // Where each flush was submitted; at each point, the newest submission
    // among the flushes completed by then: every entry before it is
    // durable there.
    let mut submitted = std::collections::HashMap::new();
    for (i, e) in log.entries.iter().enumerate() {
        if e.flags & logwrites::SUBMIT != 0 {
            submitted.insert(e.flush_number().ok_or("a SUBMIT entry with data")?, i);
        }
    }
    if submitted.is_empty() && points.iter().any(|&p| log.entries[p].flags & logwrites::FLUSH != 0) {
        return Err("the write log has flushes but no SUBMIT entries: the stock dm-log-writes module was loaded, not the lab's (lab/dm-log-writes-submit.patch)".into());
    }
    let mut covered = vec![0usize; points.len()];
    let mut newest = 0usize;
    for (k, &p) in points.iter().enumerate() {
        let e = &log.entries[p];
        if e.flags & logwrites::FLUSH != 0 {
            let n = e
                .flush_number()
                .ok_or_else(|| format!("entry {p}: a flush with data (dm core splits those)"))?;
            let at = *submitted
                .get(&n)
                .ok_or_else(|| format!("entry {p}: flush {n} completed but was never submitted"))?;
            newest = newest.max(at);
        }
        covered[k] = newest;
    }
    let checked_points: Vec<usize> = points.iter().copied().filter(|&p| p > mkfs_done).collect();
    // Reordered points are sampled among those with writes before the next
    // point, from a seed that differs per job.
    let mut rng = Rng(0x1ab5eed ^ u64::from(crc32fast::hash(job.name.as_bytes())));
    // The writes that may or may not be on the device at p: from the
    // covering submission to the next point, less the FUA writes completed
    // by p (with overlapping flushes some lie before p).
    let with_window: Vec<usize> = points
        .iter()
        .enumerate()
        .filter(|&(k, &p)| {
            let next = points.get(k + 1).copied().unwrap_or(log.entries.len());
            p > mkfs_done
                && log.entries[covered[k]..next]
                    .iter()
                    .enumerate()
                    .any(|(i, e)| e.is_write() && !(e.flags & logwrites::FUA != 0 && covered[k] + i <= p))
        })
        .map(|(_, &p)| p)
        .collect();
    let reorder_at: std::collections::HashSet<usize> = (0..scale.reorder.min(with_window.len()))
        .map(|_| with_window[rng.below(with_window.len() as u64) as usize])
        .collect();
    say!(
        "replay job={}: {} log entries, {} flush/FUA points after mkfs, {} marks",
        job.name,
        log.entries.len(),
        checked_points.len(),
        log.entries.iter().filter(|e| e.mark.is_some()).count()
    );
    let started = Instant::now();
    let (mut applied, mut npoints, mut nreordered, mut records, mut failures) =
        (0usize, 0u64, 0u64, 0u64, 0u64);
    for (k, &p) in points.iter().enumerate() {
        // The replay device holds everything before the newest covering
        // submission; the FUA writes completed since go on the snapshot.
        for e in &log.entries[applied..covered[k]] {
            log.apply(e, &dev).map_err(err("replay"))?;
        }
        applied = applied.max(covered[k]);
        if p <= mkfs_done {
            continue;
        }
        let next = points.get(k + 1).copied().unwrap_or(log.entries.len());
        let durable_fua: Vec<&logwrites::Entry> = log.entries[applied..=p]
            .iter()
            .filter(|e| e.is_write() && e.flags & logwrites::FUA != 0)
            .collect();
        // Marks up to the next point: acknowledged after this point's
        // flush completed, so covered by it.
        // Truncations: at the point itself only those marked before it can
        // have removed anything; with the next writes applied, also those
        // marked before the next point.
        let expect = Expect { acks, acked: acked[next], truncated: truncated[p + 1] };
        let expect_reordered = Expect { acks, acked: acked[next], truncated: truncated[next] };
        let checked_here = npoints % scale.every as u64 == 0 || k + 1 == points.len();
        if checked_here || reorder_at.contains(&p) {
            dev.sync_all().map_err(err("replay sync"))?;
        }
        if checked_here {
            match check_point(job, &log, &durable_fua, &expect) {
                Ok(n) => records += n,
                Err(e) => {
                    failures += 1;
                    say!(
                        "FAIL job={} point=entry {} (durable: entries before {} and {} FUA writes since) acked={} truncated={}: {e}",
                        job.name,
                        p,
                        applied,
                        durable_fua.len(),
                        expect.acked,
                        expect.truncated
                    );
                    // The write log around the point, to tell what the
                    // device had been sent and flushed when.
                    let lo = applied.min(p).saturating_sub(25);
                    let hi = (next + 8).min(log.entries.len());
                    for (i, en) in log.entries.iter().enumerate().take(hi).skip(lo) {
                        say!(
                            "  entry {i}{}: flags {:#x} sector {} blocks {}{}",
                            if i == p { " (the point)" } else { "" },
                            en.flags,
                            en.sector,
                            en.blocks,
                            en.mark.as_deref().map(|m| format!(" mark {m}")).unwrap_or_default()
                                + if en.flags & logwrites::SUBMIT != 0 { " (flush submitted)" } else { "" }
                        );
                    }
                }
            }
        }
        npoints += 1;
        if reorder_at.contains(&p) {
            // The writes logged since the covering submission that are not
            // durable (not FUA writes completed by the point): a random
            // subset of them, in log order, with the durable FUA writes.
            let window: Vec<&logwrites::Entry> = log.entries[applied..next]
                .iter()
                .enumerate()
                .filter(|&(i, e)| e.is_write() && !(e.flags & logwrites::FUA != 0 && applied + i <= p))
                .map(|(_, e)| e)
                .collect();
            let mut subset: Vec<&logwrites::Entry> = Vec::new();
            for (i, e) in log.entries[applied..next].iter().enumerate() {
                let durable = e.is_write() && e.flags & logwrites::FUA != 0 && applied + i <= p;
                if durable || (e.is_write() && rng.below(2) == 0) {
                    subset.push(e);
                }
            }
            match check_point(job, &log, &subset, &expect_reordered) {
                Ok(n) => records += n,
                Err(e) => {
                    failures += 1;
                    say!(
                        "FAIL job={} point=entry {} plus {} of the {} following writes, acked={}: {e}",
                        job.name,
                        p,
                        subset.len() - durable_fua.len(),
                        window.len(),
                        expect.acked
                    );
                }
            }
            nreordered += 1;
        }
        if npoints % 50 == 0 {
            say!(
                "progress job={}: {npoints}/{} points, {:.0} s",
                job.name,
                checked_points.len(),
                started.elapsed().as_secs_f64()
            );
        }
        if failures >= 5 {
            return Err(format!("{failures} failed points; stopping"));
        }
    }
    say!(
        "RESULT job={} points={} checked={} reordered={} acked={} records_checked={} failures={} seconds={:.0}",
        job.name,
        npoints,
        npoints.div_ceil(scale.every as u64),
        nreordered,
        acks.len(),
        records,
        failures,
        started.elapsed().as_secs_f64()
    );
    if failures > 0 { Err(format!("{failures} failed points")) } else { Ok(()) }
}

// ---------------------------------------------------------------- jobs

fn child(job: &Job, phase: u64, dmname: &str, appends: u64, env: &[(&str, &str)]) -> Res<()> {
    let exe = std::env::current_exe().map_err(err("exe"))?;
    let dir = format!("{MNT}/log");
    let mut c = Command::new(exe)
        .args([
            "workload",
            &dir,
            &job.backend.name,
            workload_name(job.workload),
            &phase.to_string(),
            dmname,
            &appends.to_string(),
        ])
        .envs(env.iter().copied())
        .spawn()
        .map_err(err("workload"))?;
    // A watchdog: a workload that hangs is shown (where each of its threads
    // waits in the kernel), then killed.
    let deadline = Instant::now()
        + Duration::from_secs(
            std::env::var("AIOWAL_LAB_WATCHDOG").ok().and_then(|v| v.parse().ok()).unwrap_or(600),
        );
    let st = loop {
        if let Some(st) = c.try_wait().map_err(err("workload"))? {
            break st;
        }
        if Instant::now() > deadline {
            dump_threads(c.id());
            let _ = c.kill();
            return Err(format!("workload phase {phase} hung (threads above); killed"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if st.success() { Ok(()) } else { Err(format!("workload phase {phase} failed: {st}")) }
}

/// Where each thread of process `pid` waits: its name, wchan and kernel stack.
fn dump_threads(pid: u32) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        say!(
            "HANG thread {} {} wchan={}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan")
        );
        for line in read("stack").lines().take(12) {
            say!("HANG   {line}");
        }
    }
}

fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Append => "append",
        Workload::OpenCrash => "open-crash",
        Workload::Checkpoint => "checkpoint",
        Workload::FlakeyError => "flakey-error",
        Workload::FlakeyDrop => "flakey-drop",
        Workload::DmError => "dm-error",
    }
}

fn power_loss_job(job: &Job, scale: Scale) -> Res<()> {
    let size = sectors(DATA)?;
    say!("step: dmsetup create lw (log-writes)");
    dmsetup(&["create", "lw", "--table", &format!("0 {size} log-writes {DATA} {LOGDEV}")])?;
    say!("step: mkfs.{}", job.fs.name());
    job.fs.mkfs("/dev/mapper/lw")?;
    dm::Messenger::new("lw").and_then(|m| m.send("mark mkfs")).map_err(err("mark"))?;
    job.fs.mount("/dev/mapper/lw", MNT)?;
    say!("step: workload");
    let started = Instant::now();
    let r = match job.workload {
        Workload::OpenCrash => child(job, 1, "lw", scale.appends / 2, &[("AIOWAL_LAB_NO_CLOSE", "1")])
            .and_then(|()| child(job, 2, "lw", scale.appends / 2, &[])),
        _ => child(job, 1, "lw", scale.appends, &[]),
    };
    let workload_secs = started.elapsed().as_secs_f64();
    run("umount", &[MNT])?;
    dmsetup(&["remove", "lw"])?;
    r?;
    let acks = read_acks(ACKS)?;
    say!("workload job={} acknowledged {} records in {workload_secs:.1} s", job.name, acks.len());
    replay(job, &acks, scale)
}

fn fault_job(job: &Job, scale: Scale) -> Res<()> {
    let size = sectors(DATA)?;
    dmsetup(&["create", "fl", "--table", &format!("0 {size} linear {DATA} 0")])?;
    job.fs.mkfs("/dev/mapper/fl")?;
    job.fs.mount("/dev/mapper/fl", MNT)?;
    child(job, 1, "fl", scale.appends, &[])?;
    child(job, 2, "fl", scale.appends, &[])?;
    // The file system may have given up on the failing device: unmount
    // (forcibly if need be) and mount again on the healthy one.
    if run("umount", &[MNT]).is_err() {
        run("umount", &["-f", MNT]).map_err(|e| format!("unmount after the fault: {e}"))?;
    }
    let acks = read_acks(ACKS)?;
    let acked = acks.keys().max().copied().unwrap_or(0);
    // Whatever the page cache still holds is gone: read the device afresh.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    if let Err(e) = job.fs.mount("/dev/mapper/fl", MNT) {
        if job.workload == Workload::FlakeyDrop {
            // The device threw away the file system's own metadata writes
            // too: no file system, let alone a log on it, survives that.
            say!(
                "RESULT job={} acked={} outcome=file-system-lost (the lying device left no mountable file system: {e}) failures=0",
                job.name,
                acks.len()
            );
            dmsetup(&["remove", "fl"])?;
            return Ok(());
        }
        return Err(format!("remount on the healthy device: {e}"));
    }
    let dir = Path::new(MNT).join("log");
    let expect = Expect { acks: &acks, acked, truncated: 0 };
    let outcome = check_log(&dir, &job.backend.options(), &expect);
    run("umount", &[MNT])?;
    dmsetup(&["remove", "fl"])?;
    match (job.workload, outcome) {
        (_, Ok(n)) => {
            say!(
                "RESULT job={} acked={} records_checked={n} outcome=all-acknowledged-recovered failures=0",
                job.name,
                acks.len()
            );
            Ok(())
        }
        // Dropped writes: no log can bring them back; recovery must say
        // something is missing (a typed corruption error, or a reported
        // cut), which check_log shows as an open or verify error.
        (Workload::FlakeyDrop, Err(e)) if e.starts_with("detected: ") => {
            say!("RESULT job={} acked={} outcome=loss-detected ({e}) failures=0", job.name, acks.len());
            Ok(())
        }
        (_, Err(e)) => {
            say!("FAIL job={}: {e}", job.name);
            say!("RESULT job={} acked={} failures=1", job.name, acks.len());
            Err(e)
        }
    }
}

/// The plan from the kernel command line: `aiowal_lab=JOB[,JOB...]` and
/// `aiowal_lab_scale=APPENDS/REORDER/EVERY`.
fn plan() -> Res<(Vec<Job>, Scale)> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(err("/proc/cmdline"))?;
    let mut jobs = Vec::new();
    let mut scale = Scale { appends: 300, reorder: 8, every: 1 };
    for w in cmdline.split_whitespace() {
        if let Some(v) = w.strip_prefix("aiowal_lab=") {
            for j in v.split(',') {
                jobs.push(Job::parse(j)?);
            }
        }
        if let Some(v) = w.strip_prefix("aiowal_lab_scale=") {
            let n: Vec<u64> = v.split('/').filter_map(|x| x.parse().ok()).collect();
            if let [a, r, e] = n[..] {
                scale = Scale { appends: a, reorder: r as usize, every: e.max(1) as usize };
            }
        }
    }
    if jobs.is_empty() {
        return Err("no aiowal_lab=... on the kernel command line".into());
    }
    Ok((jobs, scale))
}

fn guest_main() -> Res<()> {
    let (jobs, scale) = plan()?;
    let mut failed = 0;
    for job in &jobs {
        say!(
            "job {} (appends {}, reorder {}, every {})",
            job.name,
            scale.appends,
            scale.reorder,
            scale.every
        );
        let r = match job.workload {
            Workload::FlakeyError | Workload::FlakeyDrop | Workload::DmError => fault_job(job, scale),
            _ => power_loss_job(job, scale),
        };
        if let Err(e) = r {
            say!("FAIL job={}: {e}", job.name);
            failed += 1;
        }
    }
    if failed > 0 { Err(format!("{failed} of {} jobs failed", jobs.len())) } else { Ok(()) }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("guest") => guest_main(),
        Some("workload") => workload_main(&args[2..]),
        _ => {
            Err("usage: aiowal-lab guest | aiowal-lab workload ... (run by lab/run inside the guest)".into())
        }
    };
    match r {
        Ok(()) => {
            if args.get(1).map(String::as_str) == Some("guest") {
                say!("DONE ok");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            say!(
                "{} {e}",
                if args.get(1).map(String::as_str) == Some("guest") { "DONE failed:" } else { "ERROR" }
            );
            ExitCode::FAILURE
        }
    }
}
