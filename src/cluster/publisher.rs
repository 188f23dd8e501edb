//! The publisher thread: from the publish queue to Redis, many broadcasts per round trip.
//!
//! It holds the publishing connection the subscriber handed it for the current connection
//! pair. Each round it takes everything queued (up to [`MAX_BATCH`] frames or
//! [`MAX_BATCH_BYTES`]) and sends it as one pipeline of `PUBLISH` commands: Redis runs a
//! connection's commands in the order sent, so this instance's broadcasts keep their order.
//! A round that fails marks the link down, and its broadcasts, like everything queued while
//! the link is down, are delivered to this instance's clients instead: nothing waits for the
//! link to come back, and nothing is dropped. (Redis may have taken part of a failed round
//! before the link broke; if this instance's subscription received those before it broke
//! too, its clients get them twice. The window is one round trip at the moment of a failure.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, select};

use super::{Link, PUBLISH_TIMEOUT, PublishQueue, wire};
use crate::delivery::hub::{Hub, RoomName};

/// Most broadcasts in one pipeline: a round trip per 256 messages, not per message.
const MAX_BATCH: usize = 256;
/// Most bytes in one pipeline, so a round of big messages is not one huge write.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// How long the publisher waits for the connection of a link that was just marked up: the
/// subscriber hands it over right after, so this is only a bound.
const HANDOVER_WAIT: Duration = Duration::from_secs(1);

pub(super) struct Publisher {
    pub queue: Arc<PublishQueue>,
    pub link: Arc<Link>,
    pub hub: Arc<Hub>,
    pub channel: String,
    pub to_publish: Receiver<(RoomName, Bytes)>,
    /// Publishing connections from the subscriber, each with its pair's number.
    pub handed: Receiver<(u64, redis::Connection)>,
    /// Disconnected when the server stops.
    pub stopped: Receiver<()>,
}

impl Publisher {
    pub(super) fn run(self) {
        let mut connection: Option<(u64, redis::Connection)> = None;
        loop {
            select! {
                recv(self.handed) -> handed => match handed {
                    Ok(handed) => connection = Some(handed),
                    Err(_) => return,
                },
                recv(self.to_publish) -> first => {
                    let Ok(first) = first else { return };
                    let mut bytes = first.1.len();
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                        match self.to_publish.try_recv() {
                            Ok(next) => {
                                bytes += next.1.len();
                                batch.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    self.send(&mut connection, &batch);
                    // Only now: until published, the frames count against the queue's bound.
                    drop(batch);
                    self.queue.taken(bytes);
                },
                recv(self.stopped) -> _ => return,
            }
        }
    }

    /// Publishes a batch on the current connection pair, or delivers it locally when the link
    /// is down or the publishing fails.
    fn send(&self, connection: &mut Option<(u64, redis::Connection)>, batch: &[(RoomName, Bytes)]) {
        loop {
            let current = self.link.generation();
            if current == 0 {
                *connection = None;
                return self.deliver_locally(batch);
            }
            match connection {
                Some((generation, con)) if *generation == current => {
                    let mut pipe = redis::pipe();
                    for (room, frame) in batch {
                        pipe.cmd("PUBLISH")
                            .arg(&self.channel)
                            .arg(wire::message(room, frame).as_ref())
                            .ignore();
                    }
                    return match pipe.query::<()>(con) {
                        Ok(()) => {
                            let n = batch.len() as u64;
                            self.link
                                .published
                                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.link
                                .go_down(current, &format!("publishing failed: {e}"));
                            *connection = None;
                            self.deliver_locally(batch);
                        }
                    };
                }
                // The link came up with a new pair: its connection is being handed over.
                _ => match self.handed.recv_timeout(HANDOVER_WAIT) {
                    Ok(handed) => *connection = Some(handed),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                        *connection = None;
                        return self.deliver_locally(batch);
                    }
                },
            }
        }
    }

    fn deliver_locally(&self, batch: &[(RoomName, Bytes)]) {
        self.link.delivered_locally(batch.len());
        // In order, each run of one room's broadcasts in one go.
        for run in batch.chunk_by(|a, b| a.0 == b.0) {
            let frames: Vec<Bytes> = run.iter().map(|(_, frame)| frame.clone()).collect();
            self.hub.broadcast(&run[0].0, &frames);
        }
    }
}

/// Sets the publishing connection's timeouts: a Redis that stops answering is down after
/// [`PUBLISH_TIMEOUT`], not never.
pub(super) fn set_timeouts(con: &redis::Connection) -> redis::RedisResult<()> {
    con.set_read_timeout(Some(PUBLISH_TIMEOUT))?;
    con.set_write_timeout(Some(PUBLISH_TIMEOUT))
}
