//! A model of FreeBSD's POSIX AIO and kqueue, so that the kqueue-driven
//! lio driver (`driver.rs`) runs on Linux in tests. Each rule cites the
//! FreeBSD 14 function it comes from (sys/kern/vfs_aio.c, kern_event.c;
//! tokio's io/bsd/poll_aio.rs for the registrations).
//!
//! Jobs run on a model "AIO daemon" thread that really writes (`pwrite`)
//! and syncs (`fdatasync`) the files, after a delay that keeps jobs of
//! several lists in flight at once. Readiness registrations stand for
//! tokio's `Aio`: like it, they are never deregistered (`Aio` "doesn't
//! implement Drop"), so the model counts every one ever created.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::driver::{Reactor, Readiness};
use super::{Kernel, Notify};
use crate::sync::lock;

/// The kqueue descriptor the model's registrations name.
const MODEL_KQ: i32 = -7;

/// How the modelled kernel behaves.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `vfs.aio.max_aio_queue_per_proc` (256 by default): jobs queued and
    /// not yet reaped, finished ones included (`aio_aqueue`).
    pub queue_limit: usize,
    /// Whether the file system is local (`MNT_LOCAL`); if not, every job
    /// is refused with EOPNOTSUPP (`aio_queue_file`).
    pub local: bool,
    /// How long each job takes.
    pub delay: Duration,
    /// The write jobs (counted from 1) that fail with EIO when they run.
    pub fail_writes: Vec<u64>,
    /// The sync jobs (counted from 1) that fail with EIO when they run.
    pub fail_syncs: Vec<u64>,
    /// The write jobs (counted from 1, among those queued) that the kernel
    /// refuses at queueing time, with this error.
    pub refuse_writes: Vec<(u64, i32)>,
    /// `aio_fsync(O_DSYNC)` unsupported (FreeBSD before 13.0: EINVAL).
    pub no_dsync: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue_limit: 256,
            local: true,
            delay: Duration::from_micros(200),
            fail_writes: Vec::new(),
            fail_syncs: Vec::new(),
            refuse_writes: Vec::new(),
            no_dsync: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Filter {
    Lio,
    Aio,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Write { fd: i32, buf: usize, len: usize, off: i64 },
    Sync { fd: i32 },
}

#[derive(Debug)]
struct Job {
    op: Op,
    seqno: u64,
    /// (status, error) once it ran (KAIOCB_FINISHED).
    finished: Option<(isize, i32)>,
    /// The list that queued it.
    lio: Option<u64>,
    /// A sync waits for this many earlier writes to the same file.
    pending: usize,
}

/// An `aioliojob`.
#[derive(Debug)]
struct ListJob {
    /// The user's list array address: the list's kevent ident.
    ident: usize,
    /// Queued jobs, plus one while `kern_lio_listio` runs.
    count: usize,
    finished: usize,
    /// LIOJ_KEVENT_POSTED.
    posted: bool,
}

#[derive(Debug)]
struct Knote {
    udata: usize,
    /// `kn_ptr.p_lio`: the list this knote was attached to (EVFILT_LIO).
    lio: Option<u64>,
    /// The control block (EVFILT_AIO).
    job: Option<usize>,
}

#[derive(Debug, Default)]
struct Reg {
    waker: Option<Waker>,
    /// Consecutive ready answers without a pause (tokio's coop budget).
    streak: u32,
}

#[derive(Debug, Default)]
struct State {
    config: Config,
    /// Jobs the kernel knows (queued or finished, not reaped): `kaio_all`.
    jobs: HashMap<usize, Job>,
    /// Control blocks `aio_aqueue` refused: status -1 and the error stored
    /// in the block (read back by `kern_aio_error`'s fallback).
    refused: HashMap<usize, i32>,
    /// Control blocks `aio_return` released: (status, error) written back.
    reaped: HashMap<usize, (isize, i32)>,
    lists: HashMap<u64, ListJob>,
    next_list: u64,
    knotes: HashMap<(usize, Filter), Knote>,
    regs: HashMap<usize, Reg>,
    registrations: u64,
    run_queue: VecDeque<usize>,
    seqno: u64,
    writes_queued: u64,
    writes_run: u64,
    syncs_run: u64,
    spurious_wakeups: u64,
    /// Jobs refused with EAGAIN (the queue was full).
    eagain: u64,
    violations: Vec<String>,
    shutdown: bool,
}

struct Inner {
    state: Mutex<State>,
    /// Jobs finished or queued.
    changed: Condvar,
}

/// The modelled kernel and kqueue; dropping it stops its daemon thread.
pub(crate) struct Model {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("lio::Model")
    }
}

impl Model {
    pub(crate) fn new(config: Config) -> Arc<Model> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State { config, next_list: 1, ..State::default() }),
            changed: Condvar::new(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new().name("lio-model-aiod".into()).spawn(move || daemon(&weak)).unwrap();
        Arc::new(Model { inner })
    }

    /// The kernel side, for the driver.
    pub(crate) fn kernel(&self) -> Arc<ModelKernel> {
        Arc::new(ModelKernel(Arc::clone(&self.inner)))
    }

    /// The reactor side, for the driver.
    pub(crate) fn reactor(&self) -> ModelReactor {
        ModelReactor(Arc::clone(&self.inner))
    }

    /// Readiness registrations ever created (tokio never releases one).
    pub(crate) fn registrations(&self) -> u64 {
        lock(&self.inner.state).registrations
    }

    /// Wake-ups that found the operation not done (readiness cleared again).
    pub(crate) fn spurious_wakeups(&self) -> u64 {
        lock(&self.inner.state).spurious_wakeups
    }

    /// Write and sync jobs the daemon ran.
    pub(crate) fn jobs_run(&self) -> (u64, u64) {
        let s = lock(&self.inner.state);
        (s.writes_run, s.syncs_run)
    }

    /// Ways the driver broke the kernel's rules.
    pub(crate) fn violations(&self) -> Vec<String> {
        lock(&self.inner.state).violations.clone()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        lock(&self.inner.state).shutdown = true;
        self.inner.changed.notify_all();
    }
}

/// The model's AIO daemon: runs jobs in order, each after the delay.
fn daemon(inner: &Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let (cb, op, delay) = {
            let mut s = lock(&inner.state);
            loop {
                if s.shutdown {
                    return;
                }
                // A sync runs once the writes before it are done
                // (`aio_queue_file`: LIO_SYNC jobs wait on `pending`).
                let runnable =
                    s.run_queue.iter().position(|cb| s.jobs.get(cb).is_some_and(|j| j.pending == 0));
                if let Some(i) = runnable {
                    let cb = s.run_queue.remove(i).unwrap_or_default();
                    let op = s.jobs.get(&cb).map(|j| j.op);
                    if let Some(op) = op {
                        break (cb, op, s.config.delay);
                    }
                    continue;
                }
                s = inner
                    .changed
                    .wait_timeout(s, Duration::from_millis(50))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        };
        std::thread::sleep(delay);
        let outcome = execute(&inner, op);
        finish(&inner, cb, outcome);
    }
}

fn execute(inner: &Inner, op: Op) -> (isize, i32) {
    let (fail, run) = {
        let mut s = lock(&inner.state);
        match op {
            Op::Write { .. } => {
                s.writes_run += 1;
                (s.config.fail_writes.contains(&s.writes_run), s.writes_run)
            }
            Op::Sync { .. } => {
                s.syncs_run += 1;
                (s.config.fail_syncs.contains(&s.syncs_run), s.syncs_run)
            }
        }
    };
    let _ = run;
    if fail {
        return (-1, libc::EIO);
    }
    match op {
        Op::Write { fd, buf, len, off } => {
            // SAFETY: the driver promised the buffer lives until the job is
            // reaped (a freed buffer here is the bug the model is for).
            let n = unsafe { libc::pwrite(fd, buf as *const libc::c_void, len, off) };
            if n < 0 {
                (-1, std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
            } else {
                (n, 0)
            }
        }
        Op::Sync { fd } => {
            // SAFETY: a plain system call on a descriptor the driver keeps open.
            let r = unsafe { libc::fdatasync(fd) };
            if r < 0 {
                (-1, std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
            } else {
                (0, 0)
            }
        }
    }
}

/// `aio_bio_done_notify`: the job finished; its list may be complete.
fn finish(inner: &Inner, cb: usize, outcome: (isize, i32)) {
    let mut wake = Vec::new();
    {
        let mut s = lock(&inner.state);
        let Some(job) = s.jobs.get_mut(&cb) else { return };
        job.finished = Some(outcome);
        let (lio, seqno, op) = (job.lio, job.seqno, job.op);
        if let Op::Write { fd, .. } = op {
            // Release the syncs queued after it on the same file.
            for j in s.jobs.values_mut() {
                if let Op::Sync { fd: sfd } = j.op {
                    if sfd == fd && j.seqno > seqno && j.finished.is_none() && j.pending > 0 {
                        j.pending -= 1;
                    }
                }
            }
        }
        if let Some(id) = lio {
            if let Some(l) = s.lists.get_mut(&id) {
                l.finished += 1;
                if l.count == l.finished {
                    // KNOTE_LOCKED(&lj->klist, 1) with LIOJ_KEVENT_POSTED.
                    l.posted = true;
                }
            }
        }
        for k in s.knotes.values() {
            let fires = match (k.lio, k.job) {
                (Some(l), _) => Some(l) == lio && s.lists.get(&l).is_some_and(|l| l.posted),
                (_, Some(j)) => j == cb,
                _ => false,
            };
            if fires {
                wake.push(k.udata);
            }
        }
        for token in wake.iter() {
            if let Some(w) = s.regs.get_mut(token).and_then(|r| r.waker.take()) {
                w.wake();
            }
        }
    }
    inner.changed.notify_all();
}

/// The kernel calls, as FreeBSD 14 answers them.
pub(crate) struct ModelKernel(Arc<Inner>);

impl State {
    /// Notes a broken rule (the first few in full).
    fn violation(&mut self, msg: String) {
        if self.violations.len() < 5 {
            self.violations.push(msg);
        } else if let Some(last) = self.violations.last_mut() {
            *last = format!("... and more ({})", msg);
        }
    }

    /// `aio_aqueue`'s checks for one job, then queueing it. The error for
    /// a refused job is stored in its control block (`err1: store_error`).
    fn aqueue(&mut self, cb: usize, op: Op, lio: Option<u64>) -> Result<(), i32> {
        // max_queue_count / max_aio_queue_per_proc; finished, unreaped jobs count.
        if self.jobs.len() >= self.config.queue_limit {
            self.refused.insert(cb, libc::EAGAIN);
            self.eagain += 1;
            return Err(libc::EAGAIN);
        }
        // aio_queue_file: no AIO on a file system without MNT_LOCAL
        // (unless vfs.aio.enable_unsafe).
        if !self.config.local {
            self.refused.insert(cb, libc::EOPNOTSUPP);
            return Err(libc::EOPNOTSUPP);
        }
        if let Op::Write { .. } = op {
            self.writes_queued += 1;
            let n = self.writes_queued;
            if let Some(&(_, e)) = self.config.refuse_writes.iter().find(|(k, _)| *k == n) {
                self.refused.insert(cb, e);
                return Err(e);
            }
        }
        if self.jobs.contains_key(&cb) {
            self.violation(format!("control block {cb:#x} submitted again before it was reaped"));
        }
        self.seqno += 1;
        let pending = match op {
            // aio_queue_file (LIO_SYNC): wait for earlier pending writes to the file.
            Op::Sync { fd } => self
                .jobs
                .values()
                .filter(|j| j.finished.is_none() && matches!(j.op, Op::Write { fd: f, .. } if f == fd))
                .count(),
            Op::Write { .. } => 0,
        };
        self.refused.remove(&cb);
        self.reaped.remove(&cb);
        self.jobs.insert(cb, Job { op, seqno: self.seqno, finished: None, lio, pending });
        self.run_queue.push_back(cb);
        Ok(())
    }

    /// `kqueue_register` for a non-fd filter: an existing knote with the
    /// same (ident, filter) is modified (udata overwritten) and the new
    /// source is NOT attached; otherwise a new knote attaches to it.
    fn kqueue_register(
        &mut self,
        ident: usize,
        filter: Filter,
        udata: usize,
        lio: Option<u64>,
        job: Option<usize>,
    ) -> bool {
        if let Some(k) = self.knotes.get_mut(&(ident, filter)) {
            k.udata = udata;
            return false;
        }
        self.knotes.insert((ident, filter), Knote { udata, lio, job });
        true
    }

    /// Frees a list whose count dropped to zero (`knlist_delete` drops its knote).
    fn free_list(&mut self, id: u64) {
        if let Some(l) = self.lists.remove(&id) {
            let key = (l.ident, Filter::Lio);
            if self.knotes.get(&key).is_some_and(|k| k.lio == Some(id)) {
                self.knotes.remove(&key);
            }
        }
    }
}

fn cb_op(cb: *const libc::aiocb) -> Op {
    // SAFETY: the driver passes valid control blocks.
    let c = unsafe { &*cb };
    Op::Write { fd: c.aio_fildes, buf: c.aio_buf as usize, len: c.aio_nbytes, off: c.aio_offset }
}

impl Kernel for ModelKernel {
    /// `kern_lio_listio` with LIO_NOWAIT.
    unsafe fn lio_listio(&self, list: &[*mut libc::aiocb], notify: Notify) -> i32 {
        let ident = list.as_ptr() as usize;
        let mut s = lock(&self.0.state);
        if let Some(old) = s.lists.values().find(|l| l.ident == ident) {
            let msg = format!(
                "list array {ident:#x} reused while the list submitted from it still has {} unreaped jobs (kqueue_register would reuse its knote)",
                old.count
            );
            s.violation(msg);
        }
        let id = s.next_list;
        s.next_list += 1;
        // lj->lioj_count = 1: an extra count while queueing.
        s.lists.insert(id, ListJob { ident, count: 1, finished: 0, posted: false });
        if let Notify::Kevent { token, .. } = notify {
            s.kqueue_register(ident, Filter::Lio, token, Some(id), None);
        }
        let (mut nerror, mut nagain) = (0, 0);
        for &cb in list {
            match s.aqueue(cb as usize, cb_op(cb), Some(id)) {
                Ok(()) => {
                    if let Some(l) = s.lists.get_mut(&id) {
                        l.count += 1;
                    }
                }
                Err(libc::EAGAIN) => nagain += 1,
                Err(_) => nerror += 1,
            }
        }
        let mut wake = None;
        if let Some(l) = s.lists.get_mut(&id) {
            if l.count - 1 == l.finished {
                l.posted = true;
                wake = s.knotes.get(&(ident, Filter::Lio)).filter(|k| k.lio == Some(id)).map(|k| k.udata);
            }
        }
        let free = s.lists.get_mut(&id).is_some_and(|l| {
            l.count -= 1;
            l.count == 0
        });
        if free {
            s.free_list(id);
        }
        if let Some(w) = wake.and_then(|t| s.regs.get_mut(&t)).and_then(|r| r.waker.take()) {
            w.wake();
        }
        drop(s);
        self.0.changed.notify_all();
        if nerror > 0 {
            libc::EIO
        } else if nagain > 0 {
            libc::EAGAIN
        } else {
            0
        }
    }

    /// `kern_aio_error`.
    unsafe fn aio_error(&self, cb: *const libc::aiocb) -> i32 {
        let s = lock(&self.0.state);
        let cb = cb as usize;
        if let Some(j) = s.jobs.get(&cb) {
            return j.finished.map_or(libc::EINPROGRESS, |(_, e)| e);
        }
        // The fallback reads status and error back from the control block.
        if let Some(&e) = s.refused.get(&cb) {
            return e;
        }
        match s.reaped.get(&cb) {
            Some(&(-1, e)) => e,
            _ => libc::EINVAL,
        }
    }

    /// `kern_aio_return`: only finished jobs; releases them (`aio_free_entry`).
    unsafe fn aio_return(&self, cb: *mut libc::aiocb) -> Result<isize, i32> {
        let mut s = lock(&self.0.state);
        let cb = cb as usize;
        let Some((status, error)) = s.jobs.get(&cb).and_then(|j| j.finished) else {
            return Err(libc::EINVAL);
        };
        let job = s.jobs.remove(&cb);
        s.reaped.insert(cb, (status, error));
        s.knotes.retain(|_, k| k.job != Some(cb));
        if let Some(id) = job.and_then(|j| j.lio) {
            let free = s.lists.get_mut(&id).is_some_and(|l| {
                l.count -= 1;
                l.finished -= 1;
                l.count == 0
            });
            if free {
                s.free_list(id);
            }
        }
        drop(s);
        self.0.changed.notify_all();
        if error != 0 { Err(error) } else { Ok(status) }
    }

    /// `kern_aio_fsync` (O_DSYNC since 13.0) through `aio_aqueue`.
    unsafe fn aio_fsync(&self, cb: *mut libc::aiocb, notify: Notify) -> i32 {
        let mut s = lock(&self.0.state);
        if s.config.no_dsync {
            return libc::EINVAL;
        }
        // SAFETY: the driver passes a valid control block.
        let fd = unsafe { (*cb).aio_fildes };
        if let Err(e) = s.aqueue(cb as usize, Op::Sync { fd }, None) {
            return e;
        }
        if let Notify::Kevent { token, .. } = notify {
            s.kqueue_register(cb as usize, Filter::Aio, token, None, Some(cb as usize));
        }
        drop(s);
        self.0.changed.notify_all();
        0
    }

    unsafe fn aio_suspend(&self, list: &[*const libc::aiocb]) {
        let mut s = lock(&self.0.state);
        loop {
            let any_done =
                list.iter().any(|&cb| s.jobs.get(&(cb as usize)).is_none_or(|j| j.finished.is_some()));
            if any_done || s.shutdown {
                return;
            }
            s = self.0.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn listio_max(&self) -> usize {
        // AIO_LISTIO_MAX in sys/sys/aio.h (not enforced by the kernel).
        16
    }

    /// `fstatfs`'s MNT_LOCAL.
    fn local_file_system(&self, _fd: i32) -> Result<bool, i32> {
        Ok(lock(&self.0.state).config.local)
    }
}

/// Registrations standing for tokio's `Aio`.
pub(crate) struct ModelReactor(Arc<Inner>);

impl Reactor for ModelReactor {
    type Reg = ModelReg;

    fn register(&self) -> std::io::Result<ModelReg> {
        let mut s = lock(&self.0.state);
        s.registrations += 1;
        let token = usize::try_from(s.registrations).unwrap_or(usize::MAX);
        s.regs.insert(token, Reg::default());
        Ok(ModelReg { inner: Arc::clone(&self.0), token })
    }
}

/// One registration: readiness comes from the knotes whose udata is its token.
pub(crate) struct ModelReg {
    inner: Arc<Inner>,
    token: usize,
}

impl Readiness for ModelReg {
    type Event = ();

    fn notify(&self) -> Notify {
        Notify::Kevent { kq: MODEL_KQ, token: self.token }
    }

    /// Level-triggered knotes (`filt_lio` reports LIOJ_KEVENT_POSTED until
    /// the list is freed; no EV_CLEAR) report again at every reactor turn;
    /// like tokio's cooperative budget, a long run of ready answers yields.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut s = lock(&self.inner.state);
        let token = self.token;
        let active = s.knotes.values().any(|k| {
            k.udata == token
                && match (k.lio, k.job) {
                    (Some(l), _) => s.lists.get(&l).is_some_and(|l| l.posted),
                    (_, Some(j)) => s.jobs.get(&j).is_some_and(|j| j.finished.is_some()),
                    _ => false,
                }
        });
        let Some(reg) = s.regs.get_mut(&token) else { return Poll::Pending };
        if active {
            reg.streak += 1;
            if reg.streak < 32 {
                return Poll::Ready(Ok(()));
            }
            reg.streak = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        reg.streak = 0;
        reg.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn clear_ready(&self, _ev: ()) {
        lock(&self.inner.state).spurious_wakeups += 1;
    }
}

#[cfg(test)]
mod tests {
    //! The lio driver over the model: the FreeBSD defects the kernel's rules
    //! expose (a list's kevent keyed by the array's address, registrations
    //! tokio never releases, EAGAIN storms, non-local file systems, failed
    //! writes and syncs), through whole logs.
    use std::time::Instant;

    use super::*;
    use crate::options::LioModel;
    use crate::{Backend, DirectIo, Error, IoOp, Lsn, Options, Wal};

    fn opts(model: &Arc<Model>) -> Options {
        let mut o = Options::default()
            .backend(Backend::Lio)
            .segment_bytes(1 << 20)
            .batch_bytes_max(64 << 10)
            .max_record_bytes(4096)
            .direct_io(DirectIo::Off);
        o.lio_model = Some(LioModel(Arc::clone(model)));
        o
    }

    fn rt(time: bool) -> tokio::runtime::Runtime {
        let mut b = tokio::runtime::Builder::new_current_thread();
        if time {
            b.enable_time();
        }
        b.build().unwrap()
    }

    /// `logs` logs on one current-thread runtime, each appending `per_task`
    /// records from `tasks` tasks; the runtime runs on its own thread so a
    /// hang is seen as one (a timeout) whatever the driver does. Returns the
    /// records each log acknowledged, after a reopen read them all back.
    fn append_concurrently(
        model: &Arc<Model>,
        logs: usize,
        tasks: u64,
        per_task: u64,
        time: bool,
    ) -> Result<u64, String> {
        let m = Arc::clone(model);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let model = m;
            let runtime = rt(time);
            let out = runtime.block_on(async {
                let dirs: Vec<tempfile::TempDir> = (0..logs).map(|_| tempfile::tempdir().unwrap()).collect();
                let mut wals = Vec::new();
                for d in &dirs {
                    wals.push(Wal::open(d.path(), opts(&model)).await.map_err(|e| e.to_string())?);
                }
                let mut hs = Vec::new();
                for (l, wal) in wals.iter().enumerate() {
                    for t in 0..tasks {
                        let wal = wal.clone();
                        hs.push(tokio::spawn(async move {
                            for i in 0..per_task {
                                let rec = format!("log {l} task {t} record {i}");
                                wal.append(rec.as_bytes()).await?;
                            }
                            Ok::<_, Error>(())
                        }));
                    }
                }
                for h in hs {
                    h.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
                }
                let mut total = 0;
                for (wal, d) in wals.into_iter().zip(&dirs) {
                    wal.close().await.map_err(|e| e.to_string())?;
                    let wal = Wal::open(d.path(), opts(&model)).await.map_err(|e| e.to_string())?;
                    total += wal.read_from(Lsn::FIRST).map_err(|e| e.to_string())?.count() as u64;
                    wal.close().await.map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(total)
            });
            let _ = tx.send(out);
            // A hung runtime is leaked with its thread rather than joined.
            std::mem::forget(runtime);
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => r,
            Err(_) => Err(format!(
                "hung: {} spurious wake-ups, violations {:?}",
                model.spurious_wakeups(),
                model.violations()
            )),
        }
    }

    fn assert_clean(model: &Model) {
        let v = model.violations();
        assert!(v.is_empty(), "the driver broke the kernel's rules: {}", v.join("; "));
    }

    #[test]
    fn two_logs_on_one_runtime() {
        let model = Model::new(Config::default());
        let n = append_concurrently(&model, 2, 4, 300, true).unwrap();
        assert_eq!(n, 2 * 4 * 300);
        assert_clean(&model);
    }

    #[test]
    fn eight_logs_on_one_runtime() {
        let model = Model::new(Config::default());
        let n = append_concurrently(&model, 8, 4, 100, true).unwrap();
        assert_eq!(n, 8 * 4 * 100);
        assert_clean(&model);
    }

    /// Each registration stays with tokio until its runtime ends, so they
    /// must not grow with the number of batches.
    #[test]
    fn registrations_stay_bounded_over_ten_thousand_batches() {
        let model = Model::new(Config { delay: Duration::from_micros(5), ..Config::default() });
        let n = append_concurrently(&model, 1, 1, 10_000, true).unwrap();
        assert_eq!(n, 10_000);
        let (writes, _) = model.jobs_run();
        assert!(writes >= 10_000, "one batch per append: {writes} writes");
        assert!(model.registrations() <= 4, "{} registrations for {writes} batches", model.registrations());
        assert_clean(&model);
    }

    /// A queue of two jobs for the whole process, eight logs: most
    /// submissions get EAGAIN and must be retried until they go through.
    #[test]
    fn eagain_storm() {
        let model = Model::new(Config { queue_limit: 2, ..Config::default() });
        let n = append_concurrently(&model, 8, 2, 50, true).unwrap();
        assert_eq!(n, 8 * 2 * 50);
        assert!(lock(&model.inner.state).eagain > 0, "no submission found the queue full");
        assert_clean(&model);
    }

    /// The EAGAIN back-off must not need tokio's timer: a runtime built
    /// without it must not panic.
    #[test]
    fn eagain_back_off_without_the_time_driver() {
        let model = Model::new(Config { queue_limit: 1, ..Config::default() });
        let n = append_concurrently(&model, 4, 2, 30, false).unwrap();
        assert_eq!(n, 4 * 2 * 30);
        assert_clean(&model);
    }

    fn poisoned_by(model_config: Config) -> Error {
        let model = Model::new(model_config);
        let runtime = rt(true);
        runtime.block_on(async {
            let d = tempfile::tempdir().unwrap();
            let wal = Wal::open(d.path(), opts(&model)).await.unwrap();
            let mut acked = Vec::new();
            let err = loop {
                match wal.append(format!("r{}", acked.len()).as_bytes()).await {
                    Ok(l) => acked.push(l),
                    Err(e) => break e,
                }
                assert!(acked.len() < 1000, "no failure");
            };
            assert!(matches!(wal.append(b"more").await, Err(Error::Poisoned { .. })));
            drop(wal);
            // Everything acknowledged is there after a reopen (on a sound kernel).
            let healthy = Model::new(Config::default());
            let wal = loop {
                match Wal::open(d.path(), opts(&healthy)).await {
                    Ok(w) => break w,
                    Err(Error::Locked { shutting_down: true, .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("reopen: {e}"),
                }
            };
            let back: Vec<Lsn> = wal.read_from(Lsn::FIRST).unwrap().map(|r| r.unwrap().lsn()).collect();
            assert!(back.len() >= acked.len() && back[..acked.len()] == acked[..]);
            wal.close().await.unwrap();
            err
        })
    }

    #[test]
    fn failed_write_poisons() {
        let e = poisoned_by(Config { fail_writes: vec![5], ..Config::default() });
        assert!(
            matches!(&e, Error::Poisoned { op: IoOp::Write, cause } if cause.raw_os_error() == Some(libc::EIO)),
            "{e}"
        );
    }

    #[test]
    fn failed_sync_poisons() {
        let e = poisoned_by(Config { fail_syncs: vec![4], ..Config::default() });
        assert!(
            matches!(&e, Error::Poisoned { op: IoOp::Sync, cause } if cause.raw_os_error() == Some(libc::EIO)),
            "{e}"
        );
    }

    /// A write the kernel refuses at queueing time (`lio_listio` returns
    /// EIO) fails the batch with the write's own error.
    #[test]
    fn refused_write_reports_its_own_error() {
        let e = poisoned_by(Config { refuse_writes: vec![(3, libc::EOPNOTSUPP)], ..Config::default() });
        assert!(
            matches!(&e, Error::Poisoned { op: IoOp::Write, cause } if cause.raw_os_error() == Some(libc::EOPNOTSUPP)),
            "{e}"
        );
    }

    /// A file system without MNT_LOCAL (NFS, fusefs): FreeBSD refuses AIO
    /// on it. An explicit `Backend::Lio` is refused at open with the reason;
    /// nothing is written.
    #[test]
    fn non_local_file_system_is_refused_at_open() {
        let model = Model::new(Config { local: false, ..Config::default() });
        let runtime = rt(true);
        runtime.block_on(async {
            let d = tempfile::tempdir().unwrap();
            match Wal::open(d.path(), opts(&model)).await {
                Err(e @ Error::BackendUnavailable { backend: "lio", .. }) => {
                    assert!(
                        e.to_string().contains("MNT_LOCAL") && e.to_string().contains("enable_unsafe"),
                        "{e}"
                    );
                }
                other => panic!("expected BackendUnavailable, got {other:?}"),
            }
        });
        assert_eq!(model.jobs_run(), (0, 0));
    }

    /// FreeBSD before 13.0 rejects aio_fsync(O_DSYNC) (EINVAL): refused at
    /// open, not at the first append.
    #[test]
    fn no_dsync_is_refused_at_open() {
        let model = Model::new(Config { no_dsync: true, ..Config::default() });
        let runtime = rt(true);
        runtime.block_on(async {
            let d = tempfile::tempdir().unwrap();
            match Wal::open(d.path(), opts(&model)).await {
                Err(e @ Error::BackendUnavailable { backend: "lio", .. }) => {
                    assert!(e.to_string().contains("O_DSYNC"), "{e}");
                }
                other => panic!("expected BackendUnavailable, got {other:?}"),
            }
        });
    }

    /// The probe itself, as `Backend::Auto` on FreeBSD uses it to fall back
    /// to the threaded backend.
    #[test]
    fn probe_names_the_cause() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("probe")).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert_eq!(super::super::probe(&*Model::new(Config::default()).kernel(), fd), Ok(()));
        let e = super::super::probe(&*Model::new(Config { local: false, ..Config::default() }).kernel(), fd);
        assert!(e.unwrap_err().contains("not local"));
        let e =
            super::super::probe(&*Model::new(Config { no_dsync: true, ..Config::default() }).kernel(), fd);
        assert!(e.unwrap_err().contains("FreeBSD before 13.0"));
        // The real kernel's (glibc's) answer on this machine.
        assert_eq!(super::super::probe(&super::super::Libc, fd), Ok(()));
    }

    /// Dropping the runtime with a batch in flight must not block the
    /// thread that drops it until the kernel is done, and must not strand
    /// the log: it is poisoned.
    #[test]
    fn runtime_shutdown_with_a_batch_in_flight() {
        let model = Model::new(Config { delay: Duration::from_secs(2), ..Config::default() });
        let d = tempfile::tempdir().unwrap();
        let first = rt(true);
        let wal = first.block_on(async {
            let wal = Wal::open(d.path(), opts(&model)).await.unwrap();
            let _staged = wal.stage(b"in flight").await.unwrap();
            tokio::task::yield_now().await;
            wal
        });
        let t0 = Instant::now();
        drop(first);
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(1), "dropping the runtime blocked for {took:?}");
        let second = rt(true);
        second.block_on(async {
            let r = tokio::time::timeout(Duration::from_secs(10), wal.sync()).await.expect("sync hung");
            assert!(matches!(r, Err(Error::Poisoned { .. })), "{r:?}");
        });
    }
}
