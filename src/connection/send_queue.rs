//! The server's outbound queue for one client: every frame its connection sends, in order.
//!
//! Everything the connection's thread sends (tungstenite's pongs and close frames, echoes,
//! greetings, broadcasts) is appended to one queue, in order, as whole frames, and
//! [`SendQueue::send_queued`] writes that queue to the socket when it has room, several frames
//! per system call (`writev`). In broadcast mode, while that queue is empty, the socket is lent
//! to the broadcasting threads, which write frames into it themselves ([`SendQueue::lend`],
//! `LentSocket` in delivery/outbox/lending.rs); the thread takes it back before it queues
//! anything, and finishes first any frame they could write only in part, so frames never
//! interleave.
//!
//! Invariant: only the connection's own thread touches the queue. Other threads reach the
//! client's socket only while it is lent and the queue is empty, through the outbox, which
//! hands back what they began ([`SendQueue::hold_writes`]).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

use crate::connection::transport::Transport;
use crate::delivery::outbox::{Inbox, Outbox};
use crate::frame;

#[derive(Debug, Default)]
pub(super) struct SendQueue {
    frames: VecDeque<Queued>,
    /// How much of the front frame is already written.
    written_of_front: usize,
    /// Bytes in `frames` not yet written.
    queued: usize,
    /// The most bytes queued at once since [`SendQueue::forget_peak`].
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

impl SendQueue {
    /// Lends `transport`'s socket (plain TCP only) to the threads that broadcast through
    /// `outbox`: while nothing is queued here, they write into it themselves (see `LentSocket`
    /// in delivery/outbox/lending.rs).
    pub(super) fn lend(&mut self, transport: &Transport, outbox: &Arc<Outbox>) {
        if let Some(tcp) = transport.shareable() {
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
            self.frames.push_front(Queued {
                frame: rest,
                counted: 0,
                begun: true,
            });
        }
    }

    /// The most bytes queued at once since [`SendQueue::forget_peak`].
    pub(super) fn peak_queued(&self) -> usize {
        self.peak_queued
    }

    /// Starts over counting [`SendQueue::peak_queued`].
    pub(super) fn forget_peak(&mut self) {
        self.peak_queued = self.queued;
    }

    /// Gives back the queue's room once it is empty: a burst leaves it sized for the burst.
    pub(super) fn shrink(&mut self) {
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
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
        self.frames.push_back(Queued {
            frame,
            counted,
            begun: false,
        });
    }

    /// Bytes queued and not yet written.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Writes as much of the queue as `transport` takes now. Returns whether any byte went.
    ///
    /// Bytes of outbox frames are reported to `inbox` as they leave, which is what lets other
    /// threads queue more for this client.
    pub(super) fn send_queued(
        &mut self,
        transport: &mut Transport,
        inbox: &Inbox,
    ) -> io::Result<bool> {
        // TLS bytes of its own (handshake, alerts) and frames already encrypted go first.
        transport.flush_pending()?;
        let mut progress = false;
        while !self.frames.is_empty() {
            let frames = self.frames.iter().map(|queued| &queued.frame[..]);
            let mut n = match frame::write_some(transport, frames, self.written_of_front) {
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
                let front = &self.frames[0];
                let rest = front.frame.len() - self.written_of_front;
                if n < rest {
                    self.written_of_front += n;
                    break;
                }
                n -= rest;
                self.written_of_front = 0;
                if let Some(done) = self.frames.pop_front()
                    && done.counted > 0
                {
                    inbox.written(done.counted);
                }
            }
        }
        if self.frames.is_empty() && !self.writes_released {
            self.writes_released = self
                .lent_to
                .as_ref()
                .is_some_and(|outbox| outbox.release_writes());
        }
        Ok(progress)
    }

    /// Drops every queued frame that has not started going out (a partly written frame must be
    /// finished, or the stream would be corrupt, whether this thread or a broadcaster began
    /// it). Used when a client is too far behind.
    pub(super) fn discard_unsent(&mut self, inbox: &Inbox) {
        let begun = self.written_of_front > 0 || self.frames.front().is_some_and(|q| q.begun);
        let keep = usize::from(begun);
        for dropped in self.frames.drain(keep..) {
            self.queued -= dropped.frame.len();
            if dropped.counted > 0 {
                inbox.written(dropped.counted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::flow::Batch;
    use crate::delivery::outbox::lone_mailbox;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A connected pair: the server's non-blocking end, and the client's.
    fn connected() -> (Transport, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        (Transport::Plain(Arc::new(tcp)), reader)
    }

    #[test]
    fn frames_go_out_whole_and_in_order_even_when_the_socket_is_full() {
        let (mut transport, mut reader) = connected();
        let (_outbox, inbox) = lone_mailbox(usize::MAX);
        let mut queue = SendQueue::default();

        // Far more than the socket buffers hold, in frames of varied sizes.
        let frames: Vec<Bytes> = (0..200u32)
            .map(|i| Bytes::from(vec![i as u8; 1 + (i as usize * 997) % 70_000]))
            .collect();
        let total: usize = frames.iter().map(Bytes::len).sum();
        for frame in &frames {
            queue.push(frame.clone(), false);
        }
        let reading = std::thread::spawn(move || {
            let mut got = vec![0; total];
            reader.read_exact(&mut got).unwrap();
            got
        });
        while queue.queued() > 0 {
            queue.send_queued(&mut transport, &inbox).unwrap();
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
    /// its queue, its mailbox and the client's end, which reads nothing until told to.
    fn lent_socket() -> (SendQueue, Transport, Arc<Outbox>, Inbox, TcpStream) {
        let (mut transport, reader) = connected();
        let (outbox, inbox) = lone_mailbox(usize::MAX);
        let mut queue = SendQueue::default();
        queue.lend(&transport, &outbox);
        queue.send_queued(&mut transport, &inbox).unwrap(); // nothing queued: broadcasters may write
        (queue, transport, outbox, inbox, reader)
    }

    #[test]
    fn a_frame_a_broadcaster_began_is_finished_before_anything_else() {
        let (mut queue, mut transport, outbox, inbox, reader) = lent_socket();

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
        crate::sys::wait(Some(transport.tcp()), write, inbox.waker(), timeout).unwrap();
        queue.push(record(2, 0, 50), false);
        queue.send_queued(&mut transport, &inbox).unwrap();
        while !reading.is_finished() {
            queue.hold_writes();
            for delivery in inbox.drain() {
                if let crate::delivery::outbox::Delivery::Frame(frame) = delivery {
                    queue.push(frame, true);
                }
            }
            queue.send_queued(&mut transport, &inbox).unwrap();
            std::thread::yield_now();
        }
        // The broadcasts in their order; the pong wherever it fitted between whole frames.
        let got = reading.join().unwrap();
        assert_eq!(got, [(1, 0), (2, 0), (1, 1)]);
    }

    #[test]
    fn a_frame_a_broadcaster_began_survives_discarding_what_is_unsent() {
        let (mut queue, _transport, outbox, inbox, _reader) = lent_socket();
        // Nobody reads: the socket takes part of this frame and the rest is left over.
        assert_eq!(
            outbox.push(&Batch::may_go_straight_in(&[record(1, 0, 16 << 20)])),
            Ok(())
        );
        queue.hold_writes();
        let rest = queue.queued();
        assert!(rest > 0 && rest < 16 << 20);
        queue.push(record(2, 0, 100), false);
        // A client too slow to keep: what has not begun is dropped, the begun frame is not.
        queue.discard_unsent(&inbox);
        assert_eq!(queue.queued(), rest);
    }
}
