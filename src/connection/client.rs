//! One client after its handshake: the loop its thread runs until the connection ends.
//!
//! The thread sleeps in `sys::wait` on its socket and its outbox's waker and wakes for exactly
//! four reasons: the client sent bytes, the socket has room for queued bytes, another thread
//! queued something (or freed what this connection waits for), or a deadline (ping, idle,
//! close, send timeout, settling) is due. There is no tick: an idle connection sleeps until
//! its next ping is due.
//!
//! Reading is what the loop withholds to push back: it stops reading while its own client has
//! not taken what it was sent (echo), while some listener is behind (broadcast), or while the
//! server's memory is full (`pace.rs`). TCP flow control then makes the client wait, and
//! nothing is lost.
//!
//! The client's state is grouped by what it is for: the protocol and its [`Wire`], where the
//! connection is ([`Place`]), reading (the read step, waiting for others and the broadcasts of
//! this round: [`Reading`]), what it did ([`Stats`]), signs of life ([`Liveness`]), the close
//! handshake ([`Closing`]) and giving memory back ([`Settling`]).

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, trace, warn};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::Role;
use tungstenite::protocol::WebSocketContext;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message};

use crate::config::Mode;
use crate::connection::Shared;
use crate::connection::controlled::{Active, Requested};
use crate::connection::pace::{Pacing, Turn};
use crate::connection::read_size::{self, ReadSize};
use crate::connection::settle::{BIG_QUEUE, Settling};
use crate::connection::transport::Transport;
use crate::connection::wire::Wire;
use crate::delivery::hub::Room;
use crate::delivery::outbox::{Delivery, Inbox};
use crate::frame;
use crate::metrics::Tally;
use crate::proxy::Peer;
use crate::sys::{self, Interest};

/// Text longer than this is shortened in the debug log.
const LOGGED_TEXT_CHARS: usize = 200;

/// Broadcasts read in one round are fanned out together (one wake-up per listener for the
/// lot), but never more than this many bytes at a time, so a round of big messages reaches the
/// hub, and its flow control, message by message.
const MAX_BROADCAST_BATCH: usize = 64 * 1024;

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

/// What the connection did, for the disconnection log line.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) ending: Ending,
    pub(crate) messages: u64,
    pub(crate) duration: Duration,
}

/// A client connection in its WebSocket phase.
pub(crate) struct Client<'a> {
    /// The protocol's state (tungstenite): frames, fragments, the close handshake.
    ws: WebSocketContext,
    /// The client's socket as tungstenite sees it: metered reads, and everything queued for it.
    wire: Wire,
    /// What other threads hand this connection.
    inbox: Inbox,
    place: Place<'a>,
    reading: Reading,
    stats: Stats,
    liveness: Liveness,
    closing: Closing,
    settling: Settling,
    /// The test controls it asked for (`controlled.rs`); `None` for nearly every connection,
    /// which then pays one pointer for them.
    controls: Option<Box<Active>>,
}

/// Where the connection is: the server, its room, and the client's address.
struct Place<'a> {
    shared: &'a Shared,
    /// The room it broadcasts to (the lobby in echo mode).
    room: Arc<Room>,
    peer: Peer,
}

/// Reading the client's messages: how, whether it may, and what this round read.
struct Reading {
    /// The read step `ws` was made with (`read_size.rs`).
    size: ReadSize,
    /// Set when reading stopped with input left unread (in tungstenite's buffer, say): the
    /// socket may never signal it, so the next round reads before it sleeps.
    pending: bool,
    /// Set once the connection is lost: what it had sent is read to the end, without pushback.
    draining: bool,
    pacing: Pacing,
    broadcasts: Broadcasts,
}

/// What the connection did.
struct Stats {
    started: Instant,
    /// Data messages received.
    messages: u64,
    /// This round's messages and bytes, for the metrics.
    tally: Tally,
}

/// Signs of life, and keeping a quiet connection alive.
struct Liveness {
    /// When the client last sent anything at all.
    last_heard: Instant,
    /// When the socket last took queued bytes, or the queue was last empty.
    last_sent: Instant,
    last_ping: Instant,
}

/// The close handshake, from either side.
#[derive(Default)]
struct Closing {
    /// Set once the server has sent its Close frame: how it closed, and the reply's deadline.
    by_server: Option<(Ending, Instant)>,
    /// The client's Close frame, once it arrived.
    by_client: Option<(CloseCode, String)>,
}

/// Messages read in this round, to broadcast together when the round ends.
#[derive(Default)]
struct Broadcasts {
    frames: Vec<Bytes>,
    bytes: usize,
}

impl<'a> Client<'a> {
    /// The client of an upgraded connection, on the heap.
    ///
    /// Built in a function of its own and boxed, so that neither the WebSocket nor the client
    /// (most of a kilobyte together) sits in a frame under the loop: a thread keeps every stack
    /// page it ever touched, and the loop's deepest paths must stay within the two pages an
    /// idle connection has (see `CONNECTION_STACK_SIZE` in server.rs).
    #[inline(never)]
    pub(crate) fn start(
        transport: Transport,
        leftover: Vec<u8>,
        inbox: Inbox,
        room: Arc<Room>,
        shared: &'a Shared,
        peer: Peer,
        requested: Option<Box<Requested>>,
    ) -> Box<Client<'a>> {
        let mut wire = Wire::new(transport, Arc::clone(&shared.budget));
        wire.reader.follow(&leftover);
        let sees_every_frame = requested.as_ref().is_some_and(|r| r.sees_every_frame());
        if (shared.config.mode == Mode::Broadcast || shared.greeter.is_some()) && !sees_every_frame
        {
            // A connection with nothing queued takes broadcasts and its greeting without a
            // wake-up (outbox.rs).
            wire.lend(inbox.outbox());
        }
        // No read buffer until the client sends something, unless it already has.
        let read_size = if leftover.is_empty() {
            ReadSize::Dormant
        } else {
            ReadSize::Small
        };
        let ws = WebSocketContext::from_partially_read(
            leftover,
            Role::Server,
            Some(read_size.apply(shared.websocket_config())),
        );
        let now = Instant::now();
        let mut client = Box::new(Client {
            ws,
            wire,
            inbox,
            place: Place { shared, room, peer },
            reading: Reading {
                size: read_size,
                pending: false,
                draining: false,
                pacing: Pacing::default(),
                broadcasts: Broadcasts::default(),
            },
            stats: Stats {
                started: now,
                messages: 0,
                tally: Tally::default(),
            },
            liveness: Liveness {
                last_heard: now,
                last_sent: now,
                last_ping: now,
            },
            closing: Closing::default(),
            settling: Settling::new(),
            controls: None,
        });
        if let Some(requested) = requested {
            client.begin(*requested);
        }
        client
    }

    /// Starts the test controls the client asked for: its `whoami` frame first, then the
    /// messages of `send`, then a `close` due right after the handshake.
    #[cold]
    #[inline(never)]
    fn begin(&mut self, requested: Requested) {
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

    /// Queues a message for the client: an echo, or a delivery from the outbox
    /// (`from_outbox`). Without test controls, straight into the send queue.
    fn queue_message(&mut self, frame: Bytes, from_outbox: bool) {
        if self.controls.is_none() {
            return self.wire.queue.push(frame, from_outbox);
        }
        self.queue_controlled(frame, from_outbox);
    }

    /// [`Client::queue_message`] under test controls: counted for `close` and `reset`, and
    /// fragmented for `fragment`. After `reset`'s count, nothing more is sent.
    #[cold]
    #[inline(never)]
    fn queue_controlled(&mut self, frame: Bytes, from_outbox: bool) {
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
    fn controlled_deadlines(&mut self, now: Instant) {
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
    fn pong_arrived(&mut self) {
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
    fn delay_echo(&mut self, frame: Bytes, delay: Duration) {
        if let Some(active) = self.controls.as_deref_mut() {
            active.delayed_bytes += frame.len();
            active.delayed.push_back((Instant::now() + delay, frame));
        }
    }

    /// Whether the `reset` test control's messages are all written: the connection is then
    /// reset (SO_LINGER 0) without a Close.
    fn reset_now(&self) -> bool {
        self.controls.as_ref().is_some_and(|c| c.reset_due) && !self.wire.wants_write()
    }

    /// Serves the connection until it ends.
    pub(crate) fn run(mut self: Box<Self>) -> Summary {
        let Err(mut ending) = self.event_loop();
        // What could not be written in time (a Close to a client that does not read) would
        // sit in the kernel too: reset.
        ending.reset |= !self.linger();
        self.stats.tally.flush(&self.place.shared.metrics);
        self.inbox.waker().forget(self.wire.tcp());
        self.wire.close(ending.reset);
        Summary {
            ending,
            messages: self.stats.messages,
            duration: self.stats.started.elapsed(),
        }
    }

    /// The loop. It only ever ends with how the connection ended, so `?` can end it from
    /// anywhere inside.
    fn event_loop(&mut self) -> Result<Infallible, Ending> {
        loop {
            // Checked before sleeping: with nothing queued, nothing else would wake the loop.
            if self.reset_now() {
                return Err(Ending {
                    code: CloseCode::Abnormal,
                    reason: String::new(),
                    how: "reset by server, as the client's reset test control asked",
                    reset: true,
                });
            }
            if self.settling.take_release_stack() {
                // From here, the loop's own frame: nothing deeper is in use.
                sys::release_stack_below_caller();
            }
            let read = self.may_read();
            let interest = Interest {
                read,
                write: self.wire.wants_write(),
            };
            // Input the socket will not signal (left in tungstenite's or rustls's buffers) is
            // read now rather than slept on.
            let unsignalled = read && (self.reading.pending || self.wire.buffered_input());
            let timeout = if unsignalled {
                Some(Duration::ZERO)
            } else {
                self.next_deadline()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            };
            let ready = sys::wait(Some(self.wire.tcp()), interest, self.inbox.waker(), timeout)
                .map_err(|e| lost("poll failed", &e))?;
            if ready.woken {
                self.take_deliveries();
            }
            if (ready.readable || unsignalled) && read {
                self.read_messages()?;
            } else if ready.hangup {
                // Not reading, and the peer is gone in both directions: nothing more can come.
                return Err(self.deliver_what_arrived(Ending {
                    code: CloseCode::Abnormal,
                    reason: String::new(),
                    how: "connection lost while waiting to read",
                    reset: false,
                }));
            }
            // Counted before they go out, so that a client that got its echo and then asks
            // /metrics sees it counted.
            self.stats.tally.flush(&self.place.shared.metrics);
            if let Err(ending) = self.send_queued() {
                return Err(self.deliver_what_arrived(ending));
            }
            if ready.woken || ready.readable {
                let holds = self.reading.size != ReadSize::Dormant || self.grew();
                self.settling.note_activity(ready.woken, holds);
            }
            self.check_deadlines()?;
        }
    }

    /// Whether a burst grew tungstenite's read buffer or the queue past their quiet size.
    fn grew(&self) -> bool {
        self.wire.reader.largest_frame() > read_size::SMALL as u64
            || self.wire.queue.peak_queued() > BIG_QUEUE
    }

    /// Moves tungstenite to the read step the client's frames call for (`read_size.rs`), if
    /// it is not there and the WebSocket can be made again now.
    fn fit_read_size(&mut self) {
        if let Some(size) = self
            .reading
            .size
            .after_reading(self.wire.reader.largest_frame())
        {
            self.remake_websocket(size);
        }
    }

    /// Makes the WebSocket again around the same socket with the read step `size`, which also
    /// drops its read buffer, if that is safe: every byte read is parsed and every message
    /// whole (tungstenite's state is then empty but for its buffer), and the protocol is still
    /// open (a new WebSocket would forget a Close sent or received). Out of line: the new
    /// WebSocket is built in this frame, not under the loop.
    #[inline(never)]
    fn remake_websocket(&mut self, size: ReadSize) {
        let open = self.closing.by_server.is_none() && self.ws.can_write();
        if open && !self.reading.pending && self.wire.reader.between_messages() {
            self.ws = WebSocketContext::new(Role::Server, Some(size.apply(*self.ws.get_config())));
            self.reading.size = size;
        }
    }

    /// Gives back what the last burst left (see `settle.rs`), if the connection is quiet: no
    /// message half received, nothing queued, not waiting for others.
    #[inline(never)]
    fn settle(&mut self, now: Instant) {
        if self.closing.by_server.is_some() || !self.ws.can_write() {
            return;
        }
        let quiet = self.wire.queue.queued() == 0
            && !self.reading.pacing.paused()
            && !self.reading.pending
            && self.wire.reader.between_messages();
        if !quiet {
            self.settling.postpone(now);
            return;
        }
        let grew = self.grew();
        if self.reading.size != ReadSize::Dormant {
            self.remake_websocket(ReadSize::Dormant);
        }
        self.wire.queue.shrink();
        self.wire.reader.forget_largest_frame();
        self.wire.queue.forget_peak();
        self.reading.broadcasts.frames = Vec::new();
        self.settling.settled(now, grew);
        trace!("{} settled: quiet, its memory given back", self.place.peer);
    }

    /// The loop stops reading while the client has not taken what it was already sent: its
    /// unread echoes (or pongs) are then bounded by the backlog limit (plus one message), and
    /// TCP flow control slows the client down. Other clients are not affected.
    ///
    /// Under `--slow-listener close`, a broadcasting client's own copies count too, from half
    /// the backlog limit: its thread reads its messages, fans them out and only then writes
    /// its own copies, so without this a client sending fast would overflow its own backlog
    /// and be let go for its own broadcasts.
    fn backpressured(&self) -> bool {
        let limit = self.place.shared.config.max_backlog;
        let delayed = self.controls.as_ref().map_or(0, |c| c.delayed_bytes);
        self.wire.queue.queued() + delayed >= limit
            || (self.place.shared.config.mode == Mode::Broadcast
                && self.place.room.flow().common().lets_go()
                && self.inbox.backlog() >= limit / 2)
    }

    /// Whether the loop may read now: its own client has taken what it was sent, and no other
    /// connection stands in the way (`pace.rs`).
    fn may_read(&mut self) -> bool {
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

    /// Moves what other threads queued into the send queue. (They counted it when they
    /// handed it over.)
    fn take_deliveries(&mut self) {
        // A broadcaster that found the socket full left the rest of its frame: it goes first.
        self.wire.queue.hold_writes();
        if self.controls.is_some() {
            return self.take_controlled_deliveries();
        }
        let mut close = None;
        for delivery in self.inbox.drain() {
            match delivery {
                // After a Close, nothing more may be sent (section 5.5.1): drop the frame.
                Delivery::Frame(frame) if close.is_some() || !self.ws.can_write() => {
                    self.inbox.written(frame.len());
                }
                Delivery::Frame(frame) => self.wire.queue.push(frame, true),
                Delivery::Close(code, reason) => close = Some((code, reason)),
            }
        }
        if let Some((code, reason)) = close {
            self.start_close(code, reason, "closed by server");
        }
    }

    /// [`Client::take_deliveries`] under test controls: each frame through
    /// [`Client::queue_message`], to be counted and fragmented.
    #[cold]
    #[inline(never)]
    fn take_controlled_deliveries(&mut self) {
        let deliveries: Vec<Delivery> = self.inbox.drain().collect();
        let mut close = None;
        for delivery in deliveries {
            match delivery {
                Delivery::Frame(frame) if close.is_some() || !self.ws.can_write() => {
                    self.inbox.written(frame.len());
                }
                Delivery::Frame(frame) => self.queue_message(frame, true),
                Delivery::Close(code, reason) => close = Some((code, reason)),
            }
        }
        if let Some((code, reason)) = close {
            self.start_close(code, reason, "closed by server");
        }
    }

    /// Reads every complete message the socket has, and acts on each.
    fn read_messages(&mut self) -> Result<(), Ending> {
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

    /// The most bytes of broadcasts read before they are fanned out: [`MAX_BROADCAST_BATCH`],
    /// or a quarter of the backlog limit if that is less, so that one batch never puts a
    /// listener (the sender itself included) behind on its own.
    fn broadcast_batch(&self) -> usize {
        MAX_BROADCAST_BATCH.min(self.place.shared.config.max_backlog / 4)
    }

    /// The connection broke while the server was writing or not reading: in broadcast mode,
    /// whatever the client sent before it went (a client that drops its connection with
    /// frames unread resets it, and its last messages may still sit in the socket) is read
    /// now and broadcast, pushback or not: a message the server's TCP stack received is
    /// delivered. Returns `ending`, which stays how the connection ended.
    #[cold]
    #[inline(never)]
    fn deliver_what_arrived(&mut self, ending: Ending) -> Ending {
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

    /// In broadcast mode, whether a listener is behind: reading stops until it catches up.
    fn listeners_behind(&self) -> bool {
        self.place.shared.config.mode == Mode::Broadcast && self.place.room.flow().congested()
    }

    /// Broadcasts what this round read.
    fn fan_out(&mut self) {
        if !self.reading.broadcasts.frames.is_empty() {
            let frames = &self.reading.broadcasts.frames;
            self.place.shared.metrics.broadcasts(frames.len() as u64);
            self.place.shared.broadcast(&self.place.room, frames);
            self.reading.broadcasts.frames.clear();
            self.reading.broadcasts.bytes = 0;
        }
    }

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

    /// Turns a read error into how the connection ended, sending the Close frame the RFC asks
    /// for when the client broke the protocol.
    #[inline(never)]
    fn read_error(&mut self, error: WsError) -> Ending {
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

    /// Sends the server's Close frame; the client has `close_timeout` to answer.
    fn start_close(&mut self, code: CloseCode, reason: &'static str, how: &'static str) {
        self.start_close_owned(code, reason.to_string(), how);
    }

    /// [`Client::start_close`] with a reason of any lifetime.
    fn start_close_owned(&mut self, code: CloseCode, reason: String, how: &'static str) {
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

    fn send_queued(&mut self) -> Result<(), Ending> {
        match self.wire.send_queued(&self.inbox) {
            Ok(progress) if progress || self.wire.queue.queued() == 0 => {
                self.liveness.last_sent = Instant::now();
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(lost("connection lost while sending", &e)),
        }
    }

    /// The earliest moment something must happen even if nothing arrives.
    #[inline(never)]
    fn next_deadline(&self) -> Option<Instant> {
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

    fn check_deadlines(&mut self) -> Result<(), Ending> {
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

    /// A listener behind for the whole send timeout: it does not read, or too slowly to ever
    /// catch up. It takes no more broadcasts, what it has not started receiving is dropped
    /// (which lets the senders go on at once), and it gets 1008 and ends: a client that does
    /// not read will not read the Close either, so its reply is not waited for, and nothing
    /// more is read from it. The reason says whether its own broadcasts were waiting for it.
    #[inline(never)]
    fn close_too_slow(&mut self, behind_for: Duration) -> Ending {
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
        self.inbox.close_intake();
        self.wire.queue.discard_unsent(&self.inbox);
        for delivery in self.inbox.drain() {
            if let Delivery::Frame(frame) = delivery {
                self.inbox.written(frame.len());
            }
        }
        self.place.shared.metrics.slow_client_closed();
        self.send_close(CloseCode::Policy, reason);
        Ending {
            code: CloseCode::Policy,
            reason: reason.to_string(),
            how: "too slow, closed by server",
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
    fn let_go(&mut self) {
        if self.closing.by_server.is_some() || !self.ws.can_write() {
            return;
        }
        warn!(
            "{} {FELL_BEHIND}: more than {} bytes queued and not read; closing it",
            self.place.peer, self.place.shared.config.max_backlog
        );
        self.inbox.close_intake();
        self.wire.queue.discard_unsent(&self.inbox);
        for delivery in self.inbox.drain() {
            if let Delivery::Frame(frame) = delivery {
                self.inbox.written(frame.len());
            }
        }
        self.place.shared.metrics.slow_client_closed();
        self.start_close(
            CloseCode::Policy,
            FELL_BEHIND,
            "fell behind, let go by server",
        );
        if let Some((ending, _)) = &mut self.closing.by_server {
            ending.reset = true;
        }
    }

    /// A connection that could not read for its stall timeout because memory was full: it
    /// gets 1013 (try again later) and ends now, without waiting for the reply, so that what
    /// it held (a message half received, usually) is freed at once.
    #[inline(never)]
    fn close_for_memory(&mut self, waited: Duration) -> Ending {
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

    /// Gives what is still queued (a Close reply, say) up to `close_timeout` to go out, and
    /// says whether it all went. When the server's Close is waiting for its reply, the close
    /// timeout already runs and lingering does not extend it.
    #[inline(never)]
    fn linger(&mut self) -> bool {
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
fn lost(what: &'static str, error: &std::io::Error) -> Ending {
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

/// Text for the log: at most [`LOGGED_TEXT_CHARS`] characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(LOGGED_TEXT_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
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
