//! The link to Redis: whether it is up, the outage it is in if not, and what it has counted.
//!
//! The link is *up* while a pair of connections (subscribing and publishing) works; each pair
//! has a number, its generation, so that a thread that finds its pair broken marks the link
//! down only if that pair is still the one in use. An outage lasts from the first failure to
//! the next subscription, and is logged once at each end.
//!
//! Who touches it, from which thread: only the subscriber thread marks the link up
//! ([`Link::go_up`]) and counts reconnection attempts; the publisher and the subscriber each
//! mark it down for the pair they were using ([`link_lost`]), and each counts what it moved.
//! Connection threads only read whether it is up and count the broadcasts they delivered
//! locally; `/healthz` only reads.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};

use super::{FIRST_BACKOFF, MAX_BACKOFF};
use crate::delivery::hub::Hub;
use crate::logging::Throttle;
use crate::sync::lock;

/// "Malformed message on the channel" is logged at most once per this interval.
pub(super) const MALFORMED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the link reports, for `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Health {
    pub up: bool,
    /// Outages since start (the one at start included).
    pub outages: u64,
    /// Broadcasts delivered to this instance's clients only, because the link was down.
    pub local_only: u64,
    /// Messages on the channel refused as not in the wire format.
    pub malformed: u64,
    /// Broadcasts this instance published, and received from the channel.
    pub published: u64,
    pub received: u64,
}

/// The link broke (or was found broken): marks it down, logs the outage once, and gives
/// every pending newcomer this instance's history, as theirs will not come.
pub(super) fn link_lost(link: &Link, hub: &Hub, generation: u64, why: &str) {
    link.go_down(generation, why);
    // Offsets come from Redis: without it, every room numbers its broadcasts itself, in an
    // epoch of its own, and resuming clients are told so.
    hub.renumber_here();
    let newcomers = hub.history_from_here();
    if newcomers > 0 {
        info!(
            "redis: {} waiting for history from Redis get this instance's instead: the link \
             is down",
            crate::logging::count(newcomers as u64, "newcomer")
        );
    }
}

/// The link's state, shared by the two threads, the connection threads and `/healthz`.
#[derive(Debug)]
pub(super) struct Link {
    /// The URL, password hidden.
    pub(super) shown: String,
    /// Non-zero while the link is up: the number of the connection pair in use, new on each
    /// reconnection. The publisher drops a connection whose number is no longer this.
    generation: AtomicU64,
    last_generation: AtomicU64,
    stopping: AtomicBool,
    outage: Mutex<Option<Outage>>,
    outages: AtomicU64,
    local_only: AtomicU64,
    pub(super) malformed: AtomicU64,
    /// Malformed messages, logged at most once per [`MALFORMED_LOG_INTERVAL`].
    pub(super) malformed_log: Throttle,
    pub(super) published: AtomicU64,
    pub(super) received: AtomicU64,
}

/// What is known of the current outage, for the line that logs its end.
#[derive(Debug)]
struct Outage {
    since: Instant,
    attempts: u64,
    local_only: u64,
    /// Whether the first broadcast delivered locally was logged.
    warned: bool,
}

impl Link {
    pub(super) fn new(shown: String) -> Link {
        Link {
            shown,
            generation: AtomicU64::new(0),
            last_generation: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            outage: Mutex::new(None),
            outages: AtomicU64::new(0),
            local_only: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            malformed_log: Throttle::new(MALFORMED_LOG_INTERVAL),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.generation.load(Ordering::SeqCst) != 0
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Tells both threads to stop, at their next look at [`Link::stopping`].
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Marks the link up with a new connection pair; returns its number. Logs the end of the
    /// outage, if there was one.
    pub(super) fn go_up(&self, channel: &str) -> u64 {
        let generation = self.last_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let ended = lock(&self.outage).take();
        self.generation.store(generation, Ordering::SeqCst);
        match ended {
            None => info!(
                "redis link up: subscribed to channel {channel:?} on {}",
                self.shown
            ),
            Some(outage) => info!(
                "redis link up again after {:.1?} down: subscribed to channel {channel:?} on \
                 {}; {} delivered to this instance's clients only meanwhile, {} while down",
                outage.since.elapsed(),
                self.shown,
                crate::logging::count(outage.local_only, "broadcast"),
                crate::logging::count(outage.attempts, "failed attempt"),
            ),
        }
        generation
    }

    /// Marks the link down, if connection pair `generation` is still the one in use (the
    /// other thread may have found out first). Logs the outage once.
    pub(super) fn go_down(&self, generation: u64, why: &str) {
        if self
            .generation
            .compare_exchange(generation, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.start_outage(why);
        }
    }

    /// Begins an outage (at start, or when the link goes down) and logs it.
    pub(super) fn start_outage(&self, why: &str) {
        let mut outage = lock(&self.outage);
        if outage.is_none() {
            *outage = Some(Outage {
                since: Instant::now(),
                attempts: 0,
                local_only: 0,
                warned: false,
            });
            self.outages.fetch_add(1, Ordering::Relaxed);
            warn!(
                "redis link down: {why}; broadcasts reach this instance's clients only until \
                 it is back; reconnecting (backoff {}ms doubling to {}s)",
                FIRST_BACKOFF.as_millis(),
                MAX_BACKOFF.as_secs()
            );
        }
    }

    /// Counts a failed attempt to reconnect.
    pub(super) fn attempt_failed(&self) {
        if let Some(outage) = lock(&self.outage).as_mut() {
            outage.attempts += 1;
        }
    }

    /// Counts broadcasts delivered to local clients only; the first of an outage is logged.
    pub(super) fn delivered_locally(&self, n: usize) {
        let n = n as u64;
        self.local_only.fetch_add(n, Ordering::Relaxed);
        let mut outage = lock(&self.outage);
        if let Some(outage) = outage.as_mut() {
            outage.local_only += n;
            if !outage.warned {
                outage.warned = true;
                warn!(
                    "redis link down: broadcasts go to this instance's clients only, other \
                     instances miss them (logged once per outage, counted in /healthz)"
                );
            }
        }
    }

    pub(super) fn health(&self) -> Health {
        Health {
            up: self.is_up(),
            outages: self.outages.load(Ordering::Relaxed),
            local_only: self.local_only.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}

impl Health {
    /// The fields `/healthz` adds for a cluster member, starting with a comma.
    pub(crate) fn json_fields(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            ",\"redis\":\"{}\",\"redis_outages\":{},\"redis_local_only\":{},\
             \"redis_malformed\":{},\"redis_published\":{},\"redis_received\":{}",
            if self.up { "up" } else { "down" },
            self.outages,
            self.local_only,
            self.malformed,
            self.published,
            self.received
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_goes_down_once_per_connection_pair_and_counts_its_outages() {
        let link = Link::new("redis://x/".into());
        let first = link.go_up("c");
        assert!(link.is_up());
        link.go_down(first + 1, "a stale pair"); // not the pair in use: ignored
        assert!(link.is_up());
        link.go_down(first, "lost");
        link.go_down(first, "lost again");
        assert!(!link.is_up());
        link.delivered_locally(2);
        let second = link.go_up("c");
        assert!(second > first);
        let health = link.health();
        assert_eq!((health.up, health.outages, health.local_only), (true, 1, 2));
        assert!(
            health
                .json_fields()
                .starts_with(",\"redis\":\"up\",\"redis_outages\":1,")
        );
    }
}
