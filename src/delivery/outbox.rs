//! How other threads hand work to a connection's thread, and what happens to a listener that
//! falls behind.
//!
//! Other threads (the greeting timer, a broadcasting client, shutdown) put a [`Delivery`] into
//! the connection's [`Outbox`]: a `crossbeam-channel` queue plus a [`Waker`] that ends the
//! thread's wait at once. Pushing never blocks the pusher.
//!
//! One shortcut: in broadcast mode or with the greeting on, while a connection has nothing
//! queued, its socket is lent to the broadcasters and the greeting timer ([`Direct`]), which
//! write a frame straight into it with one non-blocking write, no wake-up and no context
//! switch. The lend's lock keeps frames whole: the connection takes it back before it queues
//! anything of its own, and a frame the socket took only in part is finished by the connection
//! before anything else. A full socket sends the rest through the queue, so a slow listener
//! never holds a broadcaster up. Whether a push may go straight in is decided here and nowhere
//! else: [`Outbox::push`] is the one way in, and the [`Batch`] it takes says whether its frames
//! came alone (see [`Flow::batch`]).
//!
//! # A listener that falls behind
//!
//! Every outbox counts its *backlog*: bytes handed over by other threads and not yet taken by
//! the socket. A listener whose backlog passes the high mark (`--max-backlog`) is *behind*.
//! What then happens is the server's slow-listener policy ([`Policy`]):
//!
//! - **Let go** (`--slow-listener close`, the default): the listener's backlog has passed its
//!   *overflow mark*, the high mark itself, and its own thread closes it at once with 1008. No
//!   sender ever waits for another client, so a room's latency does not depend on its slowest
//!   member. A client that uses `?resume` comes back and gets exactly what it missed.
//! - **Pace** (`--slow-listener wait`): while any listener of a room is behind, the room is
//!   congested ([`Flow`]) and its broadcasting connections stop reading: their clients' TCP
//!   windows close and the senders wait. The listener is back once its backlog falls to the
//!   low mark (half the high mark), and the last one back wakes the waiting senders. The gap
//!   between the marks is what makes "catching up" mean something: a listener must take half a
//!   backlog's worth before senders go on, not one byte. A listener that stays behind for the
//!   send timeout (`--send-timeout`) is not reading, or reads too slowly to ever catch up: its
//!   own thread closes it with 1008, which frees the others.
//!
//! In a cluster (`--redis`, see `cluster/`) one more thing makes every room congested, under
//! either policy: the queue of broadcasts waiting to be published to Redis, when it is past its
//! own high mark (Redis is slower than the senders). Senders wait for it exactly as for a
//! listener ([`CommonFlow`]). And senders on other instances cannot be paced: under `wait`, a
//! listener whose backlog passes a larger overflow mark is closed at once too.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::frame;
use crate::sync::lock;
use crate::sys::{NoSigpipe, Waker};

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

/// One room's broadcast flow control: how many of its listeners are behind, and its senders
/// waiting for them. Rooms are paced apart: a listener behind in one room holds back the
/// senders of its own room only.
#[derive(Debug)]
pub(crate) struct Flow {
    /// A backlog above this many bytes puts its listener behind.
    high: usize,
    /// A listener that is behind is back once its backlog is at or below this.
    low: usize,
    behind: AtomicUsize,
    senders: WaitList,
    /// What every room's flow shares.
    common: Arc<CommonFlow>,
    /// When the last broadcast was pushed, in nanoseconds since `started`; see
    /// [`STRAIGHT_IN_APART`].
    last_broadcast: AtomicU64,
    started: Instant,
}

/// Frames on their way to one or more connections, pushed into each outbox in turn, and
/// whether a lent socket may take them straight in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batch<'a> {
    frames: &'a [Bytes],
    straight_in: bool,
}

impl<'a> Batch<'a> {
    /// Frames that come alone: nothing else is on its way to their connections (a greeting).
    /// A few of them go straight into a lent, idle socket.
    pub(crate) fn alone(frames: &'a [Bytes]) -> Batch<'a> {
        Batch {
            frames,
            straight_in: frames.len() <= MAX_FRAMES_STRAIGHT_IN,
        }
    }

    /// Frames that must wait their turn in the mailbox, whatever the socket (history for a
    /// newcomer, which comes before anything else).
    pub(crate) fn queued(frames: &'a [Bytes]) -> Batch<'a> {
        Batch {
            frames,
            straight_in: false,
        }
    }

    /// The frames, in order.
    pub(crate) fn frames(&self) -> &'a [Bytes] {
        self.frames
    }

    /// Their bytes.
    pub(crate) fn len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum()
    }
}

/// The slow-listener policy: when a listener is let go, and whether senders wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// A listener whose backlog passes this many bytes is closed at once; `None`: only after
    /// the send timeout.
    pub(crate) overflow: Option<usize>,
    /// Whether a listener that is behind makes its room's senders wait.
    pub(crate) pace_senders: bool,
}

impl Policy {
    /// `--slow-listener close`: a listener past `max_backlog` is let go, and no sender waits.
    pub(crate) fn let_go(max_backlog: usize) -> Policy {
        Policy {
            overflow: Some(max_backlog),
            pace_senders: false,
        }
    }

    /// `--slow-listener wait`: senders wait for a listener behind; past `overflow` bytes, if
    /// given, it is closed at once (where some senders cannot be paced).
    pub(crate) fn pace(overflow: Option<usize>) -> Policy {
        Policy {
            overflow,
            pace_senders: true,
        }
    }
}

impl Default for Policy {
    /// Pacing, with no overflow mark.
    fn default() -> Policy {
        Policy::pace(None)
    }
}

/// What the flow control of every room shares: the slow-listener policy, and the cluster's
/// publish queue, which every sender of this instance fills, and where the senders wait for
/// it.
#[derive(Debug, Default)]
pub(crate) struct CommonFlow {
    /// Set while the cluster's publish queue is past its high mark (see `cluster/`).
    publish_full: AtomicBool,
    /// The senders waiting for the publish queue to drain.
    waiting: WaitList,
    policy: Policy,
}

impl CommonFlow {
    /// Flow control for every room, under `policy`.
    pub(crate) fn new(policy: Policy) -> CommonFlow {
        CommonFlow {
            policy,
            ..CommonFlow::default()
        }
    }

    /// Whether a listener past the high mark is let go at once rather than waited for.
    pub(crate) fn lets_go(&self) -> bool {
        !self.policy.pace_senders
    }

    /// Records whether the cluster's publish queue is past its high mark; clearing it wakes
    /// whoever waits for it.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn set_publish_full(&self, full: bool) {
        self.publish_full.store(full, Ordering::SeqCst);
        if !full {
            self.waiting.wake_all();
        }
    }

    /// Whether the cluster's publish queue is full: no sender of this instance may read.
    pub(crate) fn publish_full(&self) -> bool {
        self.publish_full.load(Ordering::SeqCst)
    }

    /// Where a sender waits for the publish queue; it wakes them as it drains.
    pub(crate) fn waiting(&self) -> &WaitList {
        &self.waiting
    }
}

impl Flow {
    /// A room's flow control with `max_backlog` as the high mark, sharing `common`.
    pub(crate) fn new(max_backlog: usize, common: Arc<CommonFlow>) -> Flow {
        Flow {
            high: max_backlog,
            low: max_backlog / 2,
            behind: AtomicUsize::new(0),
            senders: WaitList::default(),
            common,
            last_broadcast: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// A broadcast's frames, to be pushed to every listener. They may go straight into lent
    /// sockets only when they come alone: a few frames, at least [`STRAIGHT_IN_APART`] after
    /// the previous broadcast. A stream of broadcasts goes through the queues.
    pub(crate) fn batch<'a>(&self, frames: &'a [Bytes]) -> Batch<'a> {
        let now = self.started.elapsed().as_nanos() as u64;
        let last = self.last_broadcast.swap(now, Ordering::Relaxed);
        let apart = now.saturating_sub(last) >= STRAIGHT_IN_APART.as_nanos() as u64;
        Batch {
            frames,
            straight_in: apart && frames.len() <= MAX_FRAMES_STRAIGHT_IN,
        }
    }

    /// Whether a listener of this room is behind, or the cluster's publish queue is full:
    /// the room's senders must not read.
    pub(crate) fn congested(&self) -> bool {
        self.listeners_behind() || self.common.publish_full()
    }

    /// Whether a listener of this room is behind.
    pub(crate) fn listeners_behind(&self) -> bool {
        self.behind.load(Ordering::SeqCst) > 0
    }

    /// Where a sender waits for this room's listeners to catch up.
    pub(crate) fn senders(&self) -> &WaitList {
        &self.senders
    }

    /// What every room's flow shares.
    pub(crate) fn common(&self) -> &CommonFlow {
        &self.common
    }

    fn fell_behind(&self) {
        if self.common.policy.pace_senders {
            self.behind.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn caught_up(&self) {
        if self.common.policy.pace_senders && self.behind.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.senders.wake_all();
        }
    }
}

/// The sending side of a connection's mailbox; shared by every thread that may send to it.
#[derive(Debug)]
pub(crate) struct Outbox {
    sender: Sender<Delivery>,
    waker: Waker,
    /// Set by the first sender that wakes the thread, cleared by the thread when it looks.
    /// A burst of a thousand broadcasts then costs one wake-up, not a thousand.
    wake_pending: AtomicBool,
    /// Bytes handed over by other threads and not yet written to the socket.
    backlog: AtomicUsize,
    /// Set once the connection takes no more frames (it is closing or has ended).
    closed: AtomicBool,
    flow: Arc<Flow>,
    /// Since when this listener has been behind, while it is. Changed only under this lock,
    /// after a push or a write crossed a mark, so the flag and the hub's count always agree
    /// with the backlog, whichever thread crossed last.
    behind_since: Mutex<Option<Instant>>,
    /// Whether `behind_since` is set, readable without the lock: the connection's loop asks
    /// every round, and is almost never behind.
    behind: AtomicBool,
    /// The socket, while the connection lends it for broadcasts written straight into it.
    direct: Mutex<Direct>,
    /// Whether the socket is lent, readable without the lock: an outbox that does not lend it
    /// never takes the lock to push.
    lent: AtomicBool,
    /// Set once the backlog passed the overflow mark (see [`CommonFlow`]).
    overflowed: AtomicBool,
    /// Bytes at the head of the backlog that the client asked for (its history when it
    /// joined): they do not count towards the overflow mark, so that a client catching up on
    /// a long history is not let go for it. Down to 0 as the socket takes them.
    catching_up: AtomicUsize,
}

/// A connection's socket, lent to the threads that broadcast or greet it (plain TCP, in
/// broadcast mode or with the greeting on).
///
/// Waking a thread costs a signal and a context switch per listener per broadcast, most of a
/// broadcast's latency, and per client for its greeting. So while a connection has nothing
/// queued, a broadcaster (or the greeting timer) writes the frame into its socket itself: a
/// non-blocking write, under this lock, which the connection's thread also takes before it
/// queues anything of its own, so frames never interleave. Only when the
/// socket is full does the rest go through the queue and a wake-up.
#[derive(Debug, Default)]
struct Direct {
    socket: Option<Arc<TcpStream>>,
    /// Whether other threads may write now: the connection's queue and mailbox are empty.
    open: bool,
    /// The unwritten end of a frame a broadcaster could write only in part: it goes out
    /// before anything else.
    rest: Option<Bytes>,
}

/// The longest batch of broadcasts written straight into a listener's socket. A few messages
/// (what a sender at a human pace sends) are quickest written in place; a long batch (a
/// sender at full speed) is better written by the listener's own thread, in big writes and
/// on every core, than by the broadcaster alone, one listener after another
/// (docs/performance.md has the figures).
const MAX_FRAMES_STRAIGHT_IN: usize = 4;

/// Broadcasts go straight into idle listeners' sockets only when they come at least this far
/// apart. One thread writing to every listener in turn is quickest for a lone message, but a
/// stream of them (a sender at full speed, or a cluster's subscriber relaying Redis one
/// message at a time) is delivered faster by the listeners' own threads, in batches and on
/// every core. A millisecond is about what writing one message to 100 listeners takes.
const STRAIGHT_IN_APART: Duration = Duration::from_millis(1);

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
        backlog: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        flow: Arc::clone(flow),
        behind_since: Mutex::new(None),
        behind: AtomicBool::new(false),
        direct: Mutex::new(Direct::default()),
        lent: AtomicBool::new(false),
        overflowed: AtomicBool::new(false),
        catching_up: AtomicUsize::new(0),
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
    /// it is lent, nothing is queued and the batch came alone (see [`Direct`]), otherwise
    /// into the mailbox with one wake-up for all of them. The one way frames from other
    /// threads reach a connection. Never refused for being behind: flow control slows the
    /// senders down instead (see above).
    pub(crate) fn push(&self, batch: &Batch<'_>) -> Result<(), Gone> {
        // While the socket is lent, frames are queued under its lock: the connection reopens
        // only once it has seen them.
        let mut held = self.lent.load(Ordering::Acquire).then(|| self.direct());
        if let Some(direct) = held.as_mut() {
            if batch.straight_in && direct.open {
                return self.write_through(direct, batch.frames);
            }
            // Not alone: the listener's thread writes them in big writes, on whichever core
            // is free, while the broadcaster goes on to the next.
            direct.open = false;
        }
        let queued = self.enqueue_all(batch.frames);
        drop(held);
        self.wake();
        queued
    }

    fn enqueue_all(&self, frames: &[Bytes]) -> Result<(), Gone> {
        frames
            .iter()
            .try_for_each(|frame| self.enqueue(frame.clone()))
    }

    /// Writes `frames` into the lent socket; what it does not take goes through the queue.
    fn write_through(&self, direct: &mut Direct, frames: &[Bytes]) -> Result<(), Gone> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Gone);
        }
        let Some(socket) = direct.socket.as_deref() else {
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
        direct.open = false;
        let mut unsent = &frames[whole..];
        if into_next > 0 {
            direct.rest = Some(unsent[0].slice(into_next..));
            unsent = &unsent[1..];
        }
        let queued = self.enqueue_all(unsent);
        self.wake();
        queued
    }

    /// Lends the connection's socket to broadcasters; see [`Direct`]. Writes start once the
    /// connection says its queue is empty ([`Outbox::release_writes`]).
    pub(crate) fn lend(&self, socket: Arc<TcpStream>) {
        self.direct().socket = Some(socket);
        self.lent.store(true, Ordering::Release);
    }

    /// Stops other threads writing into the socket, before the connection writes anything of
    /// its own. Returns the rest of a frame a broadcaster began, which must go out first.
    pub(crate) fn hold_writes(&self) -> Option<Bytes> {
        if !self.lent.load(Ordering::Acquire) {
            return None;
        }
        let mut direct = self.direct();
        direct.open = false;
        direct.rest.take()
    }

    /// Lets broadcasters write into the socket again; the connection calls it when its queue
    /// is empty. Refused (false) while deliveries wait in the mailbox or the rest of a frame
    /// does: they go first.
    pub(crate) fn release_writes(&self) -> bool {
        if !self.lent.load(Ordering::Acquire) {
            return false;
        }
        let mut direct = self.direct();
        direct.open = direct.rest.is_none()
            && self.sender.is_empty()
            && !self.closed.load(Ordering::SeqCst)
            && direct.socket.is_some();
        direct.open
    }

    /// Takes the socket back for good: the connection is ending.
    pub(crate) fn reclaim(&self) {
        self.lent.store(false, Ordering::Release);
        let mut direct = self.direct();
        direct.open = false;
        direct.socket = None;
    }

    fn direct(&self) -> MutexGuard<'_, Direct> {
        lock(&self.direct)
    }

    /// Bytes handed over and not yet taken by the socket.
    pub(crate) fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Lets the listener go, as if its backlog had passed the overflow mark: its thread
    /// closes it with 1008 and drops what it had not started sending.
    pub(crate) fn let_go(&self) {
        self.overflowed.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Asks the connection's thread to start the close handshake. Nothing pushed after it
    /// reaches the client: the lent socket is shut, and the thread drops what follows a Close.
    pub(crate) fn close(&self, code: CloseCode, reason: &'static str) -> Result<(), Gone> {
        let _held = self.lent.load(Ordering::Acquire).then(|| {
            let mut direct = self.direct();
            direct.open = false;
            direct
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
        let before = self.backlog.fetch_add(len, Ordering::SeqCst);
        if before <= self.flow.high && before + len > self.flow.high {
            self.reassess();
        }
        // Let go only with half the mark queued already: a listener that is keeping up is
        // never let go for one message larger than the mark. What it is catching up on does
        // not count.
        let counted = before.saturating_sub(self.catching_up.load(Ordering::SeqCst));
        if let Some(overflow) = self.flow.common.policy.overflow
            && counted + len > overflow
            && counted > overflow / 2
        {
            self.overflowed.store(true, Ordering::SeqCst);
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
        self.catching_up.fetch_add(bytes, Ordering::SeqCst);
        self.push(&Batch::queued(frames))
    }

    /// Records that `len` bytes left the backlog.
    fn taken(&self, len: usize) {
        // The socket takes the backlog in order: the catch-up goes first. Almost every
        // connection has none, and pays one load for it, not a compare-and-swap per write.
        if self.catching_up.load(Ordering::SeqCst) > 0 {
            let _ = self
                .catching_up
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    Some(left.saturating_sub(len))
                });
        }
        let before = self.backlog.fetch_sub(len, Ordering::SeqCst);
        if before > self.flow.low && before - len <= self.flow.low {
            self.reassess();
        }
    }

    /// Sets or clears "behind" from the backlog as it is now; called after a mark was crossed.
    fn reassess(&self) {
        let mut since = self.behind_since();
        let backlog = self.backlog.load(Ordering::SeqCst);
        let closed = self.closed.load(Ordering::SeqCst);
        match *since {
            None if backlog > self.flow.high && !closed => {
                *since = Some(Instant::now());
                self.behind.store(true, Ordering::SeqCst);
                self.flow.fell_behind();
            }
            Some(_) if backlog <= self.flow.low || closed => {
                *since = None;
                self.behind.store(false, Ordering::SeqCst);
                self.flow.caught_up();
            }
            _ => {}
        }
    }

    fn behind_since(&self) -> MutexGuard<'_, Option<Instant>> {
        lock(&self.behind_since)
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
        self.outbox.overflowed.load(Ordering::SeqCst)
    }

    /// Bytes handed over and not yet taken by the socket.
    pub(crate) fn backlog(&self) -> usize {
        self.outbox.backlog()
    }

    /// Since when this connection has been behind, if it is.
    pub(crate) fn behind_since(&self) -> Option<Instant> {
        if !self.outbox.behind.load(Ordering::SeqCst) {
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

/// Connections waiting for another thread to free something (room in the hub, or memory).
///
/// The protocol that loses no wake-up: a waiter first [adds](WaitList::add) itself, then
/// looks again at what it waits for, and sleeps only if it is still missing. A freer first
/// frees, then calls [`WaitList::wake_all`]. Both steps are sequentially consistent, so either
/// the waiter's second look sees the room, or the freer sees the waiter in the list.
#[derive(Debug, Default)]
pub(crate) struct WaitList {
    waiting: Mutex<Vec<Arc<Outbox>>>,
    len: AtomicUsize,
    /// Bumped by every [`WaitList::wake_all`]; a waiter that added itself in an earlier
    /// generation has been taken off the list and must add itself again.
    generation: AtomicU64,
}

impl WaitList {
    /// Adds a waiter; returns the generation it was added in.
    pub(crate) fn add(&self, outbox: &Arc<Outbox>) -> u64 {
        let mut waiting = self.lock();
        waiting.push(Arc::clone(outbox));
        self.len.store(waiting.len(), Ordering::SeqCst);
        self.generation.load(Ordering::SeqCst)
    }

    /// Joins this list while `blocked()` holds, and reports whether it still does: the waiter's
    /// side of the protocol above (join, then look again). `listed` remembers the generation
    /// joined, so that a waiter joins once per generation, not once per look.
    pub(crate) fn join_while(
        &self,
        outbox: &Arc<Outbox>,
        listed: &mut Option<u64>,
        blocked: impl Fn() -> bool,
    ) -> bool {
        if !blocked() {
            return false;
        }
        if !listed.is_some_and(|generation| self.still_listed(generation)) {
            *listed = Some(self.add(outbox));
        }
        blocked()
    }

    /// Whether a waiter added in `generation` is still on the list.
    pub(crate) fn still_listed(&self, generation: u64) -> bool {
        self.generation.load(Ordering::SeqCst) == generation
    }

    /// Wakes and removes every waiter. Cheap when nobody waits: one atomic load.
    pub(crate) fn wake_all(&self) {
        if self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let woken = {
            let mut waiting = self.lock();
            self.len.store(0, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst);
            std::mem::take(&mut *waiting)
        };
        for outbox in woken {
            outbox.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Outbox>>> {
        lock(&self.waiting)
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
            .push(&Batch::alone(&[Bytes::from_static(b"one")]))
            .unwrap();
        outbox
            .push(&Batch::alone(&[Bytes::from_static(b"two")]))
            .unwrap();
        let got: Vec<_> = inbox.drain().collect();
        assert!(matches!(&got[..], [Delivery::Frame(a), Delivery::Frame(b)]
            if &a[..] == b"one" && &b[..] == b"two"));
    }

    #[test]
    fn a_listener_is_behind_past_the_high_mark_until_it_is_down_to_the_low_mark() {
        let flow = Arc::new(Flow::new(100, Arc::default()));
        let (outbox, inbox) = mailbox(&flow, Waker::try_new().unwrap());
        outbox.push(&Batch::alone(&[frame(60)])).unwrap();
        outbox.push(&Batch::alone(&[frame(60)])).unwrap(); // 120 > 100: behind; never refused
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
        listener.push(&Batch::alone(&[frame(20)])).unwrap();
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
        outbox.push(&Batch::alone(&[frame(20)])).unwrap();
        assert!(flow.congested());
        drop(inbox);
        assert!(!flow.congested());
        assert_eq!(outbox.push(&Batch::alone(&[frame(1)])), Err(Gone));
        assert_eq!(outbox.close(CloseCode::Normal, ""), Err(Gone));
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
            outbox.push(&Batch::alone(&[frame(3)])),
            Ok(()),
            "not before it is released"
        );
        assert!(!outbox.release_writes(), "not while a delivery waits");
        assert_eq!(inbox.drain().count(), 1);
        assert!(outbox.release_writes());

        assert_eq!(outbox.push(&Batch::alone(&[frame(5), frame(7)])), Ok(()));
        let mut got = [1; 12];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(got, [0; 12]);
        assert_eq!(inbox.drain().count(), 0, "nothing went through the mailbox");

        assert_eq!(outbox.hold_writes(), None);
        assert_eq!(
            outbox.push(&Batch::alone(&[frame(1)])),
            Ok(()),
            "held: queued"
        );
        assert_eq!(inbox.drain().count(), 1);
        assert!(outbox.release_writes());
        outbox.reclaim();
        assert_eq!(
            outbox.push(&Batch::alone(&[frame(1)])),
            Ok(()),
            "taken back: queued"
        );
        assert_eq!(inbox.drain().count(), 1);
        assert!(!outbox.release_writes());
    }
}
