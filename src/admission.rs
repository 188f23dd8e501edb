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
//! pick addresses from. It is the client's: a connection from a trusted proxy, or any under
//! `--proxy-protocol`, is admitted against the connection limit only, and counted per address
//! once its client is known ([`Ticket::rehome`]), so that the proxy's own address never counts
//! the clients behind it. Refusals are logged once per address, reason and [`LOG_INTERVAL`],
//! with a count of the ones not logged, so a flood cannot flood the log too.

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    /// Signalled whenever a connection ends, for [`Admission::wait_until_none`].
    ended: Condvar,
    refusals: Mutex<HashMap<(Group, Refusal), Gate>>,
}

#[derive(Debug, Default)]
struct Counts {
    active: usize,
    /// Of those, the ones whose request has not come yet (all addresses).
    handshaking: usize,
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
    /// The address it counts under; `None` until its client is known (behind a proxy).
    group: Option<Group>,
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
            ended: Condvar::new(),
            refusals: Mutex::default(),
        }
    }

    /// Waits until every admitted connection has ended, or `timeout` passes, and those still
    /// waiting for their request at most `handshake_grace` of it; true if all ended. Shutdown
    /// waits for these too: a connection accepted just before it is answered (and, after a
    /// restart, told to come back) rather than cut off when the process exits. A client whose
    /// request has not come within the grace is not waited for: a slow or idle one cannot hold
    /// a restart up for its whole handshake timeout.
    pub(crate) fn wait_until_none(&self, timeout: Duration, handshake_grace: Duration) -> bool {
        let until = Instant::now() + timeout;
        let everyone = timeout.min(handshake_grace);
        let counts = crate::sync::wait_while(&self.ended, self.counts(), everyone, |counts| {
            counts.active > 0
        });
        let left = until.saturating_duration_since(Instant::now());
        let counts = crate::sync::wait_while(&self.ended, counts, left, |counts| {
            counts.active > counts.handshaking
        });
        counts.active == 0
    }

    /// Connections admitted and not yet ended.
    #[cfg(test)]
    pub(crate) fn active(&self) -> usize {
        self.counts().active
    }

    /// Admits a connection from `peer`, or says why not (and logs it, at most once per
    /// address, reason and interval). With `per_address` false (a proxy's connection, whose
    /// client is not known yet) only the connection limit applies, and the per-address caps
    /// apply when [`Ticket::rehome`] names the client.
    pub(crate) fn admit(
        self: &Arc<Admission>,
        peer: SocketAddr,
        per_address: bool,
    ) -> Result<Ticket, Refusal> {
        let group = Group::of(peer.ip());
        let refused = {
            let mut counts = self.counts();
            if counts.active >= self.capacity {
                Some(Refusal::Full(self.capacity))
            } else if per_address {
                let refused = self.refusal(&counts, group, true);
                if refused.is_none() {
                    counts.active += 1;
                    counts.handshaking += 1;
                    counts.enter(group, true);
                }
                refused
            } else {
                counts.active += 1;
                counts.handshaking += 1;
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
                group: per_address.then_some(group),
                handshaking: true,
            }),
        }
    }

    /// Which per-address cap, if any, refuses one more connection from `group`.
    fn refusal(&self, counts: &Counts, group: Group, handshaking: bool) -> Option<Refusal> {
        let mine = counts.by_address.get(&group).copied().unwrap_or_default();
        if let Some(cap) = self.handshakes_per_address
            && handshaking
            && mine.handshakes >= cap
        {
            Some(Refusal::AddressHandshakes(cap))
        } else if let Some(cap) = self.per_address
            && mine.connections >= cap
        {
            Some(Refusal::AddressFull(cap))
        } else {
            None
        }
    }

    fn log_refusal(&self, peer: impl Display, group: Group, refusal: Refusal) {
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

impl Counts {
    /// Counts one more connection under `group`.
    fn enter(&mut self, group: Group, handshaking: bool) {
        let mine = self.by_address.entry(group).or_default();
        mine.connections += 1;
        mine.handshakes += usize::from(handshaking);
    }

    /// Counts one connection fewer under `group`.
    fn leave(&mut self, group: Group, handshaking: bool) {
        if let Some(mine) = self.by_address.get_mut(&group) {
            mine.connections -= 1;
            mine.handshakes -= usize::from(handshaking);
            if mine.connections == 0 {
                self.by_address.remove(&group);
            }
        }
    }
}

impl Ticket {
    /// The handshake is over (answered, upgraded or failed): it no longer counts as
    /// unfinished.
    pub(crate) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let mut counts = self.admission.counts();
            counts.handshaking -= 1;
            if let Some(group) = self.group
                && let Some(mine) = counts.by_address.get_mut(&group)
            {
                mine.handshakes -= 1;
            }
            drop(counts);
            self.admission.ended.notify_all();
        }
    }

    /// Counts the connection under its client's address `ip`, once a proxy has named it,
    /// instead of the address it counted under until then (none, for a proxy's connection).
    /// The per-address caps apply as at accept: a refusal is logged like one at accept
    /// (`client` names the connection in the line), and the ticket stays as it was.
    pub(crate) fn rehome(&mut self, client: impl Display, ip: IpAddr) -> Result<(), Refusal> {
        let group = Group::of(ip);
        if self.group == Some(group) {
            return Ok(());
        }
        let refused = {
            let mut counts = self.admission.counts();
            let refused = self.admission.refusal(&counts, group, self.handshaking);
            if refused.is_none() {
                if let Some(old) = self.group {
                    counts.leave(old, self.handshaking);
                }
                counts.enter(group, self.handshaking);
                self.group = Some(group);
            }
            refused
        };
        match refused {
            Some(refusal) => {
                self.admission.log_refusal(client, group, refusal);
                Err(refusal)
            }
            None => Ok(()),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handshake_done();
        let mut counts = self.admission.counts();
        counts.active -= 1;
        if let Some(group) = self.group {
            counts.leave(group, false);
        }
        drop(counts);
        self.admission.ended.notify_all();
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
        let mut first = admission.admit(a, true).unwrap();
        let mut second = admission.admit(a, true).unwrap();
        assert_eq!(
            admission.admit(a, true).unwrap_err(),
            Refusal::AddressHandshakes(2)
        );
        first.handshake_done();
        let mut third = admission.admit(a, true).unwrap();
        second.handshake_done();
        third.handshake_done();
        assert_eq!(
            admission.admit(a, true).unwrap_err(),
            Refusal::AddressFull(3)
        );
        // Another address is not affected, until the server as a whole is full.
        let others: Vec<_> = (0..3)
            .map(|_| {
                let mut other = admission
                    .admit(ip("127.0.0.1"), true)
                    .expect("another address");
                other.handshake_done();
                other
            })
            .collect();
        assert_eq!(
            admission.admit(ip("127.0.0.3"), true).unwrap_err(),
            Refusal::Full(6)
        );
        drop(others);
        drop(first);
        assert_eq!(admission.active(), 2);
        assert!(admission.admit(a, true).is_ok());
    }

    #[test]
    fn per_address_connections_count_finished_handshakes_too() {
        let admission = Arc::new(Admission::new(10, Some(2), None));
        let a = ip("127.0.0.2");
        let tickets: Vec<_> = (0..2)
            .map(|_| {
                let mut t = admission.admit(a, true).unwrap();
                t.handshake_done();
                t
            })
            .collect();
        assert_eq!(
            admission.admit(a, true).unwrap_err(),
            Refusal::AddressFull(2)
        );
        drop(tickets);
        assert!(admission.admit(a, true).is_ok());
    }

    #[test]
    fn a_proxys_connection_counts_under_its_client_once_named() {
        let admission = Arc::new(Admission::new(10, Some(1), Some(2)));
        let proxy = ip("127.0.0.1");
        let client = ip("203.0.113.7").ip();
        // The proxy's own address counts nothing: many connections through it are admitted.
        let mut first = admission.admit(proxy, false).unwrap();
        let mut second = admission.admit(proxy, false).unwrap();
        let mut third = admission.admit(proxy, false).unwrap();
        assert_eq!(admission.active(), 3);
        first.rehome("first", client).unwrap();
        first.handshake_done();
        // The client's cap of one connection holds, through the proxy too.
        assert_eq!(
            second.rehome("second", client).unwrap_err(),
            Refusal::AddressFull(1)
        );
        second.rehome("second", ip("203.0.113.8").ip()).unwrap();
        // Moving again to the same address changes nothing.
        second.rehome("second", ip("203.0.113.8").ip()).unwrap();
        drop(first);
        third.rehome("third", client).unwrap();
        drop((second, third));
        assert_eq!(admission.active(), 0);
        assert!(admission.counts().by_address.is_empty());
    }
}
