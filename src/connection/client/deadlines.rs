//! What the clock makes due: the pings that keep a quiet connection alive, the idle timeout,
//! the close and send timeouts, waiting too long for memory, settling, and the test controls'
//! timers.
//!
//! [`Client::next_deadline`] says when the loop must wake with nothing else to do, so that an
//! idle connection sleeps until its next ping; [`Client::check_deadlines`] acts on whatever is
//! due, at the end of every round.
//!
//! Invariant: only the connection's own thread reads and writes [`Liveness`]. What other
//! threads contribute it only reads: through its inbox (since when its client has been behind,
//! whether it overflowed), the room's flow control and the memory budget.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use super::Client;
use super::closing::Ending;

/// Signs of life, and keeping a quiet connection alive.
pub(super) struct Liveness {
    /// When the client last sent anything at all.
    pub(super) last_heard: Instant,
    /// When the socket last took queued bytes, or the queue was last empty.
    pub(super) last_sent: Instant,
    pub(super) last_ping: Instant,
}

impl Client<'_> {
    /// The earliest moment something must happen even if nothing arrives.
    #[inline(never)]
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let config = &self.place.shared.config;
        let controlled = self.controls.as_ref();
        let ping = config
            .ping_interval
            .filter(|_| controlled.is_none_or(|c| c.ping.is_none()))
            .map(|every| self.liveness.last_ping.max(self.liveness.last_heard) + every);
        let idle = config
            .idle_timeout
            .zip(self.silence_start())
            .map(|(after, start)| start + after);
        let close = self
            .closing
            .by_server
            .as_ref()
            .map(|(_, deadline)| *deadline);
        let behind = self
            .inbox
            .behind_since()
            .filter(|_| !self.place.room.flow().common().lets_go())
            .map(|since| since + config.send_timeout);
        let starved = self
            .reading
            .pacing
            .waiting_for_memory_since()
            .map(|since| since + self.stall_timeout());
        let controlled = controlled.and_then(|c| c.next_deadline());
        [
            ping,
            idle,
            close,
            behind,
            starved,
            self.settling.deadline(),
            controlled,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Silence is counted from the last sign of life: bytes received, or, while the server is
    /// not reading because the client has not taken its echoes, bytes the client took. While
    /// the server waits for other connections it does not listen, so silence is not counted.
    fn silence_start(&self) -> Option<Instant> {
        if self.backpressured() {
            Some(self.liveness.last_sent)
        } else if self.reading.pacing.paused() {
            None
        } else {
            Some(self.liveness.last_heard)
        }
    }

    /// How long a connection may wait for memory before it is closed with 1013: its idle
    /// timeout, or the send timeout when idle clients are never dropped.
    fn stall_timeout(&self) -> Duration {
        let config = &self.place.shared.config;
        config.idle_timeout.unwrap_or(config.send_timeout)
    }

    pub(super) fn check_deadlines(&mut self) -> Result<(), Ending> {
        let now = Instant::now();
        let config = &self.place.shared.config;
        if self.settling.due(now) {
            self.settle(now);
        }
        self.settling.trim_if_due(now);
        if let Some((ending, deadline)) = &self.closing.by_server
            && now >= *deadline
        {
            return Err(Ending {
                code: ending.code,
                reason: ending.reason.clone(),
                how: "no reply to the server's Close in time",
                // A listener let go for falling behind that does not answer is not reading:
                // what the kernel holds for it is dropped with a reset.
                reset: ending.reset,
            });
        }
        // Under --slow-listener close, the overflow mark alone lets a listener go: one
        // catching up on a long history may take longer than the send timeout.
        let behind = self
            .inbox
            .behind_since()
            .filter(|_| !self.place.room.flow().common().lets_go());
        if self.inbox.overflowed() && self.place.room.flow().common().lets_go() {
            self.let_go();
        } else if self.inbox.overflowed()
            || behind.is_some_and(|since| now >= since + config.send_timeout)
        {
            return Err(self.close_too_slow(behind.map_or(Duration::ZERO, |since| now - since)));
        }
        if let Some(since) = self.reading.pacing.waiting_for_memory_since()
            && now >= since + self.stall_timeout()
        {
            return Err(self.close_for_memory(now - since));
        }
        if let Some(after) = config.idle_timeout
            && let Some(start) = self.silence_start()
            && now >= start + after
        {
            let how = if self.backpressured() {
                "timed out: it stopped reading what it was sent"
            } else {
                "timed out: nothing received, not even a pong"
            };
            // Silent or not reading: nothing graceful can come of it, and what is queued for
            // it would only sit in the kernel.
            return Err(Ending {
                code: CloseCode::Abnormal,
                reason: String::new(),
                how,
                reset: true,
            });
        }
        if self.controls.is_some() {
            self.controlled_deadlines(now);
        }
        if let Some(every) = config.ping_interval
            && self.controls.as_ref().is_none_or(|c| c.ping.is_none())
            && self.closing.by_server.is_none()
            && now >= self.liveness.last_ping.max(self.liveness.last_heard) + every
        {
            let _ = self.ws.write(&mut self.wire, Message::Ping(Bytes::new()));
            self.liveness.last_ping = now;
        }
        Ok(())
    }
}
