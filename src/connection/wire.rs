//! A client's connection as tungstenite sees it: reads through the [`MeteredReader`], writes
//! into the [`SendQueue`].
//!
//! tungstenite wants one stream it can both read and write. Its reads go to the socket through
//! the reader, which counts them against the server's memory ceiling (`metered_reader.rs`); its
//! writes (pongs, close frames) join the queue of everything else sent to the client
//! (`send_queue.rs`), which the connection's loop writes out when the socket has room.
//!
//! Invariant: only the connection's own thread touches the wire. Other threads write into the
//! socket only while the send queue lends it to them (`send_queue.rs`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::connection::metered_reader::MeteredReader;
use crate::connection::send_queue::SendQueue;
use crate::connection::transport::Transport;
use crate::delivery::budget::Budget;
use crate::delivery::outbox::{Inbox, Outbox};

#[derive(Debug)]
pub(super) struct Wire {
    transport: Transport,
    pub(super) reader: MeteredReader,
    pub(super) queue: SendQueue,
}

impl Wire {
    /// Wraps a connected socket, which must already be non-blocking; what is read is charged
    /// to `budget`.
    pub(super) fn new(transport: Transport, budget: Arc<Budget>) -> Wire {
        Wire {
            transport,
            reader: MeteredReader::new(budget),
            queue: SendQueue::default(),
        }
    }

    /// Lends the socket (plain TCP only) to the threads that broadcast through `outbox`: while
    /// nothing is queued, they write into it themselves (see [`SendQueue::lend`]).
    pub(super) fn lend(&mut self, outbox: &Arc<Outbox>) {
        self.queue.lend(&self.transport, outbox);
    }

    /// Writes as much of the queue as the socket takes now (see [`SendQueue::send_queued`]).
    pub(super) fn send_queued(&mut self, inbox: &Inbox) -> io::Result<bool> {
        self.queue.send_queued(&mut self.transport, inbox)
    }

    /// The TCP socket underneath, to wait on.
    pub(super) fn tcp(&self) -> &TcpStream {
        self.transport.tcp()
    }

    /// Whether the loop should wait for room to write: frames are queued, or TLS bytes are.
    pub(super) fn wants_write(&self) -> bool {
        self.queue.queued() > 0 || self.transport.pending_output()
    }

    /// Whether input waits inside the transport (decrypted TLS) that the socket will not
    /// signal: the loop must read before it sleeps.
    pub(super) fn buffered_input(&mut self) -> bool {
        self.transport.buffered_input()
    }

    /// Whether the client has sent bytes the server has not read yet (a look, not a read).
    pub(super) fn input_waiting(&self) -> bool {
        self.transport.tcp().peek(&mut [0; 1]).is_ok_and(|n| n > 0)
    }

    /// Ends the stream: TLS's close_notify if it takes it, then the socket; or, with `reset`,
    /// a reset that drops whatever the kernel still holds for it (see `Transport::close`).
    pub(super) fn close(&mut self, reset: bool) {
        self.transport.close(reset);
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(&mut self.transport, buf)
    }
}

/// tungstenite writes its own frames (pongs, close) here; they join the queue like any other.
impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let frame = self.reader.budget().hold(buf.to_vec());
        self.queue.push(frame, false);
        Ok(buf.len())
    }

    /// The queue is flushed by the connection's loop when the socket is writable.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
