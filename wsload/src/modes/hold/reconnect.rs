//! `wsload hold --reconnect`: connections that come back when the server closes them.
//!
//! A server that restarts on a listening socket kept open for it (systemd's socket activation:
//! the service manager holds the socket, so connections that arrive between the two processes
//! wait in its queue) closes every client with 1012 "service restart", and the next process
//! takes them back. With `--reconnect`, every connection the server closes during the hold
//! (a Close with any code, or a TCP connection that ends without one) comes back: after a
//! random pause between zero and `--jitter` (full jitter; none by default: all at once, the
//! worst case), and, if an attempt fails (refused, answered 503, timed out, reset), again after
//! a backoff that grows from 50 ms to 2 s, as fanout's resuming listeners do.
//!
//! What it counts: the closes by code, the attempts that failed by kind (refused: nothing
//! listened; 503: the server turned it away; other), the connections back, the time from the
//! first close to the last connection back, and for each reconnection the time from its close
//! to its reopening (its pause and failed attempts included).
//!
//! This module is the bookkeeping, without sockets; `hold.rs` drives it from the event loop.

use crate::handshake::HandshakeError;
use crate::modes::Errors;
use crate::modes::fanout::resume::backoff;
use crate::rng::Rng;
use crate::stats::{self, Summary};
use crate::worker::CloseReason;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::time::{Duration, Instant};

/// Where one connection is, as far as coming back is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Open (or still in the hold's own connect phase).
    Open,
    /// Closed by the server, waiting for its next attempt.
    Away,
    /// Trying to come back.
    Connecting,
}

/// One connection's comings and goings.
#[derive(Debug, Clone, Copy)]
struct Slot {
    place: Place,
    /// When the server closed it last (while away or connecting).
    closed_at: Option<Instant>,
    /// Attempts that failed since that close: the backoff's exponent.
    failures: u32,
    /// Attempts started, ever: tells the current attempt's deadline from older ones'.
    tries: u32,
    /// Whether it came back at least once.
    came_back: bool,
}

/// How an attempt to come back failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connect was refused (ECONNREFUSED): nothing listened.
    Refused,
    /// The server answered the upgrade request 503: it turned the client away.
    Busy,
    /// Anything else: timed out, reset, another answer.
    Other,
}

impl Failure {
    pub fn of(reason: &CloseReason) -> Failure {
        match reason {
            CloseReason::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Failure::Refused
            }
            CloseReason::Handshake(HandshakeError::Status(503, _)) => Failure::Busy,
            _ => Failure::Other,
        }
    }
}

/// Counts over the connections of one worker, summed into the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Closes by the server during the hold, by code.
    pub closed_1012: u64,
    pub closed_1001: u64,
    pub closed_other: u64,
    /// Connections that ended during the hold without a Close frame.
    pub dropped: u64,
    /// Reconnections that opened.
    pub reconnects: u64,
    /// Attempts that failed, by how.
    pub refused: u64,
    pub busy: u64,
    pub failed: u64,
}

impl Counts {
    pub fn merge(&mut self, o: &Counts) {
        self.closed_1012 += o.closed_1012;
        self.closed_1001 += o.closed_1001;
        self.closed_other += o.closed_other;
        self.dropped += o.dropped;
        self.reconnects += o.reconnects;
        self.refused += o.refused;
        self.busy += o.busy;
        self.failed += o.failed;
    }
}

/// The comings and goings of one worker's connections.
#[derive(Debug)]
pub struct Storm {
    jitter: Duration,
    /// How long one attempt may take before it is given up and tried again.
    attempt_timeout: Duration,
    rng: Rng,
    slots: Vec<Slot>,
    /// Attempts due, soonest first: (when, connection).
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Deadlines of attempts under way, soonest first: (when, connection, attempt).
    deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Whether the server's closes bring connections back: from the start (a close that comes
    /// while others still connect is one too: it is brought back once the hold begins) to the
    /// end of the hold, when the attempts still under way are given up.
    pub active: bool,
    pub counts: Counts,
    /// Each reconnection's time from its close to its reopening, in nanoseconds.
    pub back_ns: Vec<i64>,
    pub first_close: Option<Instant>,
    pub last_back: Option<Instant>,
    /// The first failed attempt, described.
    pub failures: Errors,
    /// Connections not open since the server closed them.
    away: usize,
    /// Connections that came back at least once.
    returned: usize,
}

impl Storm {
    pub fn new(count: usize, jitter: Duration, attempt_timeout: Duration, rng: Rng) -> Storm {
        let slot = Slot {
            place: Place::Open,
            closed_at: None,
            failures: 0,
            tries: 0,
            came_back: false,
        };
        Storm {
            jitter,
            attempt_timeout,
            rng,
            slots: vec![slot; count],
            due: BinaryHeap::new(),
            deadlines: BinaryHeap::new(),
            active: true,
            counts: Counts::default(),
            back_ns: Vec::new(),
            first_close: None,
            last_back: None,
            failures: Errors::default(),
            away: 0,
            returned: 0,
        }
    }

    /// Whether connection `id` is trying to come back: its open and close are the storm's.
    pub fn is_connecting(&self, id: usize) -> bool {
        self.slots[id].place == Place::Connecting
    }

    /// Open connection `id` was closed by the server (or dropped) at `now`: it comes back
    /// after its pause.
    pub fn closed(&mut self, id: usize, reason: &CloseReason, now: Instant) {
        match reason {
            CloseReason::ClosedByServer(Some(1012)) => self.counts.closed_1012 += 1,
            CloseReason::ClosedByServer(Some(1001)) => self.counts.closed_1001 += 1,
            CloseReason::ClosedByServer(_) | CloseReason::Normal => self.counts.closed_other += 1,
            _ => self.counts.dropped += 1,
        }
        let slot = &mut self.slots[id];
        if slot.place == Place::Open {
            self.away += 1;
        }
        slot.place = Place::Away;
        slot.closed_at = Some(now);
        slot.failures = 0;
        self.first_close = Some(self.first_close.map_or(now, |t| t.min(now)));
        let pause = self.pause();
        self.due.push(Reverse((now + pause, id)));
    }

    /// The attempt of connection `id` failed at `now` for `reason`: counted, and tried again
    /// after a backoff.
    pub fn failed(&mut self, id: usize, gid: usize, reason: &CloseReason, now: Instant) {
        match Failure::of(reason) {
            Failure::Refused => self.counts.refused += 1,
            Failure::Busy => self.counts.busy += 1,
            Failure::Other => self.counts.failed += 1,
        }
        self.failures
            .record(format!("connection {gid} coming back: {reason}"));
        let slot = &mut self.slots[id];
        slot.place = Place::Away;
        let wait = backoff(slot.failures, &mut self.rng);
        slot.failures = slot.failures.saturating_add(1);
        self.due.push(Reverse((now + wait, id)));
    }

    /// The attempt of connection `id` opened at `now`.
    pub fn reopened(&mut self, id: usize, now: Instant) {
        let slot = &mut self.slots[id];
        slot.place = Place::Open;
        if let Some(closed) = slot.closed_at.take() {
            self.back_ns
                .push(stats::nanos(now.saturating_duration_since(closed)));
        }
        if !slot.came_back {
            slot.came_back = true;
            self.returned += 1;
        }
        self.away -= 1;
        self.counts.reconnects += 1;
        self.last_back = Some(self.last_back.map_or(now, |t| t.max(now)));
    }

    /// The connections due to try now, each marked as trying, with its deadline.
    pub fn take_due(&mut self, now: Instant) -> Vec<usize> {
        let mut ids = Vec::new();
        while let Some(&Reverse((when, id))) = self.due.peek() {
            if when > now {
                break;
            }
            self.due.pop();
            let slot = &mut self.slots[id];
            if slot.place != Place::Away {
                continue;
            }
            slot.place = Place::Connecting;
            slot.tries += 1;
            self.deadlines
                .push(Reverse((now + self.attempt_timeout, id, slot.tries)));
            ids.push(id);
        }
        ids
    }

    /// The connections whose attempt has gone on for longer than the attempt timeout.
    pub fn take_expired(&mut self, now: Instant) -> Vec<usize> {
        let mut ids = Vec::new();
        while let Some(&Reverse((when, id, attempt))) = self.deadlines.peek() {
            if when > now {
                break;
            }
            self.deadlines.pop();
            let slot = &self.slots[id];
            if slot.place == Place::Connecting && slot.tries == attempt {
                ids.push(id);
            }
        }
        ids
    }

    /// When the next attempt is due or the next deadline passes, if any.
    pub fn next_event(&self) -> Option<Instant> {
        let due = self.due.peek().map(|Reverse((when, _))| *when);
        let deadline = self.deadlines.peek().map(|Reverse((when, _, _))| *when);
        match (due, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether all `opened` connections came back and none is away.
    pub fn all_back(&self, opened: usize) -> bool {
        self.away == 0 && self.returned >= opened
    }

    /// The connections trying to come back now.
    pub fn connecting(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&id| self.is_connecting(id))
            .collect()
    }

    /// Connections that came back and are open.
    pub fn back(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.came_back && s.place == Place::Open)
            .count()
    }

    /// The pause before a connection the server closed comes back: full jitter.
    fn pause(&mut self) -> Duration {
        let nanos = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.next_u64() % (nanos + 1))
    }
}

/// The `reconnect_*` fields of the hold report (flattened beside its own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconnectReport {
    /// --jitter, in seconds (0: all at once).
    pub reconnect_jitter_s: f64,
    /// Connections that came back after the server closed them, and are open at the end.
    pub reconnect_back: usize,
    /// Closes by the server during the hold, by code, and connections that ended without one.
    pub reconnect_closed_1012: u64,
    pub reconnect_closed_1001: u64,
    pub reconnect_closed_other: u64,
    pub reconnect_dropped: u64,
    /// Reconnections that opened (more than the connections if some were closed twice).
    pub reconnect_reconnects: u64,
    /// Attempts to come back that failed: refused (ECONNREFUSED), answered 503, otherwise.
    pub reconnect_refused: u64,
    pub reconnect_busy: u64,
    pub reconnect_failed: u64,
    /// From the first close to the last connection back (if some never came back: to the last
    /// that did).
    pub reconnect_all_back_s: Option<f64>,
    /// Each reconnection's time from its close to its reopening.
    pub reconnect_count: usize,
    pub reconnect_p50_us: f64,
    pub reconnect_p99_us: f64,
    pub reconnect_p999_us: f64,
    pub reconnect_max_us: f64,
    pub reconnect_first_failure: Option<String>,
}

impl ReconnectReport {
    pub fn new(storms: &[Storm], jitter: Duration) -> ReconnectReport {
        let mut counts = Counts::default();
        let mut back_ns = Vec::new();
        let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
        let mut failures = Errors::default();
        let mut back = 0;
        for storm in storms {
            counts.merge(&storm.counts);
            back_ns.extend_from_slice(&storm.back_ns);
            first = [first, storm.first_close].into_iter().flatten().min();
            last = [last, storm.last_back].into_iter().flatten().max();
            failures.merge(storm.failures.clone());
            back += storm.back();
        }
        let summary: Summary = stats::summarize_ns(&mut back_ns);
        ReconnectReport {
            reconnect_jitter_s: jitter.as_secs_f64(),
            reconnect_back: back,
            reconnect_closed_1012: counts.closed_1012,
            reconnect_closed_1001: counts.closed_1001,
            reconnect_closed_other: counts.closed_other,
            reconnect_dropped: counts.dropped,
            reconnect_reconnects: counts.reconnects,
            reconnect_refused: counts.refused,
            reconnect_busy: counts.busy,
            reconnect_failed: counts.failed,
            reconnect_all_back_s: first
                .zip(last)
                .map(|(first, last)| last.saturating_duration_since(first).as_secs_f64()),
            reconnect_count: summary.count,
            reconnect_p50_us: summary.p50_us,
            reconnect_p99_us: summary.p99_us,
            reconnect_p999_us: summary.p999_us,
            reconnect_max_us: summary.max_us,
            reconnect_first_failure: failures.first,
        }
    }

    /// Every one of `connections` came back, and no attempt failed.
    pub fn passed(&self, connections: u64) -> bool {
        self.reconnect_back as u64 == connections
            && self.reconnect_refused == 0
            && self.reconnect_busy == 0
            && self.reconnect_failed == 0
    }

    /// Lines for people.
    pub fn lines(&self, connections: u64) -> Vec<(&'static str, String)> {
        let jitter = if self.reconnect_jitter_s > 0.0 {
            format!("jitter up to {:.2} s", self.reconnect_jitter_s)
        } else {
            "no jitter: all at once".to_string()
        };
        let within = self.reconnect_all_back_s.map_or(String::new(), |s| {
            let last = if self.reconnect_back as u64 == connections {
                "the last"
            } else {
                "the last that did"
            };
            format!(", {last} {s:.3} s after the first close")
        });
        let closes = self.reconnect_closed_1012
            + self.reconnect_closed_1001
            + self.reconnect_closed_other
            + self.reconnect_dropped;
        let summary = Summary {
            count: self.reconnect_count,
            p50_us: self.reconnect_p50_us,
            p99_us: self.reconnect_p99_us,
            p999_us: self.reconnect_p999_us,
            max_us: self.reconnect_max_us,
        };
        let mut lines = vec![
            (
                "reconnect",
                format!(
                    "{} of {connections} back ({jitter}){within}",
                    self.reconnect_back
                ),
            ),
            (
                "closes",
                format!(
                    "{closes} by the server: {} with 1012, {} with 1001, {} other, {} without \
                     a Close frame",
                    self.reconnect_closed_1012,
                    self.reconnect_closed_1001,
                    self.reconnect_closed_other,
                    self.reconnect_dropped
                ),
            ),
            (
                "attempts",
                format!(
                    "{} reconnection(s); failed: {} refused, {} answered 503, {} other",
                    self.reconnect_reconnects,
                    self.reconnect_refused,
                    self.reconnect_busy,
                    self.reconnect_failed
                ),
            ),
            ("back after", summary.line()),
        ];
        if let Some(first) = &self.reconnect_first_failure {
            lines.push(("first failure", first.clone()));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storm(count: usize, jitter: Duration) -> Storm {
        Storm::new(count, jitter, Duration::from_secs(30), Rng::with_seed(7))
    }

    #[test]
    fn without_jitter_a_closed_connection_is_due_at_once() {
        let mut s = storm(2, Duration::ZERO);
        let t = Instant::now();
        s.closed(1, &CloseReason::ClosedByServer(Some(1012)), t);
        assert_eq!(s.take_due(t), [1]);
        assert!(s.is_connecting(1) && !s.is_connecting(0));
        assert!(!s.all_back(2));
        s.reopened(1, t + Duration::from_millis(3));
        // Connection 0 was never closed: not all came back.
        assert!(!s.all_back(2));
        s.closed(0, &CloseReason::Eof, t);
        assert_eq!(s.take_due(t), [0]);
        s.reopened(0, t + Duration::from_millis(5));
        assert!(s.all_back(2));
        assert_eq!(s.back(), 2);
        assert_eq!((s.counts.closed_1012, s.counts.dropped), (1, 1));
        assert_eq!(s.counts.reconnects, 2);
        assert_eq!(s.back_ns, [3_000_000, 5_000_000]);
        assert_eq!(s.first_close, Some(t));
        assert_eq!(s.last_back, Some(t + Duration::from_millis(5)));
    }

    #[test]
    fn jitter_spreads_the_comebacks_within_it() {
        let jitter = Duration::from_secs(1);
        let mut s = storm(1000, jitter);
        let t = Instant::now();
        for id in 0..1000 {
            s.closed(id, &CloseReason::ClosedByServer(Some(1012)), t);
        }
        let at_once = s.take_due(t).len();
        assert!(at_once < 10, "{at_once} due at once");
        let first_half = at_once + s.take_due(t + jitter / 2).len();
        assert!(
            (400..600).contains(&first_half),
            "{first_half} due within half the jitter"
        );
        let all = first_half + s.take_due(t + jitter).len();
        assert_eq!(all, 1000);
        assert_eq!(s.connecting().len(), 1000);
    }

    #[test]
    fn failed_attempts_are_counted_by_kind_and_tried_again() {
        let mut s = storm(1, Duration::ZERO);
        let t = Instant::now();
        s.closed(0, &CloseReason::ClosedByServer(Some(1001)), t);
        assert_eq!(s.take_due(t), [0]);
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        s.failed(0, 0, &CloseReason::Connect(refused), t);
        assert!(!s.is_connecting(0));
        // The backoff after the first failure is at most 50 ms.
        assert_eq!(s.take_due(t + Duration::from_millis(50)), [0]);
        let busy = HandshakeError::Status(503, "Service Unavailable".into());
        s.failed(0, 0, &CloseReason::Handshake(busy), t);
        assert_eq!(s.take_due(t + Duration::from_millis(100)), [0]);
        s.failed(0, 0, &CloseReason::TimedOut, t);
        assert_eq!(
            (s.counts.refused, s.counts.busy, s.counts.failed),
            (1, 1, 1)
        );
        assert_eq!(
            s.failures.first.as_deref(),
            Some("connection 0 coming back: connect failed: connection refused")
        );
        assert_eq!(s.take_due(t + Duration::from_millis(200)), [0]);
        s.reopened(0, t + Duration::from_millis(250));
        assert_eq!(s.back_ns, [250_000_000]);
        assert!(s.all_back(1));
    }

    #[test]
    fn an_attempt_past_its_deadline_expires_once() {
        let mut s = storm(1, Duration::ZERO);
        let t = Instant::now();
        s.closed(0, &CloseReason::Eof, t);
        assert_eq!(s.take_due(t), [0]);
        assert_eq!(s.next_event(), Some(t + Duration::from_secs(30)));
        assert!(s.take_expired(t + Duration::from_secs(29)).is_empty());
        assert_eq!(s.take_expired(t + Duration::from_secs(30)), [0]);
        // The next attempt has a deadline of its own; the old one is spent.
        s.failed(0, 0, &CloseReason::TimedOut, t + Duration::from_secs(30));
        let again = t + Duration::from_secs(31);
        assert_eq!(s.take_due(again), [0]);
        assert!(s.take_expired(again).is_empty());
    }

    #[test]
    fn the_report_sums_the_workers_and_passes_only_with_all_back_and_no_failure() {
        let t = Instant::now();
        let mut a = storm(1, Duration::ZERO);
        a.closed(0, &CloseReason::ClosedByServer(Some(1012)), t);
        a.take_due(t);
        a.reopened(0, t + Duration::from_millis(10));
        let mut b = storm(1, Duration::ZERO);
        b.closed(
            0,
            &CloseReason::ClosedByServer(Some(1012)),
            t + Duration::from_millis(1),
        );
        b.take_due(t);
        b.reopened(0, t + Duration::from_millis(40));
        let report = ReconnectReport::new(&[a, b], Duration::ZERO);
        assert_eq!(report.reconnect_back, 2);
        assert_eq!(report.reconnect_closed_1012, 2);
        assert_eq!(report.reconnect_all_back_s, Some(0.04));
        assert_eq!(report.reconnect_max_us, 39_000.0);
        assert!(report.passed(2));
        assert!(!report.passed(3));
        let refused = ReconnectReport {
            reconnect_refused: 1,
            ..report
        };
        assert!(!refused.passed(2));
    }
}
