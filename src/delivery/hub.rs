//! The set of open connections: broadcasts, shutdown, and the counts `/healthz` reports.
//!
//! Like the hub of gorilla/websocket's chat example, but without a goroutine of its own: a
//! broadcast is fanned out by the thread that received the message, under the hub's lock, so
//! every client sees every broadcast in the one order the server received them. Each
//! listener's outbox takes the shared frames without ever waiting for a slow client (see
//! `outbox.rs`, which also decides whether they go straight into a listener's socket); when
//! listeners fall behind, the hub's [`Flow`] makes the senders stop reading instead.
//!
//! The hub knows nothing of clusters: with `--redis`, `cluster/` sits in front of it and
//! fans out here what comes back from Redis, in Redis's order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::delivery::outbox::{Flow, Inbox, Outbox, mailbox};
use crate::metrics::Metrics;
use crate::sync;

/// Identifies a connection for as long as the server runs.
pub(crate) type ConnectionId = u64;

#[derive(Debug)]
pub(crate) struct Hub {
    flow: Arc<Flow>,
    members: Mutex<HashMap<ConnectionId, Arc<Outbox>>>,
    /// Signalled whenever a member leaves, for [`Hub::wait_until_empty`].
    left: Condvar,
    next_id: AtomicU64,
    /// WebSocket connections accepted, over the server's life.
    accepted: AtomicU64,
    started: Instant,
    /// Where the broadcast copies are counted.
    metrics: Arc<Metrics>,
}

/// A connection's place in the hub; leaving is dropping it, even when its thread panics.
#[derive(Debug)]
pub(crate) struct Membership {
    hub: Arc<Hub>,
    id: ConnectionId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.members().remove(&self.id);
        self.hub.left.notify_all();
    }
}

impl Hub {
    /// An empty hub whose listeners are behind past `max_backlog` queued bytes, counting what
    /// it delivers in `metrics`.
    pub(crate) fn new(max_backlog: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            flow: Arc::new(Flow::new(max_backlog)),
            members: Mutex::new(HashMap::new()),
            left: Condvar::new(),
            next_id: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
        }
    }

    /// A new connection's mailbox, under this hub's flow control.
    pub(crate) fn mailbox(&self) -> std::io::Result<(Arc<Outbox>, Inbox)> {
        mailbox(&self.flow)
    }

    /// Broadcast flow control: whether senders must wait, and where.
    pub(crate) fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Adds an open connection.
    pub(crate) fn join(self: &Arc<Hub>, outbox: Arc<Outbox>) -> Membership {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.members().insert(id, outbox);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Membership {
            hub: Arc::clone(self),
            id,
        }
    }

    /// Hands encoded frames, in order, to every open connection, and counts each copy handed
    /// over. Returns how many connections took them.
    pub(crate) fn broadcast(&self, frames: &[Bytes]) -> usize {
        let batch = self.flow.batch(frames);
        let reached = self
            .members()
            .values()
            .filter(|outbox| outbox.push(&batch).is_ok())
            .count() as u64;
        if reached > 0 {
            self.metrics
                .sent(reached * frames.len() as u64, reached * batch.len() as u64);
        }
        reached as usize
    }

    /// Asks every open connection to close with this code and reason. Returns how many.
    pub(crate) fn close_all(&self, code: CloseCode, reason: &'static str) -> usize {
        let members = self.members();
        members
            .values()
            .filter(|outbox| outbox.close(code, reason).is_ok())
            .count()
    }

    /// Waits until every connection has left, or `timeout` passes. True if all left.
    pub(crate) fn wait_until_empty(&self, timeout: Duration) -> bool {
        let members = self.members();
        sync::wait_while(&self.left, members, timeout, |members| !members.is_empty()).is_empty()
    }

    /// WebSocket connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.members().len()
    }

    /// WebSocket connections accepted since start.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Time since start.
    pub(crate) fn uptime(&self) -> Duration {
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
        let hub = Arc::new(Hub::new(1 << 20, Arc::default()));
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
