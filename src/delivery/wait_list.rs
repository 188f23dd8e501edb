//! Wait lists: connections that stopped reading until another thread frees what they wait for
//! (a room's listeners catching up, the cluster's publish queue draining, memory).
//!
//! A connection that must not read has nothing to wait on but its own waker, so whoever frees
//! what it waits for must know to wake it: it puts itself on the list of that thing, and the
//! thread that frees it wakes the whole list. The protocol below is what keeps that from ever
//! losing a wake-up, which would leave a connection asleep for good.
//!
//! Invariant: a connection adds only itself, from its own thread; any thread may wake a list,
//! and does so only after it freed what the list waits for. The list's lock is held to add one
//! waiter or to take them all, never while waking them.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sync::lock;

/// What a wait list wakes: a connection's outbox (`outbox.rs`), whose thread then looks again
/// at what it waits for.
pub(crate) trait Waiter: Debug + Send + Sync {
    /// Wakes the waiter's thread, without giving it anything.
    fn wake(&self);
}

/// Connections waiting for another thread to free something (room in the hub, or memory).
///
/// The protocol that loses no wake-up: a waiter first [adds](WaitList::add) itself, then
/// looks again at what it waits for, and sleeps only if it is still missing. A freer first
/// frees, then calls [`WaitList::wake_all`]. Both steps are sequentially consistent, so either
/// the waiter's second look sees the room, or the freer sees the waiter in the list.
#[derive(Debug, Default)]
pub(crate) struct WaitList {
    waiting: Mutex<Vec<Arc<dyn Waiter>>>,
    len: AtomicUsize,
    /// Bumped by every [`WaitList::wake_all`]; a waiter that added itself in an earlier
    /// generation has been taken off the list and must add itself again.
    generation: AtomicU64,
}

impl WaitList {
    /// Adds a waiter; returns the generation it was added in.
    pub(crate) fn add<W: Waiter + 'static>(&self, waiter: &Arc<W>) -> u64 {
        let mut waiting = self.lock();
        waiting.push(Arc::clone(waiter) as Arc<dyn Waiter>);
        self.len.store(waiting.len(), Ordering::SeqCst);
        self.generation.load(Ordering::SeqCst)
    }

    /// Joins this list while `blocked()` holds, and reports whether it still does: the waiter's
    /// side of the protocol above (join, then look again). `listed` remembers the generation
    /// joined, so that a waiter joins once per generation, not once per look.
    pub(crate) fn join_while<W: Waiter + 'static>(
        &self,
        waiter: &Arc<W>,
        listed: &mut Option<u64>,
        blocked: impl Fn() -> bool,
    ) -> bool {
        if !blocked() {
            return false;
        }
        if !listed.is_some_and(|generation| self.still_listed(generation)) {
            *listed = Some(self.add(waiter));
        }
        blocked()
    }

    /// Whether a waiter added in `generation` is still on the list.
    pub(crate) fn still_listed(&self, generation: u64) -> bool {
        self.generation.load(Ordering::SeqCst) == generation
    }

    /// Wakes and removes every waiter. Cheap when nobody waits: one atomic load.
    pub(crate) fn wake_all(&self) {
        if self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let woken = {
            let mut waiting = self.lock();
            self.len.store(0, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst);
            std::mem::take(&mut *waiting)
        };
        for waiter in woken {
            waiter.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<dyn Waiter>>> {
        lock(&self.waiting)
    }
}
