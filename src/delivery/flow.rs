//! Broadcast flow control: what happens to a listener that falls behind, and to the senders
//! of its room; and which broadcasts may be written straight into a listener's socket.
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
//!
//! The outbox (`outbox.rs`) does the counting and tells its room's [`Flow`] when a listener
//! falls behind or catches up; this module keeps the count and the senders waiting on it.
//!
//! Invariant: any thread may read a flow. A room's count of listeners behind changes only
//! when one of its outboxes crosses a mark, under that outbox's lock, so it always equals the
//! number of its listeners behind; the publish-queue flag is set only by the cluster's
//! publisher, under its own lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::delivery::wait_list::WaitList;

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
    /// Frames that come alone, with nothing else on its way to their connections (a
    /// greeting): a few of them go straight into a lent, idle socket.
    pub(crate) fn may_go_straight_in(frames: &'a [Bytes]) -> Batch<'a> {
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

    /// Whether an idle lent socket may take them straight in.
    pub(super) fn straight_in(&self) -> bool {
        self.straight_in
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

    /// The high mark: a backlog above it puts its listener behind.
    pub(super) fn high_mark(&self) -> usize {
        self.high
    }

    /// The low mark: a listener behind is back once its backlog is at or below it.
    pub(super) fn low_mark(&self) -> usize {
        self.low
    }

    /// The overflow mark: a listener whose backlog passes it is let go at once, if there is
    /// one.
    pub(super) fn overflow_mark(&self) -> Option<usize> {
        self.common.policy.overflow
    }

    /// One listener of the room fell behind; called by its outbox as it crosses the high mark.
    pub(super) fn fell_behind(&self) {
        if self.common.policy.pace_senders {
            self.behind.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One listener of the room caught up; the last one wakes the waiting senders.
    pub(super) fn caught_up(&self) {
        if self.common.policy.pace_senders && self.behind.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.senders.wake_all();
        }
    }
}
