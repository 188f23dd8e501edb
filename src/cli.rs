//! The command line: every option, its default, and its help text. It only fills in a
//! [`Config`]; the server never sees the command line.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use log::LevelFilter;

use wsecho::config::{
    self, AddressRange, ClusterConfig, Config, Greeting, Mode, SlowListener, TlsFiles,
};

/// The tutorial's WebSocket server: echoes (or broadcasts) every message, greets each client,
/// and serves a browser demo page at http://HOST:PORT/.
#[derive(Debug, Parser)]
// A flag given twice takes its last value, so scripts can append to a base command line.
#[command(
    name = "wsecho",
    version,
    max_term_width = 100,
    args_override_self = true
)]
pub(crate) struct Args {
    /// Host name or address to listen on (0.0.0.0 or :: for every interface).
    #[arg(long, value_name = "HOST", default_value = config::DEFAULT_HOST)]
    pub(crate) host: String,

    /// TCP port to listen on; 0 picks a free port.
    #[arg(long, short, env = "PORT", default_value_t = config::DEFAULT_PORT)]
    pub(crate) port: u16,

    /// Send every message to every client of its room instead of echoing it to its sender.
    /// The URL path names the room: ws://HOST:PORT/ is the lobby, ws://HOST:PORT/chat/rust
    /// the room chat/rust (percent-decoded, the query string left out).
    #[arg(long)]
    pub(crate) broadcast: bool,
    /// With --broadcast: one room for every client, whatever its path (the path then names
    /// nothing).
    #[arg(long)]
    pub(crate) single_room: bool,
    /// With --broadcast: each room keeps its last N broadcasts, and a client joining it gets
    /// them first, then every later one; 0: none. They count against --max-memory. It also
    /// lets a client that connects with ?resume=EPOCH:OFFSET continue where it left off.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) history: usize,
    /// How long an idle room keeps its history: once its last broadcast is this old, it is
    /// forgotten.
    #[arg(long, value_name = "DURATION", default_value_t = Span(config::DEFAULT_HISTORY_TTL))]
    pub(crate) history_ttl: Span,

    /// The greeting text; {time} is replaced by the local date-time.
    #[arg(long, value_name = "TEXT", default_value = config::DEFAULT_GREETING)]
    pub(crate) greeting: String,

    /// When to greet a client after its handshake; 0 or off: never.
    #[arg(long, value_name = "DURATION", default_value_t = Optional(Some(Span(config::DEFAULT_GREETING_DELAY))))]
    pub(crate) greeting_delay: Optional<Span>,

    /// Do not serve the demo page at / (it then gets 404).
    #[arg(long)]
    pub(crate) no_demo_page: bool,

    /// Do not serve Prometheus metrics at /metrics (it then gets 404).
    #[arg(long)]
    pub(crate) no_metrics: bool,

    /// Speak TLS only (wss://, https://) with this certificate chain (PEM, server certificate
    /// first); needs --tls-key. Reloaded on SIGHUP.
    #[arg(
        long,
        value_name = "PEM",
        env = "WSECHO_TLS_CERT",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted); needs
    /// --tls-cert. Reloaded on SIGHUP.
    #[arg(
        long,
        value_name = "PEM",
        env = "WSECHO_TLS_KEY",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<PathBuf>,

    /// A subprotocol the server speaks, chosen when a client offers it (repeatable, in order
    /// of preference). Without it no subprotocol is ever selected.
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub(crate) subprotocols: Vec<String>,

    /// Accept browser handshakes only from this origin, like `https://example.com` (repeatable).
    /// Without it every origin is accepted, as the tutorial's server does.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub(crate) allowed_origins: Vec<String>,

    /// Time a client has to send its whole HTTP request.
    #[arg(long, value_name = "DURATION", default_value_t = Span(config::HANDSHAKE_TIMEOUT))]
    pub(crate) handshake_timeout: Span,

    /// Most connections at once, handshakes included; more get 503.
    /// [default: from the open-file limit]
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<Count>,

    /// Most connections at once from one address (IPv6: one /64); more get 503; off: no cap.
    #[arg(long, value_name = "N", default_value_t = Optional(None))]
    pub(crate) max_connections_per_ip: Optional<Count>,

    /// Most unfinished handshakes at once from one address (IPv6: one /64); more get 503;
    /// off: no cap.
    #[arg(long, value_name = "N", default_value_t = Optional(Some(Count(config::MAX_HANDSHAKES_PER_ADDRESS))))]
    pub(crate) max_handshakes_per_ip: Optional<Count>,

    /// Bytes the server may hold for all connections together (messages being received,
    /// frames waiting to be sent); at it, reading pauses until memory frees.
    /// [default: half the machine's memory]
    #[arg(long, value_name = "SIZE")]
    pub(crate) max_memory: Option<Size>,

    /// Largest message accepted; larger gets Close 1009.
    #[arg(long, value_name = "SIZE", default_value_t = Size(config::MAX_MESSAGE_SIZE))]
    pub(crate) max_message_size: Size,

    /// Largest frame accepted; larger gets Close 1009.
    #[arg(long, value_name = "SIZE", default_value_t = Size(config::MAX_FRAME_SIZE))]
    pub(crate) max_frame_size: Size,

    /// Bytes queued for a client and not yet read by it; past it, a broadcast listener is
    /// let go or paces its room (--slow-listener), and echo stops reading from it.
    #[arg(long, value_name = "SIZE", default_value_t = Size(config::MAX_BACKLOG))]
    pub(crate) max_backlog: Size,

    /// A broadcast listener past --max-backlog: close (it gets 1008 at once, and no sender
    /// ever waits for another client; a client using ?resume comes back and gets what it
    /// missed) or wait (its room's senders are paced to it until it is down to half, or it is
    /// closed with 1008 after --send-timeout).
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "close",
        value_parser = PossibleValuesParser::new(["close", "wait"]).map(|policy| match policy.as_str() {
            "wait" => SlowListener::Wait,
            _ => SlowListener::Close,
        })
    )]
    pub(crate) slow_listener: SlowListener,

    /// With --slow-listener wait: how long a broadcast listener may stay past --max-backlog
    /// before it is closed with 1008.
    #[arg(long, value_name = "DURATION", default_value_t = Span(config::SEND_TIMEOUT))]
    pub(crate) send_timeout: Span,

    /// Ping a client the server has not heard from for this long; 0 or off: never.
    #[arg(long, value_name = "DURATION", default_value_t = Optional(Some(Span(config::PING_INTERVAL))))]
    pub(crate) ping_interval: Optional<Span>,

    /// Drop a client that sent nothing, not even a pong, for this long; 0 or off: never.
    #[arg(long, value_name = "DURATION", default_value_t = Optional(Some(Span(config::IDLE_TIMEOUT))))]
    pub(crate) idle_timeout: Optional<Span>,

    /// After sending Close, how long to wait for the client's reply.
    #[arg(long, value_name = "DURATION", default_value_t = Span(config::CLOSE_TIMEOUT))]
    pub(crate) close_timeout: Span,

    /// A reverse proxy (an address, or a range like 10.0.0.0/8), repeatable. For a peer in
    /// one of these only, the client's address is read from the request's Forwarded header
    /// (RFC 7239), or X-Forwarded-For when it has no Forwarded: the rightmost address that is
    /// not itself a trusted proxy. From any other peer both headers are ignored. The
    /// per-address limits and the log then use the client's address. With --proxy-protocol,
    /// these ranges are matched against the address in the PROXY header.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub(crate) trusted_proxies: Vec<AddressRange>,

    /// Every connection must begin with a PROXY protocol header (v1 or v2, as HAProxy's
    /// send-proxy and send-proxy-v2 write it, before TLS); its client address is used for the
    /// per-address limits and the log. A connection without one is closed. Combined with
    /// --trusted-proxy, a PROXY header naming a trusted proxy lets that proxy's Forwarded or
    /// X-Forwarded-For header name the client.
    #[arg(long)]
    pub(crate) proxy_protocol: bool,

    /// Turn off the test controls: the query keys close, reset, delay, fragment, send, ping
    /// and whoami, with which a client asks its own connection to misbehave (for testing
    /// clients and proxies; see docs/testing-clients.md), and GET /echo. They are on by
    /// default, for local testing; a public deployment should turn them off.
    #[arg(long)]
    pub(crate) no_test_controls: bool,

    /// Join a cluster of instances through this Redis, like `redis://:PASSWORD@HOST:6379/0`
    /// (`rediss://` for TLS). Every client of every instance then gets every broadcast. Needs
    /// --broadcast. Prefer REDIS_URL for a password: the command line is visible to others.
    #[arg(long, value_name = "URL", env = "REDIS_URL", hide_env_values = true)]
    pub(crate) redis: Option<String>,

    /// The Redis pub/sub channel the cluster shares.
    #[arg(long, value_name = "NAME", default_value = config::DEFAULT_REDIS_CHANNEL)]
    pub(crate) redis_channel: String,

    /// Log level: off, error, warn, info (connections), debug (every message), trace.
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        value_parser = PossibleValuesParser::new(["off", "error", "warn", "info", "debug", "trace"])
            .map(|level| level.parse::<LevelFilter>().expect("a listed level"))
    )]
    pub(crate) log_level: LevelFilter,

    /// Also append the log to this file.
    #[arg(long, value_name = "PATH")]
    pub(crate) log_file: Option<PathBuf>,
}

impl Args {
    /// The server's configuration from these arguments.
    pub(crate) fn config(&self) -> Result<Config, String> {
        let greeting = match self.greeting_delay.0 {
            Some(Span(delay)) if self.greeting.is_empty() => {
                return Err(format!(
                    "--greeting is empty; to send no greeting use --greeting-delay off (was {})",
                    humantime::format_duration(delay)
                ));
            }
            Some(Span(delay)) => Some(Greeting {
                delay,
                template: self.greeting.clone(),
            }),
            None => None,
        };
        // Pings are what keep a quiet but healthy client from looking dead: the idle timeout
        // must leave room for at least one ping and its pong.
        let ping = self.ping_interval.0.map(|s| s.0);
        if let Some(Span(idle)) = self.idle_timeout.0
            && ping.is_none_or(|ping| idle <= ping)
        {
            return Err(format!(
                "--idle-timeout ({}) must be longer than --ping-interval ({}), or idle clients \
                 that answer pings would be dropped; turn it off with --idle-timeout off",
                Span(idle),
                self.ping_interval
            ));
        }
        let max_connections = self.max_connections.map(|n| n.0);
        // The ceiling must leave room for one largest message and its echo, or such a message
        // could never be received.
        if let Some(Size(memory)) = self.max_memory
            && memory / 2 < self.max_message_size.0
        {
            return Err(format!(
                "--max-memory ({}) must be at least twice --max-message-size ({}), so that \
                 the largest message and its echo fit",
                Size(memory),
                self.max_message_size
            ));
        }
        let cluster = self.cluster()?;
        if !self.broadcast && (self.single_room || self.history > 0) {
            return Err(format!(
                "{} needs --broadcast: rooms and their history are about broadcasts, and an \
                 echo goes to its sender only",
                if self.single_room {
                    "--single-room"
                } else {
                    "--history"
                }
            ));
        }
        Ok(Config {
            host: self.host.clone(),
            port: self.port,
            mode: if self.broadcast {
                Mode::Broadcast
            } else {
                Mode::Echo
            },
            rooms: !self.single_room,
            history: self.history,
            history_ttl: self.history_ttl.0,
            greeting,
            demo_page: !self.no_demo_page,
            metrics: !self.no_metrics,
            tls: self
                .tls_cert
                .clone()
                .zip(self.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
            subprotocols: self.subprotocols.clone(),
            allowed_origins: self.allowed_origins.clone(),
            handshake_timeout: self.handshake_timeout.0,
            max_request_head: config::MAX_REQUEST_HEAD,
            max_connections,
            max_connections_per_address: self.max_connections_per_ip.0.map(|c| c.0),
            max_handshakes_per_address: self.max_handshakes_per_ip.0.map(|c| c.0),
            max_memory: self.max_memory.map(|s| s.0),
            max_message_size: self.max_message_size.0,
            max_frame_size: self.max_frame_size.0,
            max_backlog: self.max_backlog.0,
            slow_listener: self.slow_listener,
            send_timeout: self.send_timeout.0,
            ping_interval: self.ping_interval.0.map(|s| s.0),
            idle_timeout: self.idle_timeout.0.map(|s| s.0),
            close_timeout: self.close_timeout.0,
            cluster,
            trusted_proxies: self.trusted_proxies.clone(),
            proxy_protocol: self.proxy_protocol,
            test_controls: !self.no_test_controls,
            panic_on_message: None,
        })
    }

    /// The cluster to join, from --redis (or REDIS_URL) and --redis-channel.
    fn cluster(&self) -> Result<Option<ClusterConfig>, String> {
        let Some(url) = &self.redis else {
            return Ok(None);
        };
        if !self.broadcast {
            return Err(
                "--redis (or REDIS_URL) needs --broadcast: a cluster shares broadcasts, \
                        and an echo goes to its sender only"
                    .to_string(),
            );
        }
        ClusterConfig::new(url, &self.redis_channel).map(Some)
    }
}

/// A positive duration written like `2s`, `500ms`, `1m` or `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span(pub(crate) Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Span, String> {
        let expected = "expected a duration like 2s, 500ms or 1m";
        let duration = match humantime::parse_duration(text.trim()) {
            Ok(duration) => duration,
            Err(_) if text.trim() == "off" => {
                return Err(format!("{expected}; this one cannot be off"));
            }
            Err(_) => return Err(format!("{expected}, not {text:?}")),
        };
        if duration.is_zero() {
            return Err(format!("{expected}, above zero"));
        }
        Ok(Span(duration))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A setting that `off` (or `0`) turns off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Optional<T>(pub(crate) Option<T>);

impl<T: FromStr<Err = String>> FromStr for Optional<T> {
    type Err = String;

    fn from_str(text: &str) -> Result<Optional<T>, String> {
        match text.trim() {
            "off" | "0" => Ok(Optional(None)),
            other => other
                .parse()
                .map(|v| Optional(Some(v)))
                .map_err(|e| format!("{e}, or off")),
        }
    }
}

impl<T: fmt::Display> fmt::Display for Optional<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// A positive whole number, like `100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count(pub(crate) usize);

impl FromStr for Count {
    type Err = String;

    fn from_str(text: &str) -> Result<Count, String> {
        match text.trim().parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("expected a whole number above zero, got {text:?}")),
            Ok(n) => Ok(Count(n)),
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A positive size in bytes, written like `16MiB`, `512KiB` or `65536`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) usize);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Size, String> {
        let expected = "expected a size like 16MiB, 512KiB or 65536 (bytes)";
        let bytes = parse_size::parse_size(text.trim()).map_err(|e| format!("{expected} ({e})"))?;
        match usize::try_from(bytes) {
            Ok(0) => Err(format!("{expected}, above zero")),
            Ok(bytes) => Ok(Size(bytes)),
            Err(_) => Err(format!("{expected}; {text} is too large")),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n % (1 << 20) == 0 => write!(f, "{}MiB", n >> 20),
            n if n % (1 << 10) == 0 => write!(f, "{}KiB", n >> 10),
            n => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("wsecho").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        args.config()
    }

    #[test]
    fn no_flags_is_the_default_config() {
        let config = parse(&[]).unwrap();
        let default = Config::default();
        assert_eq!(config.port, default.port);
        assert_eq!(config.greeting, default.greeting);
        assert_eq!(config.max_message_size, 64 << 20);
        assert_eq!(config.ping_interval, default.ping_interval);
        assert_eq!(config.mode, Mode::Echo);
    }

    #[test]
    fn durations_sizes_and_off() {
        let config = parse(&[
            "--greeting-delay",
            "500ms",
            "--max-frame-size",
            "1MiB",
            "--max-backlog",
            "65536",
            "--ping-interval",
            "500ms",
            "--idle-timeout",
            "1m",
            "--broadcast",
        ])
        .unwrap();
        assert_eq!(config.greeting.unwrap().delay, Duration::from_millis(500));
        assert_eq!(config.max_frame_size, 1 << 20);
        assert_eq!(config.max_backlog, 65536);
        assert_eq!(config.ping_interval, Some(Duration::from_millis(500)));
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(60)));
        let no_keepalive = parse(&["--ping-interval", "off", "--idle-timeout", "off"]).unwrap();
        assert_eq!(
            (no_keepalive.ping_interval, no_keepalive.idle_timeout),
            (None, None)
        );
        assert_eq!(config.mode, Mode::Broadcast);
        assert_eq!(parse(&["--greeting-delay", "0"]).unwrap().greeting, None);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let error = parse(&["--greeting-delay", "soon"]).unwrap_err();
        assert!(error.contains("expected a duration like 2s"), "{error}");
        assert!(
            parse(&["--max-message-size", "lots"])
                .unwrap_err()
                .contains("expected a size")
        );
        assert!(
            parse(&["--close-timeout", "0"])
                .unwrap_err()
                .contains("above zero")
        );
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--log-level", "loud"]).is_err());
        assert!(
            parse(&["--greeting", ""])
                .unwrap_err()
                .contains("--greeting-delay off")
        );
        let too_short = parse(&["--idle-timeout", "10s"]).unwrap_err();
        assert!(
            too_short.contains("must be longer than --ping-interval (20s)"),
            "{too_short}"
        );
        assert!(
            parse(&["--ping-interval", "off"])
                .unwrap_err()
                .contains("(off)")
        );
        assert!(parse(&["--ping-interval", "off", "--idle-timeout", "off"]).is_ok());
    }

    #[test]
    #[cfg(not(feature = "cluster"))]
    fn a_build_without_clusters_refuses_redis_saying_so() {
        let error = parse(&["--broadcast", "--redis", "redis://127.0.0.1/"]).unwrap_err();
        assert!(
            error.contains("built without clusters") && error.contains("\"cluster\""),
            "{error}"
        );
    }

    #[test]
    #[cfg(feature = "cluster")]
    fn redis_needs_broadcast_and_a_url_that_parses() {
        let config = parse(&["--broadcast", "--redis", "redis://:pw@127.0.0.1:6380/2"]).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.redis_url, "redis://:pw@127.0.0.1:6380/2");
        assert_eq!(cluster.channel, "wsecho");
        assert!(!format!("{cluster:?}").contains("pw@"), "{cluster:?}");
        let named = parse(&[
            "--broadcast",
            "--redis",
            "rediss://h/0",
            "--redis-channel",
            "room",
        ]);
        assert_eq!(named.unwrap().cluster.unwrap().channel, "room");
        let error = parse(&["--redis", "redis://127.0.0.1/"]).unwrap_err();
        assert!(error.contains("needs --broadcast"), "{error}");
        let error = parse(&["--broadcast", "--redis", "127.0.0.1:6379"]).unwrap_err();
        assert!(error.contains("not a Redis URL"), "{error}");
        assert_eq!(parse(&["--broadcast"]).unwrap().cluster, None);
    }

    #[test]
    fn trusted_proxies_and_the_proxy_protocol() {
        let config = parse(&[
            "--trusted-proxy",
            "127.0.0.1",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--proxy-protocol",
        ])
        .unwrap();
        let ranges: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(ranges, ["127.0.0.1/32", "10.0.0.0/8"]);
        assert!(config.proxy_protocol);
        let defaults = parse(&[]).unwrap();
        assert!(defaults.trusted_proxies.is_empty() && !defaults.proxy_protocol);
        let error = parse(&["--trusted-proxy", "nginx"]).unwrap_err();
        assert!(error.contains("expected an address or a range"), "{error}");
    }

    #[test]
    fn test_controls_are_on_unless_turned_off() {
        assert!(parse(&[]).unwrap().test_controls);
        assert!(!parse(&["--no-test-controls"]).unwrap().test_controls);
    }

    #[test]
    fn defaults_print_as_they_parse() {
        assert_eq!(Size(64 << 20).to_string(), "64MiB");
        assert_eq!(Span(Duration::from_secs(2)).to_string(), "2s");
        assert_eq!(Optional::<Span>(None).to_string(), "off");
        assert_eq!("4MiB".parse::<Size>(), Ok(Size(4 << 20)));
    }
}
