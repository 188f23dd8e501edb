//! Admission: whether an accepted connection gets a thread, decided on the accepting thread.
//!
//! Three caps, each answered with a 503 before a byte is read:
//!
//! - the connection limit (`--max-connections`): threads and descriptors are finite;
//! - unfinished handshakes per address (`--max-handshakes-per-ip`, on by default): a client
//!   that opens connections and sends nothing (slowloris) holds a thread each until the
//!   handshake timeout. Without this cap one address could hold every slot; with it, it holds
//!   a few, and honest users behind one NAT are not affected, as their handshakes each finish
//!   in milliseconds;
//! - connections per address (`--max-connections-per-ip`, off by default, since one NAT can
//!   hide a whole campus).
//!
//! An "address" is an IPv4 address, or an IPv6 /64: one IPv6 host usually has a whole /64 to
//! pick addresses from. Refusals are logged once per address, reason and [`LOG_INTERVAL`],
//! with a count of the ones not logged, so a flood cannot flood the log too.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;

use crate::logging::Gate;

/// Refusals of one address for one reason are logged at most once per this interval.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// An IPv6 address is grouped with the others of its /64: the prefix length, in bits.
const IPV6_GROUP_PREFIX: u32 = 64;

/// Past this many remembered refusals, the ones older than [`LOG_INTERVAL`] are forgotten,
/// so a flood from many addresses cannot grow the log's memory.
const REMEMBERED_REFUSALS: usize = 1024;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The connection limit.
    Full(usize),
    /// The cap on connections from one address.
    AddressFull(usize),
    /// The cap on unfinished handshakes from one address.
    AddressHandshakes(usize),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Full(n) => write!(f, "connection limit ({n}) reached"),
            Refusal::AddressFull(n) => {
                write!(f, "this address already has {n} connections, its limit")
            }
            Refusal::AddressHandshakes(n) => write!(
                f,
                "this address already has {n} unfinished handshakes, its limit"
            ),
        }
    }
}

/// The caps, and what is counted against them.
#[derive(Debug)]
pub(crate) struct Admission {
    capacity: usize,
    per_address: Option<usize>,
    handshakes_per_address: Option<usize>,
    counts: Mutex<Counts>,
    refusals: Mutex<HashMap<(Group, Refusal), Gate>>,
}

#[derive(Debug, Default)]
struct Counts {
    active: usize,
    by_address: HashMap<Group, PerAddress>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PerAddress {
    connections: usize,
    handshakes: usize,
}

/// An address as the caps count it: IPv4 as it is (IPv4-mapped IPv6 too), IPv6 by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Group(IpAddr);

impl Group {
    pub(crate) fn of(ip: IpAddr) -> Group {
        match ip {
            IpAddr::V4(v4) => Group(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Group(IpAddr::V4(v4)),
                None => {
                    let mask = u128::MAX << (128 - IPV6_GROUP_PREFIX);
                    Group(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
                }
            },
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{IPV6_GROUP_PREFIX}"),
        }
    }
}

/// An admitted connection's place under the caps; dropping it (when the connection's thread
/// ends, panics included) gives the place back.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    group: Group,
    handshaking: bool,
}

impl Admission {
    pub(crate) fn new(
        capacity: usize,
        per_address: Option<usize>,
        handshakes_per_address: Option<usize>,
    ) -> Admission {
        Admission {
            capacity,
            per_address,
            handshakes_per_address,
            counts: Mutex::default(),
            refusals: Mutex::default(),
        }
    }

    /// Connections admitted and not yet ended.
    #[cfg(test)]
    pub(crate) fn active(&self) -> usize {
        self.counts().active
    }

    /// Admits a connection from `peer`, or says why not (and logs it, at most once per
    /// address, reason and interval).
    pub(crate) fn admit(self: &Arc<Admission>, peer: SocketAddr) -> Result<Ticket, Refusal> {
        let group = Group::of(peer.ip());
        let refused = {
            let mut counts = self.counts();
            let mine = counts.by_address.get(&group).copied().unwrap_or_default();
            if counts.active >= self.capacity {
                Some(Refusal::Full(self.capacity))
            } else if let Some(cap) = self.handshakes_per_address
                && mine.handshakes >= cap
            {
                Some(Refusal::AddressHandshakes(cap))
            } else if let Some(cap) = self.per_address
                && mine.connections >= cap
            {
                Some(Refusal::AddressFull(cap))
            } else {
                counts.active += 1;
                let mine = counts.by_address.entry(group).or_default();
                mine.connections += 1;
                mine.handshakes += 1;
                None
            }
        };
        match refused {
            Some(refusal) => {
                self.log_refusal(peer, group, refusal);
                Err(refusal)
            }
            None => Ok(Ticket {
                admission: Arc::clone(self),
                group,
                handshaking: true,
            }),
        }
    }

    fn log_refusal(&self, peer: SocketAddr, group: Group, refusal: Refusal) {
        let now = Instant::now();
        let mut refusals = crate::sync::lock(&self.refusals);
        if refusals.len() >= REMEMBERED_REFUSALS {
            refusals.retain(|_, gate| !gate.expired(now, LOG_INTERVAL));
        }
        let gate = refusals.entry((group, refusal)).or_insert(Gate::new());
        if let Some(held_back) = gate.pass(now, LOG_INTERVAL) {
            let more = if held_back > 0 {
                format!(" ({held_back} more refused since the last such line)")
            } else {
                String::new()
            };
            warn!(
                "{peer} rejected: 503, {refusal}{more}; logged once per {}s for {group}",
                LOG_INTERVAL.as_secs()
            );
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        crate::sync::lock(&self.counts)
    }
}

impl Ticket {
    /// The handshake is over (answered, upgraded or failed): it no longer counts as
    /// unfinished.
    pub(crate) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let mut counts = self.admission.counts();
            if let Some(mine) = counts.by_address.get_mut(&self.group) {
                mine.handshakes -= 1;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handshake_done();
        let mut counts = self.admission.counts();
        counts.active -= 1;
        if let Some(mine) = counts.by_address.get_mut(&self.group) {
            mine.connections -= 1;
            if mine.connections == 0 {
                counts.by_address.remove(&self.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap(), 40000)
    }

    #[test]
    fn ipv6_is_grouped_by_its_64_and_mapped_ipv4_is_ipv4() {
        let group = |text: &str| Group::of(ip(text).ip());
        assert_eq!(group("2001:db8:1:2:aaaa::1"), group("2001:db8:1:2::9"));
        assert_ne!(group("2001:db8:1:2::1"), group("2001:db8:1:3::1"));
        assert_eq!(group("::ffff:10.0.0.1"), group("10.0.0.1"));
        assert_eq!(group("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn each_cap_refuses_only_its_own_address() {
        let admission = Arc::new(Admission::new(6, Some(3), Some(2)));
        let a = ip("127.0.0.2");
        let mut first = admission.admit(a).unwrap();
        let mut second = admission.admit(a).unwrap();
        assert_eq!(
            admission.admit(a).unwrap_err(),
            Refusal::AddressHandshakes(2)
        );
        first.handshake_done();
        let mut third = admission.admit(a).unwrap();
        second.handshake_done();
        third.handshake_done();
        assert_eq!(admission.admit(a).unwrap_err(), Refusal::AddressFull(3));
        // Another address is not affected, until the server as a whole is full.
        let others: Vec<_> = (0..3)
            .map(|_| {
                let mut other = admission.admit(ip("127.0.0.1")).expect("another address");
                other.handshake_done();
                other
            })
            .collect();
        assert_eq!(
            admission.admit(ip("127.0.0.3")).unwrap_err(),
            Refusal::Full(6)
        );
        drop(others);
        drop(first);
        assert_eq!(admission.active(), 2);
        assert!(admission.admit(a).is_ok());
    }

    #[test]
    fn per_address_connections_count_finished_handshakes_too() {
        let admission = Arc::new(Admission::new(10, Some(2), None));
        let a = ip("127.0.0.2");
        let tickets: Vec<_> = (0..2)
            .map(|_| {
                let mut t = admission.admit(a).unwrap();
                t.handshake_done();
                t
            })
            .collect();
        assert_eq!(admission.admit(a).unwrap_err(), Refusal::AddressFull(2));
        drop(tickets);
        assert!(admission.admit(a).is_ok());
    }
}
