//! Reading the client's messages: whether the loop may read now, a round of reading whole
//! messages, and acting on each (an echo queued, a broadcast kept for the round).
//!
//! Reading stops while the client has not taken what it was sent ([`Client::backpressured`]),
//! and while other connections stand in the way (`pace.rs`): then TCP flow control makes the
//! client wait. A connection that broke is read to the end without pushback
//! ([`Client::deliver_what_arrived`]), so that what its client sent is still delivered.
//!
//! Invariant: only the connection's own thread touches [`Reading`]. Other threads affect it
//! only by waking that thread, through the wait lists of `pace.rs`, when what it waits for
//! (a listener catching up, memory freed) has happened.

use std::time::Instant;

use log::debug;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message};

use crate::config::Mode;
use crate::connection::pace::{Pacing, Turn};
use crate::connection::read_size::ReadSize;
use crate::frame;

use super::Client;
use super::closing::Ending;
use super::deliveries::Broadcasts;

/// Text longer than this is shortened in the debug log.
const LOGGED_TEXT_CHARS: usize = 200;

/// Reading the client's messages: how, whether it may, and what this round read.
pub(super) struct Reading {
    /// The read step `ws` was made with (`read_size.rs`).
    pub(super) size: ReadSize,
    /// Set when reading stopped with input left unread (in tungstenite's buffer, say): the
    /// socket may never signal it, so the next round reads before it sleeps.
    pub(super) pending: bool,
    /// Set once the connection is lost: what it had sent is read to the end, without pushback.
    pub(super) draining: bool,
    pub(super) pacing: Pacing,
    pub(super) broadcasts: Broadcasts,
}

impl Client<'_> {
    /// Whether the loop may read now: its own client has taken what it was sent, and no other
    /// connection stands in the way (`pace.rs`).
    pub(super) fn may_read(&mut self) -> bool {
        if self.backpressured() {
            return false;
        }
        let flow =
            (self.place.shared.config.mode == Mode::Broadcast).then(|| &**self.place.room.flow());
        let was_paused = self.reading.pacing.paused();
        let turn = self.reading.pacing.turn(
            self.inbox.outbox(),
            flow,
            &self.place.shared.budget,
            self.wire.reader.in_progress(),
        );
        match turn {
            Turn::Wait if !was_paused && self.reading.pacing.waiting_for_listeners() => {
                let why = if self.place.room.flow().listeners_behind() {
                    "a listener of its room is behind"
                } else {
                    "the cluster's publish queue is full"
                };
                debug!("{} paused: {why}", self.place.peer);
                false
            }
            Turn::Wait
                if !was_paused && self.reading.pacing.waiting_for_memory_since().is_some() =>
            {
                // Under --slow-listener close, the listeners furthest behind go before any
                // sender waits for memory.
                if self.place.shared.config.mode == Mode::Broadcast
                    && self.place.room.flow().common().lets_go()
                {
                    self.place.shared.hub.let_go_furthest_behind();
                }
                false
            }
            Turn::Wait => false,
            Turn::Read => true,
            Turn::ReadAfterPause => {
                // Silence while the server would not read says nothing about the client.
                self.liveness.last_heard = self.liveness.last_heard.max(Instant::now());
                true
            }
        }
    }

    /// The loop stops reading while the client has not taken what it was already sent: its
    /// unread echoes (or pongs) are then bounded by the backlog limit (plus one message), and
    /// TCP flow control slows the client down. Other clients are not affected.
    ///
    /// Under `--slow-listener close`, a broadcasting client's own copies count too, from half
    /// the backlog limit: its thread reads its messages, fans them out and only then writes
    /// its own copies, so without this a client sending fast would overflow its own backlog
    /// and be let go for its own broadcasts.
    pub(super) fn backpressured(&self) -> bool {
        let limit = self.place.shared.config.max_backlog;
        let delayed = self.controls.as_ref().map_or(0, |c| c.delayed_bytes);
        self.wire.queue.queued() + delayed >= limit
            || (self.place.shared.config.mode == Mode::Broadcast
                && self.place.room.flow().common().lets_go()
                && self.inbox.backlog() >= limit / 2)
    }

    /// In broadcast mode, whether a listener is behind: reading stops until it catches up.
    fn listeners_behind(&self) -> bool {
        self.place.shared.config.mode == Mode::Broadcast && self.place.room.flow().congested()
    }

    /// Reads every complete message the socket has, and acts on each.
    pub(super) fn read_messages(&mut self) -> Result<(), Ending> {
        let mut ended = None;
        self.fit_read_size();
        self.wire.reader.start_round();
        // Stays true if the loop stops for pushback before the stream said "would block".
        self.reading.pending = true;
        while self.reading.draining || (!self.backpressured() && !self.listeners_behind()) {
            match self.ws.read(&mut self.wire) {
                Ok(message) => {
                    self.on_message(message);
                    // Released only now: until its echo or broadcast frame exists (counted on
                    // its own), the message's bytes are held twice.
                    self.wire.reader.message_done();
                    if self.reading.broadcasts.bytes >= self.broadcast_batch() {
                        self.fan_out();
                    }
                }
                Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.reading.pending = false;
                    break;
                }
                Err(e) => {
                    ended = Some(self.read_error(e));
                    break;
                }
            }
        }
        // Everything this read brought in goes out to the others in one go: one wake-up per
        // listener for a burst of messages, not one per message.
        self.fan_out();
        if self.wire.reader.take_heard() {
            self.liveness.last_heard = Instant::now();
        }
        // Refused for lack of memory: the next may_read finds out and waits for room.
        self.wire.reader.take_starved();
        if ended.is_none() {
            // The next round reads in bigger steps if this one brought a big frame.
            self.fit_read_size();
        }
        ended.map_or(Ok(()), Err)
    }

    /// Acts on one message: an echo queued, a broadcast kept for the round, a Close noted.
    fn on_message(&mut self, message: Message) {
        let payload_len = message.len();
        let budget = &self.place.shared.budget;
        let frame = match &message {
            Message::Text(text) => {
                debug!("{} text {:?}", self.place.peer, shorten(text));
                if self.place.shared.config.panic_on_message.as_deref() == Some(text.as_str()) {
                    panic!("test hook: message {text:?} asked for a panic");
                }
                budget.hold(frame::text(text))
            }
            Message::Binary(data) => {
                debug!("{} binary, {} bytes", self.place.peer, data.len());
                budget.hold(frame::binary(data))
            }
            Message::Pong(_) if self.controls.is_some() => return self.pong_arrived(),
            // tungstenite has already queued the pong for a ping, and the close reply.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return,
            Message::Close(frame) => {
                let (code, reason) = frame
                    .as_ref()
                    .map_or((CloseCode::Status, String::new()), |f| {
                        (f.code, f.reason.to_string())
                    });
                debug!(
                    "{} sent Close {} {reason:?}",
                    self.place.peer,
                    u16::from(code)
                );
                // Nothing may follow the Close reply tungstenite queued: no more broadcasts
                // straight into the socket either.
                self.wire.queue.reclaim();
                self.closing.by_client = Some((code, reason));
                return;
            }
        };
        if !self.ws.can_write() {
            return; // The server is closing: messages still in flight are not answered.
        }
        self.stats.messages += 1;
        let tally = &mut self.stats.tally;
        tally.received += 1;
        tally.received_bytes += payload_len as u64;
        match self.place.shared.config.mode {
            Mode::Echo => {
                tally.sent += 1;
                tally.sent_bytes += frame.len() as u64;
                match self.controls.as_ref().and_then(|c| c.delay) {
                    Some(delay) => self.delay_echo(frame, delay),
                    None => self.queue_message(frame, false),
                }
            }
            Mode::Broadcast => {
                self.reading.broadcasts.bytes += frame.len();
                self.reading.broadcasts.frames.push(frame);
            }
        }
    }

    /// The connection broke while the server was writing or not reading: in broadcast mode,
    /// whatever the client sent before it went (a client that drops its connection with
    /// frames unread resets it, and its last messages may still sit in the socket) is read
    /// now and broadcast, pushback or not: a message the server's TCP stack received is
    /// delivered. Returns `ending`, which stays how the connection ended.
    #[cold]
    #[inline(never)]
    pub(super) fn deliver_what_arrived(&mut self, ending: Ending) -> Ending {
        if self.place.shared.config.mode != Mode::Broadcast || self.closing.by_client.is_some() {
            return ending;
        }
        self.reading.draining = true;
        // Round after round (each bounded) until the kernel has nothing more, or the
        // connection's own end. The last round's short read proves nothing here: the client
        // may have sent more between it and the moment it went.
        self.wire.reader.read_again();
        while self.read_messages().is_ok() && self.wire.reader.read_again() {}
        ending
    }
}

/// Text for the log: at most [`LOGGED_TEXT_CHARS`] characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(LOGGED_TEXT_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}
