//! The plain HTTP side of the port: the browser demo page and a health check.

use crate::config::{Config, Mode};
use crate::http::{Request, Response};
use crate::hub::Hub;

/// The browser client: one self-contained file (HTML, CSS, JS), built into the binary.
pub const DEMO_PAGE: &str = include_str!("demo/index.html");

/// Answers a request that is not a WebSocket handshake.
pub fn respond(request: &Request, hub: &Hub, config: &Config) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text(
            405,
            format!("method {} is not allowed here", request.method),
        )
        .with_header("Allow", "GET, HEAD");
    }
    match request.path() {
        "/" | "/index.html" if config.demo_page => Response {
            status: 200,
            headers: vec![("Cache-Control", "no-cache".into())],
            content_type: "text/html; charset=utf-8",
            body: DEMO_PAGE.as_bytes().to_vec(),
        },
        "/healthz" => Response {
            status: 200,
            headers: vec![("Cache-Control", "no-store".into())],
            content_type: "application/json",
            body: health(hub, config).into_bytes(),
        },
        path => Response::text(
            404,
            format!("nothing at {path}; WebSocket clients connect to any path"),
        ),
    }
}

/// The `/healthz` body, for deployment checks. The demo page reads `mode` and
/// `greeting_delay_ms` (`null`: no greeting) to tell the user what to expect.
fn health(hub: &Hub, config: &Config) -> String {
    let mode = match config.mode {
        Mode::Echo => "echo",
        Mode::Broadcast => "broadcast",
    };
    let greeting_delay_ms = match &config.greeting {
        Some(greeting) => greeting.delay.as_millis().to_string(),
        None => "null".to_string(),
    };
    format!(
        "{{\"status\":\"ok\",\"connections\":{},\"uptime_seconds\":{},\"messages\":{},\
         \"mode\":\"{mode}\",\"greeting_delay_ms\":{greeting_delay_ms}}}\n",
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
        let config = Config::default();
        let no_page = Config {
            demo_page: false,
            ..Config::default()
        };
        assert_eq!(respond(&get("GET", "/"), &hub, &config).status, 200);
        assert_eq!(
            respond(&get("GET", "/index.html?x"), &hub, &config).status,
            200
        );
        assert_eq!(respond(&get("GET", "/"), &hub, &no_page).status, 404);
        assert_eq!(respond(&get("GET", "/nope"), &hub, &config).status, 404);
        assert_eq!(respond(&get("POST", "/"), &hub, &config).status, 405);
        let health = respond(&get("GET", "/healthz"), &hub, &config);
        let body = String::from_utf8(health.body).unwrap();
        assert!(
            body.starts_with("{\"status\":\"ok\",\"connections\":0,"),
            "{body}"
        );
    }

    /// `/healthz` tells the demo page the mode and the greeting delay.
    #[test]
    fn health_reports_mode_and_greeting_delay() {
        let hub = Hub::default();
        let body = health(&hub, &Config::default());
        assert!(
            body.contains("\"mode\":\"echo\",\"greeting_delay_ms\":2000}"),
            "{body}"
        );
        let quiet_broadcast = Config {
            mode: Mode::Broadcast,
            greeting: None,
            ..Config::default()
        };
        let body = health(&hub, &quiet_broadcast);
        assert!(
            body.contains("\"mode\":\"broadcast\",\"greeting_delay_ms\":null}"),
            "{body}"
        );
    }
}
