//! Lending a connection's socket to the threads that broadcast to it or greet it, so that
//! they write a frame straight into it (plain TCP, in broadcast mode or with the greeting on).
//!
//! Waking a thread costs a signal and a context switch per listener per broadcast, most of a
//! broadcast's latency, and per client for its greeting. So while a connection has nothing
//! queued, a broadcaster (or the greeting timer) writes the frame into its socket itself: one
//! non-blocking write, no wake-up and no context switch. Only when the socket is full does the
//! rest go through the mailbox and a wake-up, so a slow listener never holds a broadcaster up.
//! Which frames may go straight in is decided when their [`Batch`](crate::delivery::flow::Batch)
//! is made (`flow.rs`); [`Outbox::push`] is the one way in and comes here for them.
//!
//! Invariant: only the owning connection's thread lends, holds, releases and reclaims the
//! socket; any other thread writes into it only under the [`LentSocket`] lock, and only while
//! it is open, which the connection's thread allows only with nothing queued. The connection's
//! thread takes the lock before it queues anything of its own, and finishes first a frame the
//! socket took only in part, so frames never interleave.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use bytes::Bytes;

use super::{Gone, Outbox};
use crate::frame;
use crate::sync::lock;
use crate::sys::NoSigpipe;

/// A connection's socket while it is lent, with what the lend's lock guards.
#[derive(Debug, Default)]
pub(super) struct LentSocket {
    socket: Option<Arc<TcpStream>>,
    /// Whether other threads may write now: the connection's queue and mailbox are empty.
    pub(super) open: bool,
    /// The unwritten end of a frame a broadcaster could write only in part: it goes out
    /// before anything else.
    rest: Option<Bytes>,
}

impl Outbox {
    /// Writes `frames` into the lent socket; what it does not take goes through the queue.
    pub(super) fn write_through(
        &self,
        lent: &mut LentSocket,
        frames: &[Bytes],
    ) -> Result<(), Gone> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Gone);
        }
        let Some(socket) = lent.socket.as_deref() else {
            return self.enqueue_all(frames);
        };
        let (mut whole, mut into_next) = (0, 0);
        while whole < frames.len() {
            let batch = frames[whole..].iter().map(|frame| &frame[..]);
            let mut n = match frame::write_some(&mut NoSigpipe(socket), batch, into_next) {
                Ok(n) if n > 0 => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Full, or failing: the connection's thread finds out which from its queue.
                _ => break,
            };
            while n > 0 {
                let left = frames[whole].len() - into_next;
                if n < left {
                    into_next += n;
                    break;
                }
                n -= left;
                whole += 1;
                into_next = 0;
            }
        }
        if whole == frames.len() {
            return Ok(());
        }
        lent.open = false;
        let mut unsent = &frames[whole..];
        if into_next > 0 {
            lent.rest = Some(unsent[0].slice(into_next..));
            unsent = &unsent[1..];
        }
        let queued = self.enqueue_all(unsent);
        self.wake();
        queued
    }

    /// Lends the connection's socket to broadcasters; see [`LentSocket`]. Writes start once
    /// the connection says its queue is empty ([`Outbox::release_writes`]).
    pub(crate) fn lend(&self, socket: Arc<TcpStream>) {
        self.lent_socket().socket = Some(socket);
        self.lent.store(true, Ordering::Release);
    }

    /// Stops other threads writing into the socket, before the connection writes anything of
    /// its own. Returns the rest of a frame a broadcaster began, which must go out first.
    pub(crate) fn hold_writes(&self) -> Option<Bytes> {
        if !self.lent.load(Ordering::Acquire) {
            return None;
        }
        let mut lent = self.lent_socket();
        lent.open = false;
        lent.rest.take()
    }

    /// Lets broadcasters write into the socket again; the connection calls it when its queue
    /// is empty. Refused (false) while deliveries wait in the mailbox or the rest of a frame
    /// does: they go first.
    pub(crate) fn release_writes(&self) -> bool {
        if !self.lent.load(Ordering::Acquire) {
            return false;
        }
        let mut lent = self.lent_socket();
        lent.open = lent.rest.is_none()
            && self.sender.is_empty()
            && !self.closed.load(Ordering::SeqCst)
            && lent.socket.is_some();
        lent.open
    }

    /// Takes the socket back for good: the connection is ending.
    pub(crate) fn reclaim(&self) {
        self.lent.store(false, Ordering::Release);
        let mut lent = self.lent_socket();
        lent.open = false;
        lent.socket = None;
    }

    pub(super) fn lent_socket(&self) -> MutexGuard<'_, LentSocket> {
        lock(&self.lent_socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::flow::{Batch, Flow};
    use crate::delivery::outbox::mailbox;
    use crate::sys::Waker;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![0; len])
    }

    #[test]
    fn a_lent_socket_takes_broadcasts_straight_in_until_it_is_held_or_taken_back() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let flow = Arc::new(Flow::new(1 << 20, Arc::default()));
        let (outbox, inbox) = mailbox(&flow, Waker::try_new().unwrap());
        outbox.lend(Arc::new(tcp));
        assert_eq!(
            outbox.push(&Batch::may_go_straight_in(&[frame(3)])),
            Ok(()),
            "not before it is released"
        );
        assert!(!outbox.release_writes(), "not while a delivery waits");
        assert_eq!(inbox.drain().count(), 1);
        assert!(outbox.release_writes());

        assert_eq!(
            outbox.push(&Batch::may_go_straight_in(&[frame(5), frame(7)])),
            Ok(())
        );
        let mut got = [1; 12];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(got, [0; 12]);
        assert_eq!(inbox.drain().count(), 0, "nothing went through the mailbox");

        assert_eq!(outbox.hold_writes(), None);
        assert_eq!(
            outbox.push(&Batch::may_go_straight_in(&[frame(1)])),
            Ok(()),
            "held: queued"
        );
        assert_eq!(inbox.drain().count(), 1);
        assert!(outbox.release_writes());
        outbox.reclaim();
        assert_eq!(
            outbox.push(&Batch::may_go_straight_in(&[frame(1)])),
            Ok(()),
            "taken back: queued"
        );
        assert_eq!(inbox.drain().count(), 1);
        assert!(!outbox.release_writes());
    }
}
