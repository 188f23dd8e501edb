//! The plain HTTP side of the port: the browser demo page and a health check.

use crate::config::Mode;
use crate::connection::Shared;
use crate::http::{Request, Response};

/// The browser client: one self-contained file (HTML, CSS, JS), built into the binary.
pub const DEMO_PAGE: &str = include_str!("demo/index.html");

/// Answers a request that is not a WebSocket handshake.
#[inline(never)]
pub fn respond(request: &Request, shared: &Shared) -> Response {
    let demo_page = shared.config.demo_page;
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text(
            405,
            format!("method {} is not allowed here", request.method),
        )
        .with_header("Allow", "GET, HEAD");
    }
    match request.path() {
        "/" | "/index.html" if demo_page => Response {
            status: 200,
            headers: vec![("Cache-Control", "no-cache".into())],
            content_type: "text/html; charset=utf-8",
            body: DEMO_PAGE.as_bytes().to_vec(),
        },
        "/metrics" if shared.config.metrics => Response {
            status: 200,
            headers: vec![("Cache-Control", "no-store".into())],
            content_type: crate::metrics::CONTENT_TYPE,
            body: shared
                .metrics
                .render(
                    shared.budget.used(),
                    shared.budget.limit(),
                    shared.hub.cluster().map(|c| {
                        let health = c.health();
                        (health.up, health.outages)
                    }),
                )
                .into_bytes(),
        },
        "/healthz" => Response {
            // A cluster member whose Redis link is down serves its own clients only: 503, so
            // that a load balancer's health check sends new clients elsewhere.
            status: match shared.hub.cluster() {
                Some(cluster) if !cluster.health().up => 503,
                _ => 200,
            },
            headers: vec![("Cache-Control", "no-store".into())],
            content_type: "application/json",
            body: health(shared).into_bytes(),
        },
        path => Response::text(
            404,
            format!("nothing at {path}; WebSocket clients connect to any path"),
        ),
    }
}

/// The `/healthz` body, for deployment checks (and the demo page, which shows the mode).
fn health(shared: &Shared) -> String {
    let hub = &shared.hub;
    let mode = match shared.config.mode {
        Mode::Echo => "echo",
        Mode::Broadcast => "broadcast",
    };
    let greeting_delay_ms = match &shared.config.greeting {
        Some(greeting) => greeting.delay.as_millis().to_string(),
        None => "null".to_string(),
    };
    let cluster = shared.hub.cluster().map(|cluster| cluster.health());
    let status = match cluster {
        Some(health) if !health.up => "degraded",
        _ => "ok",
    };
    let cluster = cluster
        .map(|health| health.json_fields())
        .unwrap_or_default();
    format!(
        "{{\"status\":\"{status}\",\"connections\":{},\"uptime_seconds\":{},\"messages\":{},\
         \"mode\":\"{mode}\",\"greeting_delay_ms\":{greeting_delay_ms},\
         \"memory_bytes\":{},\"memory_limit_bytes\":{}{cluster}}}\n",
        hub.open_connections(),
        hub.uptime().as_secs(),
        shared.metrics.messages_received.get(),
        shared.budget.used(),
        shared.budget.limit(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::delivery::budget::Budget;
    use crate::delivery::hub::Hub;
    use crate::http::parse_head;
    use std::sync::atomic::AtomicBool;

    fn get(method: &str, target: &str) -> Request {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        parse_head(raw.as_bytes(), 8192).unwrap().unwrap().0
    }

    fn shared(demo_page: bool) -> Shared {
        Shared {
            config: Config {
                demo_page,
                ..Config::default()
            },
            hub: std::sync::Arc::new(Hub::new(1 << 20)),
            budget: std::sync::Arc::new(Budget::new(1 << 30)),
            tls: None,
            metrics: std::sync::Arc::default(),
            out_of_descriptors_log: crate::logging::Throttle::new(std::time::Duration::from_secs(
                1,
            )),
            greeter: None,
            shutting_down: AtomicBool::new(false),
        }
    }

    #[test]
    fn routes() {
        let with_page = shared(true);
        assert_eq!(respond(&get("GET", "/"), &with_page).status, 200);
        assert_eq!(
            respond(&get("GET", "/index.html?x"), &with_page).status,
            200
        );
        assert_eq!(respond(&get("GET", "/"), &shared(false)).status, 404);
        assert_eq!(respond(&get("GET", "/nope"), &with_page).status, 404);
        assert_eq!(respond(&get("POST", "/"), &with_page).status, 405);
        let health = respond(&get("GET", "/healthz"), &with_page);
        let body = String::from_utf8(health.body).unwrap();
        assert!(
            body.starts_with("{\"status\":\"ok\",\"connections\":0,"),
            "{body}"
        );
        assert!(
            body.contains("\"mode\":\"echo\",\"greeting_delay_ms\":2000,"),
            "{body}"
        );
        assert!(
            body.contains("\"memory_limit_bytes\":1073741824}"),
            "{body}"
        );
        let metrics = respond(&get("GET", "/metrics"), &with_page);
        assert_eq!(
            metrics.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = String::from_utf8(metrics.body).unwrap();
        assert!(
            text.contains("wsecho_memory_limit_bytes 1073741824"),
            "{text}"
        );
        let off = Shared {
            config: Config {
                metrics: false,
                ..Config::default()
            },
            ..shared(true)
        };
        assert_eq!(respond(&get("GET", "/metrics"), &off).status, 404);
    }
}
