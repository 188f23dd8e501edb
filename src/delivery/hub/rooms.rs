//! Finding a room by its name: made when a newcomer joins it, or when a broadcast comes for a
//! room that keeps history, and never one already gone.
//!
//! A room leaves the hub's map when its last member leaves and it keeps no history (or its
//! history expires). A broadcast that found the room just before then must not deliver to it,
//! nor keep anything in it, since a newcomer may already have made the room anew: it takes the
//! room's lock, sees that the room is gone, and looks the name up again.
//!
//! Invariant: a room is marked gone under its own lock, by whichever thread saw it empty (one
//! leaving, or one counting rooms), while that thread holds the map's lock, and it leaves the
//! map before that lock is let go; any thread that finds a room by name checks the mark under
//! the room's lock before it uses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Hub, Room, RoomName, RoomState};
use crate::delivery::flow::Flow;

impl Hub {
    /// Runs `deliver` under the lock of the room named `name` as it is in the map now (made
    /// if it keeps history). A room found and then taken out of the map before its lock was
    /// taken is looked up again, so that nothing is delivered to, or kept in, a room nobody
    /// can join any more. Returns what `deliver` returned, or 0 when there is no such room.
    pub(super) fn in_current_room(
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
    pub(super) fn in_current_room_after(
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

    /// The room named `room`, if it exists, or made if it keeps history.
    pub(super) fn room_for(&self, room: &str) -> Option<Arc<Room>> {
        let found = self.rooms().get(room).cloned();
        match found {
            Some(room) => Some(room),
            None if self.history.len > 0 => Some(self.room_for_history(room)),
            None => None,
        }
    }

    /// A room made to keep history, with no member yet.
    #[cold]
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    fn room_for_history(&self, room: &str) -> Arc<Room> {
        self.room_in(&mut self.rooms(), room)
    }

    /// The room named `room` in `rooms`, made if it does not exist.
    pub(super) fn room_in(
        &self,
        rooms: &mut HashMap<RoomName, Arc<Room>>,
        room: &str,
    ) -> Arc<Room> {
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
}
