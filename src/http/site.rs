//! The plain HTTP side of the port: the browser demo page, a health check and the metrics.
//!
//! It sees the server only through [`Inspect`]: what `/healthz` and `/metrics` report, read
//! at each request.

use std::time::Duration;

use crate::config::Mode;
use crate::http::{Request, Response};

/// The browser client: one self-contained file (HTML, CSS, JS), built into the binary.
pub(crate) const DEMO_PAGE: &str = include_str!("demo/index.html");

/// The content type of the text format `promtool check metrics` reads.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/healthz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    /// WebSocket connections open now.
    pub(crate) connections: usize,
    pub(crate) uptime: Duration,
    /// Data messages received since start.
    pub(crate) messages: u64,
    pub(crate) mode: Mode,
    /// `None`: no greeting.
    pub(crate) greeting_delay: Option<Duration>,
    /// Rooms with a client or history.
    pub(crate) rooms: usize,
    /// Bytes held against the memory ceiling, and the ceiling.
    pub(crate) memory_bytes: usize,
    pub(crate) memory_limit_bytes: usize,
    /// A cluster member's link to Redis: whether it is up, and the JSON fields that describe
    /// it, each starting with a comma.
    pub(crate) cluster: Option<(bool, String)>,
}

/// The server, as the plain HTTP side sees it.
pub(crate) trait Inspect {
    /// What `/healthz` reports, now.
    fn health(&self) -> Health;
    /// The Prometheus text of `/metrics`, now; `None` when metrics are off (404).
    fn metrics(&self) -> Option<String>;
}

/// Answers a request that is not a WebSocket handshake.
#[inline(never)]
pub(crate) fn respond(request: &Request, demo_page: bool, server: &dyn Inspect) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text(
            405,
            format!("method {} is not allowed here", request.method),
        )
        .with_header("Allow", "GET, HEAD");
    }
    let path = request.path();
    match path {
        "/" | "/index.html" if demo_page => Response {
            status: 200,
            headers: vec![("Cache-Control", "no-cache".into())],
            content_type: "text/html; charset=utf-8",
            body: DEMO_PAGE.as_bytes().to_vec(),
        },
        "/healthz" => {
            let health = server.health();
            Response {
                // A cluster member whose Redis link is down serves its own clients only: 503,
                // so that a load balancer's health check sends new clients elsewhere.
                status: if health.degraded() { 503 } else { 200 },
                headers: vec![("Cache-Control", "no-store".into())],
                content_type: "application/json",
                body: health.json().into_bytes(),
            }
        }
        "/metrics" => match server.metrics() {
            Some(text) => Response {
                status: 200,
                headers: vec![("Cache-Control", "no-store".into())],
                content_type: METRICS_CONTENT_TYPE,
                body: text.into_bytes(),
            },
            None => not_found(path),
        },
        path => not_found(path),
    }
}

/// The path of the request echo: `GET /echo` (and `HEAD`) answers what the `whoami` test
/// control sends, so that a proxy's path can be checked before any upgrade.
pub(crate) const ECHO_PATH: &str = "/echo";

/// Whether `request` asks for the request echo (with test controls on).
pub(crate) fn is_echo_request(request: &Request) -> bool {
    request.path() == ECHO_PATH && (request.method == "GET" || request.method == "HEAD")
}

/// The request echo's answer: `json` (`http::controls::whoami`), never cached.
pub(crate) fn echo_request(json: String) -> Response {
    Response {
        status: 200,
        headers: vec![("Cache-Control", "no-store".into())],
        content_type: "application/json",
        body: (json + "\n").into_bytes(),
    }
}

fn not_found(path: &str) -> Response {
    Response::text(
        404,
        format!("nothing at {path}; WebSocket clients connect to any path"),
    )
}

impl Health {
    /// Whether the server serves its own clients only (a cluster member cut off from Redis).
    fn degraded(&self) -> bool {
        matches!(self.cluster, Some((false, _)))
    }

    /// The `/healthz` body, for deployment checks (and the demo page, which shows the mode).
    fn json(&self) -> String {
        let mode = match self.mode {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
        };
        let greeting_delay_ms = match self.greeting_delay {
            Some(delay) => delay.as_millis().to_string(),
            None => "null".to_string(),
        };
        let status = if self.degraded() { "degraded" } else { "ok" };
        let cluster = self.cluster.as_ref().map_or("", |(_, fields)| fields);
        format!(
            "{{\"status\":\"{status}\",\"connections\":{},\"uptime_seconds\":{},\"messages\":{},\
             \"mode\":\"{mode}\",\"greeting_delay_ms\":{greeting_delay_ms},\"rooms\":{},\
             \"memory_bytes\":{},\"memory_limit_bytes\":{}{cluster}}}\n",
            self.connections,
            self.uptime.as_secs(),
            self.messages,
            self.rooms,
            self.memory_bytes,
            self.memory_limit_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn get(method: &str, target: &str) -> Request {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        parse_head(raw.as_bytes(), 8192).unwrap().unwrap().0
    }

    /// A server of the default configuration, with no connection yet.
    struct Fresh {
        metrics: bool,
        cluster_up: Option<bool>,
    }

    impl Inspect for Fresh {
        fn health(&self) -> Health {
            Health {
                connections: 0,
                uptime: Duration::from_secs(3),
                messages: 0,
                mode: Mode::Echo,
                greeting_delay: Some(Duration::from_secs(2)),
                rooms: 0,
                memory_bytes: 0,
                memory_limit_bytes: 1 << 30,
                cluster: self.cluster_up.map(|up| {
                    (
                        up,
                        format!(",\"redis\":\"{}\"", if up { "up" } else { "down" }),
                    )
                }),
            }
        }

        fn metrics(&self) -> Option<String> {
            self.metrics
                .then(|| "wsecho_memory_limit_bytes 1073741824\n".to_string())
        }
    }

    const SERVER: Fresh = Fresh {
        metrics: true,
        cluster_up: None,
    };

    #[test]
    fn routes() {
        assert_eq!(respond(&get("GET", "/"), true, &SERVER).status, 200);
        assert_eq!(
            respond(&get("GET", "/index.html?x"), true, &SERVER).status,
            200
        );
        assert_eq!(respond(&get("GET", "/"), false, &SERVER).status, 404);
        assert_eq!(respond(&get("GET", "/nope"), true, &SERVER).status, 404);
        assert_eq!(respond(&get("POST", "/"), true, &SERVER).status, 405);
        let health = respond(&get("GET", "/healthz"), true, &SERVER);
        let body = String::from_utf8(health.body).unwrap();
        assert!(
            body.starts_with("{\"status\":\"ok\",\"connections\":0,\"uptime_seconds\":3,"),
            "{body}"
        );
        assert!(
            body.contains("\"mode\":\"echo\",\"greeting_delay_ms\":2000,\"rooms\":0,"),
            "{body}"
        );
        assert!(
            body.ends_with("\"memory_limit_bytes\":1073741824}\n"),
            "{body}"
        );
        let metrics = respond(&get("GET", "/metrics"), true, &SERVER);
        assert_eq!(
            metrics.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let off = Fresh {
            metrics: false,
            cluster_up: None,
        };
        assert_eq!(respond(&get("GET", "/metrics"), true, &off).status, 404);
    }

    #[test]
    fn a_cluster_member_cut_off_from_redis_is_degraded() {
        let down = Fresh {
            metrics: true,
            cluster_up: Some(false),
        };
        let health = respond(&get("GET", "/healthz"), true, &down);
        assert_eq!(health.status, 503);
        let body = String::from_utf8(health.body).unwrap();
        assert!(body.starts_with("{\"status\":\"degraded\","), "{body}");
        assert!(body.ends_with(",\"redis\":\"down\"}\n"), "{body}");
        let up = Fresh {
            metrics: true,
            cluster_up: Some(true),
        };
        assert_eq!(respond(&get("GET", "/healthz"), true, &up).status, 200);
    }
}
