//! Newcomers: how a connection joining a room gets the room's history before anything else,
//! and then every live broadcast, none missing and none twice (see the hub's docs on the seam).
//!
//! A newcomer may also wait for a history that comes from elsewhere (a cluster's Redis, see
//! `cluster/`): it is then *pending*, hears nothing, and needs two things, the history read for
//! it and its *mark*, the point in the stream of broadcasts where that history was read. Every
//! broadcast after the mark is kept for it; once it has both, it gets the history and those,
//! and joins the members, all under the room's lock. A resuming newcomer whose position is
//! ahead of all this instance heard is held a moment longer ([`HOLD_AHEAD`]).
//!
//! Invariant: a newcomer is pending or a member, never both, and becomes a member only under
//! its room's lock, in the same critical section that pushes its history into its outbox. Any
//! thread may admit it: the joining connection's own, or a cluster thread that brought its
//! history or its mark.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ConnectionId, Hub, RoomState};
use crate::delivery::outbox::Outbox;
use crate::delivery::resume::{Epoch, Resume, Start};

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
pub(super) struct Pending {
    pub(super) outbox: Arc<Outbox>,
    /// Where it asked to resume, if it did.
    pub(super) resume: Option<Resume>,
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
const HOLD_AHEAD: Duration = Duration::from_secs(1);

/// A connection on its way into a room.
pub(super) struct Joiner {
    pub(super) id: ConnectionId,
    pub(super) outbox: Arc<Outbox>,
    pub(super) resume: Option<Resume>,
}

impl Pending {
    /// A newcomer that waits for its history and its mark.
    pub(super) fn new(outbox: Arc<Outbox>, resume: Option<Resume>) -> Pending {
        Pending {
            outbox,
            resume,
            history: None,
            marked: false,
            after_mark: Vec::new(),
            held_until: None,
        }
    }
}

impl RoomState {
    /// Keeps `frames`, the room's next broadcasts, for every pending newcomer past its mark.
    /// Returns those whose resume position is held, to admit once the frames are pushed.
    pub(super) fn keep_after_marks(&mut self, frames: &[Bytes]) -> Vec<ConnectionId> {
        let mut held = Vec::new();
        for (id, pending) in self.pending.iter_mut().filter(|(_, p)| p.marked) {
            pending.after_mark.extend(frames.iter().cloned());
            if pending.held_until.is_some() {
                held.push(*id);
            }
        }
        held
    }
}

impl Hub {
    /// Makes a joiner a member, giving it `history` first (the broadcasts up to `newest` of
    /// `epoch`, oldest first); a resuming one gets the header and what follows its position.
    pub(super) fn admit(
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
    pub(super) fn admit_pending(&self, state: &mut RoomState, joiner: ConnectionId, time_up: bool) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::hub::tests::{frames, hub_keeping, waker};

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
