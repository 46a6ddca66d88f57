//! A model of FreeBSD's POSIX AIO and kqueue, so that the kqueue-driven
//! lio driver (`driver.rs`) runs on Linux in tests. Each rule cites the
//! FreeBSD 14 function it comes from (sys/kern/vfs_aio.c, kern_event.c;
//! tokio's io/bsd/poll_aio.rs for the registrations).
//!
//! Jobs run on a model "AIO daemon" thread that really writes (`pwrite`)
//! and syncs (`fdatasync`) the files, in a seeded random order among those
//! runnable, after a delay that keeps jobs of several lists in flight at
//! once. Like FreeBSD, the model writes a job's status and error into the
//! user's control block (`store_status`/`store_error`) when it queues,
//! refuses or returns it, and `aio_error` reads a refused or returned
//! job's error back from there: a control block freed too early is a
//! use-after-free that AddressSanitizer (CI runs these tests under it)
//! reports. Each list array is read back while its jobs are unreaped, so
//! an array freed or reused early is seen whatever the allocator does.
//!
//! Readiness registrations stand for tokio's `Aio`: like it, they are
//! never deregistered (`Aio` "doesn't implement Drop"), so the model counts
//! every one ever created; they need the runtime's I/O driver, as tokio's
//! do; and their readiness is tokio's: set by an event, sticky until
//! `clear_ready` with the tick of the event that was seen (a newer event
//! keeps it set), so readiness left from a registration's previous use
//! wakes the next batch early, as it does on FreeBSD. A knote still active
//! is delivered again at every reactor turn (each `poll_ready` is one):
//! that is how a finished, unreaped list makes the reactor spin, which
//! [`Model::ready_answers`] shows.

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
    /// What the driver is told `AIO_LISTIO_MAX` is (16 in FreeBSD's
    /// sys/aio.h; the kernel itself refuses only a list longer than
    /// `max_aio_queue_per_proc`, `sys_lio_listio`).
    pub listio_max: usize,
    /// Seeds the order in which runnable jobs complete.
    pub seed: u64,
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
            listio_max: 16,
            seed: 1,
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
    /// The array's first entry, read back to see that it is still there.
    first: usize,
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
    /// tokio's readiness: set by an event, kept until cleared.
    ready: bool,
    /// Bumped by every event (tokio's tick): a clear with an older tick
    /// leaves the readiness of a newer event alone.
    tick: u64,
    /// Consecutive ready answers without a pause (tokio's coop budget).
    streak: u32,
}

#[derive(Debug, Default)]
struct State {
    config: Config,
    /// Jobs the kernel knows (queued or finished, not reaped): `kaio_all`.
    jobs: HashMap<usize, Job>,
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
    /// Ready answers given by every registration.
    ready_answers: u64,
    /// The daemon's random state.
    rng: u64,
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
            state: Mutex::new(State { rng: config.seed | 1, config, next_list: 1, ..State::default() }),
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

    /// Ready answers every registration gave: a driver that leaves a
    /// finished list unreaped is woken at every reactor turn.
    pub(crate) fn ready_answers(&self) -> u64 {
        lock(&self.inner.state).ready_answers
    }

    /// Jobs the kernel still holds (queued, or finished and not reaped).
    pub(crate) fn jobs_held(&self) -> usize {
        lock(&self.inner.state).jobs.len()
    }

    /// Jobs refused with EAGAIN.
    pub(crate) fn eagain(&self) -> u64 {
        lock(&self.inner.state).eagain
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
                // (`aio_queue_file`: LIO_SYNC jobs wait on `pending`);
                // other jobs run in any order (several AIO daemons, disks
                // that reorder).
                let runnable: Vec<usize> = (0..s.run_queue.len())
                    .filter(|&i| s.jobs.get(&s.run_queue[i]).is_some_and(|j| j.pending == 0))
                    .collect();
                if !runnable.is_empty() {
                    s.rng ^= s.rng << 13;
                    s.rng ^= s.rng >> 7;
                    s.rng ^= s.rng << 17;
                    let i = runnable[(s.rng % runnable.len() as u64) as usize];
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
        for token in wake {
            s.deliver(token);
        }
    }
    inner.changed.notify_all();
}

/// `store_status` / `store_error`: the kernel writes a job's status and
/// error into the user's control block (`_aiocb_private` on FreeBSD; here
/// glibc's private `__return_value` and `__error_code`, which sit just
/// before `aio_offset`).
///
/// # Safety
/// `cb` must be a live control block: a freed one is the bug this exposes.
unsafe fn store(cb: usize, status: isize, error: i32) {
    let status_at = std::mem::offset_of!(libc::aiocb, aio_offset) - std::mem::size_of::<isize>();
    let error_at = status_at - std::mem::size_of::<isize>();
    let base = cb as *mut u8;
    // SAFETY: both offsets lie inside the control block (checked below for
    // this layout); writes through raw pointers, no reference formed.
    unsafe {
        std::ptr::write_volatile(base.add(status_at).cast::<isize>(), status);
        std::ptr::write_volatile(base.add(error_at).cast::<i32>(), error);
    }
}

/// `fetch_status` / `fetch_error`: what [`store`] wrote.
///
/// # Safety
/// As for [`store`].
unsafe fn fetch(cb: usize) -> (isize, i32) {
    let status_at = std::mem::offset_of!(libc::aiocb, aio_offset) - std::mem::size_of::<isize>();
    let error_at = status_at - std::mem::size_of::<isize>();
    let base = cb as *const u8;
    // SAFETY: as in `store`.
    unsafe {
        (
            std::ptr::read_volatile(base.add(status_at).cast::<isize>()),
            std::ptr::read_volatile(base.add(error_at).cast::<i32>()),
        )
    }
}

// glibc's layout on 64-bit targets: __error_code at 112, __return_value at
// 120, aio_offset at 128.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::offset_of!(libc::aiocb, aio_offset) == 128);

/// The kernel calls, as FreeBSD 14 answers them.
pub(crate) struct ModelKernel(Arc<Inner>);

impl State {
    /// A kevent for the registration `token`: tokio sets its readiness
    /// with a new tick and wakes its task.
    fn deliver(&mut self, token: usize) {
        if let Some(r) = self.regs.get_mut(&token) {
            r.ready = true;
            r.tick += 1;
            if let Some(w) = r.waker.take() {
                w.wake();
            }
        }
    }

    /// Reads the first entry of list `id`'s array back: it must still be
    /// what was submitted until the list's last job is reaped.
    fn check_list_array(&mut self, id: u64) {
        let Some(l) = self.lists.get(&id) else { return };
        let (ident, first) = (l.ident, l.first);
        // SAFETY: the driver promised the array lives, unmoved, until every
        // job it queued is reaped (a freed array is the bug this exposes).
        let now = unsafe { std::ptr::read_volatile(ident as *const usize) };
        if now != first {
            self.violation(format!(
                "list array {ident:#x} changed or freed while its jobs were unreaped (entry 0 was {first:#x}, now {now:#x})"
            ));
        }
    }

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
        let refuse = |s: &mut State, e: i32| {
            // SAFETY: the caller's control block (`err1: store_error`).
            unsafe { store(cb, -1, e) };
            if e == libc::EAGAIN {
                s.eagain += 1;
            }
            Err(e)
        };
        // max_queue_count / max_aio_queue_per_proc; finished, unreaped jobs count.
        if self.jobs.len() >= self.config.queue_limit {
            return refuse(self, libc::EAGAIN);
        }
        // aio_queue_file: no AIO on a file system without MNT_LOCAL
        // (unless vfs.aio.enable_unsafe).
        if !self.config.local {
            return refuse(self, libc::EOPNOTSUPP);
        }
        if let Op::Write { .. } = op {
            self.writes_queued += 1;
            let n = self.writes_queued;
            if let Some(&(_, e)) = self.config.refuse_writes.iter().find(|(k, _)| *k == n) {
                return refuse(self, e);
            }
        }
        // aio_aqueue: store_status(-1), store_error(0) on a queued job.
        // SAFETY: the caller's control block.
        unsafe { store(cb, -1, 0) };
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
    // SAFETY: the driver passes valid control blocks; fields are read
    // through the raw pointer (the kernel copies the block in, `copyin`).
    unsafe {
        Op::Write {
            fd: (*cb).aio_fildes,
            buf: (*cb).aio_buf as usize,
            len: (*cb).aio_nbytes,
            off: (*cb).aio_offset,
        }
    }
}

impl Kernel for ModelKernel {
    /// `kern_lio_listio` with LIO_NOWAIT.
    unsafe fn lio_listio(&self, list: &[*mut libc::aiocb], notify: Notify) -> i32 {
        let ident = list.as_ptr() as usize;
        let mut s = lock(&self.0.state);
        // sys_lio_listio: nent > max_aio_queue_per_proc is EINVAL, nothing queued.
        if list.len() > s.config.queue_limit {
            return libc::EINVAL;
        }
        if list.len() > s.config.listio_max {
            let msg = format!(
                "a list of {} entries, more than the {} the driver was told",
                list.len(),
                s.config.listio_max
            );
            s.violation(msg);
        }
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
        let first = list.first().map_or(0, |&cb| cb as usize);
        s.lists.insert(id, ListJob { ident, first, count: 1, finished: 0, posted: false });
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
        if let Some(token) = wake {
            s.deliver(token);
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
        // The fallback ("hack for failure of aio_aqueue") reads status and
        // error back from the control block: a refused or returned job.
        // SAFETY: the driver passes valid control blocks.
        match unsafe { fetch(cb) } {
            (-1, e) => e,
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
        // After aio_free_entry: store_error, store_status.
        // SAFETY: the driver passes valid control blocks.
        unsafe { store(cb, status, error) };
        s.knotes.retain(|_, k| k.job != Some(cb));
        if let Some(id) = job.and_then(|j| j.lio) {
            s.check_list_array(id);
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

    /// `kern_aio_suspend`: returns once one of the listed jobs finished,
    /// or none of them is known any more ("all tasks were finished").
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
        lock(&self.0.state).config.listio_max
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

    /// Like tokio's `Aio::new_for_lio`, panics on a runtime without the
    /// I/O driver (here by registering a socket with the same driver).
    fn register(&self) -> std::io::Result<ModelReg> {
        drop(tokio::net::UnixDatagram::unbound()?);
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
    type Event = u64;

    fn notify(&self) -> std::io::Result<Notify> {
        Ok(Notify::Kevent { kq: MODEL_KQ, token: self.token })
    }

    /// One reactor turn, then tokio's answer. Knotes still active are
    /// delivered again (level-triggered: `filt_lio` reports
    /// LIOJ_KEVENT_POSTED until the list is freed, `filt_aio` a finished job
    /// until it is reaped; neither uses EV_CLEAR). Like tokio's cooperative
    /// budget, a long run of ready answers yields.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
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
        if active {
            s.deliver(token);
        }
        let Some(reg) = s.regs.get_mut(&token) else { return Poll::Pending };
        if reg.ready {
            reg.streak += 1;
            if reg.streak < 32 {
                let tick = reg.tick;
                s.ready_answers += 1;
                return Poll::Ready(Ok(tick));
            }
            reg.streak = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        reg.streak = 0;
        reg.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// tokio's `clear_ready`: only if no event arrived since `tick`.
    fn clear_ready(&self, tick: u64) {
        let mut s = lock(&self.inner.state);
        s.spurious_wakeups += 1;
        if let Some(r) = s.regs.get_mut(&self.token) {
            if r.tick == tick {
                r.ready = false;
            }
        }
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

    /// A current-thread runtime with the I/O driver (tokio's `Aio` needs
    /// it), and the timer if `time`.
    fn rt(time: bool) -> tokio::runtime::Runtime {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.enable_io();
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
            // (A hung driver never gets here: its thread stays in block_on.)
            drop(runtime);
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

    /// tokio's `Aio` needs the runtime's I/O driver: without it the log is
    /// refused at open with the reason (tokio panics; the driver catches
    /// that at start), and nothing is left behind.
    #[test]
    fn runtime_without_the_io_driver_is_refused_at_open() {
        let model = Model::new(Config::default());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let d = tempfile::tempdir().unwrap();
            match Wal::open(d.path(), opts(&model)).await {
                Err(e @ Error::BackendUnavailable { backend: "lio", .. }) => {
                    assert!(e.to_string().contains("enable_io"), "{e}");
                }
                other => panic!("expected BackendUnavailable, got {other:?}"),
            }
        });
        assert_eq!(model.registrations(), 0);
    }

    /// `Backend::Auto` where the lio path is the default (FreeBSD): the
    /// probe decides, and a failed probe falls back to the threaded
    /// backend instead of failing the open or the first append.
    #[test]
    fn auto_falls_back_to_threaded_when_the_probe_fails() {
        for (config, want) in [
            (Config::default(), "lio"),
            (Config { local: false, ..Config::default() }, "threaded"),
            (Config { no_dsync: true, ..Config::default() }, "threaded"),
        ] {
            let model = Model::new(config);
            rt(true).block_on(async {
                let d = tempfile::tempdir().unwrap();
                let wal = Wal::open(d.path(), opts(&model).backend(Backend::Auto)).await.unwrap();
                assert_eq!(wal.backend_name(), want);
                wal.append(b"one").await.unwrap();
                wal.close().await.unwrap();
            });
        }
    }

    /// The bytes of every file under `dir` but the lock file.
    fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with("LOCK"))
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        out.sort();
        out
    }

    /// An explicit `Backend::Lio` that cannot work is refused before
    /// recovery writes anything: a log left by a crash (a torn tail to copy
    /// forward) is not touched.
    #[test]
    fn refused_lio_leaves_a_crashed_log_untouched() {
        let healthy = Model::new(Config::default());
        let live = tempfile::tempdir().unwrap();
        // The files of a log still open are what a crash leaves.
        let image = rt(true).block_on(async {
            let wal = Wal::open(live.path(), opts(&healthy)).await.unwrap();
            for i in 0..50 {
                wal.append(format!("r{i}").as_bytes()).await.unwrap();
            }
            let image = snapshot(live.path());
            wal.close().await.unwrap();
            image
        });
        let restore = |dir: &std::path::Path| {
            for (path, bytes) in &image {
                std::fs::write(dir.join(path.file_name().unwrap()), bytes).unwrap();
            }
        };
        // An open that may write does write to this image (copy-forward)...
        let a = tempfile::tempdir().unwrap();
        restore(a.path());
        rt(true).block_on(async {
            let wal = Wal::open(a.path(), opts(&healthy).backend(Backend::Threaded)).await.unwrap();
            assert!(wal.recovery_report().copied_forward > 0, "{:?}", wal.recovery_report());
            wal.close().await.unwrap();
        });
        // ...the refused one does not.
        let b = tempfile::tempdir().unwrap();
        restore(b.path());
        let before = snapshot(b.path());
        let model = Model::new(Config { local: false, ..Config::default() });
        rt(true).block_on(async {
            match Wal::open(b.path(), opts(&model)).await {
                Err(Error::BackendUnavailable { backend: "lio", .. }) => {}
                other => panic!("expected BackendUnavailable, got {other:?}"),
            }
        });
        assert!(before == snapshot(b.path()), "the refused open changed the log's files");
    }

    use crate::io::{BatchGuard, BatchMeta, Completion, FileTarget, IoBackend, IoBatch, IoFailure, WriteBuf};
    use crate::vfs::SegFile;

    /// A batch of `n` 4 KiB writes, the `i`-th filled with `fill + i`.
    fn io_batch(file: &Arc<SegFile>, n: usize, fill: u8) -> IoBatch {
        let writes = (0..n)
            .map(|i| WriteBuf {
                offset: i as u64 * 4096,
                buf: vec![fill.wrapping_add(i as u8); 4096],
                start: 0,
            })
            .collect();
        let meta = BatchMeta {
            id: 1,
            first_lsn: 1,
            last_lsn: n as u64,
            bytes: n as u64 * 4096,
            submitted: Instant::now(),
            seq: 1,
            header: None,
            clean_end: false,
            cut: false,
            sync: crate::io::SyncKind::Own,
        };
        IoBatch {
            file: FileTarget::Open(Arc::clone(file)),
            writes,
            meta,
            guard: BatchGuard::none(),
            _lock: None,
        }
    }

    struct Sink(tokio::sync::mpsc::UnboundedSender<Result<(), IoFailure>>);

    impl Completion for Sink {
        fn complete(&self, mut batch: IoBatch, result: Result<(), IoFailure>) {
            batch.guard.disarm();
            let _ = self.0.send(result);
        }
        fn poison_now(&self, _f: IoFailure) {}
    }

    /// Runs `batches` of `n` writes each, one after another, through the
    /// driver over the model (on its own thread, so a hang is a timeout).
    /// Returns each batch's outcome (as text) and whether the file holds
    /// the last batch's bytes.
    fn run_driver(model: &Arc<Model>, batches: usize, n: usize) -> Result<Vec<Result<(), String>>, String> {
        let m = Arc::clone(model);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let model = m;
            let runtime = rt(true);
            let out = runtime.block_on(async {
                let tmp = tempfile::tempfile().unwrap();
                let reader = tmp.try_clone().unwrap();
                let file = Arc::new(SegFile::Os(tmp));
                let (ctx, mut crx) = tokio::sync::mpsc::unbounded_channel();
                let lio =
                    super::super::driver::Lio::start(model.kernel(), model.reactor(), Arc::new(Sink(ctx)))?;
                let mut results = Vec::new();
                for b in 0..batches {
                    let fill = (b * 31) as u8;
                    lio.submit(io_batch(&file, n, fill));
                    let r = crx.recv().await.ok_or("the driver dropped the batch")?;
                    let ok = r.is_ok();
                    results.push(r.map_err(|f| format!("{:?}: {}", f.op, f.error)));
                    if ok {
                        let mut back = vec![0u8; n * 4096];
                        std::os::unix::fs::FileExt::read_exact_at(&reader, &mut back, 0).unwrap();
                        for i in 0..n {
                            let want = fill.wrapping_add(i as u8);
                            if back[i * 4096..(i + 1) * 4096].iter().any(|&x| x != want) {
                                return Err(format!("batch {b}: write {i} not on disk"));
                            }
                        }
                    }
                }
                Ok::<_, String>(results)
            });
            let _ = tx.send(out);
            drop(runtime);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(r) => r,
            Err(_) => Err(format!(
                "hung: {} jobs held, {} EAGAIN, {} ready answers, violations {:?}",
                model.jobs_held(),
                model.eagain(),
                model.ready_answers(),
                model.violations()
            )),
        }
    }

    /// A batch with more writes than the kernel's queue has room for: the
    /// part that was queued must be reaped before the rest is resubmitted
    /// (finished, unreaped jobs count against `max_aio_queue_per_proc`),
    /// or every resubmission gets EAGAIN forever.
    #[test]
    fn batch_larger_than_the_queue() {
        let model = Model::new(Config { queue_limit: 8, listio_max: 4, ..Config::default() });
        let results = run_driver(&model, 3, 20).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(model.eagain() > 0, "the queue never filled up");
        assert_eq!(model.jobs_held(), 0);
        assert_clean(&model);
    }

    /// Several lists per batch, completing out of order: a finished list's
    /// kevent stays active until its jobs are reaped, so the driver must
    /// reap each list as it finishes, or the reactor is woken at every
    /// turn while the other lists run.
    #[test]
    fn many_lists_complete_out_of_order_without_spinning() {
        for seed in 1..=4 {
            let model = Model::new(Config {
                listio_max: 3,
                delay: Duration::from_micros(300),
                seed,
                ..Config::default()
            });
            let results = run_driver(&model, 5, 24).unwrap();
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            // 8 lists per batch: at most one wake-up per list, plus the
            // readiness left from the registration's previous use.
            let lists = 5 * 8;
            let answers = model.ready_answers();
            assert!(answers <= 2 * lists + 5, "seed {seed}: {answers} ready answers for {lists} lists");
            assert_eq!(model.jobs_held(), 0);
            assert_clean(&model);
        }
    }

    /// A list the kernel takes in part: one entry refused (EOPNOTSUPP),
    /// the others queued. The batch fails with the refused entry's error,
    /// and every queued job is still waited for and reaped.
    #[test]
    fn list_with_a_refused_entry() {
        let model = Model::new(Config {
            listio_max: 8,
            refuse_writes: vec![(3, libc::EOPNOTSUPP)],
            ..Config::default()
        });
        let results = run_driver(&model, 1, 8).unwrap();
        let e = results[0].as_ref().unwrap_err();
        assert!(
            e.contains("Write")
                && e.contains(&std::io::Error::from_raw_os_error(libc::EOPNOTSUPP).to_string()),
            "{e}"
        );
        // The driver hands what is still queued to a reaper thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        while model.jobs_held() > 0 {
            assert!(Instant::now() < deadline, "{} jobs never reaped", model.jobs_held());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_clean(&model);
    }

    /// A list longer than the kernel's per-process queue: FreeBSD refuses
    /// the whole list (EINVAL, `sys_lio_listio`). The driver splits it
    /// instead of failing the batch.
    #[test]
    fn list_longer_than_the_kernel_takes() {
        let model = Model::new(Config { queue_limit: 4, listio_max: 16, ..Config::default() });
        let results = run_driver(&model, 2, 10).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(model.jobs_held(), 0);
    }
}
