//! The plain HTTP side of the port: the browser demo page and a health check.

use crate::http::{Request, Response};
use crate::hub::Hub;

/// The browser client: one self-contained file (HTML, CSS, JS), built into the binary.
pub const DEMO_PAGE: &str = include_str!("demo/index.html");

/// Answers a request that is not a WebSocket handshake.
pub fn respond(request: &Request, hub: &Hub, demo_page: bool) -> Response {
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
        "/healthz" => Response {
            status: 200,
            headers: vec![("Cache-Control", "no-store".into())],
            content_type: "application/json",
            body: health(hub).into_bytes(),
        },
        path => Response::text(
            404,
            format!("nothing at {path}; WebSocket clients connect to any path"),
        ),
    }
}

/// The `/healthz` body, for deployment checks.
fn health(hub: &Hub) -> String {
    format!(
        "{{\"status\":\"ok\",\"connections\":{},\"uptime_seconds\":{},\"messages\":{}}}\n",
        hub.open_connections(),
        hub.uptime().as_secs(),
        hub.messages()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn get(method: &str, target: &str) -> Request {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        parse_head(raw.as_bytes(), 8192).unwrap().unwrap().0
    }

    #[test]
    fn routes() {
        let hub = Hub::default();
        assert_eq!(respond(&get("GET", "/"), &hub, true).status, 200);
        assert_eq!(
            respond(&get("GET", "/index.html?x"), &hub, true).status,
            200
        );
        assert_eq!(respond(&get("GET", "/"), &hub, false).status, 404);
        assert_eq!(respond(&get("GET", "/nope"), &hub, true).status, 404);
        assert_eq!(respond(&get("POST", "/"), &hub, true).status, 405);
        let health = respond(&get("GET", "/healthz"), &hub, true);
        let body = String::from_utf8(health.body).unwrap();
        assert!(
            body.starts_with("{\"status\":\"ok\",\"connections\":0,"),
            "{body}"
        );
    }
}
