//! What a connection gives back once a burst is over.
//!
//! A burst leaves a connection holding memory sized for the burst, for as long as it stays
//! open, unless it gives it back:
//!
//! - tungstenite's read buffer grows to the largest frame the client sent, and never shrinks;
//! - the send queue keeps the room of the most frames it ever held at once;
//! - the thread's stack keeps every page it touched: the handshake ran deeper than the loop
//!   ever goes (a TLS handshake's key exchange and signature most of all), and on the ppoll
//!   backend a wake-up is a signal, whose frame (the saved registers) the kernel writes below
//!   the sleeping loop, into a third page;
//! - what the allocator got back from those buffers stays resident in its arenas.
//!
//! So a new connection, and one that was woken, received a frame bigger than its read buffer,
//! or had more than [`BIG_QUEUE`] queued, *settles* once it has been quiet for
//! [`SETTLE_AFTER`], plus its own share of [`SETTLE_SPREAD`]: it rebuilds tungstenite's state around the same socket (only between two
//! messages, so nothing is lost: `boundary.rs`), empties its queue's room, frees the stack
//! pages below its loop, and has the allocator return free pages to the system, at most once
//! per [`TRIM_INTERVAL`] for the whole server. A connection then costs what a fresh one costs
//! again (the bench's "after" rows measure it). Settling costs one timer wake-up after each
//! burst, not one per message, and nothing for a connection that only exchanges small
//! messages.
//!
//! The spread keeps the wake-ups of a wide room apart. One broadcast that woke 5,000
//! listeners would otherwise have all of them wake again within a few milliseconds a second
//! later, a herd of 5,000 context switches that stalls the room's next broadcast for as long
//! (a sweep of 25 ms took 136 ms, measured in performance.md's wide fan-out row).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

/// How long a connection must be quiet before it gives back what its last burst left. Long
/// enough that a client sending a message every few hundred milliseconds keeps its buffers,
/// short enough that a burst's memory is back within a couple of seconds.
pub(crate) const SETTLE_AFTER: Duration = Duration::from_secs(1);

/// How far apart the connections' settling is spread: each waits [`SETTLE_AFTER`] and a
/// fixed share of this, its own, so that connections woken together settle over this span
/// rather than at once. A burst's memory is still back within two seconds.
pub(crate) const SETTLE_SPREAD: Duration = Duration::from_secs(1);

/// Numbers the connections as they start, to give each its share of [`SETTLE_SPREAD`].
static STARTED: AtomicU32 = AtomicU32::new(0);

/// The `n`th connection's share of [`SETTLE_SPREAD`]: n × 0.618… of it, modulo the whole (the
/// golden ratio's sequence), so that any run of consecutive connections covers the span
/// evenly.
fn share_of_spread(n: u32) -> Duration {
    const STEPS: u64 = 1 << 16;
    // 0.618… × 2^16: the golden ratio's fractional part in sixteen bits.
    const GOLDEN: u64 = 40_503;
    let step = (u64::from(n) * GOLDEN) % STEPS;
    SETTLE_SPREAD.mul_f64(step as f64 / STEPS as f64)
}

/// Queued bytes from which a burst is worth giving back: below this, the queue's room and the
/// freed frames are a few hundred bytes.
pub(crate) const BIG_QUEUE: usize = 16 * 1024;

/// The least time between two heap trims. A trim walks every arena under its lock, which
/// takes from microseconds to a few milliseconds; once a second bounds that to a fraction of
/// a percent of one core however many connections settle.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// When the last heap trim started.
static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);

/// Returns memory freed at `freed_at` to the system: now, unless a trim started since (it
/// covers that memory) or the last one is under [`TRIM_INTERVAL`] old; then the answer is when
/// to ask again, if anyone must.
fn trim_heap(freed_at: Instant) -> Option<Instant> {
    let now = Instant::now();
    {
        let mut last = crate::sync::lock(&LAST_TRIM);
        match *last {
            Some(started) if started >= freed_at => return None,
            Some(started) if now < started + TRIM_INTERVAL => {
                return Some(started + TRIM_INTERVAL);
            }
            _ => *last = Some(now),
        }
    }
    sys::trim_heap();
    None
}

/// A connection's bookkeeping for settling: when it is due, and what is left to do after.
#[derive(Debug)]
pub(crate) struct Settling {
    /// When the connection gives back what its last burst left, if it has been quiet until
    /// then.
    at: Option<Instant>,
    /// Set when another thread woke this one since it last settled.
    woken_since: bool,
    /// Set when the loop should free the stack pages below it before its next sleep.
    release_stack: bool,
    /// Memory freed at the first instant and not yet returned to the system: ask again at the
    /// second (see [`trim_heap`]).
    trim: Option<(Instant, Instant)>,
    /// How long it must be quiet: [`SETTLE_AFTER`] and its share of [`SETTLE_SPREAD`].
    quiet_for: Duration,
}

impl Settling {
    /// A new connection settles once, when it has been quiet long enough: its handshake ran
    /// deeper than its loop will (a TLS one most of all: key exchange and signature), and
    /// those stack pages go back.
    pub(crate) fn new() -> Settling {
        let quiet_for = SETTLE_AFTER + share_of_spread(STARTED.fetch_add(1, Ordering::Relaxed));
        Settling {
            at: Some(Instant::now() + quiet_for),
            woken_since: false,
            release_stack: false,
            trim: None,
            quiet_for,
        }
    }

    /// After a round that did something (`woken`: another thread woke the loop; `grew`: a
    /// burst grew a buffer past its quiet size): settle once quiet long enough.
    pub(crate) fn note_activity(&mut self, woken: bool, grew: bool) {
        self.woken_since |= woken;
        if self.woken_since || grew {
            self.at = Some(Instant::now() + self.quiet_for);
        }
    }

    /// The next moment something is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.at, self.trim) {
            (Some(at), Some((_, again))) => Some(at.min(again)),
            (at, trim) => at.or(trim.map(|(_, again)| again)),
        }
    }

    /// Whether it is time to settle; asking takes the appointment.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if self.at.is_some_and(|at| now >= at) {
            self.at = None;
            return true;
        }
        false
    }

    /// Not quiet after all: try again when it has been quiet long enough from `now`.
    pub(crate) fn postpone(&mut self, now: Instant) {
        self.at = Some(now + self.quiet_for);
    }

    /// The connection gave its buffers back at `now`: the stack pages below the loop go next,
    /// and, if the burst `grew` anything, the heap's free pages.
    pub(crate) fn settled(&mut self, now: Instant, grew: bool) {
        self.release_stack = true;
        self.woken_since = false;
        if grew {
            self.trim = trim_heap(now).map(|again| (now, again));
        }
    }

    /// Asks again to return freed memory, if that is due.
    pub(crate) fn trim_if_due(&mut self, now: Instant) {
        if let Some((freed_at, again)) = self.trim
            && now >= again
        {
            self.trim = trim_heap(freed_at).map(|again| (freed_at, again));
        }
    }

    /// Whether the loop should free the stack pages below it now; asking takes the request.
    pub(crate) fn take_release_stack(&mut self) -> bool {
        std::mem::take(&mut self.release_stack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_connections_settle_spread_evenly_over_the_span() {
        // Any ten in a row: one in each tenth of the span.
        let mut tenths: Vec<u32> = (1000..1010)
            .map(|n| (share_of_spread(n).as_secs_f64() / SETTLE_SPREAD.as_secs_f64() * 10.0) as u32)
            .collect();
        tenths.sort_unstable();
        tenths.dedup();
        assert!(tenths.len() >= 8, "{tenths:?}");
        assert!((0..100_000).all(|n| share_of_spread(n) < SETTLE_SPREAD));
    }
}
