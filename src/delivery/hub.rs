//! The open connections, by room: broadcasts, history for newcomers, shutdown, and the counts
//! `/healthz` reports.
//!
//! Like the hub of gorilla/websocket's chat example, but without a goroutine of its own: a
//! broadcast is fanned out by the thread that received the message, under its room's lock, so
//! every client of a room sees every broadcast of that room in the one order the server
//! received them. Each listener's outbox takes the shared frames without ever waiting for a
//! slow client (see `outbox.rs`, which also decides whether they go straight into a
//! listener's socket); when a listener falls behind, its room's [`Flow`] makes that room's
//! senders stop reading instead (`flow.rs`). Rooms never wait for each other.
//!
//! The URL path names the room (`connection/`); in echo mode, or with `--single-room`, every
//! connection is in the lobby, the room whose name is empty.
//!
//! # History
//!
//! With `--history N` a room keeps its last N broadcasts, and a newcomer gets them before
//! anything else. The seam between history and the live stream is the room's lock: a
//! broadcast appends to the history and pushes to the members under it, and a newcomer is
//! handed the history and added to the members under it too. So each broadcast is either in
//! the history the newcomer gets, or pushed to it live, never both and never neither. The
//! history's frames are the broadcast frames themselves, held by the memory budget, so they
//! count against `--max-memory`. A room whose last broadcast is older than `--history-ttl`
//! forgets its history, and a room with no member and no history is gone.
//!
//! How a newcomer is admitted, and how it may wait for a history from elsewhere, is in
//! `newcomers.rs`; how each room numbers its broadcasts for clients that resume, in
//! `numbering.rs`.
//!
//! The hub knows nothing of clusters: with `--redis`, `cluster/` sits in front of it and
//! fans out here what comes back from Redis, in Redis's order and with Redis's numbering.
//!
//! Invariant: any thread may join, leave or broadcast; a room's members, pending newcomers,
//! history and numbering change only under that room's lock, and a thread that takes both
//! locks takes the map of rooms first, never while it holds a room's.

mod newcomers;
mod numbering;
mod rooms;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::delivery::flow::{Batch, CommonFlow, Flow, Policy};
use crate::delivery::outbox::{Inbox, Outbox, mailbox};
use crate::delivery::resume::{Epoch, Resume};
use crate::delivery::sweep;
use crate::metrics::Metrics;
use crate::sync;
use crate::sys::Waker;
#[cfg_attr(not(feature = "cluster"), allow(unused_imports))]
pub(crate) use newcomers::ReadHistory;
use newcomers::{Joiner, Pending};

/// Identifies a connection for as long as the server runs.
pub(crate) type ConnectionId = u64;

/// A room's name: the URL path, percent-decoded, without its leading `/`; empty for the lobby.
pub(crate) type RoomName = Arc<str>;

/// How much history a room keeps for newcomers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistorySettings {
    /// Broadcasts kept per room; 0: none.
    pub(crate) len: usize,
    /// A room's history is forgotten once its last broadcast is this old.
    pub(crate) ttl: Duration,
}

#[derive(Debug)]
pub(crate) struct Hub {
    rooms: Mutex<HashMap<RoomName, Arc<Room>>>,
    /// Signalled whenever a member leaves, for [`Hub::wait_until_empty`].
    left: Condvar,
    next_id: AtomicU64,
    /// WebSocket connections accepted, over the server's life.
    accepted: AtomicU64,
    started: Instant,
    /// Where the broadcast copies are counted.
    metrics: Arc<Metrics>,
    /// Each new room's flow control starts from these.
    max_backlog: usize,
    common: Arc<CommonFlow>,
    history: HistorySettings,
}

/// One room: its members, its flow control, its history.
#[derive(Debug)]
pub(crate) struct Room {
    name: RoomName,
    flow: Arc<Flow>,
    state: Mutex<RoomState>,
}

#[derive(Debug)]
struct RoomState {
    members: HashMap<ConnectionId, Arc<Outbox>>,
    /// The members that joined with `?resume`: they count offsets.
    resuming: HashSet<ConnectionId>,
    /// Newcomers waiting for a history from elsewhere.
    pending: HashMap<ConnectionId, Pending>,
    /// The last broadcasts, oldest first, at most `HistorySettings::len`; the newest is
    /// `newest`.
    history: VecDeque<Bytes>,
    /// When the last broadcast came.
    last_broadcast: Option<Instant>,
    /// The epoch of the room's offsets.
    epoch: Epoch,
    /// The offset of the newest broadcast; 0: none yet in this epoch.
    newest: u64,
    /// Set when the room is taken out of the hub's map (its last member left, or its
    /// history expired): a broadcast that found it just before must look again, since a
    /// newcomer may have made the room anew.
    gone: bool,
}

/// At the memory ceiling, a listener is let go only if this much is queued for it: less
/// would free too little to let a sender on, and every listener keeps up to a message or two
/// queued in the ordinary course of a busy room.
const LET_GO_AT_CEILING: usize = 64 * 1024;

/// A connection's place in its room; leaving is dropping it, even when its thread panics.
#[derive(Debug)]
pub(crate) struct Membership {
    hub: Arc<Hub>,
    room: Arc<Room>,
    id: ConnectionId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.room, self.id);
    }
}

impl Hub {
    /// An empty hub whose listeners are behind past `max_backlog` queued bytes, and then let go
    /// or waited for as `policy` says, counting what it delivers in `metrics`.
    pub(crate) fn new(
        max_backlog: usize,
        history: HistorySettings,
        policy: Policy,
        metrics: Arc<Metrics>,
    ) -> Hub {
        Hub {
            rooms: Mutex::new(HashMap::new()),
            left: Condvar::new(),
            next_id: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
            max_backlog,
            common: Arc::new(CommonFlow::new(policy)),
            history,
        }
    }

    /// What the flow control of every room shares (the cluster's publish queue, listeners
    /// behind anywhere).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn common_flow(&self) -> &CommonFlow {
        &self.common
    }

    /// Adds a connection to `room` (made if it does not exist): its mailbox, under the room's
    /// flow control and waking `waker`, first takes the room's history: this hub's own, or,
    /// if `history_from_elsewhere`, the one handed to [`Hub::history_read`] for it (it is
    /// pending until then). With `resume`, the history starts at its position, after a
    /// header that names it.
    pub(crate) fn join(
        self: &Arc<Hub>,
        room: &str,
        waker: Waker,
        history_from_elsewhere: bool,
        resume: Option<Resume>,
    ) -> (Membership, Arc<Outbox>, Inbox) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut rooms = self.rooms();
        let room = self.room_in(&mut rooms, room);
        let (outbox, inbox) = mailbox(&room.flow, waker);
        {
            let mut state = room.state();
            state.forget_stale_history(self.history.ttl);
            if history_from_elsewhere && self.history.len > 0 {
                let pending = Pending::new(Arc::clone(&outbox), resume);
                state.pending.insert(id, pending);
            } else {
                let history: Vec<Bytes> = state.history.iter().cloned().collect();
                let (epoch, newest) = (state.epoch.clone(), state.newest);
                let joiner = Joiner {
                    id,
                    outbox: Arc::clone(&outbox),
                    resume,
                };
                self.admit(&mut state, joiner, &history, &epoch, newest);
            }
        }
        drop(rooms);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let membership = Membership {
            hub: Arc::clone(self),
            room,
            id,
        };
        (membership, outbox, inbox)
    }

    fn leave(&self, room: &Arc<Room>, id: ConnectionId) {
        let mut rooms = self.rooms();
        let gone = {
            let mut state = room.state();
            state.members.remove(&id);
            state.resuming.remove(&id);
            state.pending.remove(&id);
            state.forget_stale_history(self.history.ttl);
            state.gone = state.is_empty();
            state.gone
        };
        if gone {
            rooms.remove(&room.name);
        }
        drop(rooms);
        self.left.notify_all();
    }

    /// Hands encoded frames, in order, to every connection of the room named `room`, and
    /// keeps them in its history, numbered on from its newest. A room that does not exist
    /// here (a cluster's broadcast for a room with no client on this instance) is made when it
    /// keeps history. Returns how many connections took them.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn broadcast(&self, room: &str, frames: &[Bytes]) -> usize {
        self.in_current_room(room, |room, state| {
            let batch = room.flow.batch(frames);
            self.fan_out(state, &batch)
        })
    }

    /// Hands encoded frames, in order, to every connection of `room`, and keeps them in its
    /// history; counts each copy handed over. Returns how many connections took them.
    pub(crate) fn broadcast_in(&self, room: &Room, frames: &[Bytes]) -> usize {
        let batch = room.flow.batch(frames);
        let mut state = room.state();
        self.fan_out(&mut state, &batch)
    }

    /// The next broadcasts of a room, under its lock: numbered, kept, and pushed to every
    /// member and to the pending newcomers past their mark.
    fn fan_out(&self, state: &mut RoomState, batch: &Batch<'_>) -> usize {
        let frames = batch.frames();
        state.newest += frames.len() as u64;
        if self.history.len > 0 {
            state.remember(frames, self.history.len);
        }
        let held = state.keep_after_marks(frames);
        // Over the cores, for a wide room (sweep.rs).
        let reached = sweep::push_to_all(state.members.values(), batch) as u64;
        // Only now: one admitted gets these in its history, not from the push above too.
        for id in held {
            self.admit_pending(state, id, false);
        }
        if reached > 0 {
            self.metrics
                .sent(reached * frames.len() as u64, reached * batch.len() as u64);
        }
        reached as usize
    }

    /// Lets go of the listener furthest behind, in any room, if it holds at least
    /// [`LET_GO_AT_CEILING`] bytes: the server's memory is full, and under
    /// `--slow-listener close` a listener that fell behind goes before any sender waits.
    /// Returns whether one was.
    pub(crate) fn let_go_furthest_behind(&self) -> bool {
        let furthest = self
            .all_rooms()
            .iter()
            .filter_map(|room| {
                let state = room.state();
                state
                    .members
                    .values()
                    .max_by_key(|outbox| outbox.backlog())
                    .map(Arc::clone)
            })
            .max_by_key(|outbox| outbox.backlog());
        match furthest {
            Some(outbox) if outbox.backlog() >= LET_GO_AT_CEILING => {
                outbox.let_go();
                true
            }
            _ => false,
        }
    }

    /// Asks every open connection to close with this code and reason. Returns how many.
    pub(crate) fn close_all(&self, code: CloseCode, reason: &'static str) -> usize {
        self.all_rooms()
            .iter()
            .map(|room| {
                let state = room.state();
                let pending = state.pending.values().map(|pending| &pending.outbox);
                state
                    .members
                    .values()
                    .chain(pending)
                    .filter(|outbox| outbox.close(code, reason).is_ok())
                    .count()
            })
            .sum()
    }

    /// Waits until every connection has left, or `timeout` passes. True if all left.
    pub(crate) fn wait_until_empty(&self, timeout: Duration) -> bool {
        let rooms = self.rooms();
        let rooms = sync::wait_while(&self.left, rooms, timeout, |rooms| {
            rooms.values().any(|room| room.state().connections() > 0)
        });
        !rooms.values().any(|room| room.state().connections() > 0)
    }

    /// WebSocket connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.rooms()
            .values()
            .map(|room| room.state().connections())
            .sum()
    }

    /// Rooms that exist now: with a client, or with history not yet expired. Rooms whose
    /// history expired, with no client, are freed here.
    pub(crate) fn rooms_open(&self) -> usize {
        let ttl = self.history.ttl;
        let mut rooms = self.rooms();
        rooms.retain(|_, room| {
            let mut state = room.state();
            state.forget_stale_history(ttl);
            state.gone = state.is_empty();
            !state.gone
        });
        rooms.len()
    }

    /// WebSocket connections accepted since start.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Time since start.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<RoomName, Arc<Room>>> {
        sync::lock(&self.rooms)
    }

    /// Every room as of now, to visit without holding the map.
    fn all_rooms(&self) -> Vec<Arc<Room>> {
        self.rooms().values().cloned().collect()
    }
}

impl Room {
    /// The room's name.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn name(&self) -> &RoomName {
        &self.name
    }

    /// The room's flow control.
    pub(crate) fn flow(&self) -> &Arc<Flow> {
        &self.flow
    }

    fn state(&self) -> MutexGuard<'_, RoomState> {
        sync::lock(&self.state)
    }
}

impl Membership {
    /// The connection's id.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn id(&self) -> ConnectionId {
        self.id
    }

    /// The room the connection is in.
    pub(crate) fn room(&self) -> &Arc<Room> {
        &self.room
    }
}

impl RoomState {
    /// A new room: nothing kept, and an epoch of its own.
    fn new() -> RoomState {
        RoomState {
            members: HashMap::new(),
            resuming: HashSet::new(),
            pending: HashMap::new(),
            history: VecDeque::new(),
            last_broadcast: None,
            epoch: Epoch::fresh(),
            newest: 0,
            gone: false,
        }
    }

    /// Connections in the room, pending newcomers included.
    fn connections(&self) -> usize {
        self.members.len() + self.pending.len()
    }

    /// Whether the room has neither a connection nor history: it is gone.
    fn is_empty(&self) -> bool {
        self.connections() == 0 && self.history.is_empty()
    }

    /// Appends broadcasts to the history, keeping the last `len`.
    fn remember(&mut self, frames: &[Bytes], len: usize) {
        for frame in frames {
            if self.history.len() == len {
                self.history.pop_front();
            }
            self.history.push_back(frame.clone());
        }
        self.last_broadcast = Some(Instant::now());
    }

    /// Forgets the history once the last broadcast is `ttl` old. The numbering stays: a
    /// client that comes back at the newest offset has missed nothing.
    fn forget_stale_history(&mut self, ttl: Duration) {
        if self.last_broadcast.is_some_and(|at| at.elapsed() >= ttl) {
            self.history = VecDeque::new();
            self.last_broadcast = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::outbox::Delivery;

    const NO_HISTORY: HistorySettings = HistorySettings {
        len: 0,
        ttl: Duration::from_secs(60),
    };

    pub(super) fn waker() -> Waker {
        Waker::try_new().unwrap()
    }

    /// A hub whose rooms keep their last `len` broadcasts for `ttl`.
    pub(super) fn hub_keeping(len: usize, ttl: Duration) -> Arc<Hub> {
        let history = HistorySettings { len, ttl };
        Arc::new(Hub::new(
            1 << 20,
            history,
            Policy::default(),
            Arc::default(),
        ))
    }

    pub(super) fn frames(inbox: &Inbox) -> Vec<Bytes> {
        inbox
            .drain()
            .filter_map(|delivery| match delivery {
                Delivery::Frame(frame) => Some(frame),
                Delivery::Close(..) => None,
            })
            .collect()
    }

    #[test]
    fn broadcast_reaches_every_member_of_its_room_until_it_leaves() {
        let hub = Arc::new(Hub::new(
            1 << 20,
            NO_HISTORY,
            Policy::default(),
            Arc::default(),
        ));
        let (member_a, _, a_in) = hub.join("", waker(), false, None);
        let (_member_b, _, b_in) = hub.join("", waker(), false, None);
        let (_member_c, _, c_in) = hub.join("chat", waker(), false, None);
        assert_eq!(hub.rooms_open(), 2);
        assert_eq!(hub.broadcast("", &[Bytes::from_static(b"one")]), 2);
        drop(member_a);
        assert_eq!(hub.broadcast("", &[Bytes::from_static(b"two")]), 1);
        assert_eq!(frames(&a_in), [&b"one"[..]]);
        assert_eq!(frames(&b_in), [&b"one"[..], &b"two"[..]]);
        assert!(frames(&c_in).is_empty(), "another room hears nothing");
        assert_eq!(hub.open_connections(), 2);
        assert!(!hub.wait_until_empty(Duration::from_millis(1)));
    }

    #[test]
    fn a_broadcast_that_found_a_room_just_before_it_was_made_anew_reaches_the_new_one() {
        let hub = hub_keeping(5, Duration::from_secs(60));
        let (first, _, _) = hub.join("r", waker(), false, None);
        // A cluster's broadcast finds the room...
        let found = hub.room_for("r").unwrap();
        // ...and before it takes the room's lock, the last member leaves and a newcomer
        // makes the room anew.
        drop(first);
        let (_newcomer, _, inbox) = hub.join("r", waker(), false, None);
        let reached = hub.in_current_room_after(found, "r", |room, state| {
            let frames = [Bytes::from_static(b"late")];
            hub.fan_out(state, &room.flow.batch(&frames))
        });
        assert_eq!(reached, 1, "the newcomer's room got it");
        assert_eq!(frames(&inbox), [&b"late"[..]]);
        let (_later, _, later_inbox) = hub.join("r", waker(), false, None);
        assert_eq!(
            frames(&later_inbox),
            [&b"late"[..]],
            "and keeps it in its history"
        );
    }

    #[test]
    fn a_room_is_gone_with_its_last_member_when_it_keeps_no_history() {
        let hub = Arc::new(Hub::new(
            1 << 20,
            NO_HISTORY,
            Policy::default(),
            Arc::default(),
        ));
        let (member, _, _inbox) = hub.join("a/b", waker(), false, None);
        assert_eq!(hub.rooms_open(), 1);
        drop(member);
        assert_eq!(hub.rooms_open(), 0);
        assert_eq!(hub.broadcast("a/b", &[Bytes::from_static(b"x")]), 0);
        assert_eq!(hub.rooms_open(), 0, "not made again by a broadcast");
    }

    #[test]
    fn a_newcomer_gets_the_last_n_broadcasts_first_and_then_the_live_ones() {
        let hub = hub_keeping(2, Duration::from_secs(60));
        for text in ["1", "2", "3"] {
            hub.broadcast("r", &[Bytes::from(text)]);
        }
        assert_eq!(hub.rooms_open(), 1, "a room with history exists");
        let (_member, _, inbox) = hub.join("r", waker(), false, None);
        hub.broadcast("r", &[Bytes::from_static(b"4")]);
        assert_eq!(frames(&inbox), [&b"2"[..], &b"3"[..], &b"4"[..]]);
        let (_other, _, other_inbox) = hub.join("s", waker(), false, None);
        assert!(frames(&other_inbox).is_empty(), "history is per room");
    }

    #[test]
    fn history_expires_and_its_room_goes() {
        let hub = hub_keeping(5, Duration::ZERO);
        hub.broadcast("r", &[Bytes::from_static(b"old")]);
        assert_eq!(hub.rooms_open(), 0);
        let (_member, _, inbox) = hub.join("r", waker(), false, None);
        assert!(frames(&inbox).is_empty());
    }
}
