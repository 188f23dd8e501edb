//! The memory ceiling: one count of the bytes the server holds for all connections together.
//!
//! Each connection has its own limits (the largest message, the backlog), but a few hundred
//! connections each within their limits can still hold more memory than the machine has. So
//! every byte the server holds on a connection's behalf is counted here, against one ceiling
//! (`--max-memory`):
//!
//! - **bytes received and not yet a whole message**: a connection's socket charges what it
//!   reads, and releases it when the message it belongs to is complete (see `metered_reader.rs`);
//! - **frames waiting to be sent**: echoes, broadcasts, greetings and the protocol's own
//!   frames are created by [`Budget::hold`], which charges their size and releases it when the
//!   last queue holding the frame lets go of it. A broadcast to a thousand clients is one
//!   frame, so it is counted once, as it is held once.
//!
//! Reaching the ceiling never fails anything. A connection that finds it reached simply stops
//! reading (its client's TCP window closes, so the client waits) and joins a wait list; the
//! release that takes the count back under the ceiling wakes it. Queued frames keep draining
//! meanwhile, so memory frees by itself unless every holder is stuck mid-message: a connection
//! that cannot read for its idle timeout is then closed with 1013, "try again later" (see
//! `client.rs`), which frees what it held.
//!
//! Small messages keep flowing while big ones wait: a connection in the middle of a message
//! bigger than [`BIG_MESSAGE`] may only read while the count is below the ceiling less a
//! reserve ([`RESERVE_DIVISOR`]); the reserve is left for connections receiving small ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use log::warn;

use crate::delivery::wait_list::WaitList;
use crate::logging::Throttle;

/// A message in progress past this size counts as big: it must leave the reserve alone.
/// Chat-like traffic (the tutorial's) is well below it; file-sized messages are above.
pub(crate) const BIG_MESSAGE: usize = 64 * 1024;

/// The reserve kept for small messages is the ceiling divided by this: an eighth, so big
/// messages can use most of the memory and small ones still always find room.
pub(crate) const RESERVE_DIVISOR: usize = 8;

/// "Memory is full" is logged at most once per this interval, however many connections wait.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The count of bytes held, its ceiling, and who waits for room.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    /// Bytes big messages in progress may not take.
    reserve: usize,
    used: AtomicUsize,
    /// Connections that stopped reading for lack of room.
    waiting: WaitList,
    /// "Memory is full", at most once per [`FULL_LOG_INTERVAL`].
    full_log: Throttle,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Budget {
        Budget {
            limit,
            reserve: limit / RESERVE_DIVISOR,
            used: AtomicUsize::new(0),
            waiting: WaitList::default(),
            full_log: Throttle::new(FULL_LOG_INTERVAL),
        }
    }

    /// The ceiling, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held right now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Whether a connection that holds `in_progress` bytes of an unfinished message may read
    /// more now. A read takes at most one read buffer, so the ceiling is passed by at most
    /// that much per connection.
    pub(crate) fn may_read(&self, in_progress: usize) -> bool {
        let room = if in_progress >= BIG_MESSAGE {
            self.limit - self.reserve
        } else {
            self.limit
        };
        self.used() < room
    }

    /// Counts `n` more bytes held.
    pub(crate) fn charge(&self, n: usize) {
        self.used.fetch_add(n, Ordering::SeqCst);
    }

    /// Counts `n` bytes freed, and wakes the connections waiting for room once there is some
    /// for every kind of message again.
    pub(crate) fn release(&self, n: usize) {
        let before = self.used.fetch_sub(n, Ordering::SeqCst);
        if before - n < self.limit - self.reserve {
            self.waiting.wake_all();
        }
    }

    /// Logs that a connection found no room, at most once per [`FULL_LOG_INTERVAL`].
    pub(crate) fn note_full(&self) {
        if self.full_log.pass().is_some() {
            warn!(
                "memory ceiling reached ({} of {} bytes held): connections wait to read; \
                 logged at most once per {}s",
                self.used(),
                self.limit,
                FULL_LOG_INTERVAL.as_secs()
            );
        }
    }

    /// The wait list of connections that found no room; see [`WaitList`] for the protocol.
    pub(crate) fn waiting(&self) -> &WaitList {
        &self.waiting
    }

    /// Wraps an encoded frame so that its bytes count as held until the last reference to it
    /// is dropped.
    pub(crate) fn hold(self: &Arc<Budget>, frame: Vec<u8>) -> Bytes {
        self.charge(frame.len());
        Bytes::from_owner(Held {
            frame,
            budget: Arc::clone(self),
        })
    }
}

/// A frame whose bytes count against a [`Budget`] for as long as it lives.
struct Held {
    frame: Vec<u8>,
    budget: Arc<Budget>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.frame.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_frame_counts_until_its_last_clone_is_dropped() {
        let budget = Arc::new(Budget::new(1000));
        let frame = budget.hold(vec![7; 300]);
        let copy = frame.clone();
        assert_eq!(budget.used(), 300);
        drop(frame);
        assert_eq!(budget.used(), 300);
        assert_eq!(&copy[..3], &[7, 7, 7]);
        drop(copy);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn big_messages_leave_the_reserve_to_small_ones() {
        let budget = Budget::new(800);
        budget.charge(750); // above 800 - 800/8 = 700, below 800
        assert!(!budget.may_read(BIG_MESSAGE));
        assert!(budget.may_read(10));
        budget.charge(50);
        assert!(!budget.may_read(0));
        budget.release(200);
        assert!(budget.may_read(BIG_MESSAGE));
    }
}
