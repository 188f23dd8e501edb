//! The set of open connections: broadcasts, shutdown, and the counts `/healthz` reports.
//!
//! Like the hub of gorilla/websocket's chat example, but without a goroutine of its own: a
//! broadcast is fanned out by the thread that received the message, under the hub's lock, so
//! every client sees every broadcast in the one order the server received them. The fan-out
//! writes the shared frame straight into the socket of each listener with nothing queued (one
//! non-blocking write), and queues it with one wake-up for the others; it never waits for a
//! slow client. When listeners fall behind, the hub's [`Flow`] makes the senders stop reading
//! instead (see `outbox.rs`).
//!
//! In a cluster (`--redis`) a client's broadcast goes to Redis first ([`Hub::publish`]), and
//! what comes back on the channel is fanned out here, in Redis's order (see `cluster/`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::cluster::Cluster;
use crate::delivery::outbox::{Flow, Inbox, Outbox, mailbox};
use crate::metrics::Metrics;
use crate::sync;

/// Broadcasts are written straight into idle listeners' sockets (see `Direct` in outbox.rs)
/// only when they come at least this far apart. One thread writing to every listener in turn
/// is quickest for a lone message, but a stream of them (a sender at full speed, or the
/// cluster's subscriber relaying Redis one message at a time) is delivered faster by the
/// listeners' own threads, in batches and on every core: relaying one message at a time
/// straight in, the cluster row fell from 864,000 to 351,000 deliveries/s. A millisecond is
/// about what writing one message to 100 listeners takes here.
const STRAIGHT_IN_APART: Duration = Duration::from_millis(1);

/// Identifies a connection for as long as the server runs.
pub type ConnectionId = u64;

#[derive(Debug)]
pub struct Hub {
    flow: Arc<Flow>,
    members: Mutex<HashMap<ConnectionId, Arc<Outbox>>>,
    /// Signalled whenever a member leaves, for [`Hub::wait_until_empty`].
    left: Condvar,
    next_id: AtomicU64,
    /// WebSocket connections accepted, over the server's life.
    accepted: AtomicU64,
    started: Instant,
    /// The cluster this instance belongs to, if it was started with `--redis`.
    cluster: OnceLock<Cluster>,
    /// Where broadcasts written straight into sockets are counted.
    metrics: OnceLock<Arc<Metrics>>,
    /// When the last broadcast started, in nanoseconds since `started`.
    last_broadcast: AtomicU64,
}

/// A connection's place in the hub; leaving is dropping it, even when its thread panics.
#[derive(Debug)]
pub struct Membership {
    hub: Arc<Hub>,
    pub id: ConnectionId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.members().remove(&self.id);
        self.hub.left.notify_all();
    }
}

impl Hub {
    /// An empty hub whose listeners are behind past `max_backlog` queued bytes.
    pub fn new(max_backlog: usize) -> Hub {
        Hub {
            flow: Arc::new(Flow::new(max_backlog)),
            members: Mutex::new(HashMap::new()),
            left: Condvar::new(),
            next_id: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            started: Instant::now(),
            cluster: OnceLock::new(),
            metrics: OnceLock::new(),
            last_broadcast: AtomicU64::new(0),
        }
    }
}

impl Hub {
    /// A new connection's mailbox, under this hub's flow control.
    pub fn mailbox(&self) -> std::io::Result<(Arc<Outbox>, Inbox)> {
        mailbox(&self.flow)
    }

    /// Broadcast flow control: whether senders must wait, and where.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Adds an open connection.
    pub fn join(self: &Arc<Hub>, outbox: Arc<Outbox>) -> Membership {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.members().insert(id, outbox);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Membership {
            hub: Arc::clone(self),
            id,
        }
    }

    /// Hands encoded frames, in order, to every open connection: written straight into the
    /// sockets of listeners with nothing queued, queued with one wake-up for the others.
    /// Returns how many connections took them.
    pub fn broadcast(&self, frames: &[Bytes]) -> usize {
        let all_bytes: usize = frames.iter().map(Bytes::len).sum();
        let members = self.members();
        // Straight into sockets only when broadcasts come apart; see STRAIGHT_IN_APART.
        let now = self.started.elapsed().as_nanos() as u64;
        let last = self.last_broadcast.swap(now, Ordering::Relaxed);
        let straight_in = now.saturating_sub(last) >= STRAIGHT_IN_APART.as_nanos() as u64;
        let (mut reached, mut written, mut written_bytes) = (0, 0, 0);
        for outbox in members.values() {
            if let Ok(n) = outbox.push_all(frames, straight_in) {
                reached += 1;
                written += n;
                written_bytes += if n == frames.len() {
                    all_bytes
                } else {
                    frames[..n].iter().map(Bytes::len).sum()
                };
            }
        }
        drop(members);
        if written > 0
            && let Some(metrics) = self.metrics.get()
        {
            metrics.messages_sent.inc_by(written as u64);
            metrics.bytes_sent.inc_by(written_bytes as u64);
        }
        reached
    }

    /// Makes broadcasts written straight into sockets count in these metrics (the connections
    /// count what they send themselves). Once, at start.
    pub fn count_into(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Sends a client's broadcasts to everyone: in a cluster, to Redis, which sends them back to
    /// every instance, this one included; otherwise straight to every local connection.
    pub fn publish(&self, frames: &[Bytes]) {
        match self.cluster.get() {
            Some(cluster) => cluster.publish(self, frames),
            None => {
                self.broadcast(frames);
            }
        }
    }

    /// Makes this hub's broadcasts go through `cluster`. Once, at start.
    pub fn join_cluster(&self, cluster: Cluster) {
        if self.cluster.set(cluster).is_err() {
            unreachable!("an instance joins one cluster, once");
        }
    }

    /// The cluster this instance belongs to, if any.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// Asks every open connection to close with this code and reason. Returns how many.
    pub fn close_all(&self, code: CloseCode, reason: &'static str) -> usize {
        let members = self.members();
        members
            .values()
            .filter(|outbox| outbox.close(code, reason).is_ok())
            .count()
    }

    /// Waits until every connection has left, or `timeout` passes. True if all left.
    pub fn wait_until_empty(&self, timeout: Duration) -> bool {
        let members = self.members();
        sync::wait_while(&self.left, members, timeout, |members| !members.is_empty()).is_empty()
    }

    pub fn open_connections(&self) -> usize {
        self.members().len()
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn members(&self) -> MutexGuard<'_, HashMap<ConnectionId, Arc<Outbox>>> {
        sync::lock(&self.members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::outbox::Delivery;

    #[test]
    fn broadcast_reaches_every_member_until_it_leaves() {
        let hub = Arc::new(Hub::new(1 << 20));
        let (a, a_in) = hub.mailbox().unwrap();
        let (b, b_in) = hub.mailbox().unwrap();
        let member_a = hub.join(a);
        let _member_b = hub.join(b);
        assert_eq!(hub.broadcast(&[Bytes::from_static(b"one")]), 2);
        drop(member_a);
        assert_eq!(hub.broadcast(&[Bytes::from_static(b"two")]), 1);
        assert_eq!(a_in.drain().count(), 1);
        let b_got: Vec<_> = b_in.drain().collect();
        assert!(
            matches!(&b_got[..], [Delivery::Frame(x), Delivery::Frame(y)]
            if &x[..] == b"one" && &y[..] == b"two")
        );
        assert_eq!(hub.open_connections(), 1);
        assert!(!hub.wait_until_empty(Duration::from_millis(1)));
    }
}
