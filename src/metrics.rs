//! `GET /metrics`: what the server is doing, in Prometheus's text format.
//!
//! The counters are `prometheus-client`'s: atomics that any thread bumps, and an encoder that
//! writes the exposition format Prometheus and `promtool` read (`text/plain; version=0.0.4`).
//! A connection's thread adds up its messages and bytes itself and hands the sums over once per
//! round of its loop, so the hot path touches the shared counters once per wake-up, not once
//! per message. Gauges that are a reading of something else (memory held) are read when the
//! metrics are rendered.
//!
//! The endpoint is on the WebSocket port, like `/healthz`; `--no-metrics` turns it off. It
//! says nothing about clients but counts, but an operator may still want it private: see the
//! docs/deploying.md.

#[cfg(feature = "metrics")]
use std::sync::atomic::AtomicI64;

#[cfg(feature = "metrics")]
use prometheus_client::encoding::EncodeLabelSet;
#[cfg(feature = "metrics")]
use prometheus_client::metrics::counter::Counter;
#[cfg(feature = "metrics")]
use prometheus_client::metrics::family::Family;
#[cfg(feature = "metrics")]
use prometheus_client::metrics::gauge::Gauge;
#[cfg(feature = "metrics")]
use prometheus_client::registry::{Registry, Unit};
use tungstenite::protocol::frame::coding::CloseCode;

/// What the server counts. Every count goes through a method here, so that a build without
/// the `metrics` feature keeps only what `/healthz` and the final summary report (messages
/// received) and compiles the rest away.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Data messages received from clients: `/healthz` and the summary at shutdown report it.
    messages_received: Received,
    /// The Prometheus side: registered counters, and the registry `/metrics` renders.
    #[cfg(feature = "metrics")]
    exported: Exported,
}

/// The count of messages received: one of the exported counters, or a plain one.
#[cfg(feature = "metrics")]
type Received = Counter;
#[cfg(not(feature = "metrics"))]
#[derive(Debug, Default)]
struct Received(std::sync::atomic::AtomicU64);

#[cfg(not(feature = "metrics"))]
impl Received {
    fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Every metric `/metrics` reports.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Exported {
    registry: Registry,
    /// WebSocket connections open now.
    connections_open: Gauge,
    /// WebSocket connections opened over the server's life.
    connections_accepted: Counter,
    /// WebSocket connections closed, by how they ended.
    connections_closed: Family<Ending, Counter>,
    /// HTTP responses sent, upgrades (101) included, by status.
    http_requests: Family<Status, Counter>,
    /// Connections or requests refused, by reason.
    rejections: Family<Rejection, Counter>,
    /// Data messages received from clients, read from [`Metrics`] at each scrape.
    messages_received: Counter,
    /// Payload bytes of those messages.
    bytes_received: Counter,
    /// Data messages queued to clients: echoes, broadcast copies, greetings.
    messages_sent: Counter,
    /// Bytes of those messages' frames.
    bytes_sent: Counter,
    /// Messages fanned out to every listener (one per message, however many listeners).
    broadcasts: Counter,
    /// Greetings sent.
    greetings: Counter,
    /// Listeners closed with 1008 for staying behind past the send timeout.
    slow_clients_closed: Counter,
    /// Bytes held against the memory ceiling, read at each scrape.
    memory_bytes: Gauge<i64, AtomicI64>,
    /// The memory ceiling.
    memory_limit_bytes: Gauge<i64, AtomicI64>,
    /// Rooms with a client or history, read at each scrape. One gauge, no label per room: a
    /// label per room would make the series unbounded.
    rooms: Gauge<i64, AtomicI64>,
    /// With `--redis`: 1 while the link to Redis is up, 0 while it is down (registered only
    /// then, so that a lone instance does not report a link it does not have).
    redis_up: Option<Gauge<i64, AtomicI64>>,
    /// With `--redis`: outages of the link since start.
    redis_outages: Option<Gauge<i64, AtomicI64>>,
}

/// The `code` label of closed connections: the class of close code they ended with.
#[cfg(feature = "metrics")]
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Ending {
    /// `normal`, `going_away`, `protocol_error`, `policy`, `too_big`, `try_again`,
    /// `server_error`, `abnormal` (no Close frame), `no_status`, `application`, `other`.
    code: &'static str,
}

#[cfg(feature = "metrics")]
impl Ending {
    /// The class of a close code.
    fn of(code: CloseCode) -> Ending {
        let code = match code {
            CloseCode::Normal => "normal",
            CloseCode::Away => "going_away",
            CloseCode::Protocol | CloseCode::Unsupported | CloseCode::Invalid => "protocol_error",
            CloseCode::Policy => "policy",
            CloseCode::Size => "too_big",
            CloseCode::Again => "try_again",
            CloseCode::Error => "server_error",
            CloseCode::Abnormal => "abnormal",
            CloseCode::Status => "no_status",
            CloseCode::Library(_) | CloseCode::Iana(_) => "application",
            _ => "other",
        };
        Ending { code }
    }
}

/// The `status` label of HTTP responses.
#[cfg(feature = "metrics")]
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Status {
    /// The status code.
    status: u16,
}

/// The `reason` label of rejections.
#[cfg(feature = "metrics")]
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Rejection {
    /// `limit` (the connection limit), `per_address`, `origin` (403), `bad_request` (other
    /// 4xx), `memory` (1013: memory full), `shutting_down`.
    reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(false)
    }
}

impl Metrics {
    /// The metrics of a server; `cluster`: it is one instance of a cluster (`--redis`), which
    /// reports its Redis link too.
    pub(crate) fn new(cluster: bool) -> Metrics {
        let _ = cluster;
        let messages_received = Received::default();
        Metrics {
            #[cfg(feature = "metrics")]
            exported: Exported::new(cluster, messages_received.clone()),
            messages_received,
        }
    }

    /// Counts a WebSocket connection opened.
    pub(crate) fn connection_opened(&self) {
        #[cfg(feature = "metrics")]
        {
            self.exported.connections_accepted.inc();
            self.exported.connections_open.inc();
        }
    }

    /// Counts a WebSocket connection closed, with the close code it ended with.
    pub(crate) fn connection_closed(&self, code: CloseCode) {
        let _ = code;
        #[cfg(feature = "metrics")]
        {
            self.exported.connections_open.dec();
            self.exported
                .connections_closed
                .get_or_create(&Ending::of(code))
                .inc();
        }
    }

    /// Counts an HTTP response.
    pub(crate) fn http_response(&self, status: u16) {
        let _ = status;
        #[cfg(feature = "metrics")]
        self.exported
            .http_requests
            .get_or_create(&Status { status })
            .inc();
    }

    /// Counts a rejection: `limit` (the connection limit), `per_address`, `origin` (403),
    /// `bad_request` (other 4xx), `memory` (1013: memory full), `shutting_down`.
    pub(crate) fn reject(&self, reason: &'static str) {
        let _ = reason;
        #[cfg(feature = "metrics")]
        self.exported
            .rejections
            .get_or_create(&Rejection { reason })
            .inc();
    }

    /// Counts data messages received from clients, and their payload bytes.
    pub(crate) fn received(&self, messages: u64, bytes: u64) {
        self.messages_received.inc_by(messages);
        let _ = bytes;
        #[cfg(feature = "metrics")]
        self.exported.bytes_received.inc_by(bytes);
    }

    /// Data messages received from clients since start.
    pub(crate) fn messages_received(&self) -> u64 {
        self.messages_received.get()
    }

    /// Counts data messages handed to clients (echoes, broadcast copies, greetings), and their
    /// frames' bytes. Every such message is counted here, once, by the thread that hands it
    /// over, whichever way it then travels to the socket.
    pub(crate) fn sent(&self, messages: u64, bytes: u64) {
        let _ = (messages, bytes);
        #[cfg(feature = "metrics")]
        {
            self.exported.messages_sent.inc_by(messages);
            self.exported.bytes_sent.inc_by(bytes);
        }
    }

    /// Counts messages fanned out to every listener (one per message, however many listeners).
    pub(crate) fn broadcasts(&self, messages: u64) {
        let _ = messages;
        #[cfg(feature = "metrics")]
        self.exported.broadcasts.inc_by(messages);
    }

    /// Counts a greeting handed to its client.
    pub(crate) fn greeting(&self) {
        #[cfg(feature = "metrics")]
        self.exported.greetings.inc();
    }

    /// Counts a listener closed with 1008 for staying behind past the send timeout.
    pub(crate) fn slow_client_closed(&self) {
        #[cfg(feature = "metrics")]
        self.exported.slow_clients_closed.inc();
    }

    /// The exposition text, with the readings taken now: memory, and the Redis link as
    /// `(up, outages)` when there is one.
    #[cfg(feature = "metrics")]
    pub(crate) fn render(
        &self,
        memory_used: usize,
        memory_limit: usize,
        rooms: usize,
        redis: Option<(bool, u64)>,
    ) -> String {
        let exported = &self.exported;
        exported.rooms.set(i64::try_from(rooms).unwrap_or(i64::MAX));
        if let (Some(gauge), Some((up, _))) = (&exported.redis_up, redis) {
            gauge.set(i64::from(up));
        }
        if let (Some(gauge), Some((_, outages))) = (&exported.redis_outages, redis) {
            gauge.set(i64::try_from(outages).unwrap_or(i64::MAX));
        }
        exported
            .memory_bytes
            .set(i64::try_from(memory_used).unwrap_or(i64::MAX));
        exported
            .memory_limit_bytes
            .set(i64::try_from(memory_limit).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &exported.registry);
        text
    }
}

#[cfg(feature = "metrics")]
impl Exported {
    fn new(cluster: bool, messages_received: Counter) -> Exported {
        let exported = Exported {
            registry: Registry::with_prefix("wsecho"),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_closed: Family::default(),
            http_requests: Family::default(),
            rejections: Family::default(),
            messages_received,
            bytes_received: Counter::default(),
            messages_sent: Counter::default(),
            bytes_sent: Counter::default(),
            broadcasts: Counter::default(),
            greetings: Counter::default(),
            slow_clients_closed: Counter::default(),
            memory_bytes: Gauge::default(),
            memory_limit_bytes: Gauge::default(),
            rooms: Gauge::default(),
            redis_up: cluster.then(Gauge::default),
            redis_outages: cluster.then(Gauge::default),
        };
        exported.registered()
    }

    fn registered(mut self) -> Exported {
        let r = &mut self.registry;
        r.register(
            "connections_open",
            "WebSocket connections open now",
            self.connections_open.clone(),
        );
        r.register(
            "connections_accepted",
            "WebSocket connections opened",
            self.connections_accepted.clone(),
        );
        r.register(
            "connections_closed",
            "WebSocket connections closed, by the class of their close code",
            self.connections_closed.clone(),
        );
        r.register(
            "http_requests",
            "HTTP responses sent (upgrades included), by status",
            self.http_requests.clone(),
        );
        r.register(
            "rejections",
            "Connections and requests refused, by reason",
            self.rejections.clone(),
        );
        r.register(
            "messages_received",
            "Data messages received from clients",
            self.messages_received.clone(),
        );
        r.register_with_unit(
            "received",
            "Payload bytes of data messages received",
            Unit::Bytes,
            self.bytes_received.clone(),
        );
        r.register(
            "messages_sent",
            "Data messages queued to clients (echoes, broadcast copies, greetings)",
            self.messages_sent.clone(),
        );
        r.register_with_unit(
            "sent",
            "Frame bytes of data messages queued to clients",
            Unit::Bytes,
            self.bytes_sent.clone(),
        );
        r.register(
            "broadcasts",
            "Messages fanned out to every listener",
            self.broadcasts.clone(),
        );
        r.register("greetings", "Greetings sent", self.greetings.clone());
        r.register(
            "slow_clients_closed",
            "Listeners closed with 1008 for staying behind past the send timeout",
            self.slow_clients_closed.clone(),
        );
        r.register_with_unit(
            "memory",
            "Bytes held against the memory ceiling",
            Unit::Bytes,
            self.memory_bytes.clone(),
        );
        r.register_with_unit(
            "memory_limit",
            "The memory ceiling",
            Unit::Bytes,
            self.memory_limit_bytes.clone(),
        );
        r.register(
            "rooms",
            "Rooms with a client or history",
            self.rooms.clone(),
        );
        if let Some(up) = &self.redis_up {
            r.register(
                "redis_up",
                "1 while the link to Redis is up, 0 while it is down",
                up.clone(),
            );
        }
        if let Some(outages) = &self.redis_outages {
            r.register(
                "redis_outages",
                "Outages of the link to Redis since start",
                outages.clone(),
            );
        }
        self
    }
}

/// A connection's own sums, handed to the shared counters once per round of its loop.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Data messages received.
    pub(crate) received: u64,
    /// Payload bytes received.
    pub(crate) received_bytes: u64,
    /// Data messages handed to the client (echoes).
    pub(crate) sent: u64,
    /// Frame bytes of those.
    pub(crate) sent_bytes: u64,
}

impl Tally {
    /// Adds the sums to `metrics` and starts again from zero.
    pub(crate) fn flush(&mut self, metrics: &Metrics) {
        if self.received > 0 {
            metrics.received(self.received, self.received_bytes);
        }
        if self.sent > 0 {
            metrics.sent(self.sent, self.sent_bytes);
        }
        *self = Tally::default();
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_metric_with_help_and_type() {
        let metrics = Metrics::default();
        metrics.http_response(200);
        metrics.reject("origin");
        metrics.connection_opened();
        metrics.connection_closed(CloseCode::Policy);
        metrics.received(3, 30);
        let text = metrics.render(5, 10, 3, None);
        assert!(!text.contains("redis"), "no link, no link metrics:\n{text}");
        let clustered = Metrics::new(true).render(0, 1, 0, Some((true, 2)));
        assert!(clustered.contains("wsecho_redis_up 1"), "{clustered}");
        assert!(clustered.contains("wsecho_redis_outages 2"), "{clustered}");
        for line in [
            "# TYPE wsecho_connections_open gauge",
            "# HELP wsecho_connections_accepted_total WebSocket connections opened",
            "wsecho_http_requests_total{status=\"200\"} 1",
            "wsecho_rejections_total{reason=\"origin\"} 1",
            "wsecho_connections_closed_total{code=\"policy\"} 1",
            "wsecho_memory_bytes 5",
            "wsecho_memory_limit_bytes 10",
            "wsecho_sent_bytes_total 0",
            "wsecho_messages_received_total 3",
            "wsecho_connections_open 0",
            "wsecho_rooms 3",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }
}
