//! Who goes where in `wsload chat`: each client's instance and room, each room's sender, the
//! instance a client moves to when its own is gone, and what a chat message carries.
//!
//! Clients are numbered globally, so that several wsload processes (each with its own
//! `--first-client`) make one plan between them: client `g` is in room `g / room_size` and on
//! instance `g mod instances`, so every room has members on every instance, and every instance
//! has its even share of every process's clients. A process holds whole rooms (the driver gives
//! each one a multiple of the room size), so a room's sender and all its listeners are in one
//! process, which times every delivery with its own clock.
//!
//! Nothing here touches a socket; `chat.rs` drives it.

/// The bytes a chat message starts with: the room (global number) and the sender's sequence
/// number in it, both little-endian `u32`; the rest of the payload is filler up to `--size`.
pub const STAMP: usize = 8;

/// Where one process's clients go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The global number of this process's first client.
    pub first_client: usize,
    /// This process's clients.
    pub clients: usize,
    /// Clients per room.
    pub room_size: usize,
    /// Instances of the cluster (`--url`s).
    pub instances: usize,
}

impl Plan {
    /// The global number of local client `id`.
    pub fn global(&self, id: usize) -> usize {
        self.first_client + id
    }

    /// The instance local client `id` first connects to.
    pub fn home(&self, id: usize) -> usize {
        self.global(id) % self.instances
    }

    /// The global room of local client `id`.
    pub fn room_of(&self, id: usize) -> usize {
        self.global(id) / self.room_size
    }

    /// The global rooms this process holds members of, in order.
    pub fn rooms(&self) -> std::ops::Range<usize> {
        if self.clients == 0 {
            return 0..0;
        }
        self.room_of(0)..self.room_of(self.clients - 1) + 1
    }

    /// The local client that sends in global room `room`: its member number `room mod
    /// room_size` (within what this process holds of it), so that the senders sit on every
    /// instance, not only on the instances of each room's first member.
    pub fn sender_of(&self, room: usize) -> usize {
        let first_global = (room * self.room_size).max(self.first_client);
        let last_global = ((room + 1) * self.room_size).min(self.first_client + self.clients);
        let members = last_global - first_global;
        first_global - self.first_client + room % members
    }

    /// The instance a client whose connection to `current` ended tries next, on its `tries`-th
    /// attempt since (0 first): one of the other instances, in turn. Starting from
    /// `global / instances`, the clients of a lost instance spread evenly over the others (an
    /// instance that fills up unevenly could run out of descriptors before the others), and a
    /// client whose attempt fails tries the next one.
    pub fn next_instance(&self, id: usize, current: usize, tries: u32) -> usize {
        if self.instances < 2 {
            return current;
        }
        let others = self.instances - 1;
        let step = (self.global(id) / self.instances + tries as usize) % others;
        (current + 1 + step) % self.instances
    }
}

/// A chat message's payload: the stamp, then `size - STAMP` filler bytes.
pub fn payload(room: usize, seq: u32, size: usize) -> Vec<u8> {
    let mut data = vec![b'.'; size.max(STAMP)];
    data[..4].copy_from_slice(&(room as u32).to_le_bytes());
    data[4..STAMP].copy_from_slice(&seq.to_le_bytes());
    data
}

/// The room and sequence number a payload carries; `None` if it is too short to be one.
pub fn stamp(data: &[u8]) -> Option<(usize, u32)> {
    let room = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    let seq = u32::from_le_bytes(data.get(4..STAMP)?.try_into().ok()?);
    Some((room as usize, seq))
}

/// The sequence numbers one client received in its room: a bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen(Vec<u64>);

impl Seen {
    /// Marks `seq` received; false if it was already (a duplicate).
    pub fn insert(&mut self, seq: u32) -> bool {
        let (word, bit) = (seq as usize / 64, seq % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }

    pub fn contains(&self, seq: u32) -> bool {
        self.0
            .get(seq as usize / 64)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many of `from..to` it has.
    pub fn count(&self, from: u32, to: u32) -> u64 {
        (from..to).filter(|&s| self.contains(s)).count() as u64
    }

    /// Adds what `other` has (a room's union of what its members received).
    pub fn merge(&mut self, other: &Seen) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine |= theirs;
        }
    }

    /// How many of `from..to` that `all` has, this one has not.
    pub fn missing_of(&self, all: &Seen, from: u32, to: u32) -> u64 {
        (from..to)
            .filter(|&s| all.contains(s) && !self.contains(s))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(first_client: usize, clients: usize) -> Plan {
        Plan {
            first_client,
            clients,
            room_size: 100,
            instances: 6,
        }
    }

    #[test]
    fn every_room_spans_every_instance_and_instances_get_even_shares() {
        let p = plan(16_500, 16_500);
        assert_eq!(p.rooms(), 165..330);
        let mut per_instance = [0; 6];
        for id in 0..p.clients {
            per_instance[p.home(id)] += 1;
        }
        assert_eq!(per_instance, [2750; 6]);
        let room: Vec<usize> = (0..100).map(|m| p.home(m)).collect();
        for instance in 0..6 {
            assert!(room.contains(&instance));
        }
    }

    #[test]
    fn senders_are_members_of_their_room_on_every_instance() {
        let p = plan(0, 99_000);
        let mut on = [0; 6];
        for room in p.rooms() {
            let sender = p.sender_of(room);
            assert_eq!(p.room_of(sender), room);
            on[p.home(sender)] += 1;
        }
        assert!(on.iter().all(|&n| n > 100), "{on:?}");
        // A process holding part of a room (a small run) picks one of its own members.
        let part = plan(50, 30);
        assert_eq!(part.room_of(part.sender_of(0)), 0);
        assert!(part.sender_of(0) < 30);
    }

    #[test]
    fn a_lost_instance_s_clients_spread_evenly_over_the_others() {
        let p = plan(0, 99_000);
        let mut moved_to = [0; 6];
        for id in (0..p.clients).filter(|&id| p.home(id) == 2) {
            moved_to[p.next_instance(id, 2, 0)] += 1;
        }
        assert_eq!(moved_to, [3300, 3300, 0, 3300, 3300, 3300]);
        // A failed attempt tries another instance, never the one it left.
        for tries in 0..10 {
            assert_ne!(p.next_instance(7, 2, tries), 2);
        }
        assert_ne!(p.next_instance(7, 2, 0), p.next_instance(7, 2, 1));
    }

    #[test]
    fn payloads_carry_room_and_sequence() {
        let data = payload(989, 61, 32);
        assert_eq!(data.len(), 32);
        assert_eq!(stamp(&data), Some((989, 61)));
        assert_eq!(payload(1, 2, 3).len(), STAMP);
        assert_eq!(stamp(b"short"), None);
    }

    #[test]
    fn seen_counts_duplicates_and_what_others_had() {
        let mut a = Seen::default();
        assert!(a.insert(0));
        assert!(a.insert(130));
        assert!(!a.insert(130));
        assert_eq!(a.count(0, 200), 2);
        let mut room = Seen::default();
        for s in [0, 1, 2, 130] {
            room.insert(s);
        }
        room.merge(&a);
        assert_eq!(a.missing_of(&room, 0, 200), 2);
        assert_eq!(a.missing_of(&room, 2, 200), 1);
    }
}
