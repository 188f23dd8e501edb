//! The publish queue: broadcasts (and history requests) on their way from connection threads
//! to the publisher thread, bounded in bytes by flow control rather than by refusal.
//!
//! Past the high mark (`--max-backlog`) the hub's rooms count as congested, so broadcasting
//! connections stop reading until the queue is down to half (the low mark): the queue
//! overshoots by at most one read per sender, and nothing is ever dropped.
//!
//! Who touches it, from which thread: connection threads only push, and never block; only
//! the publisher thread takes from it and records what it took ([`PublishQueue::taken`]). The
//! `full` flag changes only under its lock, by whichever thread crossed a mark.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use log::warn;

use crate::delivery::hub::{ConnectionId, Hub, RoomName};
use crate::logging::Throttle;
use crate::sync::lock;

/// What the publisher sends to Redis, in the order connection threads queued it.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// A broadcast to a room.
    Broadcast(RoomName, Bytes),
    /// Read a room's history for a pending newcomer, and publish its mark.
    History(RoomName, ConnectionId),
}

impl Outgoing {
    /// Bytes it counts against the publish queue's bound.
    pub(super) fn len(&self) -> usize {
        match self {
            Outgoing::Broadcast(_, frame) => frame.len(),
            Outgoing::History(..) => 0,
        }
    }
}

/// The queue of broadcasts waiting to be published, bounded in bytes by flow control.
#[derive(Debug)]
pub(super) struct PublishQueue {
    sender: Sender<Outgoing>,
    pub(super) receiver: Receiver<Outgoing>,
    /// Bytes pushed and not yet published (or delivered locally): queued or in flight.
    bytes: AtomicUsize,
    high: usize,
    low: usize,
    /// Whether the queue counts as full now; changed only under this lock, after a mark was
    /// crossed, so the flag and the hub's flow agree with the count whichever thread crossed.
    full: Mutex<bool>,
    /// "Publish queue full", at most once per [`FULL_LOG_INTERVAL`].
    full_log: Throttle,
    pub(super) hub: Arc<Hub>,
}

/// "Publish queue full" is logged at most once per this interval.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl PublishQueue {
    pub(super) fn new(hub: Arc<Hub>, max_backlog: usize) -> PublishQueue {
        let (sender, receiver) = crossbeam_channel::unbounded();
        PublishQueue {
            sender,
            receiver,
            bytes: AtomicUsize::new(0),
            high: max_backlog,
            low: max_backlog / 2,
            full: Mutex::new(false),
            full_log: Throttle::new(FULL_LOG_INTERVAL),
            hub,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.load(Ordering::SeqCst) == 0
    }

    /// Queues frames; never refused, never blocks. Past the high mark the hub is congested and
    /// senders stop reading, so the queue overshoots by at most one read's worth per sender.
    pub(super) fn push(&self, room: &RoomName, frames: &[Bytes]) {
        for frame in frames {
            let len = frame.len();
            let before = self.bytes.fetch_add(len, Ordering::SeqCst);
            if before <= self.high && before + len > self.high {
                self.reassess();
            }
            // The receiver lives in the queue itself: sending cannot fail.
            let _ = self
                .sender
                .send(Outgoing::Broadcast(Arc::clone(room), frame.clone()));
        }
    }

    /// Queues a history request, in order with the broadcasts.
    pub(super) fn push_history(&self, room: &RoomName, joiner: ConnectionId) {
        let _ = self
            .sender
            .send(Outgoing::History(Arc::clone(room), joiner));
    }

    /// Records that `len` bytes were published or delivered locally.
    pub(super) fn taken(&self, len: usize) {
        let before = self.bytes.fetch_sub(len, Ordering::SeqCst);
        if before > self.low && before - len <= self.low {
            self.reassess();
        }
    }

    fn reassess(&self) {
        let mut full = lock(&self.full);
        let bytes = self.bytes.load(Ordering::SeqCst);
        if !*full && bytes > self.high {
            *full = true;
            self.hub.common_flow().set_publish_full(true);
            if self.full_log.pass().is_some() {
                warn!(
                    "redis publish queue full ({bytes} bytes waiting for Redis): broadcasting \
                     clients wait until it is down to half; logged at most once per {}s",
                    FULL_LOG_INTERVAL.as_secs()
                );
            }
        } else if *full && bytes <= self.low {
            *full = false;
            self.hub.common_flow().set_publish_full(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::hub::HistorySettings;

    const NO_HISTORY: HistorySettings = HistorySettings {
        len: 0,
        ttl: Duration::from_secs(60),
    };

    #[test]
    fn a_full_publish_queue_congests_the_hub_until_it_is_down_to_half() {
        let hub = Arc::new(Hub::new(
            1 << 20,
            NO_HISTORY,
            crate::delivery::flow::Policy::default(),
            Arc::default(),
        ));
        let queue = PublishQueue::new(Arc::clone(&hub), 100);
        let lobby = RoomName::from("");
        queue.push(&lobby, &[Bytes::from(vec![0; 60])]);
        assert!(!hub.common_flow().publish_full());
        queue.push(&lobby, &[Bytes::from(vec![0; 60])]); // 120 > 100: full; never refused
        assert!(hub.common_flow().publish_full());
        assert_eq!(queue.receiver.len(), 2);
        queue.taken(60); // 60: above the low mark, 50
        assert!(hub.common_flow().publish_full());
        queue.taken(10);
        assert!(!hub.common_flow().publish_full());
        queue.taken(50);
        assert!(queue.is_empty());
    }
}
