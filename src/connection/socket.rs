//! A client's TCP stream as tungstenite sees it, with the server's outbound queue.
//!
//! Reads go straight to the non-blocking socket. Everything the connection's thread sends
//! (tungstenite's pongs and close frames, echoes, greetings, broadcasts) is appended to one
//! queue, in order, as whole frames, and [`Socket::send_queued`] writes that queue to the socket
//! when it has room, several frames per system call (`writev`). In broadcast mode, while that
//! queue is empty, the socket is lent to the broadcasting threads, which write frames into it
//! themselves ([`Socket::lend`], `LentSocket` in lending.rs); the thread takes it back before it
//! queues anything, and finishes first any frame they could write only in part, so frames
//! never interleave.
//!
//! Reads are counted against the server's memory ceiling (`budget.rs`): the bytes of a message
//! still arriving are held by tungstenite until the message is whole, so the socket charges
//! them as they are read and releases them at [`Socket::message_done`]. When the ceiling is
//! reached a read answers "would block" without touching the socket, and the connection's loop
//! waits for memory to free.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use bytes::Bytes;

use crate::connection::boundary::Boundary;
use crate::connection::transport::Transport;
use crate::delivery::budget::Budget;
use crate::delivery::outbox::{Inbox, Outbox};
use crate::frame;

/// Bytes read in one round of the connection's loop, at most. A client that sends faster than
/// the server handles could otherwise keep its thread reading for ever, and deliveries and
/// deadlines (pings, timeouts) would wait; past this the read answers "would block", the loop
/// does its other work, and its next wait returns at once because bytes are waiting.
pub(super) const MAX_READ_PER_ROUND: usize = 256 * 1024;

#[derive(Debug)]
pub(super) struct Socket {
    transport: Transport,
    queue: VecDeque<Queued>,
    /// How much of the front frame is already written.
    written_of_front: usize,
    /// Bytes in `queue` not yet written.
    queued: usize,
    /// Set when a read returns data; see [`Socket::take_heard`].
    heard: bool,
    /// Set when a read returned less than asked: the kernel had no more at that moment.
    drained: bool,
    budget: Arc<Budget>,
    /// Bytes read since the last whole message: charged to the budget, held by tungstenite.
    in_progress: usize,
    /// Set when a read was refused for lack of memory; see [`Socket::take_starved`].
    starved: bool,
    /// Bytes read since [`Socket::start_round`].
    read_this_round: usize,
    /// Where the bytes read so far leave the client's stream: see `boundary.rs`.
    boundary: Boundary,
    /// The most bytes queued at once since [`Socket::forget_peaks`].
    peak_queued: usize,
    /// The outbox the socket is lent through, for broadcasts written straight into it.
    lent_to: Option<Arc<Outbox>>,
    /// Whether broadcasters may write into the socket now, as far as this thread knows (a
    /// broadcaster that finds the socket full stops that, and wakes the thread).
    writes_released: bool,
}

#[derive(Debug)]
struct Queued {
    frame: Bytes,
    /// Bytes of the backlog (outbox.rs) this frame stands for, reported once it is written: its
    /// length for a frame that came through the outbox, 0 for the connection's own. (A frame
    /// the `fragment` test control re-encoded is longer than the one it stands for.)
    counted: usize,
    /// The end of a frame whose start a broadcaster already wrote: it must go out, whatever
    /// else is dropped, or the stream would be corrupt.
    begun: bool,
}

impl Socket {
    /// Wraps a connected socket, which must already be non-blocking.
    pub(super) fn new(transport: Transport, budget: Arc<Budget>) -> Socket {
        Socket {
            transport,
            queue: VecDeque::new(),
            written_of_front: 0,
            queued: 0,
            heard: false,
            drained: false,
            budget,
            in_progress: 0,
            starved: false,
            read_this_round: 0,
            boundary: Boundary::default(),
            peak_queued: 0,
            lent_to: None,
            writes_released: false,
        }
    }

    /// Lends the socket (plain TCP only) to the threads that broadcast through `outbox`: while
    /// nothing is queued here, they write into it themselves (see `LentSocket` in lending.rs).
    pub(super) fn lend(&mut self, outbox: &Arc<Outbox>) {
        if let Some(tcp) = self.transport.shareable() {
            outbox.lend(tcp);
            self.lent_to = Some(Arc::clone(outbox));
        }
    }

    /// Takes the socket back from broadcasters, for good (before a Close, and at the end).
    /// The rest of a frame one of them began still goes out first.
    pub(super) fn reclaim(&mut self) {
        if self.lent_to.is_some() {
            self.hold_writes();
        }
        if let Some(outbox) = self.lent_to.take() {
            outbox.reclaim();
        }
    }

    /// Stops broadcasters writing, before this thread writes: the rest of a frame one of them
    /// began goes first. Called when woken, and before anything joins an empty queue.
    pub(super) fn hold_writes(&mut self) {
        self.writes_released = false;
        if let Some(rest) = self
            .lent_to
            .as_ref()
            .and_then(|outbox| outbox.hold_writes())
        {
            self.queued += rest.len();
            self.queue.push_front(Queued {
                frame: rest,
                counted: 0,
                begun: true,
            });
        }
    }

    /// Follows bytes of the client's stream that were read before this socket took over (the
    /// rest of the handshake's read), so that [`Socket::between_messages`] counts them.
    pub(super) fn follow(&mut self, read_earlier: &[u8]) {
        self.boundary.feed(read_earlier);
    }

    /// Whether every byte read so far belongs to a whole message (see `boundary.rs`).
    pub(super) fn between_messages(&self) -> bool {
        self.boundary.between_messages()
    }

    /// The longest frame the client sent since [`Socket::forget_peaks`].
    pub(super) fn largest_frame(&self) -> u64 {
        self.boundary.largest()
    }

    /// The most bytes queued at once since [`Socket::forget_peaks`].
    pub(super) fn peak_queued(&self) -> usize {
        self.peak_queued
    }

    /// Starts over counting [`Socket::largest_frame`] and [`Socket::peak_queued`].
    pub(super) fn forget_peaks(&mut self) {
        self.boundary.forget_largest();
        self.peak_queued = self.queued;
    }

    /// Gives back the queue's room once it is empty: a burst leaves it sized for the burst.
    pub(super) fn shrink_queue(&mut self) {
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
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

    /// The TCP socket underneath, to wait on.
    pub(super) fn tcp(&self) -> &TcpStream {
        self.transport.tcp()
    }

    /// Whether the loop should wait for room to write: frames are queued, or TLS bytes are.
    pub(super) fn wants_write(&self) -> bool {
        self.queued > 0 || self.transport.pending_output()
    }

    /// Whether input waits inside the transport (decrypted TLS) that the socket will not
    /// signal: the loop must read before it sleeps.
    pub(super) fn buffered_input(&mut self) -> bool {
        self.transport.buffered_input()
    }

    /// Whether the client has sent bytes the server has not read yet (a look, not a read).
    pub(crate) fn input_waiting(&self) -> bool {
        self.transport.tcp().peek(&mut [0; 1]).is_ok_and(|n| n > 0)
    }

    /// Ends the stream: TLS's close_notify if it takes it, then the socket; or, with `reset`,
    /// a reset that drops whatever the kernel still holds for it (see `Transport::close`).
    pub(super) fn close(&mut self, reset: bool) {
        self.transport.close(reset);
    }

    /// Appends an encoded frame to the queue.
    pub(super) fn push(&mut self, frame: Bytes, from_outbox: bool) {
        let counted = if from_outbox { frame.len() } else { 0 };
        self.push_counted(frame, counted);
    }

    /// Appends an encoded frame that stands for `counted` bytes of the backlog (see
    /// [`Queued::counted`]).
    pub(super) fn push_counted(&mut self, frame: Bytes, counted: usize) {
        if self.writes_released {
            self.hold_writes();
        }
        self.queued += frame.len();
        self.peak_queued = self.peak_queued.max(self.queued);
        self.queue.push_back(Queued {
            frame,
            counted,
            begun: false,
        });
    }

    /// Bytes queued and not yet written.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Whether any bytes arrived since the last call.
    pub(super) fn take_heard(&mut self) -> bool {
        std::mem::take(&mut self.heard)
    }

    /// Writes as much of the queue as the socket takes now. Returns whether any byte went.
    ///
    /// Bytes of outbox frames are reported to `inbox` as they leave, which is what lets other
    /// threads queue more for this client.
    pub(super) fn send_queued(&mut self, inbox: &Inbox) -> io::Result<bool> {
        // TLS bytes of its own (handshake, alerts) and frames already encrypted go first.
        self.transport.flush_pending()?;
        let mut progress = false;
        while !self.queue.is_empty() {
            let frames = self.queue.iter().map(|queued| &queued.frame[..]);
            let mut n = match frame::write_some(&mut self.transport, frames, self.written_of_front)
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            progress = true;
            self.queued -= n;
            // Retire the frames that are now fully written.
            while n > 0 {
                let front = &self.queue[0];
                let rest = front.frame.len() - self.written_of_front;
                if n < rest {
                    self.written_of_front += n;
                    break;
                }
                n -= rest;
                self.written_of_front = 0;
                if let Some(done) = self.queue.pop_front()
                    && done.counted > 0
                {
                    inbox.written(done.counted);
                }
            }
        }
        if self.queue.is_empty() && !self.writes_released {
            self.writes_released = self
                .lent_to
                .as_ref()
                .is_some_and(|outbox| outbox.release_writes());
        }
        Ok(progress)
    }

    /// Drops every queued frame that has not started going out (a partly written frame must be
    /// finished, or the stream would be corrupt, whether this thread or a broadcaster began it). Used when a client is too far behind.
    pub(super) fn discard_unsent(&mut self, inbox: &Inbox) {
        let begun = self.written_of_front > 0 || self.queue.front().is_some_and(|q| q.begun);
        let keep = usize::from(begun);
        for dropped in self.queue.drain(keep..) {
            self.queued -= dropped.frame.len();
            if dropped.counted > 0 {
                inbox.written(dropped.counted);
            }
        }
    }
}

impl Read for Socket {
    /// Reads from the socket, saving the system call that would only say "nothing more".
    ///
    /// tungstenite reads until the socket would block. But a read that returned less than it
    /// asked for already proves the kernel had nothing more, so the next read answers
    /// `WouldBlock` without asking; anything that arrived since makes the next `poll` return
    /// at once. That is one system call less per message on the echo path.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
        let n = self.transport.read(buf)?;
        self.boundary.feed(&buf[..n]);
        self.budget.charge(n);
        self.in_progress += n;
        self.read_this_round += n;
        self.heard |= n > 0;
        // Only a plain socket's short read proves the kernel had no more: TLS reads a record
        // at a time, and a record can end before the bytes the kernel holds.
        self.drained = !self.transport.is_tls() && n > 0 && n < buf.len();
        Ok(n)
    }
}

/// tungstenite writes its own frames (pongs, close) here; they join the queue like any other.
impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let frame = self.budget.hold(buf.to_vec());
        self.push(frame, false);
        Ok(buf.len())
    }

    /// The queue is flushed by the connection's loop when the socket is writable.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Socket {
    /// A connection that ends mid-message frees what it held.
    fn drop(&mut self) {
        self.message_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::flow::Batch;
    use crate::delivery::outbox::lone_mailbox;
    use std::net::TcpListener;

    #[test]
    fn frames_go_out_whole_and_in_order_even_when_the_socket_is_full() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (_outbox, inbox) = lone_mailbox(usize::MAX);
        let mut socket = Socket::new(
            Transport::Plain(Arc::new(tcp)),
            Arc::new(Budget::new(usize::MAX)),
        );

        // Far more than the socket buffers hold, in frames of varied sizes.
        let frames: Vec<Bytes> = (0..200u32)
            .map(|i| Bytes::from(vec![i as u8; 1 + (i as usize * 997) % 70_000]))
            .collect();
        let total: usize = frames.iter().map(Bytes::len).sum();
        for frame in &frames {
            socket.push(frame.clone(), false);
        }
        let reading = std::thread::spawn(move || {
            let mut got = vec![0; total];
            reader.read_exact(&mut got).unwrap();
            got
        });
        while socket.queued() > 0 {
            socket.send_queued(&inbox).unwrap();
            std::thread::yield_now();
        }
        assert_eq!(reading.join().unwrap(), frames.concat());
    }

    /// A record that says what it is: its length, who sent it, its number, then filler.
    fn record(from: u8, number: u32, len: usize) -> Bytes {
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(from);
        out.extend_from_slice(&number.to_be_bytes());
        out.resize(len, from);
        Bytes::from(out)
    }

    /// A connection's socket lent to broadcasters, writes released (nothing is queued), with
    /// its mailbox and the client's end, which reads nothing until told to.
    fn lent_socket() -> (Socket, Arc<Outbox>, Inbox, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (outbox, inbox) = lone_mailbox(usize::MAX);
        let budget = Arc::new(Budget::new(usize::MAX));
        let mut socket = Socket::new(Transport::Plain(Arc::new(tcp)), budget);
        socket.lend(&outbox);
        socket.send_queued(&inbox).unwrap(); // nothing queued: broadcasters may write
        (socket, outbox, inbox, reader)
    }

    #[test]
    fn a_frame_a_broadcaster_began_is_finished_before_anything_else() {
        let (mut socket, outbox, inbox, reader) = lent_socket();

        // A broadcast far bigger than the socket buffers: written in part, straight in; then
        // one more, which must wait in the mailbox.
        let big = record(1, 0, 16 << 20);
        assert_eq!(
            outbox.push(&Batch::may_go_straight_in(&[big, record(1, 1, 100)])),
            Ok(())
        );
        let reading = std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(reader);
            let mut got = Vec::new();
            for _ in 0..3 {
                let mut head = [0; 9];
                reader.read_exact(&mut head).unwrap();
                let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
                let (from, number) = (head[4], u32::from_be_bytes(head[5..].try_into().unwrap()));
                let mut filler = vec![0; len - 9];
                reader.read_exact(&mut filler).unwrap();
                assert!(filler.iter().all(|&b| b == from), "records interleaved");
                got.push((from, number));
            }
            got
        });
        // Once the reader made room, and before the thread sees the wake-up, it writes a
        // frame of its own (a pong, say) in the same round: it must come after the rest of
        // the big one.
        inbox.waker().reset();
        let write = crate::sys::Interest {
            read: false,
            write: true,
        };
        let timeout = Some(std::time::Duration::from_secs(10));
        crate::sys::wait(Some(socket.tcp()), write, inbox.waker(), timeout).unwrap();
        socket.push(record(2, 0, 50), false);
        socket.send_queued(&inbox).unwrap();
        while !reading.is_finished() {
            socket.hold_writes();
            for delivery in inbox.drain() {
                if let crate::delivery::outbox::Delivery::Frame(frame) = delivery {
                    socket.push(frame, true);
                }
            }
            socket.send_queued(&inbox).unwrap();
            std::thread::yield_now();
        }
        // The broadcasts in their order; the pong wherever it fitted between whole frames.
        let got = reading.join().unwrap();
        assert_eq!(got, [(1, 0), (2, 0), (1, 1)]);
    }

    #[test]
    fn a_frame_a_broadcaster_began_survives_discarding_what_is_unsent() {
        let (mut socket, outbox, inbox, _reader) = lent_socket();
        // Nobody reads: the socket takes part of this frame and the rest is left over.
        assert_eq!(
            outbox.push(&Batch::may_go_straight_in(&[record(1, 0, 16 << 20)])),
            Ok(())
        );
        socket.hold_writes();
        let rest = socket.queued();
        assert!(rest > 0 && rest < 16 << 20);
        socket.push(record(2, 0, 100), false);
        // A client too slow to keep: what has not begun is dropped, the begun frame is not.
        socket.discard_unsent(&inbox);
        assert_eq!(socket.queued(), rest);
    }
}
