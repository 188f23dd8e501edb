//! One client after its handshake: the loop its thread runs until the connection ends.
//!
//! The thread sleeps in `poll` on its socket and its outbox's waker (see `poll.rs`) and wakes
//! for exactly four reasons: the client sent bytes, the socket has room for queued bytes,
//! another thread queued something, or a deadline (ping, idle, close) is due. There is no tick:
//! an idle connection sleeps until its next ping is due.

use std::convert::Infallible;
use std::fmt;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::config::{Config, Mode};
use crate::frame;
use crate::hub::Hub;
use crate::outbox::{Delivery, Inbox};
use crate::poll::{self, Interest};
use crate::socket::Socket;

/// Text longer than this is shortened in the debug log.
const LOGGED_TEXT_CHARS: usize = 200;

/// How a connection ended: the close code and reason, and what happened, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The close code: the client's, the one the server sent, or 1006 when the connection
    /// ended without a Close frame (RFC 6455 section 7.1.5).
    pub code: u16,
    pub reason: String,
    pub how: &'static str,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {} {:?} ({})", self.code, self.reason, self.how)
    }
}

/// What the connection did, for the disconnection log line.
#[derive(Debug)]
pub struct Summary {
    pub ending: Ending,
    pub messages: u64,
    pub duration: Duration,
}

/// A client connection in its WebSocket phase.
pub struct Client<'a> {
    ws: WebSocket<Socket>,
    inbox: Inbox,
    config: &'a Config,
    hub: &'a Arc<Hub>,
    peer: SocketAddr,
    started: Instant,
    messages: u64,
    /// When the client last sent anything at all.
    last_heard: Instant,
    /// When the socket last took queued bytes, or the queue was last empty.
    last_sent: Instant,
    last_ping: Instant,
    /// Set once the server has sent its Close frame: how it closed, and the reply's deadline.
    closing: Option<(Ending, Instant)>,
    /// The client's Close frame, once it arrived.
    client_close: Option<(u16, String)>,
    /// Messages read in this round, to broadcast together when the round ends.
    broadcasts: Vec<Bytes>,
}

impl<'a> Client<'a> {
    pub fn new(
        ws: WebSocket<Socket>,
        inbox: Inbox,
        config: &'a Config,
        hub: &'a Arc<Hub>,
        peer: SocketAddr,
    ) -> Client<'a> {
        let now = Instant::now();
        Client {
            ws,
            inbox,
            config,
            hub,
            peer,
            started: now,
            messages: 0,
            last_heard: now,
            last_sent: now,
            last_ping: now,
            closing: None,
            client_close: None,
            broadcasts: Vec::new(),
        }
    }

    /// Serves the connection until it ends.
    pub fn run(mut self) -> Summary {
        let Err(ending) = self.serve();
        self.linger();
        let _ = self.ws.get_ref().tcp().shutdown(Shutdown::Both);
        Summary {
            ending,
            messages: self.messages,
            duration: self.started.elapsed(),
        }
    }

    /// The loop. It only ever ends with how the connection ended, so `?` can end it from
    /// anywhere inside.
    fn serve(&mut self) -> Result<Infallible, Ending> {
        loop {
            let interest = Interest {
                read: !self.backpressured(),
                write: self.ws.get_ref().queued() > 0,
            };
            let timeout = self
                .next_deadline()
                .map(|at| at.saturating_duration_since(Instant::now()));
            let ready = poll::wait(
                Some(self.ws.get_ref().tcp().as_fd()),
                interest,
                self.inbox.waker(),
                timeout,
            )
            .map_err(|e| lost("poll failed", &e))?;
            if ready.woken {
                self.take_deliveries();
            }
            if ready.readable {
                self.read_messages()?;
            }
            self.send_queued()?;
            self.check_deadlines()?;
        }
    }

    /// Echo mode stops reading while the client has not taken what it was already sent: the
    /// client's unread echoes are then bounded by the backlog limit (plus one message), and
    /// TCP flow control slows the client down. Other clients are not affected.
    fn backpressured(&self) -> bool {
        self.ws.get_ref().queued() >= self.config.max_backlog
    }

    /// Moves what other threads queued into the socket's queue.
    fn take_deliveries(&mut self) {
        let mut close = None;
        for delivery in self.inbox.drain() {
            match delivery {
                // After a Close, nothing more may be sent (section 5.5.1): drop the frame.
                Delivery::Frame(frame) if !self.ws.can_write() => self.inbox.written(frame.len()),
                Delivery::Frame(frame) => self.ws.get_mut().push(frame, true),
                Delivery::Close(code, reason) => close = Some((code, reason)),
            }
        }
        if let Some((code, reason)) = close {
            self.start_close(code, reason, "closed by server");
        }
        if self.inbox.overflowed() && self.closing.is_none() {
            warn!(
                "{} too slow: more than {} bytes queued and not read; closing it",
                self.peer, self.config.max_backlog
            );
            self.ws.get_mut().discard_unsent(&self.inbox);
            self.start_close(
                1008,
                "too slow: backlog limit exceeded",
                "too slow, closed by server",
            );
        }
    }

    /// Reads every complete message the socket has, and acts on each.
    fn read_messages(&mut self) -> Result<(), Ending> {
        let mut ended = None;
        while !self.backpressured() {
            match self.ws.read() {
                Ok(message) => self.on_message(message),
                Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    ended = Some(self.read_error(e));
                    break;
                }
            }
        }
        // Everything this read brought in goes out to the others in one go: one wake-up per
        // listener for a burst of messages, not one per message.
        if !self.broadcasts.is_empty() {
            self.hub.broadcast(&self.broadcasts);
            self.broadcasts.clear();
        }
        if self.ws.get_mut().take_heard() {
            self.last_heard = Instant::now();
        }
        ended.map_or(Ok(()), Err)
    }

    fn on_message(&mut self, message: Message) {
        let frame = match &message {
            Message::Text(text) => {
                debug!("{} text {:?}", self.peer, shorten(text));
                if self.config.panic_on_message.as_deref() == Some(text.as_str()) {
                    panic!("test hook: message {text:?} asked for a panic");
                }
                frame::text(text)
            }
            Message::Binary(data) => {
                debug!("{} binary, {} bytes", self.peer, data.len());
                frame::binary(data)
            }
            // tungstenite has already queued the pong for a ping, and the close reply.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return,
            Message::Close(frame) => {
                let (code, reason) = frame.as_ref().map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                debug!("{} sent Close {code} {reason:?}", self.peer);
                self.client_close = Some((code, reason));
                return;
            }
        };
        if !self.ws.can_write() {
            return; // The server is closing: messages still in flight are not answered.
        }
        self.messages += 1;
        self.hub.count_message();
        match self.config.mode {
            Mode::Echo => self.ws.get_mut().push(frame, false),
            Mode::Broadcast => self.broadcasts.push(frame),
        }
    }

    /// Turns a read error into how the connection ended, sending the Close frame the RFC asks
    /// for when the client broke the protocol.
    fn read_error(&mut self, error: WsError) -> Ending {
        let (code, reason) = match error {
            WsError::ConnectionClosed | WsError::AlreadyClosed => return self.closed(),
            WsError::Io(e) => return lost("connection lost", &e),
            WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                return Ending {
                    code: 1006,
                    reason: String::new(),
                    how: "closed without a Close frame",
                };
            }
            WsError::Protocol(e) => (1002, format!("protocol error: {e}")),
            WsError::Utf8(_) => (1007, "invalid UTF-8 in a text message".to_string()),
            WsError::Capacity(e) => (1009, format!("too big: {e}")),
            other => (1011, format!("internal error: {other}")),
        };
        info!("{} failed the connection: {reason}", self.peer);
        let close = CloseFrame {
            code: CloseCode::from(code),
            reason: close_reason(&reason).into(),
        };
        // Errors here only mean the connection is already unusable; linger() ends it either way.
        let _ = self.ws.close(Some(close));
        Ending {
            code,
            reason,
            how: "failed by client, closed by server",
        }
    }

    /// How a completed close handshake ended.
    fn closed(&mut self) -> Ending {
        match (self.closing.take(), self.client_close.take()) {
            (Some((ending, _)), _) => ending,
            (None, Some((code, reason))) => Ending {
                code,
                reason,
                how: "closed by client",
            },
            (None, None) => Ending {
                code: 1006,
                reason: String::new(),
                how: "closed",
            },
        }
    }

    /// Sends the server's Close frame; the client has `close_timeout` to answer.
    fn start_close(&mut self, code: u16, reason: &'static str, how: &'static str) {
        if self.closing.is_some() || !self.ws.can_write() {
            return;
        }
        let close = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = self.ws.close(Some(close));
        let ending = Ending {
            code,
            reason: reason.to_string(),
            how,
        };
        self.closing = Some((ending, Instant::now() + self.config.close_timeout));
    }

    fn send_queued(&mut self) -> Result<(), Ending> {
        match self.ws.get_mut().send_queued(&self.inbox) {
            Ok(progress) if progress || self.ws.get_ref().queued() == 0 => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(lost("connection lost while sending", &e)),
        }
    }

    /// The earliest moment something must happen even if nothing arrives.
    fn next_deadline(&self) -> Option<Instant> {
        let ping = self
            .config
            .ping_interval
            .map(|every| self.last_ping.max(self.last_heard) + every);
        let idle = self
            .config
            .idle_timeout
            .map(|after| self.silence_start() + after);
        let close = self.closing.as_ref().map(|(_, deadline)| *deadline);
        [ping, idle, close].into_iter().flatten().min()
    }

    /// Silence is counted from the last sign of life: bytes received, or, while the server is
    /// not reading because the client has not taken its echoes, bytes the client took.
    fn silence_start(&self) -> Instant {
        if self.backpressured() {
            self.last_sent
        } else {
            self.last_heard
        }
    }

    fn check_deadlines(&mut self) -> Result<(), Ending> {
        let now = Instant::now();
        if let Some((ending, deadline)) = &self.closing
            && now >= *deadline
        {
            return Err(Ending {
                code: ending.code,
                reason: ending.reason.clone(),
                how: "no reply to the server's Close in time",
            });
        }
        if let Some(after) = self.config.idle_timeout
            && now >= self.silence_start() + after
        {
            let how = if self.backpressured() {
                "timed out: it stopped reading what it was sent"
            } else {
                "timed out: nothing received, not even a pong"
            };
            return Err(Ending {
                code: 1006,
                reason: String::new(),
                how,
            });
        }
        if let Some(every) = self.config.ping_interval
            && self.closing.is_none()
            && now >= self.last_ping.max(self.last_heard) + every
        {
            let _ = self.ws.send(Message::Ping(Bytes::new()));
            self.last_ping = now;
        }
        Ok(())
    }

    /// Gives what is still queued (a Close reply, say) up to `close_timeout` to go out.
    /// When the server's Close is waiting for its reply, the close timeout already runs and
    /// lingering does not extend it.
    fn linger(&mut self) {
        let deadline = match &self.closing {
            Some((_, deadline)) => *deadline,
            None => Instant::now() + self.config.close_timeout,
        };
        while self.ws.get_ref().queued() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let write = Interest {
                read: false,
                write: true,
            };
            let socket = Some(self.ws.get_ref().tcp().as_fd());
            if left.is_zero() || poll::wait(socket, write, self.inbox.waker(), Some(left)).is_err()
            {
                return;
            }
            self.inbox.waker().reset();
            if self.ws.get_mut().send_queued(&self.inbox).is_err() {
                return;
            }
        }
    }
}

/// The ending for a connection that broke without a close handshake.
fn lost(what: &'static str, error: &std::io::Error) -> Ending {
    Ending {
        code: 1006,
        reason: error.to_string(),
        how: what,
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
