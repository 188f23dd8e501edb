//! How other threads hand work to a connection's thread.
//!
//! Only a connection's own thread ever writes to its socket, so frames can never interleave on
//! the wire. Other threads (the greeting timer, a broadcasting client, shutdown) put a
//! [`Delivery`] into the connection's [`Outbox`] instead: a `crossbeam-channel` queue plus a
//! [`Waker`] that ends the thread's `ppoll` at once. Nothing here ever blocks the sender: a slow
//! client only ever slows itself down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::poll::Waker;

/// Something for a connection's thread to do.
#[derive(Debug)]
pub enum Delivery {
    /// Write this encoded frame (see `frame.rs`) as it is.
    Frame(Bytes),
    /// Start the close handshake with this code and reason.
    Close(u16, &'static str),
}

/// Why a [`Outbox::push`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The connection has ended.
    Gone,
    /// The client is too far behind: its backlog is past the limit. It is being closed.
    Backlog,
}

/// The sending side of a connection's mailbox; shared by every thread that may send to it.
#[derive(Debug)]
pub struct Outbox {
    sender: Sender<Delivery>,
    waker: Waker,
    /// Set by the first sender that wakes the thread, cleared by the thread when it looks.
    /// A burst of a thousand broadcasts then costs one wake-up, not a thousand.
    wake_pending: AtomicBool,
    /// Bytes handed over by other threads and not yet written to the socket.
    backlog: AtomicUsize,
    max_backlog: usize,
    /// Set once the backlog limit was hit; the connection's thread then closes it with 1008.
    overflowed: AtomicBool,
}

/// The receiving side, owned by the connection's thread.
#[derive(Debug)]
pub struct Inbox {
    receiver: Receiver<Delivery>,
    outbox: Arc<Outbox>,
}

/// Creates a connection's mailbox.
pub fn mailbox(max_backlog: usize) -> (Arc<Outbox>, Inbox) {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let outbox = Arc::new(Outbox {
        sender,
        waker: Waker::new(),
        wake_pending: AtomicBool::new(false),
        backlog: AtomicUsize::new(0),
        max_backlog,
        overflowed: AtomicBool::new(false),
    });
    (Arc::clone(&outbox), Inbox { receiver, outbox })
}

impl Outbox {
    /// Queues an encoded frame and wakes the connection's thread.
    ///
    /// A frame is refused once the client already has a backlog and this frame would take it
    /// past the limit; the connection is then closed with 1008 by its own thread. (A single
    /// frame larger than the limit still goes to a client that has caught up.)
    pub fn push(&self, frame: Bytes) -> Result<(), Refused> {
        let queued = self.enqueue(frame);
        self.wake();
        queued
    }

    /// Queues several frames, in order, and wakes the thread once for all of them.
    pub fn push_all(&self, frames: &[Bytes]) -> Result<(), Refused> {
        let queued = frames
            .iter()
            .try_for_each(|frame| self.enqueue(frame.clone()));
        self.wake();
        queued
    }

    /// Queues a frame without waking the thread; see [`Outbox::push`].
    fn enqueue(&self, frame: Bytes) -> Result<(), Refused> {
        if self.overflowed.load(Ordering::Relaxed) {
            return Err(Refused::Backlog);
        }
        let len = frame.len();
        let before = self.backlog.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.max_backlog {
            self.backlog.fetch_sub(len, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            return Err(Refused::Backlog);
        }
        if self.sender.send(Delivery::Frame(frame)).is_err() {
            self.backlog.fetch_sub(len, Ordering::Relaxed);
            return Err(Refused::Gone);
        }
        Ok(())
    }

    /// Asks the connection's thread to start the close handshake.
    pub fn close(&self, code: u16, reason: &'static str) -> Result<(), Refused> {
        self.sender
            .send(Delivery::Close(code, reason))
            .map_err(|_| Refused::Gone)?;
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        // AcqRel pairs with the swap in `Inbox::drain`: whoever sees `true` knows the thread
        // has not looked yet and will see this delivery when it does.
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

impl Inbox {
    /// The waker to `poll` on.
    pub fn waker(&self) -> &Waker {
        &self.outbox.waker
    }

    /// Takes everything queued so far. Call after `poll` reported the waker.
    pub fn drain(&self) -> impl Iterator<Item = Delivery> + '_ {
        // Clear the flag and the waker before looking, so a delivery that races with the
        // look wakes the next poll instead of being missed.
        self.outbox.wake_pending.swap(false, Ordering::AcqRel);
        self.outbox.waker.reset();
        self.receiver.try_iter()
    }

    /// Records that `len` bytes of delivered frames reached the socket.
    pub fn written(&self, len: usize) {
        self.outbox.backlog.fetch_sub(len, Ordering::Relaxed);
    }

    /// True once a sender found the backlog full.
    pub fn overflowed(&self) -> bool {
        self.outbox.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_arrive_in_order_and_the_backlog_is_bounded() {
        let (outbox, inbox) = mailbox(10);
        outbox.push(Bytes::from_static(b"123456")).unwrap();
        // Past the limit while a backlog exists: refused, and the client is marked.
        assert_eq!(
            outbox.push(Bytes::from_static(b"789012")),
            Err(Refused::Backlog)
        );
        assert!(inbox.overflowed());
        let got: Vec<_> = inbox.drain().collect();
        assert!(matches!(&got[..], [Delivery::Frame(f)] if &f[..] == b"123456"));
    }

    #[test]
    fn a_big_frame_reaches_a_client_that_has_caught_up() {
        let (outbox, inbox) = mailbox(4);
        outbox.push(Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(inbox.drain().count(), 1);
        inbox.written(10);
        outbox.push(Bytes::from_static(b"0123456789")).unwrap();
    }

    #[test]
    fn pushing_to_a_closed_connection_is_refused() {
        let (outbox, inbox) = mailbox(10);
        drop(inbox);
        assert_eq!(outbox.push(Bytes::from_static(b"x")), Err(Refused::Gone));
    }
}
