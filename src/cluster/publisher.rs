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
//!
//! With `--history`, a broadcast is published by [`APPEND_AND_PUBLISH`] instead, and a
//! newcomer's history is read by [`READ_AND_MARK`] (see `mod.rs`), in the same pipelines.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, select};

use super::{Link, Outgoing, PUBLISH_TIMEOUT, PublishQueue, wire};
use crate::delivery::budget::Budget;
use crate::delivery::hub::{HistorySettings, Hub, ReadHistory, RoomName};
use crate::delivery::resume::Epoch;

/// Most broadcasts in one pipeline: a round trip per 256 messages, not per message.
const MAX_BATCH: usize = 256;
/// Most bytes in one pipeline, so a round of big messages is not one huge write.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Numbers a broadcast and appends it to its room's history, then publishes it, in one step:
/// the history and the channel have one order, and the numbering is the room's in the whole
/// cluster. `KEYS[1]` is the room's history list (the last `ARGV[3]` kept), `KEYS[2]` its numbering
/// (a hash of its `epoch`, made from `ARGV[5]` if the room has none, and its `newest` offset);
/// both expire after `ARGV[4]` ms. The message is `ARGV[2]` with the numbering before it, in the
/// wire format (`wire.rs`), published on channel `ARGV[1]`.
const APPEND_AND_PUBLISH: &str = "local epoch = redis.call('HGET', KEYS[2], 'epoch') \
     if not epoch then epoch = ARGV[5] redis.call('HSET', KEYS[2], 'epoch', epoch) end \
     local offset = string.format('%d', redis.call('HINCRBY', KEYS[2], 'newest', 1)) \
     local message = string.char(2, #epoch) .. epoch .. string.char(#offset) .. offset .. ARGV[2] \
     redis.call('RPUSH', KEYS[1], message) \
     redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1) \
     redis.call('PEXPIRE', KEYS[1], ARGV[4]) \
     redis.call('PEXPIRE', KEYS[2], ARGV[4]) \
     return redis.call('PUBLISH', ARGV[1], message)";

/// Reads a room's numbering and history and publishes a history mark (`ARGV[2]` on channel
/// `ARGV[1]`) in one step: the history is exactly what the channel carried for the room before
/// the mark. A room with no numbering gets one (epoch `ARGV[3]`, expiring after `ARGV[4]` ms), so
/// that a newcomer learns the epoch the room's next broadcast will have. Returns the epoch,
/// the newest offset, then the history, oldest first.
const READ_AND_MARK: &str = "local epoch = redis.call('HGET', KEYS[2], 'epoch') \
     if not epoch then \
       epoch = ARGV[3] \
       redis.call('HSET', KEYS[2], 'epoch', epoch) \
       redis.call('PEXPIRE', KEYS[2], ARGV[4]) \
     end \
     local newest = redis.call('HGET', KEYS[2], 'newest') or '0' \
     local history = redis.call('LRANGE', KEYS[1], 0, -1) \
     redis.call('PUBLISH', ARGV[1], ARGV[2]) \
     table.insert(history, 1, newest) \
     table.insert(history, 1, epoch) \
     return history";

/// How long the publisher waits for the connection of a link that was just marked up: the
/// subscriber hands it over right after, so this is only a bound.
const HANDOVER_WAIT: Duration = Duration::from_secs(1);

pub(super) struct Publisher {
    pub queue: Arc<PublishQueue>,
    pub link: Arc<Link>,
    pub hub: Arc<Hub>,
    /// What the histories read from Redis are held under.
    pub budget: Arc<Budget>,
    pub channel: String,
    pub history: HistorySettings,
    /// This instance's id, in its history marks.
    pub instance: u64,
    pub max_message_size: usize,
    pub to_publish: Receiver<Outgoing>,
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
                    let mut bytes = first.len();
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                        match self.to_publish.try_recv() {
                            Ok(next) => {
                                bytes += next.len();
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
    fn send(&self, connection: &mut Option<(u64, redis::Connection)>, batch: &[Outgoing]) {
        loop {
            let current = self.link.generation();
            if current == 0 {
                *connection = None;
                return self.deliver_locally(batch);
            }
            match connection {
                Some((generation, con)) if *generation == current => {
                    return match self.pipeline(batch).query::<Vec<Vec<Vec<u8>>>>(con) {
                        Ok(histories) => self.published(batch, histories),
                        Err(e) => {
                            let why = format!("publishing failed: {e}");
                            super::link_lost(&self.link, &self.hub, current, &why);
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

    /// The batch as one pipeline: broadcasts published (and kept in history), history
    /// requests answered. Only the history requests' replies are kept, in order.
    fn pipeline(&self, batch: &[Outgoing]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        // The epoch a room gets if it has none in Redis yet.
        let proposed = Epoch::fresh();
        let ttl = self.history.ttl.as_millis().max(1) as u64;
        for outgoing in batch {
            match outgoing {
                Outgoing::Broadcast(room, frame) if self.history.len > 0 => {
                    pipe.cmd("EVAL")
                        .arg(APPEND_AND_PUBLISH)
                        .arg(2)
                        .arg(self.key(room, "history"))
                        .arg(self.key(room, "numbering"))
                        .arg(&self.channel)
                        .arg(wire::message(room, frame).as_ref())
                        .arg(self.history.len)
                        .arg(ttl)
                        .arg(proposed.as_str())
                        .ignore();
                }
                Outgoing::Broadcast(room, frame) => {
                    pipe.cmd("PUBLISH")
                        .arg(&self.channel)
                        .arg(wire::message(room, frame).as_ref())
                        .ignore();
                }
                Outgoing::History(room, joiner) => {
                    pipe.cmd("EVAL")
                        .arg(READ_AND_MARK)
                        .arg(2)
                        .arg(self.key(room, "history"))
                        .arg(self.key(room, "numbering"))
                        .arg(&self.channel)
                        .arg(wire::history_mark(self.instance, *joiner, room))
                        .arg(proposed.as_str())
                        .arg(ttl);
                }
            }
        }
        pipe
    }

    /// After a batch went through: counts the broadcasts, and hands each newcomer the history
    /// read for it (its mark comes through the channel).
    fn published(&self, batch: &[Outgoing], histories: Vec<Vec<Vec<u8>>>) {
        let mut histories = histories.into_iter();
        let mut broadcasts = 0;
        for outgoing in batch {
            match outgoing {
                Outgoing::Broadcast(..) => broadcasts += 1,
                Outgoing::History(room, joiner) => {
                    let read = self.read_history(histories.next().unwrap_or_default());
                    self.hub.history_read(room, *joiner, read);
                }
            }
        }
        self.link
            .published
            .fetch_add(broadcasts, std::sync::atomic::Ordering::Relaxed);
    }

    /// What [`READ_AND_MARK`] returned: the epoch, the newest offset, then the history.
    /// Only the newest run of the history that is numbered on to the newest offset in that
    /// epoch is kept: anything else (written by another version, or not a broadcast) would
    /// break the numbering.
    fn read_history(&self, reply: Vec<Vec<u8>>) -> ReadHistory {
        let mut reply = reply.into_iter();
        let epoch = reply
            .next()
            .and_then(|epoch| String::from_utf8(epoch).ok())
            .and_then(|epoch| Epoch::parse(&epoch).ok())
            .unwrap_or_else(Epoch::fresh);
        let newest = reply
            .next()
            .and_then(|newest| String::from_utf8(newest).ok())
            .and_then(|newest| newest.parse().ok())
            .unwrap_or(0);
        let mut frames = Vec::new();
        let mut expected = newest;
        for stored in reply.rev() {
            match wire::read(&stored, self.max_message_size) {
                Ok(wire::Message::Numbered {
                    epoch: stored_epoch,
                    offset,
                    broadcast,
                }) if offset == expected && offset > 0 && stored_epoch == epoch.as_str() => {
                    frames.push(self.budget.hold(broadcast.frame.to_vec()));
                    expected -= 1;
                }
                _ => break,
            }
        }
        frames.reverse();
        ReadHistory {
            epoch,
            newest,
            frames,
        }
    }

    /// The Redis key of `room`'s `what` (its history list, or its numbering).
    fn key(&self, room: &str, what: &str) -> Vec<u8> {
        [
            self.channel.as_bytes(),
            b":",
            what.as_bytes(),
            b":",
            room.as_bytes(),
        ]
        .concat()
    }

    fn deliver_locally(&self, batch: &[Outgoing]) {
        let broadcasts = batch
            .iter()
            .filter(|o| matches!(o, Outgoing::Broadcast(..)));
        self.link.delivered_locally(broadcasts.count());
        // In order, each run of one room's broadcasts in one go.
        let mut run: Vec<Bytes> = Vec::new();
        let mut run_room: Option<&RoomName> = None;
        for outgoing in batch {
            if let Outgoing::Broadcast(room, frame) = outgoing {
                if run_room.is_some_and(|r| r != room) {
                    self.hub.broadcast(run_room.expect("checked"), &run);
                    run.clear();
                }
                run_room = Some(room);
                run.push(frame.clone());
            }
        }
        if let Some(room) = run_room {
            self.hub.broadcast(room, &run);
        }
        // Newcomers waiting for a history from Redis get this instance's.
        self.hub.history_from_here();
    }
}

/// Sets the publishing connection's timeouts: a Redis that stops answering is down after
/// [`PUBLISH_TIMEOUT`], not never.
pub(super) fn set_timeouts(con: &redis::Connection) -> redis::RedisResult<()> {
    con.set_read_timeout(Some(PUBLISH_TIMEOUT))?;
    con.set_write_timeout(Some(PUBLISH_TIMEOUT))
}
