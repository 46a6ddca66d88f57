//! Appenders waiting for their LSN to become durable, ordered by LSN, so a
//! completion wakes exactly the waiters it covers and no others.
//!
//! (Before: eight `Notify` lists chosen by LSN modulo 8, and every
//! completion woke all of them: any batch of eight or more records covered
//! every list, so each completion woke every waiter, covered or not, and
//! the uncovered ones went back to sleep.)

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use crate::sync::lock;

/// Waiters keyed by (LSN, registration id).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    by_lsn: BTreeMap<(u64, u64), Waker>,
}

impl Waiters {
    /// Registers (or updates) the waker of the waiter for `lsn` in `slot`.
    fn register(&self, lsn: u64, slot: &mut Option<(u64, u64)>, waker: &Waker) {
        let mut w = lock(&self.inner);
        let key = *slot.get_or_insert_with(|| {
            w.next_id += 1;
            (lsn, w.next_id)
        });
        match w.by_lsn.get_mut(&key) {
            Some(old) if old.will_wake(waker) => {}
            Some(old) => old.clone_from(waker),
            None => {
                w.by_lsn.insert(key, waker.clone());
            }
        }
    }

    fn remove(&self, key: (u64, u64)) {
        lock(&self.inner).by_lsn.remove(&key);
    }

    /// Wakes every waiter for an LSN at or below `lsn`.
    pub(crate) fn wake_upto(&self, lsn: u64) {
        let covered = {
            let mut w = lock(&self.inner);
            let rest = w.by_lsn.split_off(&(lsn.saturating_add(1), 0));
            std::mem::replace(&mut w.by_lsn, rest)
        };
        for (_, waker) in covered {
            waker.wake();
        }
    }

    /// Wakes every waiter (the log was poisoned or closed).
    pub(crate) fn wake_all(&self) {
        self.wake_upto(u64::MAX - 1);
    }
}

/// Resolves when `check` returns `Some`; registers with `waiters` for `lsn`
/// in between. `check` must observe whatever the waker side changes before
/// it calls [`Waiters::wake_upto`] (an atomic store before the wake).
pub(crate) struct WaitFor<'a, T, F: FnMut() -> Option<T>> {
    waiters: &'a Waiters,
    lsn: u64,
    check: F,
    key: Option<(u64, u64)>,
}

impl<'a, T, F: FnMut() -> Option<T>> WaitFor<'a, T, F> {
    pub(crate) fn new(waiters: &'a Waiters, lsn: u64, check: F) -> Self {
        WaitFor { waiters, lsn, check, key: None }
    }
}

impl<T, F: FnMut() -> Option<T> + Unpin> Future for WaitFor<'_, T, F> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if let Some(v) = (this.check)() {
            return Poll::Ready(v);
        }
        // Register, then check again: a wake between the first check and the
        // registration would otherwise be missed.
        this.waiters.register(this.lsn, &mut this.key, cx.waker());
        match (this.check)() {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }
}

impl<T, F: FnMut() -> Option<T>> Drop for WaitFor<'_, T, F> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.waiters.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn wakes_only_covered_waiters() {
        let w = Arc::new(Waiters::default());
        let durable = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for lsn in [3u64, 5, 9] {
            let (w, d) = (Arc::clone(&w), Arc::clone(&durable));
            tasks.push(tokio::spawn(async move {
                WaitFor::new(&w, lsn, || (d.load(Ordering::Acquire) >= lsn).then_some(lsn)).await
            }));
        }
        tokio::task::yield_now().await;
        assert_eq!(lock(&w.inner).by_lsn.len(), 3);
        durable.store(5, Ordering::Release);
        w.wake_upto(5);
        assert_eq!(tasks.remove(0).await.unwrap(), 3);
        assert_eq!(tasks.remove(0).await.unwrap(), 5);
        // The waiter for 9 was not woken and is still registered.
        assert_eq!(lock(&w.inner).by_lsn.keys().map(|k| k.0).collect::<Vec<_>>(), vec![9]);
        durable.store(9, Ordering::Release);
        w.wake_upto(9);
        assert_eq!(tasks.remove(0).await.unwrap(), 9);
        assert!(lock(&w.inner).by_lsn.is_empty());
    }

    #[tokio::test]
    async fn dropped_waiter_deregisters() {
        let w = Waiters::default();
        let fut = WaitFor::new(&w, 4, || None::<()>);
        let mut fut = Box::pin(fut);
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(lock(&w.inner).by_lsn.len(), 1);
        drop(fut);
        assert!(lock(&w.inner).by_lsn.is_empty());
    }

    fn futures_noop_waker() -> Waker {
        Waker::noop().clone()
    }
}
