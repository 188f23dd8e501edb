//! The loop's side of the test controls a client may ask for (`controlled.rs` holds their
//! state; docs/testing-clients.md says what each does): its `whoami` and `send` frames, echoes
//! counted, fragmented or delayed, and its own pings.
//!
//! Everything here is cold and out of line: a connection without controls pays one branch on
//! `Client::controls` where the loop would call in.
//!
//! Invariant: only the connection's own thread touches the controls. They are set once, from
//! the handshake's request, and no other thread sees them; frames for a controlled client all
//! pass through its thread, as its socket is never lent (`Requested::sees_every_frame`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Mode;
use crate::connection::controlled::{Active, Requested};
use crate::frame;

use super::Client;

impl Client<'_> {
    /// Starts the test controls the client asked for: its `whoami` frame first, then the
    /// messages of `send`, then a `close` due right after the handshake.
    #[cold]
    #[inline(never)]
    pub(super) fn begin(&mut self, requested: Requested) {
        let Requested { controls, whoami } = requested;
        self.controls = Some(Box::new(Active::new(&controls, Instant::now())));
        let budget = &self.place.shared.budget;
        if let Some(json) = whoami {
            let frame = budget.hold(frame::text(&json));
            self.queue_own(frame);
        }
        if let Some(send) = controls.send {
            for number in 1..=send.count {
                let message = send.message(number);
                let frame = if send.binary {
                    frame::binary(&message)
                } else {
                    // Digits and dots: always UTF-8.
                    frame::text(std::str::from_utf8(&message).expect("digits and dots"))
                };
                let frame = budget.hold(frame);
                self.stats.tally.sent += 1;
                self.stats.tally.sent_bytes += frame.len() as u64;
                self.queue_own(frame);
            }
        }
        if let Some(close) = controls.close.as_ref().filter(|close| close.after == 0) {
            self.close_on_request(close.code, close.reason.clone());
        }
    }

    /// Queues a frame the server sends on its own (`whoami`, `send`): fragmented if the
    /// client asked for fragments, and not counted as a message sent.
    fn queue_own(&mut self, frame: Bytes) {
        match self.controls.as_ref().and_then(|c| c.fragment) {
            Some(bytes) => self.queue_fragments(frame, bytes, 0),
            None => self.wire.queue.push(frame, false),
        }
    }

    /// Queues `frame` as fragments of at most `bytes` of payload; it stands for `counted`
    /// bytes of the backlog.
    fn queue_fragments(&mut self, frame: Bytes, bytes: usize, counted: usize) {
        match frame::fragment(&frame, bytes) {
            Some(fragments) => {
                let fragments = self.place.shared.budget.hold(fragments);
                self.wire.queue.push_counted(fragments, counted);
            }
            None => self.wire.queue.push_counted(frame, counted),
        }
    }

    /// [`Client::queue_message`] under test controls: counted for `close` and `reset`, and
    /// fragmented for `fragment`. After `reset`'s count, nothing more is sent.
    #[cold]
    #[inline(never)]
    pub(super) fn queue_controlled(&mut self, frame: Bytes, from_outbox: bool) {
        let counted = if from_outbox { frame.len() } else { 0 };
        let Some(active) = self.controls.as_deref_mut() else {
            return self.wire.queue.push(frame, from_outbox);
        };
        if active.reset_due || !self.ws.can_write() {
            if counted > 0 {
                self.inbox.written(counted);
            }
            return;
        }
        let fragment = active.fragment;
        // What counts as a message sent: an echo in echo mode (not the greeting), a delivery
        // in broadcast mode (history, broadcasts, the greeting).
        let counts = (self.place.shared.config.mode == Mode::Broadcast) == from_outbox;
        let close = if counts { active.count_sent() } else { None };
        match fragment {
            Some(bytes) => self.queue_fragments(frame, bytes, counted),
            None => self.wire.queue.push_counted(frame, counted),
        }
        if let Some(close) = close {
            self.close_on_request(close.code, close.reason);
        }
    }

    /// Starts the close handshake a `close` test control asked for.
    fn close_on_request(&mut self, code: u16, reason: String) {
        debug!(
            "{} closing with {code} {reason:?}, as its close test control asks",
            self.place.peer
        );
        self.start_close_owned(
            CloseCode::from(code),
            reason,
            "closed by server, as the client's close test control asked",
        );
    }

    /// Echoes delayed by `delay` whose time has come, in order; and `ping`'s next ping.
    #[cold]
    #[inline(never)]
    pub(super) fn controlled_deadlines(&mut self, now: Instant) {
        let Some(active) = self.controls.as_deref_mut() else {
            return;
        };
        let mut due = Vec::new();
        while let Some((at, _)) = active.delayed.front()
            && *at <= now
        {
            let (_, frame) = active.delayed.pop_front().expect("just seen");
            active.delayed_bytes -= frame.len();
            due.push(frame);
        }
        let ping = active
            .ping
            .filter(|every| now >= active.last_ping + *every && self.closing.by_server.is_none());
        if ping.is_some() {
            active.last_ping = now;
            active.ping_unanswered = true;
        }
        for frame in due {
            self.queue_message(frame, false);
        }
        if ping.is_some() {
            let _ = self.ws.write(&mut self.wire, Message::Ping(Bytes::new()));
        }
    }

    /// A pong, under the `ping` test control: its round trip is logged.
    #[cold]
    #[inline(never)]
    pub(super) fn pong_arrived(&mut self) {
        if let Some(active) = self.controls.as_deref_mut()
            && active.ping.is_some()
            && std::mem::take(&mut active.ping_unanswered)
        {
            info!(
                "{} pong after {:.1?} (ping test control)",
                self.place.peer,
                active.last_ping.elapsed()
            );
        }
    }

    /// Holds an echo until `delay` after its message arrived.
    #[cold]
    #[inline(never)]
    pub(super) fn delay_echo(&mut self, frame: Bytes, delay: Duration) {
        if let Some(active) = self.controls.as_deref_mut() {
            active.delayed_bytes += frame.len();
            active.delayed.push_back((Instant::now() + delay, frame));
        }
    }

    /// Whether the `reset` test control's messages are all written: the connection is then
    /// reset (SO_LINGER 0) without a Close.
    pub(super) fn reset_now(&self) -> bool {
        self.controls.as_ref().is_some_and(|c| c.reset_due) && !self.wire.wants_write()
    }
}
