//! The open connections, by room: broadcasts, history for newcomers, shutdown, and the counts
//! `/healthz` reports.
//!
//! Like the hub of gorilla/websocket's chat example, but without a goroutine of its own: a
//! broadcast is fanned out by the thread that received the message, under its room's lock, so
//! every client of a room sees every broadcast of that room in the one order the server
//! received them. Each listener's outbox takes the shared frames without ever waiting for a
//! slow client (see `outbox.rs`, which also decides whether they go straight into a
//! listener's socket); when a listener falls behind, its room's [`Flow`] makes that room's
//! senders stop reading instead. Rooms never wait for each other.
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
//! A newcomer may also wait for a history that comes from elsewhere (a cluster's Redis, see
//! `cluster/`): it is then *pending*, hears nothing, and needs two things, the history read for
//! it and its *mark*, the point in the stream of broadcasts where that history was read. Every
//! broadcast after the mark is kept for it; once it has both, it gets the history and those,
//! and joins the members, all under the room's lock.
//!
//! # Offsets, and resuming
//!
//! Each room numbers its broadcasts (`resume.rs`): an epoch, and the offset of its newest
//! broadcast, both changed under the room's lock with the history and the fan-out. A client
//! that joins with `?resume` gets a header naming the epoch and offset first, then the kept
//! messages after its position, then the live ones: the same seam as for the history, so none
//! is missing and none comes twice. When the room's numbering starts again while such clients
//! are connected (a cluster's link to Redis goes down or comes back, or its instance missed
//! messages), they are closed with 1012 so that they come back and learn the new epoch.
//!
//! The hub knows nothing of clusters: with `--redis`, `cluster/` sits in front of it and
//! fans out here what comes back from Redis, in Redis's order and with Redis's numbering.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::delivery::flow::{Batch, CommonFlow, Flow, Policy};
use crate::delivery::outbox::{Inbox, Outbox, mailbox};
use crate::delivery::resume::{Epoch, Resume, Start};
use crate::metrics::Metrics;
use crate::sync;
use crate::sys::Waker;

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

/// The last broadcasts of a room as read elsewhere (a cluster's Redis), with their numbering.
#[derive(Debug)]
pub(crate) struct ReadHistory {
    pub(crate) epoch: Epoch,
    /// The offset of the newest of `frames` (or of the newest broadcast, if none is kept).
    pub(crate) newest: u64,
    /// Oldest first.
    pub(crate) frames: Vec<Bytes>,
}

/// A newcomer whose history comes from elsewhere; see the module's docs.
#[derive(Debug)]
struct Pending {
    outbox: Arc<Outbox>,
    /// Where it asked to resume, if it did.
    resume: Option<Resume>,
    /// The history read for it, once it came.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    history: Option<ReadHistory>,
    /// Set once its mark came: every broadcast since is after its history, kept here.
    marked: bool,
    after_mark: Vec<Bytes>,
    /// A resume position ahead of everything heard: it waits for the broadcasts it names
    /// until then (see [`HOLD_AHEAD`]).
    held_until: Option<Instant>,
}

/// How long a resume position ahead of the newest broadcast a cluster instance has heard of
/// is held, in case it names broadcasts another instance sent that have not reached this one
/// yet. Redis relays a message to every subscriber within milliseconds; a second covers a
/// busy instance, and it is checked at least once a second (the subscriber's tick).
pub(crate) const HOLD_AHEAD: Duration = Duration::from_secs(1);

/// At the memory ceiling, a listener is let go only if this much is queued for it: less
/// would free too little to let a sender on, and every listener keeps up to a message or two
/// queued in the ordinary course of a busy room.
const LET_GO_AT_CEILING: usize = 64 * 1024;

/// The close reason of a resuming client whose room's numbering started again.
const RENUMBERED: &str = "the room's epoch changed: reconnect with ?resume to learn the new one";

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
                let pending = Pending {
                    outbox: Arc::clone(&outbox),
                    resume,
                    history: None,
                    marked: false,
                    after_mark: Vec::new(),
                    held_until: None,
                };
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

    /// Makes a joiner a member, giving it `history` first (the broadcasts up to `newest` of
    /// `epoch`, oldest first); a resuming one gets the header and what follows its position.
    fn admit(
        &self,
        state: &mut RoomState,
        joiner: Joiner,
        history: &[Bytes],
        epoch: &Epoch,
        newest: u64,
    ) {
        let Joiner { id, outbox, resume } = joiner;
        let mut frames = Vec::new();
        let history = match &resume {
            Some(resume) => {
                let start = Start::of(resume, epoch, newest, history.len());
                frames.push(Bytes::from(start.header(epoch)));
                state.resuming.insert(id);
                &history[start.skip..]
            }
            None => history,
        };
        if !history.is_empty() {
            let bytes: usize = history.iter().map(Bytes::len).sum();
            self.metrics.sent(history.len() as u64, bytes as u64);
        }
        frames.extend_from_slice(history);
        if !frames.is_empty() {
            // Queued, never straight in: the connection's thread has not started, and the
            // history must come before anything else.
            let _ = outbox.push_catch_up(&frames);
        }
        state.members.insert(id, outbox);
    }

    /// The history read elsewhere for the pending newcomer `joiner` of `room`: the last
    /// broadcasts before its mark, oldest first, with their numbering.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn history_read(&self, room: &str, joiner: ConnectionId, history: ReadHistory) {
        self.with_pending(room, joiner, |pending| pending.history = Some(history));
    }

    /// The mark of the pending newcomer `joiner` of `room` came: what is broadcast from now on
    /// is after its history.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn history_marked(&self, room: &str, joiner: ConnectionId) {
        self.with_pending(room, joiner, |pending| pending.marked = true);
    }

    /// Every pending newcomer gets this hub's own history instead, now (the history from
    /// elsewhere will not come). Returns how many there were.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn history_from_here(&self) -> usize {
        let mut count = 0;
        for room in self.all_rooms() {
            let mut state = room.state();
            let pending: Vec<(ConnectionId, Pending)> = state.pending.drain().collect();
            let history: Vec<Bytes> = state.history.iter().cloned().collect();
            let (epoch, newest) = (state.epoch.clone(), state.newest);
            count += pending.len();
            for (id, pending) in pending {
                let joiner = Joiner {
                    id,
                    outbox: pending.outbox,
                    resume: pending.resume,
                };
                self.admit(&mut state, joiner, &history, &epoch, newest);
            }
        }
        count
    }

    /// Admits the pending newcomers whose resume position was held (see [`HOLD_AHEAD`]) and
    /// whose time is up: their position is still ahead, and they continue live.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn release_held(&self, now: Instant) {
        for room in self.all_rooms() {
            let mut state = room.state();
            let due: Vec<ConnectionId> = state
                .pending
                .iter()
                .filter(|(_, pending)| pending.held_until.is_some_and(|until| now >= until))
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                self.admit_pending(&mut state, id, true);
            }
        }
    }

    /// Updates a pending newcomer, and admits it once it has both its history and its mark.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    fn with_pending(&self, room: &str, joiner: ConnectionId, update: impl FnOnce(&mut Pending)) {
        let Some(room) = self.rooms().get(room).cloned() else {
            return; // it left, and its room with it
        };
        let mut state = room.state();
        let Some(pending) = state.pending.get_mut(&joiner) else {
            return; // it left
        };
        update(pending);
        self.admit_pending(&mut state, joiner, false);
    }

    /// Admits the pending newcomer `joiner` if it has its history and its mark, unless its
    /// resume position is ahead of all it heard and it may still be held (`!time_up`).
    fn admit_pending(&self, state: &mut RoomState, joiner: ConnectionId, time_up: bool) {
        let Some(pending) = state.pending.get_mut(&joiner) else {
            return;
        };
        let Some(read) = pending.history.as_ref().filter(|_| pending.marked) else {
            return;
        };
        // The history read, then everything since its mark: all of that came after it asked
        // to join, numbered on from the read.
        let newest = read.newest + pending.after_mark.len() as u64;
        let epoch = read.epoch.clone();
        if let Some(resume) = &pending.resume
            && !time_up
            && Start::of(resume, &epoch, newest, 0).ahead
        {
            pending
                .held_until
                .get_or_insert_with(|| Instant::now() + HOLD_AHEAD);
            return;
        }
        let pending = state.pending.remove(&joiner).expect("just found");
        let Pending {
            outbox,
            resume,
            history: Some(read),
            after_mark,
            ..
        } = pending
        else {
            unreachable!("checked above");
        };
        // A plain newcomer gets the last N read; a resuming one may recover from all of it.
        let mut history = read.frames;
        if resume.is_none() {
            history.drain(..history.len().saturating_sub(self.history.len));
        }
        history.extend(after_mark);
        // The room's numbering and last N are Redis's as of now. This hub's own may have
        // heard less (it started later, or was cut off): it takes these.
        if state.epoch != epoch || state.newest != newest {
            // The other pending newcomers read the same numbering: they stay.
            self.renumber(state, epoch.clone(), newest, false);
        }
        if !history.is_empty() {
            let newest_n = history.len().saturating_sub(self.history.len);
            state.history = history[newest_n..].iter().cloned().collect();
            state.last_broadcast.get_or_insert_with(Instant::now);
        }
        let joiner = Joiner {
            id: joiner,
            outbox,
            resume,
        };
        self.admit(state, joiner, &history, &epoch, newest);
    }

    /// The room's numbering starts again at `newest` in `epoch`: what it kept was numbered
    /// otherwise and is forgotten, and every resuming member (and, if `pending_too`, every
    /// resuming newcomer still waiting for its history) is closed with 1012 to come back and
    /// learn the new epoch.
    fn renumber(&self, state: &mut RoomState, epoch: Epoch, newest: u64, pending_too: bool) {
        let closed = state.close_resuming(pending_too);
        if closed > 0 {
            log::info!(
                "{} closed with 1012: their room's epoch changed from {} to {epoch}",
                crate::logging::count(closed as u64, "resuming client"),
                state.epoch
            );
        }
        state.epoch = epoch;
        state.newest = newest;
        state.history = VecDeque::new();
    }

    /// Every room starts a numbering of its own (a cluster's link to Redis went down, or came
    /// back): a new epoch, with what it kept numbered from 1 in it; resuming members are closed
    /// with 1012. Resuming newcomers still waiting for their history are not: they are
    /// admitted under the numbering of whatever history they get (Redis's, or this hub's).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn renumber_here(&self) {
        for room in self.all_rooms() {
            let mut state = room.state();
            let kept = std::mem::take(&mut state.history);
            self.renumber(&mut state, Epoch::fresh(), kept.len() as u64, false);
            state.history = kept;
        }
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

    /// Runs `deliver` under the lock of the room named `name` as it is in the map now (made
    /// if it keeps history). A room found and then taken out of the map before its lock was
    /// taken is looked up again, so that nothing is delivered to, or kept in, a room nobody
    /// can join any more. Returns what `deliver` returned, or 0 when there is no such room.
    fn in_current_room(
        &self,
        name: &str,
        deliver: impl Fn(&Room, &mut RoomState) -> usize,
    ) -> usize {
        match self.room_for(name) {
            Some(room) => self.in_current_room_after(room, name, deliver),
            None => 0,
        }
    }

    /// [`Hub::in_current_room`], from `room`, found by its name a moment ago.
    fn in_current_room_after(
        &self,
        mut room: Arc<Room>,
        name: &str,
        deliver: impl Fn(&Room, &mut RoomState) -> usize,
    ) -> usize {
        loop {
            {
                let mut state = room.state();
                if !state.gone {
                    return deliver(&room, &mut state);
                }
            }
            match self.room_for(name) {
                Some(again) => room = again,
                None => return 0,
            }
        }
    }

    /// Hands one frame to every connection of the room named `room` as the broadcast `offset`
    /// of `epoch`: a cluster's numbering, from Redis. If that does not follow on from the
    /// room's newest (the link came back, Redis forgot the room, or this instance missed
    /// messages), the room's numbering starts again there first. Returns how many
    /// connections took it.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn broadcast_numbered(
        &self,
        room: &str,
        epoch: &Epoch,
        offset: u64,
        frame: Bytes,
    ) -> usize {
        let frames = [frame];
        self.in_current_room(room, |room, state| {
            let batch = room.flow.batch(&frames);
            if state.epoch != *epoch || state.newest + 1 != offset {
                self.renumber(state, epoch.clone(), offset.saturating_sub(1), true);
            }
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
        let mut held = Vec::new();
        for (id, pending) in state.pending.iter_mut().filter(|(_, p)| p.marked) {
            pending.after_mark.extend(frames.iter().cloned());
            if pending.held_until.is_some() {
                held.push(*id);
            }
        }
        let reached = state
            .members
            .values()
            .filter(|outbox| outbox.push(batch).is_ok())
            .count() as u64;
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

    /// The room named `room`, if it exists, or made if it keeps history.
    fn room_for(&self, room: &str) -> Option<Arc<Room>> {
        let found = self.rooms().get(room).cloned();
        match found {
            Some(room) => Some(room),
            None if self.history.len > 0 => Some(self.room_for_history(room)),
            None => None,
        }
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

    /// A room made to keep history, with no member yet.
    #[cold]
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    fn room_for_history(&self, room: &str) -> Arc<Room> {
        self.room_in(&mut self.rooms(), room)
    }

    /// The room named `room` in `rooms`, made if it does not exist.
    fn room_in(&self, rooms: &mut HashMap<RoomName, Arc<Room>>, room: &str) -> Arc<Room> {
        if let Some(found) = rooms.get(room) {
            return Arc::clone(found);
        }
        let made = Arc::new(Room {
            name: RoomName::from(room),
            flow: Arc::new(Flow::new(self.max_backlog, Arc::clone(&self.common))),
            state: Mutex::new(RoomState::new()),
        });
        rooms.insert(Arc::clone(&made.name), Arc::clone(&made));
        made
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

/// A connection on its way into a room.
struct Joiner {
    id: ConnectionId,
    outbox: Arc<Outbox>,
    resume: Option<Resume>,
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

    /// Closes every resuming member (and, if `pending_too`, resuming newcomer) with 1012;
    /// returns how many.
    fn close_resuming(&mut self, pending_too: bool) -> usize {
        let mut closed = 0;
        for id in std::mem::take(&mut self.resuming) {
            if let Some(outbox) = self.members.get(&id)
                && outbox.close(CloseCode::Restart, RENUMBERED).is_ok()
            {
                closed += 1;
            }
        }
        for pending in self.pending.values_mut().filter(|_| pending_too) {
            if pending.resume.take().is_some()
                && pending.outbox.close(CloseCode::Restart, RENUMBERED).is_ok()
            {
                closed += 1;
            }
        }
        closed
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

    fn waker() -> Waker {
        Waker::try_new().unwrap()
    }

    /// A hub whose rooms keep their last `len` broadcasts for `ttl`.
    fn hub_keeping(len: usize, ttl: Duration) -> Arc<Hub> {
        let history = HistorySettings { len, ttl };
        Arc::new(Hub::new(
            1 << 20,
            history,
            Policy::default(),
            Arc::default(),
        ))
    }

    fn frames(inbox: &Inbox) -> Vec<Bytes> {
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

    #[test]
    fn a_newcomer_waiting_for_history_from_elsewhere_gets_it_then_what_came_after_its_mark() {
        let hub = hub_keeping(2, Duration::from_secs(60));
        let (member, _, inbox) = hub.join("r", waker(), true, None);
        let id = member.id;
        hub.broadcast("r", &[Bytes::from_static(b"before the mark")]);
        assert!(frames(&inbox).is_empty(), "pending: it hears nothing yet");
        hub.history_marked("r", id);
        hub.broadcast("r", &[Bytes::from_static(b"after the mark")]);
        assert!(frames(&inbox).is_empty(), "still waiting for its history");
        let read = ReadHistory {
            epoch: Epoch::fresh(),
            newest: 3,
            frames: ["0", "1", "before the mark"].map(Bytes::from).to_vec(),
        };
        hub.history_read("r", id, read);
        assert_eq!(
            frames(&inbox),
            [&b"1"[..], &b"before the mark"[..], &b"after the mark"[..]]
        );
        hub.broadcast("r", &[Bytes::from_static(b"live")]);
        assert_eq!(frames(&inbox), [&b"live"[..]]);
    }

    #[test]
    fn pending_newcomers_get_the_local_history_when_the_other_will_not_come() {
        let hub = hub_keeping(5, Duration::from_secs(60));
        hub.broadcast("r", &[Bytes::from_static(b"heard here")]);
        let (_member, _, inbox) = hub.join("r", waker(), true, None);
        assert_eq!(hub.open_connections(), 1);
        assert_eq!(hub.history_from_here(), 1);
        assert_eq!(frames(&inbox), [&b"heard here"[..]]);
    }
}
