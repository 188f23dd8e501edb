//! Reading the client's stream against the server's memory ceiling, a round at a time.
//!
//! Reads are counted against the server's memory ceiling (`budget.rs`): the bytes of a message
//! still arriving are held by tungstenite until the message is whole, so the reader charges
//! them as they are read and releases them at [`MeteredReader::message_done`]. When the ceiling
//! is reached a read answers "would block" without touching the socket, and the connection's
//! loop waits for memory to free. A round of the loop reads at most [`MAX_READ_PER_ROUND`], and
//! the reader follows where the bytes read leave the stream (`boundary.rs`).
//!
//! Invariant: only the connection's own thread touches this; other threads see only what it
//! charged to the shared budget.

use std::io::{self, Read};
use std::sync::Arc;

use crate::connection::boundary::Boundary;
use crate::connection::transport::Transport;
use crate::delivery::budget::Budget;

/// Bytes read in one round of the connection's loop, at most. A client that sends faster than
/// the server handles could otherwise keep its thread reading for ever, and deliveries and
/// deadlines (pings, timeouts) would wait; past this the read answers "would block", the loop
/// does its other work, and its next wait returns at once because bytes are waiting.
pub(super) const MAX_READ_PER_ROUND: usize = 256 * 1024;

#[derive(Debug)]
pub(super) struct MeteredReader {
    budget: Arc<Budget>,
    /// Bytes read since the last whole message: charged to the budget, held by tungstenite.
    in_progress: usize,
    /// Set when a read was refused for lack of memory; see [`MeteredReader::take_starved`].
    starved: bool,
    /// Bytes read since [`MeteredReader::start_round`].
    read_this_round: usize,
    /// Set when a read returned less than asked: the kernel had no more at that moment.
    drained: bool,
    /// Set when a read returns data; see [`MeteredReader::take_heard`].
    heard: bool,
    /// Where the bytes read so far leave the client's stream: see `boundary.rs`.
    boundary: Boundary,
}

impl MeteredReader {
    /// A reader that charges what it reads to `budget`.
    pub(super) fn new(budget: Arc<Budget>) -> MeteredReader {
        MeteredReader {
            budget,
            in_progress: 0,
            starved: false,
            read_this_round: 0,
            drained: false,
            heard: false,
            boundary: Boundary::default(),
        }
    }

    /// The memory ceiling reads are charged to.
    pub(super) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Reads from `transport`, saving the system call that would only say "nothing more".
    ///
    /// tungstenite reads until the socket would block. But a read that returned less than it
    /// asked for already proves the kernel had nothing more, so the next read answers
    /// `WouldBlock` without asking; anything that arrived since makes the next `poll` return
    /// at once. That is one system call less per message on the echo path.
    pub(super) fn read(&mut self, transport: &mut Transport, buf: &mut [u8]) -> io::Result<usize> {
        if std::mem::take(&mut self.drained) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.read_this_round >= MAX_READ_PER_ROUND {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !self.budget.may_read(self.in_progress) {
            self.starved = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = transport.read(buf)?;
        self.boundary.feed(&buf[..n]);
        self.budget.charge(n);
        self.in_progress += n;
        self.read_this_round += n;
        self.heard |= n > 0;
        // Only a plain socket's short read proves the kernel had no more: TLS reads a record
        // at a time, and a record can end before the bytes the kernel holds.
        self.drained = !transport.is_tls() && n > 0 && n < buf.len();
        Ok(n)
    }

    /// Follows bytes of the client's stream that were read before this reader took over (the
    /// rest of the handshake's read), so that [`MeteredReader::between_messages`] counts them.
    pub(super) fn follow(&mut self, read_earlier: &[u8]) {
        self.boundary.feed(read_earlier);
    }

    /// Whether every byte read so far belongs to a whole message (see `boundary.rs`).
    pub(super) fn between_messages(&self) -> bool {
        self.boundary.between_messages()
    }

    /// The longest frame the client sent since [`MeteredReader::forget_largest_frame`].
    pub(super) fn largest_frame(&self) -> u64 {
        self.boundary.largest()
    }

    /// Starts over counting [`MeteredReader::largest_frame`].
    pub(super) fn forget_largest_frame(&mut self) {
        self.boundary.forget_largest();
    }

    /// Starts a round of reading; see [`MAX_READ_PER_ROUND`].
    pub(super) fn start_round(&mut self) {
        self.read_this_round = 0;
    }

    /// Reads to the end, for a connection that broke: forgets that the last read was short
    /// (the peer may have sent more since, right before it went), so that the next read asks
    /// the kernel. Returns whether the last round stopped at its size limit, with more to read.
    pub(super) fn read_again(&mut self) -> bool {
        self.drained = false;
        let exhausted = self.read_this_round >= MAX_READ_PER_ROUND;
        self.read_this_round = 0;
        exhausted
    }

    /// Bytes of the message now arriving that were read so far (an upper bound: a read may
    /// also hold the start of the next message).
    pub(super) fn in_progress(&self) -> usize {
        self.in_progress
    }

    /// Releases the bytes of the message that just became whole: from here they are the
    /// message (and its echo, which the budget counts on its own).
    pub(super) fn message_done(&mut self) {
        self.budget.release(std::mem::take(&mut self.in_progress));
    }

    /// Whether a read was refused for lack of memory since the last call.
    pub(super) fn take_starved(&mut self) -> bool {
        std::mem::take(&mut self.starved)
    }

    /// Whether any bytes arrived since the last call.
    pub(super) fn take_heard(&mut self) -> bool {
        std::mem::take(&mut self.heard)
    }
}

impl Drop for MeteredReader {
    /// A connection that ends mid-message frees what it held.
    fn drop(&mut self) {
        self.message_done();
    }
}
