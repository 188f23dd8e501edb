//! Numbering: each room's epoch and the offset of its newest broadcast (`resume.rs`), and
//! what happens to resuming clients when a room's numbering starts again.
//!
//! Both change under the room's lock with the history and the fan-out. A client that joins
//! with `?resume` gets a header naming the epoch and offset first, then the kept messages after
//! its position, then the live ones: the same seam as for the history, so none is missing and
//! none comes twice. When the room's numbering starts again while such clients are connected
//! (a cluster's link to Redis goes down or comes back, or its instance missed messages), they
//! are closed with 1012 so that they come back and learn the new epoch.
//!
//! Invariant: a room's epoch and newest offset change only under its lock, together with its
//! history, from whichever thread broadcasts (a client's, or the cluster's subscriber) or
//! renumbers (the cluster's threads, or the admission of a pending newcomer).

use std::collections::VecDeque;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{Hub, RoomState};
use crate::delivery::resume::Epoch;

/// The close reason of a resuming client whose room's numbering started again.
const RENUMBERED: &str = "the room's epoch changed: reconnect with ?resume to learn the new one";

impl Hub {
    /// The room's numbering starts again at `newest` in `epoch`: what it kept was numbered
    /// otherwise and is forgotten, and every resuming member (and, if `pending_too`, every
    /// resuming newcomer still waiting for its history) is closed with 1012 to come back and
    /// learn the new epoch.
    pub(super) fn renumber(
        &self,
        state: &mut RoomState,
        epoch: Epoch,
        newest: u64,
        pending_too: bool,
    ) {
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
}

impl RoomState {
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
}
