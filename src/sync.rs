//! Locking that carries on after a panic elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poisoning: every mutex in aiowal guards state that is
/// consistent whenever it is unlocked (no invariant is broken across a
/// panic point), and a WAL that stopped on an unrelated panic would lose
/// the acknowledgements still in flight.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
