//! The test controls on a connection that asked for some (`http/controls.rs` reads and checks
//! them; docs/testing-clients.md says what each does). The client's loop (`client.rs`) keeps
//! this state boxed behind an `Option`: a connection without controls pays one pointer and a
//! branch on it, and its footprint and its loop's stack stay what they were.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::http::controls::{Close, Controls};

/// The controls a handshake accepted, and what `whoami` answers (the JSON is made while the
/// request is at hand, in the handshake).
#[derive(Debug)]
pub(super) struct Requested {
    pub(super) controls: Controls,
    pub(super) whoami: Option<String>,
}

impl Requested {
    /// Whether every frame for this client must pass through its own thread, to be counted
    /// (`close` after N, `reset`) or re-encoded (`fragment`): then its socket is never lent to
    /// broadcasters and the greeting timer (`SendQueue::lend`).
    pub(super) fn sees_every_frame(&self) -> bool {
        let controls = &self.controls;
        controls.close.as_ref().is_some_and(|close| close.after > 0)
            || controls.reset.is_some()
            || controls.fragment.is_some()
    }
}

/// A controlled connection's state.
#[derive(Debug)]
pub(super) struct Active {
    /// `close`, until it is done.
    pub(super) close: Option<Close>,
    /// `reset`: after this many messages.
    pub(super) reset: Option<u64>,
    pub(super) delay: Option<Duration>,
    pub(super) fragment: Option<usize>,
    pub(super) ping: Option<Duration>,
    /// Messages sent to the client so far: echoes in echo mode, deliveries in broadcast mode.
    pub(super) sent: u64,
    /// Set once the messages `reset` waits for are queued: nothing more is, and the
    /// connection is reset once they are written.
    pub(super) reset_due: bool,
    /// When the last `ping` went out, and whether its pong is still awaited.
    pub(super) last_ping: Instant,
    pub(super) ping_unanswered: bool,
    /// Echoes waiting for their time (`delay`), in order, and their bytes.
    pub(super) delayed: VecDeque<(Instant, Bytes)>,
    pub(super) delayed_bytes: usize,
}

impl Active {
    pub(super) fn new(controls: &Controls, now: Instant) -> Active {
        Active {
            close: controls.close.clone(),
            reset: controls.reset,
            delay: controls.delay,
            fragment: controls.fragment,
            ping: controls.ping,
            sent: 0,
            reset_due: controls.reset == Some(0),
            last_ping: now,
            ping_unanswered: false,
            delayed: VecDeque::new(),
            delayed_bytes: 0,
        }
    }

    /// The earliest moment a control must act: the next ping, the next delayed echo.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let ping = self.ping.map(|every| self.last_ping + every);
        let echo = self.delayed.front().map(|(due, _)| *due);
        ping.into_iter().chain(echo).min()
    }

    /// Counts one more message sent to the client. Returns the `close` to start now, if its
    /// count is reached; sets [`Active::reset_due`] when `reset`'s is.
    pub(super) fn count_sent(&mut self) -> Option<Close> {
        self.sent += 1;
        if self.reset.is_some_and(|n| self.sent >= n) {
            self.reset_due = true;
        }
        if self
            .close
            .as_ref()
            .is_some_and(|close| self.sent >= close.after)
        {
            return self.close.take();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(close_after: Option<u64>, reset: Option<u64>) -> Active {
        let controls = Controls {
            close: close_after.map(|after| Close {
                code: 4000,
                reason: "r".into(),
                after,
            }),
            reset,
            ..Controls::default()
        };
        Active::new(&controls, Instant::now())
    }

    #[test]
    fn close_and_reset_fall_due_at_their_count() {
        let mut both = active(Some(2), Some(3));
        assert!(!both.reset_due);
        assert_eq!(both.count_sent(), None);
        assert_eq!(both.count_sent().map(|close| close.code), Some(4000));
        // Once only.
        assert_eq!(both.count_sent(), None);
        assert!(both.reset_due);
        assert!(active(None, Some(0)).reset_due);
    }

    #[test]
    fn only_counting_and_fragments_keep_the_socket_from_being_lent() {
        let requested = |controls| Requested {
            controls,
            whoami: None,
        };
        let close_now = Controls {
            close: Some(Close {
                code: 1000,
                reason: String::new(),
                after: 0,
            }),
            whoami: true,
            ..Controls::default()
        };
        assert!(!requested(close_now).sees_every_frame());
        for controls in [
            Controls {
                reset: Some(1),
                ..Controls::default()
            },
            Controls {
                fragment: Some(8),
                ..Controls::default()
            },
        ] {
            assert!(requested(controls).sees_every_frame());
        }
    }

    #[test]
    fn the_next_deadline_is_the_next_ping_or_delayed_echo() {
        let now = Instant::now();
        let mut pinging = Active::new(
            &Controls {
                ping: Some(Duration::from_secs(1)),
                ..Controls::default()
            },
            now,
        );
        assert_eq!(pinging.next_deadline(), Some(now + Duration::from_secs(1)));
        pinging
            .delayed
            .push_back((now + Duration::from_millis(10), Bytes::new()));
        assert_eq!(
            pinging.next_deadline(),
            Some(now + Duration::from_millis(10))
        );
        assert_eq!(active(None, None).next_deadline(), None);
    }
}
