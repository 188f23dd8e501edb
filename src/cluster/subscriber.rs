//! The subscriber thread: owns the link to Redis, and fans the channel out into the hub.
//!
//! It connects both connections (one to publish, one to subscribe), subscribes, marks the
//! link up and hands the publishing connection to the publisher. Then it reads the channel:
//! each message that is a broadcast in the wire format (`wire.rs`) is wrapped in the memory
//! budget as it is, one shared frame, and pushed into every local connection's outbox.
//!
//! Before each read it checks the memory ceiling: while memory is full it does not read, and
//! sleeps on a waker of its own until memory frees. TCP then holds the channel's messages back
//! in Redis, which buffers them up to its `client-output-buffer-limit pubsub` (by default
//! 32 MiB, or 8 MiB for a minute) and then closes this subscription: an outage, logged,
//! counted and reconnected like any other. So another instance's burst can never grow this
//! one's memory past its ceiling. It does not wait for a listener that is behind: the channel
//! carries every room, and one slow listener would hold up every room. A listener too far
//! behind is closed instead (`CLUSTER_OVERFLOW_BACKLOGS` in server.rs).
//!
//! Every [`TICK`] without a message it looks whether the server is stopping or the publisher
//! found the link broken, and after [`PING_AFTER`] of silence it pings Redis, so a link that
//! died without a word (a half-open TCP connection) is found within seconds.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};

use super::link::MALFORMED_LOG_INTERVAL;
use super::publisher::set_timeouts;
use super::{CONNECT_TIMEOUT, FIRST_BACKOFF, Link, MAX_BACKOFF, wire};
use crate::delivery::budget::Budget;
use crate::delivery::flow::Flow;
use crate::delivery::hub::Hub;
use crate::delivery::outbox::{Inbox, Outbox, mailbox};
use crate::delivery::resume::Epoch;
use crate::sys::Waker;
use crate::sys::{self, Interest};

/// The subscription's read timeout: how often a quiet subscriber looks at the rest.
const TICK: Duration = Duration::from_secs(1);

/// A subscription silent for this long is pinged; no answer within [`TICK`] is an outage.
const PING_AFTER: Duration = Duration::from_secs(5);

/// A pause of the subscriber this long is logged at info: Redis buffered for that long.
const LONG_PAUSE: Duration = Duration::from_secs(1);

pub(super) struct Subscriber {
    pub client: redis::Client,
    pub link: Arc<Link>,
    pub hub: Arc<Hub>,
    pub budget: Arc<Budget>,
    pub channel: String,
    /// This instance's id, to find its own history marks.
    pub instance: u64,
    pub max_message_size: usize,
    pub handover: Sender<(u64, redis::Connection)>,
    /// Disconnected when the server stops.
    pub stopped: Receiver<()>,
}

/// Connects the publishing and the subscribing connection, with their timeouts, and checks
/// that Redis lets us in (a missing password only shows on the first command).
pub(super) fn connect(
    client: &redis::Client,
) -> redis::RedisResult<(redis::Connection, redis::Connection)> {
    let mut publishing = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    set_timeouts(&publishing)?;
    redis::cmd("PING").query::<()>(&mut publishing)?;
    let subscribing = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    subscribing.set_write_timeout(Some(TICK))?;
    subscribing.set_read_timeout(Some(TICK))?;
    Ok((publishing, subscribing))
}

/// Whether Redis refused the credentials: retrying cannot fix that.
pub(super) fn is_auth_failure(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// Where the subscriber waits while it must not read, and what it waits on.
struct Pause {
    inbox: Inbox,
    listed_for_memory: Option<u64>,
}

impl Subscriber {
    /// Keeps the link up until the server stops: connect, subscribe, read; on any failure,
    /// back off and start again. `first` is the pair connected at start, if any. `waker` is
    /// what the wait lists wake, through a mailbox of the thread's own, outside every room
    /// (it receives no broadcasts).
    pub(super) fn run(
        self,
        mut first: Option<(redis::Connection, redis::Connection)>,
        waker: Waker,
    ) {
        let own_flow = Arc::new(Flow::new(usize::MAX, Arc::default()));
        let (outbox, inbox) = mailbox(&own_flow, waker);
        let mut pause = Pause {
            inbox,
            listed_for_memory: None,
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.link.stopping() {
                return;
            }
            match first.take().map_or_else(|| connect(&self.client), Ok) {
                Ok((publishing, mut subscribing)) => {
                    if self.session(publishing, &mut subscribing, &outbox, &mut pause) {
                        // It was up: the next outage starts its backoff afresh.
                        backoff = FIRST_BACKOFF;
                    } else {
                        self.link.attempt_failed();
                    }
                }
                Err(e) => {
                    debug!("redis: connecting failed: {e}");
                    self.link
                        .start_outage(&format!("cannot reach {}: {e}", self.link.shown));
                    self.link.attempt_failed();
                }
            }
            match self.stopped.recv_timeout(backoff) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Subscribes and reads the channel until the link breaks or the server stops. Returns
    /// whether the link was up at all.
    fn session(
        &self,
        publishing: redis::Connection,
        subscribing: &mut redis::Connection,
        outbox: &Arc<Outbox>,
        pause: &mut Pause,
    ) -> bool {
        let mut pubsub = subscribing.as_pubsub();
        if let Err(e) = pubsub.subscribe(&self.channel) {
            self.link.start_outage(&format!(
                "subscribing to {:?} on {} failed: {e}",
                self.channel, self.link.shown
            ));
            return false;
        }
        let generation = self.link.go_up(&self.channel);
        // The rooms' numbering was this instance's own while the link was down: resuming
        // clients come back to learn Redis's.
        self.hub.renumber_here();
        // The publisher waits for this connection as soon as the link is up.
        if self.handover.send((generation, publishing)).is_err() {
            return true; // the publisher has stopped: so is the server
        }
        let mut last_heard = Instant::now();
        loop {
            if self.link.stopping() || self.link.generation() != generation {
                return true; // stopping, or the publisher found the link broken
            }
            // Resume positions held for broadcasts not heard yet wait at most about this long.
            self.hub.release_held(Instant::now());
            match pubsub.get_message() {
                Ok(message) => {
                    last_heard = Instant::now();
                    self.deliver(message.get_payload_bytes());
                    self.wait_for_room(outbox, pause, generation);
                }
                Err(e) if e.is_timeout() => {
                    if last_heard.elapsed() >= PING_AFTER {
                        // In subscribed mode Redis answers PING with an array, not "PONG".
                        match pubsub.ping::<redis::Value>() {
                            Ok(_) => last_heard = Instant::now(),
                            Err(e) => {
                                let why =
                                    format!("no answer to a ping from {}: {e}", self.link.shown);
                                super::link_lost(&self.link, &self.hub, generation, &why);
                                return true;
                            }
                        }
                    }
                }
                Err(e) => {
                    let why = format!("the subscription to {} ended: {e}", self.link.shown);
                    super::link_lost(&self.link, &self.hub, generation, &why);
                    return true;
                }
            }
        }
    }

    /// Fans one message from the channel out to this instance's clients, or refuses it.
    fn deliver(&self, message: &[u8]) {
        match wire::read(message, self.max_message_size) {
            Ok(wire::Message::Broadcast(broadcast)) => {
                self.link.received.fetch_add(1, Ordering::Relaxed);
                let frame = self.budget.hold(broadcast.frame.to_vec());
                self.hub.broadcast(broadcast.room, &[frame]);
            }
            Ok(wire::Message::Numbered {
                epoch,
                offset,
                broadcast,
            }) => {
                self.link.received.fetch_add(1, Ordering::Relaxed);
                let frame = self.budget.hold(broadcast.frame.to_vec());
                // read() checked the epoch.
                if let Ok(epoch) = Epoch::parse(epoch) {
                    self.hub
                        .broadcast_numbered(broadcast.room, &epoch, offset, frame);
                }
            }
            Ok(wire::Message::HistoryMark {
                instance,
                joiner,
                room,
            }) => {
                if instance == self.instance {
                    self.hub.history_marked(room, joiner);
                }
            }
            Err(why) => {
                let count = self.link.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                if self.link.malformed_log.pass().is_some() {
                    warn!(
                        "redis: refused a message on channel {:?} that is not a wsecho broadcast \
                         ({why}; {} so far); see the wire format in docs/cluster.md; logged at most \
                         once per {}s",
                        self.channel,
                        crate::logging::count(count, "malformed message"),
                        MALFORMED_LOG_INTERVAL.as_secs()
                    );
                }
            }
        }
    }

    /// Does not return while memory is full (unless the server stops or the link breaks): the
    /// next message stays in Redis meanwhile. Uses the same wait list, and the same protocol,
    /// as a connection that may not read. It does not wait for a listener that is behind: one
    /// channel carries every room, and waiting would hold every room up for one listener;
    /// such a listener is closed once it is too far behind instead (`CLUSTER_OVERFLOW_BACKLOGS`
    /// in server.rs).
    fn wait_for_room(&self, outbox: &Arc<Outbox>, pause: &mut Pause, generation: u64) {
        let budget = &self.budget;
        let mut paused_since: Option<Instant> = None;
        loop {
            let full = budget
                .waiting()
                .join_while(outbox, &mut pause.listed_for_memory, || !budget.may_read(0));
            if !full {
                match paused_since.map(|since| since.elapsed()) {
                    Some(paused) if paused >= LONG_PAUSE => info!(
                        "redis: the subscriber did not read for {paused:.1?} while memory was \
                         full; Redis held the channel's messages"
                    ),
                    Some(paused) => debug!("redis: subscriber read again after {paused:.1?}"),
                    None => {}
                }
                return;
            }
            if paused_since.is_none() {
                paused_since = Some(Instant::now());
                budget.note_full();
                debug!(
                    "redis: subscriber paused (memory is full); Redis holds the channel's \
                     messages meanwhile"
                );
            }
            if self.link.stopping() || self.link.generation() != generation {
                return;
            }
            let none = Interest {
                read: false,
                write: false,
            };
            let _ = sys::wait::<TcpStream>(None, none, pause.inbox.waker(), Some(TICK));
            // Clears the wake-up flag, so that the next wake-up wakes the next wait.
            let _ = pause.inbox.drain().count();
        }
    }
}
