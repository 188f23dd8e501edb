//! Broadcasting across many wsecho instances through Redis's pub/sub (`--redis`).
//!
//! Every instance of a cluster publishes its clients' broadcasts on one Redis channel and
//! subscribes to it; what its subscription receives is what it fans out to its own clients.
//! Redis delivers the channel's messages to every subscriber in the one order it received
//! them, so every client of every instance, the sender included, sees every broadcast once
//! and in the same order. That is why, in a cluster, a client's broadcast is not fanned out
//! locally at once: it goes to Redis first and comes back like everyone else's.
//!
//! # Threads and queues
//!
//! No connection's thread ever waits on Redis. Two threads of their own do:
//!
//! - the **publisher** (`publisher.rs`) takes broadcasts from the *publish queue*
//!   (`publish_queue.rs`), which connection threads push into without blocking, and sends
//!   them with `PUBLISH`, many per round trip (a pipeline). The queue counts its bytes: past
//!   a high mark (`--max-backlog`) every room is congested, so broadcasting connections stop
//!   reading until it is down to half, exactly as when a listener is behind (see
//!   `delivery/flow.rs`). Nothing is dropped and nothing grows without bound; the frames
//!   also count against the memory ceiling.
//! - the **subscriber** (`subscriber.rs`) owns the link: it connects both connections,
//!   subscribes, hands the publishing connection to the publisher, then reads the channel and
//!   fans each message out into the hub like a local sender would. While memory is full it
//!   stops reading its Redis socket: TCP pushes back on Redis, which buffers for it up to its
//!   `client-output-buffer-limit pubsub` and then drops it, which is an outage like any other.
//!   It never waits for one listener: the channel carries every room.
//!
//! # Rooms and their history
//!
//! Every room travels on the one channel, its name before each frame (`wire.rs`). With
//! `--history N`, the publisher appends each broadcast to its room's list in Redis, trimmed to
//! the last N and expiring after `--history-ttl`, and publishes it, in one script: the list
//! and the channel have one order. A newcomer joins its room *pending* (`delivery/hub.rs`) and
//! the publisher, in another script, reads the room's list and publishes a *history mark* for
//! it: the list it read is exactly what came on the channel before the mark. The newcomer gets
//! that list, then what came after its mark, with no gap and nothing twice, whichever instance
//! it is on and however long that instance has been up. While the link is down a newcomer gets
//! the history its instance heard, and the log says so.
//!
//! # When Redis is away
//!
//! When either connection fails, the link (`link.rs`) is *down*: it is logged once,
//! `/healthz` answers 503 with `"redis":"down"`, and the subscriber reconnects with a backoff
//! from 100 ms doubling to 5 s, then subscribes again. Meanwhile broadcasts are delivered to
//! this instance's clients only (at most once across the cluster: other instances miss them),
//! with one warning per outage and a count. Broadcasts published by others during the gap
//! are not seen here. The link's return is logged once too.
//!
//! At start, a URL that does not parse and a password Redis refuses are one-line errors
//! (retrying cannot fix them); a Redis that cannot be reached starts the instance with the
//! link down, retrying as above.

mod link;
mod publish_queue;
mod publisher;
mod subscriber;
pub(crate) mod wire;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;

use crate::config::ClusterConfig;
use crate::delivery::budget::Budget;
use crate::delivery::hub::{ConnectionId, HistorySettings, Hub, RoomName};
use crate::error::Error;
use crate::sync::lock;
use crate::sys::Waker;
pub(crate) use link::Health;
use link::{Link, link_lost};
use publish_queue::{Outgoing, PublishQueue};

/// How long connecting to Redis (TCP, TLS, AUTH, SELECT) may take, at start and on every
/// retry. On loopback or a LAN a healthy Redis answers in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one `PUBLISH` round trip may take before the link is declared down. Until then
/// the publish queue fills and senders wait (flow control); after it, broadcasts go to local
/// clients only.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnection backoff: the first retry after this, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// This instance's membership of a cluster: the publish queue connection threads push into,
/// and the link's state. Broadcasts go through it (`ServerState::broadcast`) and come back into
/// the hub.
#[derive(Debug)]
pub(crate) struct Cluster {
    queue: Arc<PublishQueue>,
    link: Arc<Link>,
    /// Dropped to stop both threads.
    stop: Mutex<Option<Sender<()>>>,
}

impl Cluster {
    /// Tries the cluster `config` names once (at most [`CONNECT_TIMEOUT`]), before anything
    /// else is logged. Fails only when retrying cannot help: a URL that does not parse, a
    /// refused password. An unreachable Redis is not an error: the instance starts with the
    /// link down and keeps trying.
    pub(crate) fn connect(config: &ClusterConfig) -> Result<Joining, Error> {
        // rediss:// uses rustls; make ring its provider for the process (nothing else in the
        // build offers another, but a second one would make rustls refuse to choose).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shown = config.shown_url();
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| Error::Redis(format!("{shown}: {e}")))?;
        let link = Arc::new(Link::new(shown.clone()));
        let first = match subscriber::connect(&client) {
            Ok(pair) => Some(pair),
            Err(e) if subscriber::is_auth_failure(&e) => {
                return Err(Error::Redis(format!(
                    "{shown} refused to let this instance in ({e}); check the password in \
                     --redis or REDIS_URL"
                )));
            }
            Err(e) => {
                link.start_outage(&format!("cannot reach {shown}: {e}"));
                None
            }
        };
        Ok(Joining {
            client,
            link,
            first,
            channel: config.channel.clone(),
        })
    }
}

/// What the cluster's threads need to know of the server's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_message_size: usize,
    pub(crate) max_backlog: usize,
    pub(crate) history: HistorySettings,
}

/// An id for this instance, to find its own history marks on the channel: the process id
/// and the time it started, mixed. Two instances would need to share both to collide.
fn instance_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    (u64::from(std::process::id()) << 32) ^ nanos
}

/// A cluster tried once, whose threads have not started yet.
pub(crate) struct Joining {
    client: redis::Client,
    link: Arc<Link>,
    /// The connections made at start, if Redis answered.
    first: Option<(redis::Connection, redis::Connection)>,
    channel: String,
}

impl std::fmt::Debug for Joining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joining")
            .field("link", &self.link)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Joining {
    /// Starts the publisher and the subscriber, which fan out into `hub` under `budget`.
    pub(crate) fn start(
        self,
        hub: &Arc<Hub>,
        budget: &Arc<Budget>,
        limits: Limits,
    ) -> Result<Cluster, Error> {
        let Limits {
            max_message_size,
            max_backlog,
            history,
        } = limits;
        let instance = instance_id();
        let Joining {
            client,
            link,
            first,
            channel,
        } = self;
        let queue = Arc::new(PublishQueue::new(Arc::clone(hub), max_backlog));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let (handover, handed) = crossbeam_channel::unbounded();
        let to_publish = queue.receiver.clone();
        let publisher = publisher::Publisher {
            queue: Arc::clone(&queue),
            link: Arc::clone(&link),
            hub: Arc::clone(hub),
            budget: Arc::clone(budget),
            channel: channel.clone(),
            history,
            instance,
            max_message_size,
            to_publish,
            handed,
            stopped: stopped.clone(),
        };
        thread::Builder::new()
            .name("redis-publisher".into())
            .spawn(move || publisher.run())
            .map_err(|e| Error::Io("starting the Redis publisher thread", e))?;
        let subscriber = subscriber::Subscriber {
            client,
            link: Arc::clone(&link),
            hub: Arc::clone(hub),
            budget: Arc::clone(budget),
            channel,
            instance,
            max_message_size,
            handover,
            stopped,
        };
        let waker =
            Waker::try_new().map_err(|e| Error::Io("creating the Redis subscriber's waker", e))?;
        thread::Builder::new()
            .name("redis-subscriber".into())
            .spawn(move || subscriber.run(first, waker))
            .map_err(|e| Error::Io("starting the Redis subscriber thread", e))?;
        Ok(Cluster {
            queue,
            link,
            stop: Mutex::new(Some(stop)),
        })
    }
}

impl Cluster {
    /// Sends a connection's broadcasts to the whole cluster: into the publish queue while the
    /// link is up, to this instance's clients at once while it is down. Never blocks.
    pub(crate) fn publish(&self, room: &RoomName, frames: &[Bytes]) {
        // While the link is down and nothing of this sender's is still in the queue, local
        // delivery can be done here; otherwise the publisher delivers in queue order.
        if !self.link.is_up() && self.queue.is_empty() {
            self.link.delivered_locally(frames.len());
            self.queue.hub.broadcast(room, frames);
        } else {
            self.queue.push(room, frames);
        }
    }

    /// Whether the link to Redis is up.
    pub(crate) fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// Asks Redis for the history of `room` for the pending newcomer `joiner` (see the
    /// module's docs); never blocks. If the link goes down first, the newcomer gets this
    /// instance's history instead.
    pub(crate) fn request_history(&self, room: &RoomName, joiner: ConnectionId) {
        self.queue.push_history(room, joiner);
    }

    /// The link's state and counts.
    pub(crate) fn health(&self) -> Health {
        self.link.health()
    }

    /// Stops both threads (they end within a second: the subscriber's read timeout).
    pub(crate) fn stop(&self) {
        self.link.stop();
        lock(&self.stop).take();
    }
}
