//! How a connection ends: the close handshake from either side, and the endings that do not
//! wait for it.
//!
//! The server starts a close with [`Client::start_close`] when it is asked to (a `Close`
//! delivery, a `close` test control) and then gives the client `close_timeout` to answer; a
//! client that broke the protocol gets its Close at once ([`Client::read_error`]). A listener
//! that does not read ([`Client::close_too_slow`]) and a connection starved of memory
//! ([`Client::close_for_memory`]) get their Close and end without waiting for the reply; one
//! let go for falling behind ([`Client::let_go`]) is waited for. Whatever the way,
//! [`Client::linger`] gives what is still queued its chance to go out.
//!
//! Invariant: only the connection's own thread touches [`Closing`] and sends a Close. Another
//! thread that wants the connection closed asks through its outbox: a `Delivery::Close`
//! (shutdown), or the overflow mark that lets a listener go.

use std::fmt;
use std::time::{Duration, Instant};

use log::{info, warn};
use tungstenite::Error as WsError;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::delivery::outbox::Delivery;
use crate::sys::{self, Interest};

use super::Client;

/// The close reason of a listener that stayed behind past the send timeout, and of one that
/// did while its own broadcasts waited for it: a client that cannot read while its send is
/// blocked (python-websockets' sync client, a one-thread tungstenite client) is its own
/// slowest reader (docs/design.md).
const TOO_SLOW: &str = "too slow: not reading what it was sent";
/// The close reason of a listener let go for falling behind (`--slow-listener close`).
const FELL_BEHIND: &str =
    "too slow: fell behind its room; reconnect with ?resume=EPOCH:OFFSET to get what it missed";
const TOO_SLOW_WHILE_SENDING: &str =
    "too slow: not reading what it was sent, while its own broadcasts waited for it";

/// How a connection ended: the close code and reason, and what happened, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ending {
    /// The close code: the client's, the one the server sent, or 1006 (`Abnormal`) when the
    /// connection ended without a Close frame (RFC 6455 section 7.1.5).
    pub(crate) code: CloseCode,
    pub(crate) reason: String,
    pub(crate) how: &'static str,
    /// Ended because its client stopped reading: the socket is reset when closed (SO_LINGER
    /// 0), so the kernel drops what the client never took at once instead of keeping it, and
    /// the socket, in FIN-WAIT-1 behind a zero window. Graceful endings keep a normal FIN.
    pub(crate) reset: bool,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "code {} {:?} ({})",
            u16::from(self.code),
            self.reason,
            self.how
        )
    }
}

/// The close handshake, from either side.
#[derive(Default)]
pub(super) struct Closing {
    /// Set once the server has sent its Close frame: how it closed, and the reply's deadline.
    pub(super) by_server: Option<(Ending, Instant)>,
    /// The client's Close frame, once it arrived.
    pub(super) by_client: Option<(CloseCode, String)>,
}

impl Client<'_> {
    /// Sends the server's Close frame; the client has `close_timeout` to answer.
    pub(super) fn start_close(&mut self, code: CloseCode, reason: &'static str, how: &'static str) {
        self.start_close_owned(code, reason.to_string(), how);
    }

    /// [`Client::start_close`] with a reason of any lifetime.
    pub(super) fn start_close_owned(&mut self, code: CloseCode, reason: String, how: &'static str) {
        if self.closing.by_server.is_some() || !self.ws.can_write() {
            return;
        }
        self.inbox.close_intake();
        self.send_close(code, &reason);
        let ending = Ending {
            code,
            reason,
            how,
            reset: false,
        };
        let deadline = Instant::now() + self.place.shared.config.close_timeout;
        self.closing.by_server = Some((ending, deadline));
    }

    /// Queues the server's Close frame (tungstenite then refuses to send anything after it).
    fn send_close(&mut self, code: CloseCode, reason: &str) {
        let close = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Nothing may follow the Close: no more broadcasts straight into the socket either.
        self.wire.queue.reclaim();
        // Fails only when a Close was already sent, or the connection is unusable; linger()
        // ends it either way.
        let _ = self.ws.close(&mut self.wire, Some(close));
    }

    /// How a completed close handshake ended.
    fn closed(&mut self) -> Ending {
        match (self.closing.by_server.take(), self.closing.by_client.take()) {
            // Answered: the client read everything up to the Close, nothing is left to drop.
            (Some((ending, _)), _) => Ending {
                reset: false,
                ..ending
            },
            (None, Some((code, reason))) => Ending {
                code,
                reason,
                how: "closed by client",
                reset: false,
            },
            (None, None) => Ending {
                code: CloseCode::Abnormal,
                reason: String::new(),
                how: "closed",
                reset: false,
            },
        }
    }

    /// Turns a read error into how the connection ended, sending the Close frame the RFC asks
    /// for when the client broke the protocol.
    #[inline(never)]
    pub(super) fn read_error(&mut self, error: WsError) -> Ending {
        let (code, reason) = match error {
            WsError::ConnectionClosed | WsError::AlreadyClosed => return self.closed(),
            WsError::Io(e) => return lost("connection lost", &e),
            WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                return Ending {
                    code: CloseCode::Abnormal,
                    reason: String::new(),
                    how: "closed without a Close frame",
                    reset: false,
                };
            }
            WsError::Protocol(e) => (CloseCode::Protocol, format!("protocol error: {e}")),
            WsError::Utf8(_) => (
                CloseCode::Invalid,
                "invalid UTF-8 in a text message".to_string(),
            ),
            WsError::Capacity(e) => (CloseCode::Size, format!("too big: {e}")),
            other => (CloseCode::Error, format!("internal error: {other}")),
        };
        info!("{} failed the connection: {reason}", self.place.peer);
        self.send_close(code, &close_reason(&reason));
        Ending {
            code,
            reason,
            how: "failed by client, closed by server",
            reset: false,
        }
    }

    /// A listener behind for the whole send timeout: it does not read, or too slowly to ever
    /// catch up. It takes no more broadcasts, what it has not started receiving is dropped
    /// (which lets the senders go on at once), and it gets 1008 and ends: a client that does
    /// not read will not read the Close either, so its reply is not waited for, and nothing
    /// more is read from it. The reason says whether its own broadcasts were waiting for it.
    #[inline(never)]
    pub(super) fn close_too_slow(&mut self, behind_for: Duration) -> Ending {
        // Its own sends were held back if it was waiting for listeners with input unread.
        let sending = self.reading.pacing.waiting_for_listeners()
            && (self.reading.pending || self.wire.input_waiting());
        let reason = if sending {
            TOO_SLOW_WHILE_SENDING
        } else {
            TOO_SLOW
        };
        warn!(
            "{} {reason}: more than {} bytes queued and not read for {:.1?}; closing it",
            self.place.peer,
            self.place
                .shared
                .config
                .max_backlog
                .min(self.inbox.backlog()),
            behind_for
        );
        self.give_up_on_backlog();
        self.send_close(CloseCode::Policy, reason);
        Ending {
            code: CloseCode::Policy,
            reason: reason.to_string(),
            how: "too slow, closed by server",
            reset: true,
        }
    }

    /// A connection that could not read for its stall timeout because memory was full: it
    /// gets 1013 (try again later) and ends now, without waiting for the reply, so that what
    /// it held (a message half received, usually) is freed at once.
    #[inline(never)]
    pub(super) fn close_for_memory(&mut self, waited: Duration) -> Ending {
        let budget = &self.place.shared.budget;
        warn!(
            "{} closed: the server's memory has been full for {:.1?} ({} of {} bytes in use)",
            self.place.peer,
            waited,
            budget.used(),
            budget.limit()
        );
        self.place.shared.metrics.reject("memory");
        let reason = "try again later: server memory full";
        self.inbox.close_intake();
        self.send_close(CloseCode::Again, reason);
        Ending {
            code: CloseCode::Again,
            reason: reason.to_string(),
            how: "memory full, closed by server",
            reset: true,
        }
    }

    /// A listener that fell more than the backlog limit behind, under `--slow-listener close`:
    /// it takes no more broadcasts, what it has not started receiving is dropped, and it gets
    /// 1008 with a reason that says it can resume. Unlike [`Client::close_too_slow`], its
    /// reply is waited for, for the close timeout: a listener let go may well be reading, only
    /// slower than its room, and then it reads what reached it and the 1008 after, and closes
    /// cleanly. One that does not answer in time is reset.
    #[cold]
    #[inline(never)]
    pub(super) fn let_go(&mut self) {
        if self.closing.by_server.is_some() || !self.ws.can_write() {
            return;
        }
        warn!(
            "{} {FELL_BEHIND}: more than {} bytes queued and not read; closing it",
            self.place.peer, self.place.shared.config.max_backlog
        );
        self.give_up_on_backlog();
        self.start_close(
            CloseCode::Policy,
            FELL_BEHIND,
            "fell behind, let go by server",
        );
        if let Some((ending, _)) = &mut self.closing.by_server {
            ending.reset = true;
        }
    }

    /// A slow client's backlog, given up: nothing more is taken for it, what it has not
    /// started receiving is dropped (and its bytes given back), and it is counted as closed
    /// for being slow. What a write began is kept, so that the Close after it stays whole.
    fn give_up_on_backlog(&mut self) {
        self.inbox.close_intake();
        self.wire.queue.discard_unsent(&self.inbox);
        for delivery in self.inbox.drain() {
            if let Delivery::Frame(frame) = delivery {
                self.inbox.written(frame.len());
            }
        }
        self.place.shared.metrics.slow_client_closed();
    }

    /// Gives what is still queued (a Close reply, say) up to `close_timeout` to go out, and
    /// says whether it all went. When the server's Close is waiting for its reply, the close
    /// timeout already runs and lingering does not extend it.
    #[inline(never)]
    pub(super) fn linger(&mut self) -> bool {
        // The connection is ending: from here only its own thread writes.
        self.wire.queue.reclaim();
        let deadline = match &self.closing.by_server {
            Some((_, deadline)) => *deadline,
            None => Instant::now() + self.place.shared.config.close_timeout,
        };
        while self.wire.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            let write = Interest {
                read: false,
                write: true,
            };
            let socket = Some(self.wire.tcp());
            if left.is_zero() || sys::wait(socket, write, self.inbox.waker(), Some(left)).is_err() {
                return false;
            }
            self.inbox.waker().reset();
            if self.wire.send_queued(&self.inbox).is_err() {
                return false;
            }
        }
        true
    }
}

/// The ending for a connection that broke without a close handshake.
pub(super) fn lost(what: &'static str, error: &std::io::Error) -> Ending {
    Ending {
        code: CloseCode::Abnormal,
        reason: error.to_string(),
        how: what,
        reset: false,
    }
}

/// A Close frame's reason: at most 123 bytes (section 5.5), cut at a character boundary.
fn close_reason(reason: &str) -> String {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason[..cut].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        assert!(TOO_SLOW_WHILE_SENDING.len() <= 123);
        assert!(FELL_BEHIND.len() <= 123);
        assert_eq!(close_reason(&"é".repeat(100)).len(), 122);
    }
}
