//! A connection's mailbox: how other threads hand it work without ever waiting for it.
//!
//! Other threads (the greeting timer, a broadcasting client, shutdown) put a [`Delivery`] into
//! the connection's [`Outbox`]: a `crossbeam-channel` queue plus a [`Waker`] that ends the
//! thread's wait at once. Pushing never blocks the pusher. The connection's thread owns the
//! other end, the [`Inbox`], and takes everything queued each time it wakes.
//!
//! Every outbox counts its backlog, the bytes handed over and not yet taken by the socket, and
//! tells its room's [`Flow`] when that backlog puts the listener behind or lets it catch up
//! (`flow.rs` says what then happens to the listener and to the senders).
//!
//! One shortcut: while a connection has nothing queued, its socket may be lent to the
//! broadcasters and the greeting timer, which write a frame straight into it (`lending.rs`).
//! [`Outbox::push`] is the one way in, and decides, from the lend and the [`Batch`], which way
//! each batch goes.
//!
//! Invariant: any thread may push into an outbox, close it, or wake it; only the owning
//! connection's thread holds the [`Inbox`]: it alone drains the mailbox, records what reached
//! the socket, and closes the intake.

mod lending;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::delivery::flow::{Batch, Flow};
use crate::delivery::wait_list::Waiter;
use crate::sync::lock;
use crate::sys::Waker;
use lending::LentSocket;

/// Something for a connection's thread to do.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// Write this encoded frame (see `frame.rs`) as it is.
    Frame(Bytes),
    /// Start the close handshake with this code and reason.
    Close(CloseCode, &'static str),
}

/// Why a push was refused: the connection has ended or is closing, and takes no more frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

/// The sending side of a connection's mailbox; shared by every thread that may send to it.
#[derive(Debug)]
pub(crate) struct Outbox {
    sender: Sender<Delivery>,
    waker: Waker,
    /// Set by the first sender that wakes the thread, cleared by the thread when it looks.
    /// A burst of a thousand broadcasts then costs one wake-up, not a thousand.
    wake_pending: AtomicBool,
    /// Set once the connection takes no more frames (it is closing or has ended).
    closed: AtomicBool,
    /// The room's flow control, told when this listener falls behind or catches up.
    flow: Arc<Flow>,
    backlog: Backlog,
    /// The socket, while the connection lends it for broadcasts written straight into it.
    lent_socket: Mutex<LentSocket>,
    /// Whether the socket is lent, readable without the lock: an outbox that does not lend it
    /// never takes the lock to push.
    lent: AtomicBool,
}

/// What other threads handed to a connection and its socket has not taken yet, and whether
/// that puts the listener behind or past the overflow mark (see `flow.rs`).
#[derive(Debug, Default)]
struct Backlog {
    /// Bytes handed over by other threads and not yet written to the socket.
    bytes: AtomicUsize,
    /// Bytes at the head of the backlog that the client asked for (its history when it
    /// joined): they do not count towards the overflow mark, so that a client catching up on
    /// a long history is not let go for it. Down to 0 as the socket takes them.
    catching_up: AtomicUsize,
    /// Set once the backlog passed the overflow mark (see [`Flow::overflow_mark`]).
    overflowed: AtomicBool,
    /// Since when this listener has been behind, while it is. Changed only under this lock,
    /// after a push or a write crossed a mark, so the flag and the room's count always agree
    /// with the backlog, whichever thread crossed last.
    behind_since: Mutex<Option<Instant>>,
    /// Whether `behind_since` is set, readable without the lock: the connection's loop asks
    /// every round, and is almost never behind.
    behind: AtomicBool,
}

/// The receiving side, owned by the connection's thread.
#[derive(Debug)]
pub(crate) struct Inbox {
    receiver: Receiver<Delivery>,
    outbox: Arc<Outbox>,
}

/// Creates a connection's mailbox, under its room's flow control, waking `waker`.
pub(crate) fn mailbox(flow: &Arc<Flow>, waker: Waker) -> (Arc<Outbox>, Inbox) {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let outbox = Arc::new(Outbox {
        sender,
        waker,
        wake_pending: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        flow: Arc::clone(flow),
        backlog: Backlog::default(),
        lent_socket: Mutex::new(LentSocket::default()),
        lent: AtomicBool::new(false),
    });
    (Arc::clone(&outbox), Inbox { receiver, outbox })
}

/// A mailbox in a room of its own, for tests.
#[cfg(test)]
pub(crate) fn lone_mailbox(max_backlog: usize) -> (Arc<Outbox>, Inbox) {
    let flow = Arc::new(Flow::new(max_backlog, Arc::default()));
    mailbox(&flow, Waker::try_new().unwrap())
}

impl Outbox {
    /// Hands a batch of frames, in order, to the connection: straight into its socket when
    /// it is lent, nothing is queued and the batch may go straight in (see [`LentSocket`]),
    /// otherwise into the mailbox with one wake-up for all of them. The one way frames from other
    /// threads reach a connection. Never refused for being behind: flow control slows the
    /// senders down instead (see `flow.rs`).
    pub(crate) fn push(&self, batch: &Batch<'_>) -> Result<(), Gone> {
        // While the socket is lent, frames are queued under its lock: the connection reopens
        // only once it has seen them.
        let mut held = self
            .lent
            .load(Ordering::Acquire)
            .then(|| self.lent_socket());
        if let Some(lent) = held.as_mut() {
            if batch.straight_in() && lent.open {
                return self.write_through(lent, batch.frames());
            }
            // Not straight in: the listener's thread writes them in big writes, on whichever core
            // is free, while the broadcaster goes on to the next.
            lent.open = false;
        }
        let queued = self.enqueue_all(batch.frames());
        drop(held);
        self.wake();
        queued
    }

    fn enqueue_all(&self, frames: &[Bytes]) -> Result<(), Gone> {
        frames
            .iter()
            .try_for_each(|frame| self.enqueue(frame.clone()))
    }

    /// Bytes handed over and not yet taken by the socket.
    pub(crate) fn backlog(&self) -> usize {
        self.backlog.bytes.load(Ordering::SeqCst)
    }

    /// Lets the listener go, as if its backlog had passed the overflow mark: its thread
    /// closes it with 1008 and drops what it had not started sending.
    pub(crate) fn let_go(&self) {
        self.backlog.overflowed.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Asks the connection's thread to start the close handshake. Nothing pushed after it
    /// reaches the client: the lent socket is shut, and the thread drops what follows a Close.
    pub(crate) fn close(&self, code: CloseCode, reason: &'static str) -> Result<(), Gone> {
        let _held = self.lent.load(Ordering::Acquire).then(|| {
            let mut lent = self.lent_socket();
            lent.open = false;
            lent
        });
        self.sender
            .send(Delivery::Close(code, reason))
            .map_err(|_| Gone)?;
        self.wake();
        Ok(())
    }

    /// Wakes the connection's thread without giving it anything: it looks again at whatever
    /// it waits for (room in the hub, room in memory).
    pub(crate) fn wake(&self) {
        // Whoever sees `true` knows the thread has not looked yet (see `Inbox::drain`) and will
        // see this delivery when it does.
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Queues a frame without waking the thread; [`Outbox::wake`] it afterwards.
    fn enqueue(&self, frame: Bytes) -> Result<(), Gone> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Gone);
        }
        let len = frame.len();
        let before = self.backlog.bytes.fetch_add(len, Ordering::SeqCst);
        if before <= self.flow.high_mark() && before + len > self.flow.high_mark() {
            self.reassess();
        }
        // Let go only with half the mark queued already: a listener that is keeping up is
        // never let go for one message larger than the mark. What it is catching up on does
        // not count.
        let counted = before.saturating_sub(self.backlog.catching_up.load(Ordering::SeqCst));
        if let Some(overflow) = self.flow.overflow_mark()
            && counted + len > overflow
            && counted > overflow / 2
        {
            self.backlog.overflowed.store(true, Ordering::SeqCst);
        }
        if self.sender.send(Delivery::Frame(frame)).is_err() {
            self.taken(len);
            return Err(Gone);
        }
        Ok(())
    }

    /// Queues frames the client asked for (its history, when it joins) at the head of its
    /// backlog, where they do not count towards the overflow mark.
    pub(crate) fn push_catch_up(&self, frames: &[Bytes]) -> Result<(), Gone> {
        let bytes = frames.iter().map(Bytes::len).sum();
        self.backlog.catching_up.fetch_add(bytes, Ordering::SeqCst);
        self.push(&Batch::queued(frames))
    }

    /// Records that `len` bytes left the backlog.
    fn taken(&self, len: usize) {
        // The socket takes the backlog in order: the catch-up goes first. Almost every
        // connection has none, and pays one load for it, not a compare-and-swap per write.
        if self.backlog.catching_up.load(Ordering::SeqCst) > 0 {
            let _ =
                self.backlog
                    .catching_up
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        Some(left.saturating_sub(len))
                    });
        }
        let before = self.backlog.bytes.fetch_sub(len, Ordering::SeqCst);
        if before > self.flow.low_mark() && before - len <= self.flow.low_mark() {
            self.reassess();
        }
    }

    /// Sets or clears "behind" from the backlog as it is now; called after a mark was crossed.
    fn reassess(&self) {
        let mut since = self.behind_since();
        let backlog = self.backlog.bytes.load(Ordering::SeqCst);
        let closed = self.closed.load(Ordering::SeqCst);
        match *since {
            None if backlog > self.flow.high_mark() && !closed => {
                *since = Some(Instant::now());
                self.backlog.behind.store(true, Ordering::SeqCst);
                self.flow.fell_behind();
            }
            Some(_) if backlog <= self.flow.low_mark() || closed => {
                *since = None;
                self.backlog.behind.store(false, Ordering::SeqCst);
                self.flow.caught_up();
            }
            _ => {}
        }
    }

    fn behind_since(&self) -> MutexGuard<'_, Option<Instant>> {
        lock(&self.backlog.behind_since)
    }
}

impl Waiter for Outbox {
    fn wake(&self) {
        Outbox::wake(self);
    }
}

impl Inbox {
    /// The waker to wait on.
    pub(crate) fn waker(&self) -> &Waker {
        &self.outbox.waker
    }

    /// The sending side of this mailbox, to join wait lists with.
    pub(crate) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Takes everything queued so far. Call after the wait reported the waker.
    pub(crate) fn drain(&self) -> impl Iterator<Item = Delivery> + '_ {
        // Clear the waker, then the flag, before looking, so that a delivery that races with
        // the look wakes the next wait instead of being missed. In that order: a sender that
        // finds the flag clear wakes the waker after it was cleared, so the wake stays. The
        // other order would lose wake-ups for good: a sender could set the flag and wake the
        // waker between the two, the reset would clear its wake, and the flag, left set,
        // would keep every later sender from waking the thread again.
        self.outbox.waker.reset();
        self.outbox.wake_pending.store(false, Ordering::SeqCst);
        self.receiver.try_iter()
    }

    /// Records that `len` bytes of delivered frames reached the socket (or were dropped).
    pub(crate) fn written(&self, len: usize) {
        self.outbox.taken(len);
    }

    /// Whether the backlog passed the overflow mark, or the listener was let go to free
    /// memory: the connection must close now.
    pub(crate) fn overflowed(&self) -> bool {
        self.outbox.backlog.overflowed.load(Ordering::SeqCst)
    }

    /// Bytes handed over and not yet taken by the socket.
    pub(crate) fn backlog(&self) -> usize {
        self.outbox.backlog()
    }

    /// Since when this connection has been behind, if it is.
    pub(crate) fn behind_since(&self) -> Option<Instant> {
        if !self.outbox.backlog.behind.load(Ordering::SeqCst) {
            return None;
        }
        *self.outbox.behind_since()
    }

    /// Refuses every later push: the connection is closing. What is already queued is still
    /// delivered (or dropped, after a Close) by the connection's thread.
    pub(crate) fn close_intake(&self) {
        self.outbox.closed.store(true, Ordering::SeqCst);
        self.outbox.reassess();
    }
}

impl Drop for Inbox {
    /// A connection that ends is no longer behind, whatever it left queued.
    fn drop(&mut self) {
        self.close_intake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![0; len])
    }

    #[test]
    fn deliveries_arrive_in_order() {
        let flow = Arc::new(Flow::new(100, Arc::default()));
        let (outbox, inbox) = mailbox(&flow, Waker::try_new().unwrap());
        outbox
            .push(&Batch::may_go_straight_in(&[Bytes::from_static(b"one")]))
            .unwrap();
        outbox
            .push(&Batch::may_go_straight_in(&[Bytes::from_static(b"two")]))
            .unwrap();
        let got: Vec<_> = inbox.drain().collect();
        assert!(matches!(&got[..], [Delivery::Frame(a), Delivery::Frame(b)]
            if &a[..] == b"one" && &b[..] == b"two"));
    }

    #[test]
    fn a_listener_is_behind_past_the_high_mark_until_it_is_down_to_the_low_mark() {
        let flow = Arc::new(Flow::new(100, Arc::default()));
        let (outbox, inbox) = mailbox(&flow, Waker::try_new().unwrap());
        outbox
            .push(&Batch::may_go_straight_in(&[frame(60)]))
            .unwrap();
        outbox
            .push(&Batch::may_go_straight_in(&[frame(60)]))
            .unwrap(); // 120 > 100: behind; never refused
        assert!(flow.congested() && inbox.behind_since().is_some());
        inbox.written(60); // 60: still above the low mark, 50
        assert!(flow.congested());
        inbox.written(10); // 50: caught up
        assert!(!flow.congested() && inbox.behind_since().is_none());
    }

    #[test]
    fn the_last_listener_to_catch_up_wakes_the_waiting_senders() {
        let flow = Arc::new(Flow::new(10, Arc::default()));
        let (sender, sender_inbox) = mailbox(&flow, Waker::try_new().unwrap());
        let (listener, listener_inbox) = mailbox(&flow, Waker::try_new().unwrap());
        listener
            .push(&Batch::may_go_straight_in(&[frame(20)]))
            .unwrap();
        let generation = flow.senders().add(&sender);
        assert!(flow.senders().still_listed(generation));
        let _ = sender_inbox.drain().count(); // clears the wake flag
        listener_inbox.written(20);
        assert!(!flow.congested());
        assert!(
            !flow.senders().still_listed(generation),
            "taken off the list"
        );
        assert!(
            sender_inbox.outbox().wake_pending.load(Ordering::SeqCst),
            "and woken"
        );
    }

    #[test]
    fn a_closed_connection_takes_nothing_and_is_never_behind() {
        let flow = Arc::new(Flow::new(10, Arc::default()));
        let (outbox, inbox) = mailbox(&flow, Waker::try_new().unwrap());
        outbox
            .push(&Batch::may_go_straight_in(&[frame(20)]))
            .unwrap();
        assert!(flow.congested());
        drop(inbox);
        assert!(!flow.congested());
        assert_eq!(
            outbox.push(&Batch::may_go_straight_in(&[frame(1)])),
            Err(Gone)
        );
        assert_eq!(outbox.close(CloseCode::Normal, ""), Err(Gone));
    }
}
