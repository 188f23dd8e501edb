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
//! The loop itself, [`Client::event_loop`], is here, with the state it owns; each concern it
//! calls on is a module of its own:
//!
//! - `reading.rs`: whether to read now (pushback, pacing), and reading a round of messages;
//! - `deliveries.rs`: the round's broadcasts fanned out, and what other threads handed over;
//! - `deadlines.rs`: signs of life, and what the clock makes due;
//! - `closing.rs`: the close handshake from either side, and every way a connection ends;
//! - `footprint.rs`: the read step, and giving back what a burst left;
//! - `test_controls.rs`: the test controls a client may ask for, out of everyone else's way.
//!
//! The client's state is grouped by what it is for: the protocol and its [`Wire`], where the
//! connection is ([`Place`]), reading (the read step, waiting for others and the broadcasts of
//! this round: [`Reading`]), what it did ([`Stats`]), signs of life ([`Liveness`]), the close
//! handshake ([`Closing`]) and giving memory back ([`Settling`]).
//!
//! Invariant: a `Client` belongs to its connection's thread, which alone touches its state;
//! other threads reach it only through its outbox (and its socket, while lent to them: see
//! `send_queue.rs`).

mod closing;
mod deadlines;
mod deliveries;
mod footprint;
mod reading;
mod test_controls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::Role;
use tungstenite::protocol::WebSocketContext;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::config::Mode;
use crate::connection::ServerState;
use crate::connection::controlled::{Active, Requested};
use crate::connection::pace::Pacing;
use crate::connection::read_size::ReadSize;
use crate::connection::settle::Settling;
use crate::connection::transport::Transport;
use crate::connection::wire::Wire;
use crate::delivery::hub::Room;
use crate::delivery::outbox::Inbox;
use crate::metrics::Tally;
use crate::proxy::Peer;
use crate::sys::{self, Interest};

use closing::{Closing, Ending, lost};
use deadlines::Liveness;
use deliveries::Broadcasts;
use reading::Reading;

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
    shared: &'a ServerState,
    /// The room it broadcasts to (the lobby in echo mode).
    room: Arc<Room>,
    peer: Peer,
}

/// What the connection did.
struct Stats {
    started: Instant,
    /// Data messages received.
    messages: u64,
    /// This round's messages and bytes, for the metrics.
    tally: Tally,
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
        shared: &'a ServerState,
        peer: Peer,
        requested: Option<Box<Requested>>,
    ) -> Box<Client<'a>> {
        let mut wire = Wire::new(transport, Arc::clone(&shared.budget));
        wire.reader.follow(&leftover);
        let sees_every_frame = requested.as_ref().is_some_and(|r| r.sees_every_frame());
        if (shared.config.mode == Mode::Broadcast || shared.greeter.is_some()) && !sees_every_frame
        {
            // A connection with nothing queued takes broadcasts and its greeting without a
            // wake-up (delivery/outbox/lending.rs).
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

    /// Queues a message for the client: an echo, or a delivery from the outbox
    /// (`from_outbox`). Without test controls, straight into the send queue.
    fn queue_message(&mut self, frame: Bytes, from_outbox: bool) {
        if self.controls.is_none() {
            return self.wire.queue.push(frame, from_outbox);
        }
        self.queue_controlled(frame, from_outbox);
    }

    /// Writes what is queued, as far as the socket takes it. Bytes taken, or nothing left to
    /// take, show that the client reads.
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
}
