//! One client connection: a non-blocking socket plus the little state a
//! WebSocket client needs between reads.
//!
//! The struct is kept small on purpose (no per-connection read buffer unless a
//! frame is split across reads) because `hold` keeps ten thousand of them.

use crate::frame::{self, Opcode};
use crate::handshake::ACCEPT_LEN;
use crate::rng::Rng;
use mio::net::TcpStream;
use std::io::{self, Write};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect in progress.
    Connecting,
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
        matches!(self, Phase::Connecting | Phase::Handshaking)
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
    pub(crate) phase: Phase,
    /// Expected `Sec-WebSocket-Accept`, meaningful while handshaking.
    pub(crate) accept: [u8; ACCEPT_LEN],
    /// Received bytes not yet parsed (a partial frame or response head).
    pub(crate) rx: Vec<u8>,
    /// Encoded bytes the socket has not accepted yet.
    tx: Vec<u8>,
    pub(crate) fragment: Option<Fragmented>,
    /// First write error; the worker closes the connection when it sees it.
    pub(crate) error: Option<io::Error>,
    rng: Rng,
}

/// Buffers that grew beyond this for one big message are released once
/// empty, so a connection that once carried 1 MiB does not keep it forever.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Conn {
    pub(crate) fn new(stream: TcpStream, rng: Rng) -> Conn {
        Conn {
            stream,
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

    /// True if some of what was sent still waits in our buffer.
    pub fn has_pending_output(&self) -> bool {
        !self.tx.is_empty()
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

    /// Releases an oversized receive buffer once it is empty.
    pub(crate) fn trim_rx(&mut self) {
        if self.rx.is_empty() && self.rx.capacity() > KEEP_CAPACITY {
            self.rx = Vec::new();
        }
    }
}
