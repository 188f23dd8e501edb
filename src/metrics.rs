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
//! README's "Deploying".

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tungstenite::protocol::frame::coding::CloseCode;

/// The content type of the text format `promtool check metrics` reads.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// WebSocket connections open now.
    pub connections_open: Gauge,
    /// WebSocket connections opened over the server's life.
    pub connections_accepted: Counter,
    /// WebSocket connections closed, by how they ended.
    pub connections_closed: Family<Ending, Counter>,
    /// HTTP responses sent, upgrades (101) included, by status.
    pub http_requests: Family<Status, Counter>,
    /// Connections or requests refused, by reason.
    pub rejections: Family<Rejection, Counter>,
    /// Data messages received from clients.
    pub messages_received: Counter,
    /// Payload bytes of those messages.
    pub bytes_received: Counter,
    /// Data messages queued to clients: echoes, broadcast copies, greetings.
    pub messages_sent: Counter,
    /// Bytes of those messages' frames.
    pub bytes_sent: Counter,
    /// Messages fanned out to every listener (one per message, however many listeners).
    pub broadcasts: Counter,
    /// Greetings sent.
    pub greetings: Counter,
    /// Listeners closed with 1008 for staying behind past the send timeout.
    pub slow_clients_closed: Counter,
    /// Bytes held against the memory ceiling, read at each scrape.
    pub memory_bytes: Gauge<i64, AtomicI64>,
    /// The memory ceiling.
    pub memory_limit_bytes: Gauge<i64, AtomicI64>,
    /// With `--redis`: 1 while the link to Redis is up, 0 while it is down (registered only
    /// then, so that a lone instance does not report a link it does not have).
    pub redis_up: Option<Gauge<i64, AtomicI64>>,
    /// With `--redis`: outages of the link since start.
    pub redis_outages: Option<Gauge<i64, AtomicI64>>,
}

/// The `code` label of closed connections: the class of close code they ended with.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ending {
    /// `normal`, `going_away`, `protocol_error`, `policy`, `too_big`, `try_again`,
    /// `server_error`, `abnormal` (no Close frame), `no_status`, `application`, `other`.
    pub code: &'static str,
}

impl Ending {
    /// The class of a close code.
    pub fn of(code: CloseCode) -> Ending {
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
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    /// The status code.
    pub status: u16,
}

/// The `reason` label of rejections.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rejection {
    /// `limit` (the connection limit), `per_address`, `origin` (403), `bad_request` (other
    /// 4xx), `memory` (1013: memory full), `shutting_down`.
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(false)
    }
}

impl Metrics {
    /// The metrics of a server; `cluster`: it is one instance of a cluster (`--redis`).
    pub fn new(cluster: bool) -> Metrics {
        let metrics = Metrics {
            registry: Registry::with_prefix("wsecho"),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_closed: Family::default(),
            http_requests: Family::default(),
            rejections: Family::default(),
            messages_received: Counter::default(),
            bytes_received: Counter::default(),
            messages_sent: Counter::default(),
            bytes_sent: Counter::default(),
            broadcasts: Counter::default(),
            greetings: Counter::default(),
            slow_clients_closed: Counter::default(),
            memory_bytes: Gauge::default(),
            memory_limit_bytes: Gauge::default(),
            redis_up: cluster.then(Gauge::default),
            redis_outages: cluster.then(Gauge::default),
        };
        metrics.registered()
    }

    fn registered(mut self) -> Metrics {
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

    /// Counts an HTTP response.
    pub fn http_response(&self, status: u16) {
        self.http_requests.get_or_create(&Status { status }).inc();
    }

    /// Counts a rejection.
    pub fn reject(&self, reason: &'static str) {
        self.rejections.get_or_create(&Rejection { reason }).inc();
    }

    /// The exposition text, with the readings taken now: memory, and the Redis link as
    /// `(up, outages)` when there is one.
    pub fn render(
        &self,
        memory_used: usize,
        memory_limit: usize,
        redis: Option<(bool, u64)>,
    ) -> String {
        if let (Some(gauge), Some((up, _))) = (&self.redis_up, redis) {
            gauge.set(i64::from(up));
        }
        if let (Some(gauge), Some((_, outages))) = (&self.redis_outages, redis) {
            gauge.set(i64::try_from(outages).unwrap_or(i64::MAX));
        }
        self.memory_bytes
            .set(i64::try_from(memory_used).unwrap_or(i64::MAX));
        self.memory_limit_bytes
            .set(i64::try_from(memory_limit).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// A connection's own sums, handed to the shared counters once per round of its loop.
#[derive(Debug, Default)]
pub struct Tally {
    /// Data messages received, and their payload bytes.
    pub received: u64,
    /// Payload bytes received.
    pub received_bytes: u64,
    /// Data messages queued to the client.
    pub sent: u64,
    /// Frame bytes queued to the client.
    pub sent_bytes: u64,
}

impl Tally {
    /// Adds the sums to `metrics` and starts again from zero.
    pub fn flush(&mut self, metrics: &Metrics) {
        if self.received > 0 {
            metrics.messages_received.inc_by(self.received);
            metrics.bytes_received.inc_by(self.received_bytes);
        }
        if self.sent > 0 {
            metrics.messages_sent.inc_by(self.sent);
            metrics.bytes_sent.inc_by(self.sent_bytes);
        }
        *self = Tally::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_metric_with_help_and_type() {
        let metrics = Metrics::default();
        metrics.http_response(200);
        metrics.reject("origin");
        metrics
            .connections_closed
            .get_or_create(&Ending::of(CloseCode::Policy))
            .inc();
        let text = metrics.render(5, 10, None);
        assert!(!text.contains("redis"), "no link, no link metrics:\n{text}");
        let clustered = Metrics::new(true).render(0, 1, Some((true, 2)));
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
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }
}
