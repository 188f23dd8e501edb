//! Test controls: what a client asks of its own connection in its URL's query string, so that
//! a client or a proxy can be tested against a server that misbehaves on request (a Close with
//! a given code, a reset, fragments, slow echoes, its own pings, ...). docs/testing-clients.md
//! has a recipe per control.
//!
//! This module only reads and checks the query (`?close=4000&reason=bye&after=3`): every bad
//! value, a control given twice, or a dependent key without its control is refused here with a
//! reason that names the key, and the handshake answers it with 400. What each control does on
//! the connection is `connection/controlled.rs`. Keys the server does not know are ignored, as
//! everywhere in the query (`query.rs`). `--no-test-controls` skips all of this: the query is
//! then never read for controls.
//!
//! Every control is bounded by the server's own limits (`--max-message-size`,
//! `--max-backlog`, `--idle-timeout`) and by the constants below, so that a URL cannot make
//! the server do more for one connection than a client could make it do anyway.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Config, Mode};
use crate::http::Request;
use crate::http::query;

/// The largest count a control takes (`after`, `reset`, `send`). Ten thousand messages is more
/// than any client test needs to see a behaviour after "a few" messages, and `send` at this
/// count takes a fraction of a second on loopback.
pub(crate) const MAX_COUNT: u64 = 10_000;

/// The size of a `send` message when `size` is not given: room for a number and some dots.
pub(crate) const DEFAULT_SEND_SIZE: usize = 16;

/// The longest reason a Close frame carries: its payload is at most 125 bytes, two of them the
/// code (RFC 6455 section 5.5).
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// The longest `delay` of an echo. Ten seconds shows any timeout a client or a proxy has in
/// front of a slow server, and keeps what a delayed client makes the server hold (its echoes,
/// counted against its backlog) short-lived.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(10);

/// The shortest `ping` interval. A ping every 10 ms already shows how a client answers pings
/// under load; shorter would make a connection cost the server a wake-up per millisecond.
pub(crate) const MIN_PING: Duration = Duration::from_millis(10);

/// The longest `ping` interval when the server has no idle timeout (with one, the interval must
/// be shorter than it, or a client that answers every ping would be dropped).
pub(crate) const MAX_PING: Duration = Duration::from_secs(60 * 60);

/// Every query key this module reads; any other is ignored.
const KEYS: [&str; 11] = [
    "close", "reason", "after", "reset", "delay", "fragment", "send", "size", "binary", "ping",
    "whoami",
];

/// What a client asked of its connection. Only what it gave is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Controls {
    /// `close=CODE` (+ `reason`, `after`).
    pub(crate) close: Option<Close>,
    /// `reset=N`: reset the TCP connection once N messages were sent and flushed.
    pub(crate) reset: Option<u64>,
    /// `delay=DURATION`: each echo this long after its message arrived.
    pub(crate) delay: Option<Duration>,
    /// `fragment=BYTES`: every message in frames of at most this many payload bytes.
    pub(crate) fragment: Option<usize>,
    /// `send=COUNT` (+ `size`, `binary`): messages sent right after the handshake.
    pub(crate) send: Option<Send>,
    /// `ping=DURATION`: the connection's own ping interval.
    pub(crate) ping: Option<Duration>,
    /// `whoami`: the first frame describes the request.
    pub(crate) whoami: bool,
}

/// `close=CODE&reason=TEXT&after=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    pub(crate) code: u16,
    /// Percent-decoded UTF-8, at most [`MAX_CLOSE_REASON`] bytes.
    pub(crate) reason: String,
    /// Close once this many messages were sent to the client; 0: right after the handshake.
    pub(crate) after: u64,
}

/// `send=COUNT&size=BYTES&binary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Send {
    pub(crate) count: u64,
    pub(crate) size: usize,
    pub(crate) binary: bool,
}

impl Send {
    /// Message `number` (1 to `count`): its decimal number, padded with `.` to `size` bytes.
    pub(crate) fn message(&self, number: u64) -> Vec<u8> {
        let mut message = number.to_string().into_bytes();
        message.resize(self.size.max(message.len()), b'.');
        message
    }
}

impl Controls {
    /// The controls the request target asks for, checked against the server's mode and
    /// limits; `None` when it asks for none. `resume_given`: the target also has `resume`.
    /// The error names the key and the rule, for a 400.
    ///
    /// Out of line, like `whoami`: it runs on a connection's thread during the handshake, and
    /// its locals must not deepen the handshake's frame (see `connection/mod.rs`).
    #[inline(never)]
    pub(crate) fn parse(
        target: &str,
        config: &Config,
        resume_given: bool,
    ) -> Result<Option<Controls>, String> {
        // Cheap for the common case: a target with none of the keys is not parsed further.
        let Some((_, query)) = target.split_once('?') else {
            return Ok(None);
        };
        let named = |pair: &str| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            KEYS.contains(&name)
        };
        if !query.split('#').next().unwrap_or("").split('&').any(named) {
            return Ok(None);
        }
        let get = |key: &str| query::param(target, key);
        let broadcast = config.mode == Mode::Broadcast;
        let mut controls = Controls::default();

        let reason = get("reason")?;
        let after = get("after")?;
        if let Some(code) = get("close")? {
            let code = close_code(&code)?;
            let reason = reason.unwrap_or_default();
            if reason.len() > MAX_CLOSE_REASON {
                return Err(format!(
                    "test control \"reason\": at most {MAX_CLOSE_REASON} bytes (a Close frame's \
                     payload is 125 bytes, two of them the code), not {}",
                    reason.len()
                ));
            }
            let after = match after {
                Some(after) => count("after", &after, 0)?,
                None => 0,
            };
            controls.close = Some(Close {
                code,
                reason,
                after,
            });
        } else if reason.is_some() || after.is_some() {
            let key = if reason.is_some() { "reason" } else { "after" };
            return Err(needs(key, "close"));
        }

        if let Some(reset) = get("reset")? {
            controls.reset = Some(count("reset", &reset, 0)?);
        }

        if let Some(delay) = get("delay")? {
            if broadcast {
                return Err(echo_only("delay"));
            }
            controls.delay = Some(duration(
                "delay",
                &delay,
                Duration::from_millis(1),
                MAX_DELAY,
            )?);
        }

        if let Some(fragment) = get("fragment")? {
            let bytes = number("fragment", &fragment, 1, config.max_message_size as u64)?;
            controls.fragment = Some(bytes as usize);
        }

        let size = get("size")?;
        let binary = get("binary")?;
        if let Some(count_text) = get("send")? {
            if broadcast {
                return Err(echo_only("send"));
            }
            let count = count("send", &count_text, 1)?;
            let digits = count.to_string().len();
            let size = match size {
                Some(size) => number("size", &size, 1, config.max_message_size as u64)? as usize,
                None => DEFAULT_SEND_SIZE,
            };
            if size < digits {
                return Err(format!(
                    "test control \"size\": each message holds its number, so with send={count} \
                     it is at least {digits} bytes, not {size}"
                ));
            }
            let total = (count as u128) * (size as u128);
            if total > config.max_backlog as u128 {
                return Err(format!(
                    "test controls \"send\" and \"size\": {count} messages of {size} bytes \
                     ({total} bytes) do not fit the server's backlog for one client \
                     (--max-backlog, {} bytes)",
                    config.max_backlog
                ));
            }
            let binary = match binary.as_deref() {
                None => false,
                Some("") => true,
                Some(_) => return Err(flag("binary")),
            };
            controls.send = Some(Send {
                count,
                size,
                binary,
            });
        } else if size.is_some() || binary.is_some() {
            let key = if size.is_some() { "size" } else { "binary" };
            return Err(needs(key, "send"));
        }

        if let Some(ping) = get("ping")? {
            let longest = match config.idle_timeout {
                // Shorter than the idle timeout by a millisecond at least.
                Some(idle) => idle.saturating_sub(Duration::from_millis(1)).min(MAX_PING),
                None => MAX_PING,
            };
            controls.ping = Some(duration("ping", &ping, MIN_PING, longest).map_err(|e| {
                match config.idle_timeout {
                    Some(idle) => format!(
                        "{e} (shorter than the server's --idle-timeout, {}, or a client that \
                         answers every ping would be dropped)",
                        humantime::format_duration(idle)
                    ),
                    None => e,
                }
            })?);
        }

        if let Some(whoami) = get("whoami")? {
            if !whoami.is_empty() {
                return Err(flag("whoami"));
            }
            if resume_given {
                return Err(
                    "test control \"whoami\" cannot go with \"resume\": each wants the first \
                     frame"
                        .to_string(),
                );
            }
            controls.whoami = true;
        }

        Ok((controls != Controls::default()).then_some(controls))
    }
}

/// A close code a server may send: 1000-1003, 1007-1014 (RFC 6455 section 7.4.1 and IANA's
/// registry), or 3000-4999 (registered and private use). 1004-1006 and 1015 are never sent.
fn close_code(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(code @ (1000..=1003 | 1007..=1014 | 3000..=4999)) => Ok(code),
        _ => Err(format!(
            "test control \"close\": a close code 1000-1003, 1007-1014 or 3000-4999, not \
             {text:?}"
        )),
    }
}

/// A count of messages, from `least` to [`MAX_COUNT`].
fn count(key: &str, text: &str, least: u64) -> Result<u64, String> {
    number(key, text, least, MAX_COUNT)
}

/// A whole number from `least` to `most`.
fn number(key: &str, text: &str, least: u64, most: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (least..=most).contains(&n) && !text.starts_with('+') => Ok(n),
        _ => Err(format!(
            "test control {key:?}: a whole number from {least} to {most}, not {text:?}"
        )),
    }
}

/// A duration like `250ms` or `2s`, from `least` to `most`.
fn duration(key: &str, text: &str, least: Duration, most: Duration) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d >= least && d <= most => Ok(d),
        _ => Err(format!(
            "test control {key:?}: a duration like 250ms or 2s, from {} to {}, not {text:?}",
            humantime::format_duration(least),
            humantime::format_duration(most)
        )),
    }
}

fn needs(key: &str, control: &str) -> String {
    format!("query key {key:?} needs the test control {control:?}, which it qualifies")
}

fn flag(key: &str) -> String {
    format!("test control {key:?} takes no value: give it as ?{key}")
}

fn echo_only(key: &str) -> String {
    format!(
        "test control {key:?} needs a server in echo mode: in broadcast mode what a client \
         gets is its room's, not its own"
    )
}

/// The TLS of a connection, as `whoami` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub(crate) version: String,
    /// The server name the client asked for (SNI), if it named one.
    pub(crate) sni: Option<String>,
}

/// What `whoami` and `GET /echo` answer: the request as the server saw it, one JSON object.
/// `address` is the client (behind a trusted proxy, the one it names), `peer` the TCP peer.
#[cold]
#[inline(never)]
pub(crate) fn whoami(
    request: &Request,
    address: SocketAddr,
    peer: SocketAddr,
    subprotocol: Option<&str>,
    tls: Option<&TlsInfo>,
) -> String {
    let mut json = String::with_capacity(256);
    json.push_str("{\"address\":");
    push_string(&mut json, &address.to_string());
    json.push_str(",\"peer\":");
    push_string(&mut json, &peer.to_string());
    json.push_str(",\"method\":");
    push_string(&mut json, &request.method);
    json.push_str(",\"path\":");
    push_string(&mut json, request.path());
    json.push_str(",\"query\":");
    let query = request.target.split_once('?').map_or("", |(_, q)| q);
    push_string(&mut json, query);
    json.push_str(",\"headers\":[");
    for (i, (name, value)) in request.headers.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push('[');
        push_string(&mut json, name);
        json.push(',');
        push_string(&mut json, value);
        json.push(']');
    }
    json.push_str("],\"subprotocol\":");
    match subprotocol {
        Some(name) => push_string(&mut json, name),
        None => json.push_str("null"),
    }
    json.push_str(",\"tls\":");
    match tls {
        Some(tls) => {
            json.push_str("{\"version\":");
            push_string(&mut json, &tls.version);
            json.push_str(",\"sni\":");
            match &tls.sni {
                Some(sni) => push_string(&mut json, sni),
                None => json.push_str("null"),
            }
            json.push('}');
        }
        None => json.push_str("null"),
    }
    json.push('}');
    json
}

/// Appends `text` as a JSON string (RFC 8259 section 7): quotes, backslashes and control
/// characters escaped, everything else as it is.
pub(crate) fn push_string(json: &mut String, text: &str) {
    json.push('"');
    for c in text.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                json.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => json.push(c),
        }
    }
    json.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn echo() -> Config {
        Config {
            ping_interval: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(30)),
            ..Config::default()
        }
    }

    fn broadcast() -> Config {
        Config {
            mode: Mode::Broadcast,
            ..echo()
        }
    }

    fn parse(target: &str) -> Result<Option<Controls>, String> {
        Controls::parse(target, &echo(), false)
    }

    /// The error for `target`, which must name `key`.
    fn refused(target: &str, key: &str) -> String {
        let error = parse(target).expect_err(target);
        assert!(error.contains(&format!("\"{key}\"")), "{target}: {error}");
        error
    }

    #[test]
    fn no_controls_is_none_and_other_keys_are_ignored() {
        assert_eq!(parse("/"), Ok(None));
        assert_eq!(parse("/?token=abc&x"), Ok(None));
        assert_eq!(parse("/chat?closed=1&resumes"), Ok(None));
        assert_eq!(parse("/#close=1000"), Ok(None));
        // `resume` alone is not a test control.
        assert_eq!(Controls::parse("/?resume", &broadcast(), true), Ok(None));
        let with_others = parse("/?token=abc&close=1000&x=y").unwrap().unwrap();
        assert_eq!(with_others.close.unwrap().code, 1000);
    }

    #[test]
    fn close_takes_a_code_a_reason_and_a_count() {
        let close = |target| parse(target).unwrap().unwrap().close.unwrap();
        assert_eq!(
            close("/?close=4000"),
            Close {
                code: 4000,
                reason: String::new(),
                after: 0
            }
        );
        assert_eq!(
            close("/?close=1001&reason=going%20away%20%E2%9C%93&after=3"),
            Close {
                code: 1001,
                reason: "going away ✓".to_string(),
                after: 3
            }
        );
        for code in ["1000", "1003", "1007", "1014", "3000", "4999"] {
            assert!(parse(&format!("/?close={code}")).is_ok(), "{code}");
        }
        for code in [
            "999", "1004", "1005", "1006", "1015", "2999", "5000", "", "x", "-1",
        ] {
            let error = refused(&format!("/?close={code}"), "close");
            assert!(
                error.contains("1000-1003, 1007-1014 or 3000-4999"),
                "{error}"
            );
        }
        let long = "a".repeat(124);
        let error = refused(&format!("/?close=1000&reason={long}"), "reason");
        assert!(error.contains("at most 123 bytes"), "{error}");
        assert!(parse(&format!("/?close=1000&reason={}", &long[1..])).is_ok());
        // Bytes, not characters: 41 three-byte characters are 123 bytes, 42 are too many.
        assert!(parse(&format!("/?close=1000&reason={}", "%E2%9C%93".repeat(41))).is_ok());
        refused(
            &format!("/?close=1000&reason={}", "%E2%9C%93".repeat(42)),
            "reason",
        );
        refused("/?close=1000&reason=%FF", "reason");
        refused("/?close=1000&after=10001", "after");
        refused("/?close=1000&after=-1", "after");
        refused("/?close=1000&after=", "after");
        assert_eq!(close("/?close=1000&after=10000").after, MAX_COUNT);
    }

    #[test]
    fn a_dependent_key_without_its_control_is_refused() {
        assert!(refused("/?reason=bye", "reason").contains("\"close\""));
        assert!(refused("/?after=2", "after").contains("\"close\""));
        assert!(refused("/?size=10", "size").contains("\"send\""));
        assert!(refused("/?binary", "binary").contains("\"send\""));
    }

    #[test]
    fn a_control_given_twice_is_refused() {
        for target in [
            "/?close=1000&close=1001",
            "/?close=1000&reason=a&reason=b",
            "/?reset=1&reset=2",
            "/?delay=1s&delay=1s",
            "/?fragment=1&fragment=1",
            "/?send=1&send=1",
            "/?ping=1s&ping=1s",
            "/?whoami&whoami",
        ] {
            let error = parse(target).unwrap_err();
            assert!(error.contains("twice"), "{target}: {error}");
        }
    }

    #[test]
    fn counts_sizes_and_durations_are_bounded() {
        assert_eq!(parse("/?reset=0").unwrap().unwrap().reset, Some(0));
        assert_eq!(parse("/?reset=10000").unwrap().unwrap().reset, Some(10_000));
        refused("/?reset=10001", "reset");
        refused("/?reset=two", "reset");
        refused("/?reset=+2", "reset");
        assert_eq!(parse("/?fragment=1").unwrap().unwrap().fragment, Some(1));
        refused("/?fragment=0", "fragment");
        refused(&format!("/?fragment={}", (64 << 20) + 1), "fragment");
        let delay = parse("/?delay=250ms").unwrap().unwrap().delay;
        assert_eq!(delay, Some(Duration::from_millis(250)));
        assert!(refused("/?delay=11s", "delay").contains("10s"));
        refused("/?delay=0", "delay");
        refused("/?delay=soon", "delay");
        let ping = parse("/?ping=500ms").unwrap().unwrap().ping;
        assert_eq!(ping, Some(Duration::from_millis(500)));
        refused("/?ping=1ms", "ping");
        let error = refused("/?ping=30s", "ping");
        assert!(error.contains("--idle-timeout"), "{error}");
        let no_idle = Config {
            idle_timeout: None,
            ..echo()
        };
        let ping = Controls::parse("/?ping=1m", &no_idle, false)
            .unwrap()
            .unwrap();
        assert_eq!(ping.ping, Some(Duration::from_secs(60)));
        assert!(Controls::parse("/?ping=2h", &no_idle, false).is_err());
    }

    #[test]
    fn send_takes_a_count_a_size_and_binary() {
        let send = |target| parse(target).unwrap().unwrap().send.unwrap();
        assert_eq!(
            send("/?send=3"),
            Send {
                count: 3,
                size: DEFAULT_SEND_SIZE,
                binary: false
            }
        );
        assert_eq!(
            send("/?send=2&size=1000&binary"),
            Send {
                count: 2,
                size: 1000,
                binary: true
            }
        );
        assert_eq!(send("/?send=3").message(2), b"2...............");
        assert_eq!(send("/?send=10&size=2").message(10), b"10");
        refused("/?send=0", "send");
        refused("/?send=10001", "send");
        refused("/?send=1&size=0", "size");
        refused("/?send=100&size=2", "size");
        refused("/?send=1&binary=yes", "binary");
        refused(&format!("/?send=1&size={}", (64 << 20) + 1), "size");
        // Everything sent at once must fit the client's backlog (4 MiB by default).
        let error = refused("/?send=10000&size=1000", "send");
        assert!(error.contains("--max-backlog"), "{error}");
        assert!(parse("/?send=1000&size=4096").is_ok());
    }

    #[test]
    fn whoami_is_a_flag_and_never_goes_with_resume() {
        assert!(parse("/?whoami").unwrap().unwrap().whoami);
        assert!(parse("/?whoami=").unwrap().unwrap().whoami);
        refused("/?whoami=1", "whoami");
        let error = Controls::parse("/?whoami&resume", &broadcast(), true).unwrap_err();
        assert!(
            error.contains("\"whoami\"") && error.contains("\"resume\""),
            "{error}"
        );
    }

    #[test]
    fn broadcast_mode_refuses_what_only_echo_has() {
        let parse = |target| Controls::parse(target, &broadcast(), false);
        for (target, key) in [("/room?delay=1s", "delay"), ("/room?send=2", "send")] {
            let error = parse(target).unwrap_err();
            assert!(
                error.contains(&format!("\"{key}\"")) && error.contains("echo mode"),
                "{error}"
            );
        }
        for target in [
            "/room?close=4000&after=2",
            "/room?reset=1",
            "/room?fragment=2",
            "/room?ping=1s",
            "/room?whoami",
        ] {
            assert!(parse(target).unwrap().is_some(), "{target}");
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut json = String::new();
        push_string(&mut json, "a\"b\\c\nd\u{1}e\u{7f}é✓");
        assert_eq!(json, r#""a\"b\\c\nd\u0001e\u007fé✓""#);
    }

    #[test]
    fn whoami_describes_the_request() {
        let raw = "GET /chat?whoami&x=%22 HTTP/1.1\r\nHost: h\r\nX-Odd: say \"hi\"\r\n\r\n";
        let request = parse_head(raw.as_bytes(), 8192).unwrap().unwrap().0;
        let address: SocketAddr = "203.0.113.7:5000".parse().unwrap();
        let peer: SocketAddr = "[::1]:41000".parse().unwrap();
        assert_eq!(
            whoami(&request, address, peer, None, None),
            "{\"address\":\"203.0.113.7:5000\",\"peer\":\"[::1]:41000\",\"method\":\"GET\",\
             \"path\":\"/chat\",\"query\":\"whoami&x=%22\",\"headers\":[[\"Host\",\"h\"],\
             [\"X-Odd\",\"say \\\"hi\\\"\"]],\"subprotocol\":null,\"tls\":null}"
        );
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            sni: Some("localhost".into()),
        };
        let json = whoami(&request, address, peer, Some("chat"), Some(&tls));
        assert!(
            json.ends_with(
                "\"subprotocol\":\"chat\",\"tls\":{\"version\":\"TLSv1.3\",\"sni\":\"localhost\"}}"
            ),
            "{json}"
        );
    }
}
