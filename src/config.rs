//! The server's settings: one plain struct, every field public, with the defaults a newcomer
//! gets from `wsecho` with no flags. The command line (`cli.rs`) only fills this in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Where the server listens by default: loopback only, so a first run exposes nothing.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The tutorial's port.
pub const DEFAULT_PORT: u16 = 3000;

/// The greeting text; `{time}` is replaced by the local date-time when it is sent.
pub const DEFAULT_GREETING: &str = "{time} hello client !!!";

/// How long after the handshake the greeting is sent, as in the tutorial.
pub const DEFAULT_GREETING_DELAY: Duration = Duration::from_secs(2);

/// Time a client has to send a complete HTTP request head. A client that connects and says
/// nothing (or dribbles a byte a second) holds a thread, so it must not hold it for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head accepted (request line plus headers); larger gets 431.
/// Browsers send well under 2 KiB; 8 KiB is what most HTTP servers allow.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Largest message accepted, after reassembling fragments; larger gets Close 1009.
/// tungstenite's default, and the bound on what one connection can make us buffer.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Largest single frame accepted; larger gets Close 1009. tungstenite's default.
pub const MAX_FRAME_SIZE: usize = 16 << 20;

/// Bytes queued for one client and not yet taken by its socket. Past this a broadcast listener
/// is *behind*: senders stop being read from until it is down to half (see `delivery/flow.rs`); an
/// echo client stops being read from until it takes its echoes. 4 MiB is a second of a fast
/// home connection: enough that a reader who keeps up never sees it, small enough that ten
/// thousand of them fit in memory.
pub const MAX_BACKLOG: usize = 4 << 20;

/// How long a broadcast listener may stay behind before it is closed with 1008. A client that
/// keeps reading catches up well within it (half a backlog, 2 MiB, takes 10 s at 200 KiB/s),
/// one that stopped reading, or takes a kilobyte a second, does not; and no client can hold the
/// senders back for longer than this. gorilla/websocket's chat example waits 10 s for a write.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Unfinished handshakes (connected, request not yet answered) allowed per client address.
/// A browser opens one at a time per page; a load tester keeps a few dozen in flight (wsload
/// 64, which this matches); a slowloris attacker wants them all, and gets 64 of the thousands
/// of slots. Capping these per address cannot hurt users behind one shared NAT, whose
/// handshakes each finish in milliseconds.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;

/// The default memory ceiling is this fraction (1/N) of the machine's memory (or of the
/// container's limit): the rest is left to the kernel's socket buffers, the threads' stacks and
/// the other programs on the machine.
pub const MEMORY_FRACTION: u64 = 2;

/// The memory ceiling when the machine's memory cannot be found out.
pub const FALLBACK_MAX_MEMORY: usize = 1 << 30;

/// How often the server pings a connection it has not heard from. Browsers answer pings
/// automatically, so a well-behaved idle client stays connected for ever. WebSocket-Node, the
/// tutorial's library, pings every 20 s too.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);

/// A client that sent nothing at all, not even a pong, for this long is gone (a laptop closed,
/// a cable pulled): drop it. Longer than the ping interval, so one unanswered ping is not
/// enough; WebSocket-Node drops after 20 s + a 10 s grace.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// After the server sends a Close frame, how long it waits for the client's reply before it
/// drops the socket anyway. Also bounds how long shutdown waits.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle room keeps its history (`--history`): once its last broadcast is this
/// old, a newcomer gets none and the memory is freed. Ten minutes covers a client that
/// rejoins after a blip or a short break, and a demo class's pause, without keeping the
/// history of a room nobody uses for the server's whole life.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(10 * 60);

/// The Redis pub/sub channel a cluster of instances shares, unless `--redis-channel` names
/// another (instances on one Redis with different channels are different clusters).
pub const DEFAULT_REDIS_CHANNEL: &str = "wsecho";

/// Joining a cluster of instances through Redis (`--redis`): every client of every instance
/// then receives every broadcast (see docs/cluster.md).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for TLS.
    pub redis_url: String,
    /// The channel the instances publish and subscribe to.
    pub channel: String,
}

impl ClusterConfig {
    /// The cluster on the Redis at `redis_url`, sharing `channel`. The URL is checked without
    /// connecting (`redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, `rediss://` for TLS, or a
    /// Unix socket); the error never repeats it, as it may hold a password. A build without
    /// the `cluster` feature refuses every URL, saying so.
    pub fn new(redis_url: &str, channel: &str) -> Result<ClusterConfig, String> {
        if !cfg!(feature = "cluster") {
            let missing = crate::error::Error::NotBuiltIn {
                what: "clusters",
                feature: "cluster",
            };
            return Err(format!("--redis: {missing}"));
        }
        #[cfg(feature = "cluster")]
        check_url(redis_url)?;
        if channel.is_empty() {
            return Err("--redis-channel is empty".to_string());
        }
        Ok(ClusterConfig {
            redis_url: redis_url.to_string(),
            channel: channel.to_string(),
        })
    }

    /// The Redis URL as logs and errors show it: its password, if any, replaced by `***`.
    pub fn shown_url(&self) -> String {
        shown_url(&self.redis_url)
    }
}

impl std::fmt::Debug for ClusterConfig {
    /// Without the URL's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &self.shown_url())
            .field("channel", &self.channel)
            .finish()
    }
}

/// Checks a `--redis` URL without connecting: redis:// or rediss:// (or a Unix socket), as the
/// redis crate reads them. The error never repeats the URL, which may hold a password.
#[cfg(feature = "cluster")]
fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url).map(|_| ()).map_err(|e| {
        format!(
            "--redis: not a Redis URL ({}); expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] \
             or rediss://... for TLS",
            e.detail().unwrap_or("it does not parse")
        )
    })
}

/// `url` with its password replaced by `***`: the one in its user information
/// (`redis://[USER]:PASSWORD@HOST...`), or a Unix socket URL's `pass=` or `password=`
/// parameter (`redis+unix:///PATH?pass=PASSWORD`). A URL without a password is shown as it is.
fn shown_url(url: &str) -> String {
    const HIDDEN: &str = "***";
    let Some((scheme, rest)) = url.split_once("://") else {
        return "the Redis URL".to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:{HIDDEN}@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let path = match path.split_once('?') {
        Some((before, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key @ ("pass" | "password"), _)) => format!("{key}={HIDDEN}"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{before}?{}", query.join("&"))
        }
        None => path.to_string(),
    };
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "cluster")]
    fn redis_urls_are_checked_without_connecting() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://cache.example.com:6380/1").is_ok());
        let error = check_url("http://:s3cret@localhost").unwrap_err();
        assert!(error.starts_with("--redis: not a Redis URL"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn redis_urls_are_shown_without_their_password() {
        let shown = |url: &str| {
            ClusterConfig {
                redis_url: url.into(),
                channel: "c".into(),
            }
            .shown_url()
        };
        assert_eq!(
            shown("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(shown("rediss://me:s3cret@h/1"), "rediss://me:***@h/1");
        assert_eq!(shown("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert_eq!(
            shown("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(shown("not a url"), "the Redis URL");
    }

    #[test]
    fn address_ranges_parse_and_match() {
        let range = |text: &str| text.parse::<AddressRange>().unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(range("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!range("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(range("10.1.2.3/8").contains(ip("10.200.0.1")));
        assert_eq!(range("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert!(range("10.0.0.0/8").contains(ip("::ffff:10.0.0.9")));
        assert!(range("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!range("2001:db8::/32").contains(ip("10.0.0.1")));
        assert!(range("0.0.0.0/0").contains(ip("203.0.113.7")));
        assert!(range("::1").contains(ip("::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "nginx",
            "10.0.0.0/x",
            "10.0.0.0/",
        ] {
            let error = bad.parse::<AddressRange>().unwrap_err();
            assert!(error.contains("expected an address or a range"), "{error}");
        }
    }
}

/// The PEM files to serve TLS with (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain: the server's certificate first, then any intermediates.
    pub cert: std::path::PathBuf,
    /// The private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted.
    pub key: std::path::PathBuf,
}

/// What happens to a broadcast listener that falls more than `--max-backlog` behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowListener {
    /// Close it at once with 1008; no sender ever waits for another client, so a room's
    /// latency does not depend on its slowest member. A client that uses `?resume` comes back
    /// and gets what it missed. Redis's, NATS's and Centrifugo's choice.
    Close,
    /// Pace the room's senders to it (they stop being read from) until it catches up, or
    /// close it after `--send-timeout`: every plain client gets everything, and one slow
    /// reader slows its room. RabbitMQ's choice.
    Wait,
}

/// What the server does with each message it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send it back to its sender only.
    Echo,
    /// Send it to every connection of its room, the sender included.
    Broadcast,
}

/// The greeting sent once to each client, some time after it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Time from the handshake to the greeting.
    pub delay: Duration,
    /// The text; `{time}` is replaced by the local date-time.
    pub template: String,
}

/// Everything the server needs to know; `Config::default()` is `wsecho` with no flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Host name or address to listen on.
    pub host: String,
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// Echo or broadcast.
    pub mode: Mode,
    /// In broadcast mode, whether the URL path names the room a client joins (`/` is the
    /// lobby, `/chat/rust` the room `chat/rust`); `false`: every client is in one room.
    pub rooms: bool,
    /// Broadcasts each room keeps for newcomers, who get them first; 0: none.
    pub history: usize,
    /// How long an idle room keeps its history; see [`DEFAULT_HISTORY_TTL`].
    pub history_ttl: Duration,
    /// `None` turns the greeting off.
    pub greeting: Option<Greeting>,
    /// Serve the browser demo page at `/`.
    pub demo_page: bool,
    /// Serve Prometheus metrics at `/metrics` (in a build with the `metrics` feature).
    pub metrics: bool,
    /// Speak TLS only (`wss://`, `https://`) with these files; `None`: plain.
    pub tls: Option<TlsFiles>,
    /// Subprotocols the server speaks, in order of preference; empty: none.
    pub subprotocols: Vec<String>,
    /// Origins allowed to open a WebSocket; empty: all (see docs/hostile-clients.md on
    /// cross-site WebSocket hijacking). A request without an Origin header (not a browser) is allowed.
    pub allowed_origins: Vec<String>,
    /// Time a client has to send its whole request head; see [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// Largest request head; see [`MAX_REQUEST_HEAD`].
    pub max_request_head: usize,
    /// Concurrent connections, handshakes included; past it new clients get 503.
    /// `None`: derived from the open-file limit at start.
    pub max_connections: Option<usize>,
    /// Concurrent connections from one address (IPv6: one /64); `None`: no cap.
    pub max_connections_per_address: Option<usize>,
    /// Unfinished handshakes from one address (IPv6: one /64); `None`: no cap.
    pub max_handshakes_per_address: Option<usize>,
    /// Bytes held for all connections together (see `budget.rs`). `None`: derived from the
    /// machine's memory at start.
    pub max_memory: Option<usize>,
    /// Largest message; see [`MAX_MESSAGE_SIZE`].
    pub max_message_size: usize,
    /// Largest frame; see [`MAX_FRAME_SIZE`].
    pub max_frame_size: usize,
    /// Bytes queued for a client before it counts as behind; see [`MAX_BACKLOG`].
    pub max_backlog: usize,
    /// What happens to a broadcast listener more than `max_backlog` behind.
    pub slow_listener: SlowListener,
    /// With [`SlowListener::Wait`], how long a broadcast listener may stay behind before it is
    /// closed with 1008.
    pub send_timeout: Duration,
    /// `None` turns pings off.
    pub ping_interval: Option<Duration>,
    /// `None` never drops a silent client.
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the reply to the server's Close; see [`CLOSE_TIMEOUT`].
    pub close_timeout: Duration,
    /// The cluster to join (broadcast mode only); `None`: this instance alone.
    pub cluster: Option<ClusterConfig>,
    /// Peers whose `Forwarded` or `X-Forwarded-For` header names the client (see
    /// `src/proxy/`); empty: those headers are ignored, whoever sends them.
    pub trusted_proxies: Vec<AddressRange>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) naming the client;
    /// a connection without one is closed.
    pub proxy_protocol: bool,
    /// Test controls (`?close=`, `?whoami`, ... in a client's URL, see `http/controls.rs`):
    /// on for local testing, off for a public deployment (`--no-test-controls`). Off, the
    /// query is ignored as before and `GET /echo` is 404.
    pub test_controls: bool,
    /// Test hook: a text message equal to this makes the connection's thread panic, to show that
    /// a panic in one connection is logged and the server goes on. Never set by the command line.
    #[doc(hidden)]
    pub panic_on_message: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: DEFAULT_HOST.to_string(),
            port: DEFAULT_PORT,
            mode: Mode::Echo,
            rooms: true,
            history: 0,
            history_ttl: DEFAULT_HISTORY_TTL,
            greeting: Some(Greeting {
                delay: DEFAULT_GREETING_DELAY,
                template: DEFAULT_GREETING.to_string(),
            }),
            demo_page: true,
            metrics: true,
            tls: None,
            subprotocols: Vec::new(),
            allowed_origins: Vec::new(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_request_head: MAX_REQUEST_HEAD,
            max_connections: None,
            max_connections_per_address: None,
            max_handshakes_per_address: Some(MAX_HANDSHAKES_PER_ADDRESS),
            max_memory: None,
            max_message_size: MAX_MESSAGE_SIZE,
            max_frame_size: MAX_FRAME_SIZE,
            max_backlog: MAX_BACKLOG,
            slow_listener: SlowListener::Close,
            send_timeout: SEND_TIMEOUT,
            ping_interval: Some(PING_INTERVAL),
            idle_timeout: Some(IDLE_TIMEOUT),
            close_timeout: CLOSE_TIMEOUT,
            cluster: None,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            test_controls: true,
            panic_on_message: None,
        }
    }
}

/// A range of addresses, written like `10.0.0.0/8` or `2001:db8::/32`; a plain address is a
/// range of one (`/32`, `/128`). An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a
/// dual-stack listener reports IPv4 peers) is matched as the IPv4 address it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    /// The first address of the range (the bits past the prefix are zero).
    network: IpAddr,
    /// The prefix length in bits.
    prefix: u8,
}

impl AddressRange {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, unmapped(ip)) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(ip) & mask == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(network)
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps; any other as it is.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl std::str::FromStr for AddressRange {
    type Err = String;

    fn from_str(text: &str) -> Result<AddressRange, String> {
        let expected = "expected an address or a range like 10.0.0.0/8 or 2001:db8::/32";
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{expected}, not {text:?}"))?;
        let address = unmapped(address);
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(n) if n <= bits => n,
                _ => {
                    return Err(format!(
                        "{expected}, not {text:?} (the prefix length is 0 to {bits})"
                    ));
                }
            },
        };
        let network = match address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Ok(AddressRange { network, prefix })
    }
}

impl std::fmt::Display for AddressRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}
