//! One client connection: a non-blocking socket, its TLS session for
//! `wss://`, and the little state a WebSocket client needs between reads.
//!
//! The struct is kept small on purpose (no per-connection read buffer unless a
//! frame is split across reads) because `hold` keeps ten thousand of them. The
//! TLS session is boxed, so a plain connection pays one pointer for it.
//!
//! With TLS, what the modes send is encoded into `tx` as before, handed to
//! rustls as plaintext (as much as its buffer limit takes) and written to the
//! socket as records with `write_tls`, all in [`Conn::flush`]. rustls also has
//! output of its own (the handshake, alerts), so a connection has pending
//! output while either `tx` holds bytes or the session `wants_write()`; the
//! worker flushes it on the socket's next writable edge.

use crate::frame::{self, Opcode};
use crate::handshake::ACCEPT_LEN;
use crate::rng::Rng;
use mio::net::TcpStream;
use rustls::ClientConnection;
use std::io::{self, Write};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent but for the empty line that ends it, which the
    /// worker sends to every waiting connection at once
    /// ([`crate::worker::Worker::upgrade_waiting`]).
    Waiting,
    /// Upgrade request sent, waiting for the 101 response.
    Handshaking,
    /// WebSocket open: messages flow.
    Open,
    /// We sent a close frame and wait for the server to close the TCP
    /// connection (RFC 6455 section 7.1.1: the server closes first, so the
    /// TIME_WAIT state lands on its side, not on our ephemeral ports).
    Closing,
}

impl Phase {
    /// True until the handshake has completed.
    pub fn is_starting(self) -> bool {
        matches!(
            self,
            Phase::Connecting | Phase::Waiting | Phase::Handshaking
        )
    }
}

/// The two kinds of data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    fn opcode(self) -> Opcode {
        match self {
            MessageKind::Text => Opcode::Text,
            MessageKind::Binary => Opcode::Binary,
        }
    }
}

/// A message being reassembled from fragments.
#[derive(Debug)]
pub(crate) struct Fragmented {
    pub kind: MessageKind,
    pub data: Vec<u8>,
}

/// A client connection. Mode handlers get `&mut Conn` to send messages;
/// everything else is managed by [`crate::worker::Worker`].
#[derive(Debug)]
pub struct Conn {
    pub(crate) stream: TcpStream,
    /// The TLS session of a `wss://` connection.
    pub(crate) tls: Option<Box<ClientConnection>>,
    pub(crate) phase: Phase,
    /// Expected `Sec-WebSocket-Accept`, meaningful while handshaking.
    pub(crate) accept: [u8; ACCEPT_LEN],
    /// Received bytes not yet parsed (a partial frame or response head).
    pub(crate) rx: Vec<u8>,
    /// Encoded bytes the socket (or, with TLS, rustls) has not accepted yet.
    tx: Vec<u8>,
    pub(crate) fragment: Option<Fragmented>,
    /// First write error; the worker closes the connection when it sees it.
    pub(crate) error: Option<io::Error>,
    rng: Rng,
}

/// Buffers that grew beyond this for one big message are released once
/// empty, so a connection that once carried 1 MiB does not keep it forever.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Encrypted bytes rustls may hold for sending before it takes no more
/// plaintext (rustls's own default): what does not fit waits in `tx`.
const TLS_SEND_BUFFER: usize = 64 * 1024;

impl Conn {
    pub(crate) fn new(stream: TcpStream, rng: Rng) -> Conn {
        Conn {
            stream,
            tls: None,
            phase: Phase::Connecting,
            accept: [0; ACCEPT_LEN],
            rx: Vec::new(),
            tx: Vec::new(),
            fragment: None,
            error: None,
            rng,
        }
    }

    /// Sends one message, writing it to the socket right away.
    ///
    /// Whatever the socket does not take now is buffered and written when it
    /// becomes writable. Errors are not returned here: they are recorded and
    /// the worker closes the connection and reports it to the mode's handler,
    /// which keeps the mode code free of error plumbing.
    pub fn send(&mut self, kind: MessageKind, payload: &[u8]) {
        self.send_frame(kind.opcode(), payload);
    }

    /// Starts the closing handshake from inside a handler: sends a close frame
    /// with `code`. No message is delivered after it, and the worker reports the
    /// connection closed normally once the server has answered and dropped it.
    pub fn close(&mut self, code: u16) {
        if self.phase == Phase::Open {
            self.send_frame(Opcode::Close, &code.to_be_bytes());
            self.phase = Phase::Closing;
        }
    }

    /// Makes this a TLS connection; its ClientHello goes out with the first
    /// flush.
    pub(crate) fn start_tls(&mut self, mut session: ClientConnection) {
        session.set_buffer_limit(Some(TLS_SEND_BUFFER));
        self.tls = Some(Box::new(session));
    }

    /// True if some of what was sent still waits in our buffer (or, with
    /// TLS, in rustls's).
    pub fn has_pending_output(&self) -> bool {
        !self.tx.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    pub(crate) fn send_frame(&mut self, opcode: Opcode, payload: &[u8]) {
        if self.error.is_some() {
            return;
        }
        frame::encode_masked(&mut self.tx, opcode, payload, self.rng.mask());
        self.flush();
    }

    /// Queues raw bytes (the HTTP upgrade request) and tries to write them.
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        self.tx.extend_from_slice(bytes);
        self.flush();
    }

    /// Writes as much buffered output as the socket accepts.
    pub(crate) fn flush(&mut self) {
        if self.tls.is_some() {
            return self.flush_tls();
        }
        let mut written = 0;
        while written < self.tx.len() {
            match self.stream.write(&self.tx[written..]) {
                Ok(0) => {
                    self.error = Some(io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
        }
        if written == self.tx.len() {
            self.tx.clear();
            if self.tx.capacity() > KEEP_CAPACITY {
                self.tx = Vec::new();
            }
        } else {
            self.tx.drain(..written);
        }
    }

    /// [`Conn::flush`] with TLS: moves `tx` into rustls as plaintext and
    /// writes records until both are empty or the socket is full. Before the
    /// TLS handshake has completed rustls keeps the plaintext (the upgrade
    /// request) and sends it as soon as it can.
    fn flush_tls(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        let mut taken = 0;
        loop {
            if taken < self.tx.len() {
                match tls.writer().write(&self.tx[taken..]) {
                    Ok(n) => taken += n,
                    Err(e) => {
                        self.error = Some(e);
                        break;
                    }
                }
            }
            if !tls.wants_write() {
                break;
            }
            match tls.write_tls(&mut self.stream) {
                Ok(0) => {
                    self.error = Some(io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
        }
        if taken == self.tx.len() {
            self.tx.clear();
            if self.tx.capacity() > KEEP_CAPACITY {
                self.tx = Vec::new();
            }
        } else {
            self.tx.drain(..taken);
        }
    }

    /// Releases an oversized receive buffer once it is empty.
    pub(crate) fn trim_rx(&mut self) {
        if self.rx.is_empty() && self.rx.capacity() > KEEP_CAPACITY {
            self.rx = Vec::new();
        }
    }
}
