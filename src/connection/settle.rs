//! What a connection gives back once a burst is over.
//!
//! A burst leaves a connection holding memory sized for the burst, for as long as it stays
//! open, unless it gives it back:
//!
//! - tungstenite's read buffer grows to the largest frame the client sent, and never shrinks;
//! - the socket's queue keeps the room of the most frames it ever held at once;
//! - the thread's stack keeps every page it touched: the handshake ran deeper than the loop
//!   ever goes (a TLS handshake about 16.5 KiB), and on the ppoll backend a wake-up is a
//!   signal, whose frame (about 3 KiB of saved registers) the kernel writes below the sleeping
//!   loop, into a third page;
//! - what the allocator got back from those buffers stays resident in its arenas.
//!
//! So a new connection, and one that was woken, received a frame bigger than its read buffer,
//! or had more than [`BIG_QUEUE`] queued, *settles* once it has been quiet for
//! [`SETTLE_AFTER`]: it rebuilds tungstenite's state around the same socket (only between two
//! messages, so nothing is lost: `boundary.rs`), empties its queue's room, frees the stack
//! pages below its loop, and has the allocator return free pages to the system, at most once
//! per [`TRIM_INTERVAL`] for the whole server. A connection then costs what a fresh one costs
//! again (the bench's "after" rows measure it). Settling costs one timer wake-up after each
//! burst, not one per message, and nothing for a connection that only exchanges small
//! messages.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sys;

/// How long a connection must be quiet before it gives back what its last burst left. Long
/// enough that a client sending a message every few hundred milliseconds keeps its buffers,
/// short enough that a burst's memory is back within a couple of seconds.
pub const SETTLE_AFTER: Duration = Duration::from_secs(1);

/// Queued bytes from which a burst is worth giving back: below this, the queue's room and the
/// freed frames are a few hundred bytes.
pub const BIG_QUEUE: usize = 16 * 1024;

/// The least time between two heap trims. A trim walks every arena under its lock, which
/// takes from microseconds to a few milliseconds; once a second bounds that to a fraction of
/// a percent of one core however many connections settle.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// When the last heap trim started.
static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);

/// Returns memory freed at `freed_at` to the system: now, unless a trim started since (it
/// covers that memory) or the last one is under [`TRIM_INTERVAL`] old; then the answer is when
/// to ask again, if anyone must.
pub fn trim_heap(freed_at: Instant) -> Option<Instant> {
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
