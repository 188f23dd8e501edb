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
//! - the **publisher** (`publisher.rs`) takes broadcasts from the *publish queue*, which
//!   connection threads push into without blocking, and sends them with `PUBLISH`, many per
//!   round trip (a pipeline). The queue counts its bytes: past a high mark (`--max-backlog`)
//!   every room is congested, so broadcasting connections stop reading until it is down to
//!   half, exactly as when a listener is behind (see `delivery/outbox.rs`). Nothing is dropped and
//!   nothing grows without bound; the frames also count against the memory ceiling.
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
//! When either connection fails, the link is *down*: it is logged once, `/healthz` answers
//! 503 with `"redis":"down"`, and the subscriber reconnects with a backoff from 100 ms
//! doubling to 5 s, then subscribes again. Meanwhile broadcasts are delivered to this
//! instance's clients only (at most once across the cluster: other instances miss them),
//! with one warning per outage and a count. Broadcasts published by others during the gap
//! are not seen here. The link's return is logged once too.
//!
//! At start, a URL that does not parse and a password Redis refuses are one-line errors
//! (retrying cannot fix them); a Redis that cannot be reached starts the instance with the
//! link down, retrying as above.

mod publisher;
mod subscriber;
pub(crate) mod wire;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};

use crate::config::ClusterConfig;
use crate::delivery::budget::Budget;
use crate::delivery::hub::{ConnectionId, HistorySettings, Hub, RoomName};
use crate::error::Error;
use crate::logging::Throttle;
use crate::sync::lock;
use crate::sys::Waker;

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

/// What the link reports, for `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Health {
    pub up: bool,
    /// Outages since start (the one at start included).
    pub outages: u64,
    /// Broadcasts delivered to this instance's clients only, because the link was down.
    pub local_only: u64,
    /// Messages on the channel refused as not in the wire format.
    pub malformed: u64,
    /// Broadcasts this instance published, and received from the channel.
    pub published: u64,
    pub received: u64,
}

/// What the publisher sends to Redis, in the order connection threads queued it.
#[derive(Debug)]
enum Outgoing {
    /// A broadcast to a room.
    Broadcast(RoomName, Bytes),
    /// Read a room's history for a pending newcomer, and publish its mark.
    History(RoomName, ConnectionId),
}

impl Outgoing {
    /// Bytes it counts against the publish queue's bound.
    fn len(&self) -> usize {
        match self {
            Outgoing::Broadcast(_, frame) => frame.len(),
            Outgoing::History(..) => 0,
        }
    }
}

/// This instance's membership of a cluster: the publish queue connection threads push into,
/// and the link's state. Broadcasts go through it (`Shared::broadcast`) and come back into
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

/// The link broke (or was found broken): marks it down, logs the outage once, and gives
/// every pending newcomer this instance's history, as theirs will not come.
fn link_lost(link: &Link, hub: &Hub, generation: u64, why: &str) {
    link.go_down(generation, why);
    // Offsets come from Redis: without it, every room numbers its broadcasts itself, in an
    // epoch of its own, and resuming clients are told so.
    hub.renumber_here();
    let newcomers = hub.history_from_here();
    if newcomers > 0 {
        info!(
            "redis: {} waiting for history from Redis get this instance's instead: the link \
             is down",
            crate::logging::count(newcomers as u64, "newcomer")
        );
    }
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
        self.link.stopping.store(true, Ordering::SeqCst);
        lock(&self.stop).take();
    }
}

/// The queue of broadcasts waiting to be published, bounded in bytes by flow control.
#[derive(Debug)]
struct PublishQueue {
    sender: Sender<Outgoing>,
    receiver: Receiver<Outgoing>,
    /// Bytes pushed and not yet published (or delivered locally): queued or in flight.
    bytes: AtomicUsize,
    high: usize,
    low: usize,
    /// Whether the queue counts as full now; changed only under this lock, after a mark was
    /// crossed, so the flag and the hub's flow agree with the count whichever thread crossed.
    full: Mutex<bool>,
    /// "Publish queue full", at most once per [`FULL_LOG_INTERVAL`].
    full_log: Throttle,
    hub: Arc<Hub>,
}

/// "Publish queue full" is logged at most once per this interval.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl PublishQueue {
    fn new(hub: Arc<Hub>, max_backlog: usize) -> PublishQueue {
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

    fn is_empty(&self) -> bool {
        self.bytes.load(Ordering::SeqCst) == 0
    }

    /// Queues frames; never refused, never blocks. Past the high mark the hub is congested and
    /// senders stop reading, so the queue overshoots by at most one read's worth per sender.
    fn push(&self, room: &RoomName, frames: &[Bytes]) {
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
    fn push_history(&self, room: &RoomName, joiner: ConnectionId) {
        let _ = self
            .sender
            .send(Outgoing::History(Arc::clone(room), joiner));
    }

    /// Records that `len` bytes were published or delivered locally.
    fn taken(&self, len: usize) {
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

/// The link's state, shared by the two threads, the connection threads and `/healthz`.
#[derive(Debug)]
struct Link {
    /// The URL, password hidden.
    shown: String,
    /// Non-zero while the link is up: the number of the connection pair in use, new on each
    /// reconnection. The publisher drops a connection whose number is no longer this.
    generation: AtomicU64,
    last_generation: AtomicU64,
    stopping: AtomicBool,
    outage: Mutex<Option<Outage>>,
    outages: AtomicU64,
    local_only: AtomicU64,
    malformed: AtomicU64,
    /// Malformed messages, logged at most once per `MALFORMED_LOG_INTERVAL`.
    malformed_log: Throttle,
    published: AtomicU64,
    received: AtomicU64,
}

/// What is known of the current outage, for the line that logs its end.
#[derive(Debug)]
struct Outage {
    since: Instant,
    attempts: u64,
    local_only: u64,
    /// Whether the first broadcast delivered locally was logged.
    warned: bool,
}

impl Link {
    fn new(shown: String) -> Link {
        Link {
            shown,
            generation: AtomicU64::new(0),
            last_generation: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            outage: Mutex::new(None),
            outages: AtomicU64::new(0),
            local_only: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            malformed_log: Throttle::new(subscriber::MALFORMED_LOG_INTERVAL),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    fn is_up(&self) -> bool {
        self.generation.load(Ordering::SeqCst) != 0
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Marks the link up with a new connection pair; returns its number. Logs the end of the
    /// outage, if there was one.
    fn go_up(&self, channel: &str) -> u64 {
        let generation = self.last_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let ended = lock(&self.outage).take();
        self.generation.store(generation, Ordering::SeqCst);
        match ended {
            None => info!(
                "redis link up: subscribed to channel {channel:?} on {}",
                self.shown
            ),
            Some(outage) => info!(
                "redis link up again after {:.1?} down: subscribed to channel {channel:?} on \
                 {}; {} delivered to this instance's clients only meanwhile, {} while down",
                outage.since.elapsed(),
                self.shown,
                crate::logging::count(outage.local_only, "broadcast"),
                crate::logging::count(outage.attempts, "failed attempt"),
            ),
        }
        generation
    }

    /// Marks the link down, if connection pair `generation` is still the one in use (the
    /// other thread may have found out first). Logs the outage once.
    fn go_down(&self, generation: u64, why: &str) {
        if self
            .generation
            .compare_exchange(generation, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.start_outage(why);
        }
    }

    /// Begins an outage (at start, or when the link goes down) and logs it.
    fn start_outage(&self, why: &str) {
        let mut outage = lock(&self.outage);
        if outage.is_none() {
            *outage = Some(Outage {
                since: Instant::now(),
                attempts: 0,
                local_only: 0,
                warned: false,
            });
            self.outages.fetch_add(1, Ordering::Relaxed);
            warn!(
                "redis link down: {why}; broadcasts reach this instance's clients only until \
                 it is back; reconnecting (backoff {}ms doubling to {}s)",
                FIRST_BACKOFF.as_millis(),
                MAX_BACKOFF.as_secs()
            );
        }
    }

    /// Counts a failed attempt to reconnect.
    fn attempt_failed(&self) {
        if let Some(outage) = lock(&self.outage).as_mut() {
            outage.attempts += 1;
        }
    }

    /// Counts broadcasts delivered to local clients only; the first of an outage is logged.
    fn delivered_locally(&self, n: usize) {
        let n = n as u64;
        self.local_only.fetch_add(n, Ordering::Relaxed);
        let mut outage = lock(&self.outage);
        if let Some(outage) = outage.as_mut() {
            outage.local_only += n;
            if !outage.warned {
                outage.warned = true;
                warn!(
                    "redis link down: broadcasts go to this instance's clients only, other \
                     instances miss them (logged once per outage, counted in /healthz)"
                );
            }
        }
    }

    fn health(&self) -> Health {
        Health {
            up: self.is_up(),
            outages: self.outages.load(Ordering::Relaxed),
            local_only: self.local_only.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}

impl Health {
    /// The fields `/healthz` adds for a cluster member, starting with a comma.
    pub(crate) fn json_fields(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            ",\"redis\":\"{}\",\"redis_outages\":{},\"redis_local_only\":{},\
             \"redis_malformed\":{},\"redis_published\":{},\"redis_received\":{}",
            if self.up { "up" } else { "down" },
            self.outages,
            self.local_only,
            self.malformed,
            self.published,
            self.received
        );
        out
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

    #[test]
    fn the_link_goes_down_once_per_connection_pair_and_counts_its_outages() {
        let link = Link::new("redis://x/".into());
        let first = link.go_up("c");
        assert!(link.is_up());
        link.go_down(first + 1, "a stale pair"); // not the pair in use: ignored
        assert!(link.is_up());
        link.go_down(first, "lost");
        link.go_down(first, "lost again");
        assert!(!link.is_up());
        link.delivered_locally(2);
        let second = link.go_up("c");
        assert!(second > first);
        let health = link.health();
        assert_eq!((health.up, health.outages, health.local_only), (true, 1, 2));
        assert!(
            health
                .json_fields()
                .starts_with(",\"redis\":\"up\",\"redis_outages\":1,")
        );
    }
}
