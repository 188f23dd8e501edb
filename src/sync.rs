//! Locks that outlive a panic.
//!
//! A connection's thread that panics is caught and the server goes on (`server/accept.rs`), so a lock
//! it held is left *poisoned*. Every lock in wsecho guards state that each change leaves whole
//! (one assignment, one map operation, a few additions that cannot panic), so a poisoned lock
//! still guards consistent state, and these helpers take it as it is rather than spread one
//! panic to every thread that touches the same lock.

use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::Duration;

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `lock` for reading, poisoned or not.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `lock` for writing, poisoned or not.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` while `condition` holds, for at most `timeout`; poisoned or not.
pub(crate) fn wait_while<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
    condition: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    match condvar.wait_timeout_while(guard, timeout, condition) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}
