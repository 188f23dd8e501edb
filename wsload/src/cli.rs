//! Command-line interface (clap derive) and the value parsers it needs.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Load generator and benchmark client for WebSocket servers.
///
/// Every mode is bounded in time and, unless --allow-remote is given, only
/// talks to loopback addresses. Exit status: 0 when every check passed, 1 when
/// a verification failed or the run could not be done, 2 for bad arguments.
#[derive(Debug, Parser)]
#[command(name = "wsload", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Closed-loop echo: each connection sends a message, waits for its echo,
    /// checks it byte for byte, and sends the next.
    Echo(EchoArgs),
    /// Open many connections, keep them idle, measure the server's memory and
    /// CPU, optionally the greeting timer's lateness, then check that every
    /// connection still echoes.
    Hold(HoldArgs),
    /// Broadcast test: one sender, many listeners; checks that every listener
    /// gets every message, in order, and measures delivery latency.
    Fanout(FanoutArgs),
    /// Wait until the server completes a WebSocket handshake (for scripts
    /// that start a server and must not guess when it is ready).
    Wait(WaitArgs),
    /// Rooms of resuming clients spread over the instances of a cluster, stepped through
    /// phases by commands on standard input (open, send first, send all, chat SECONDS, quit),
    /// one JSON line of figures a phase; a client whose connection ends comes back on another
    /// instance where it left off.
    Chat(ChatArgs),
}

/// Which server to load (first in every mode's help).
#[derive(Debug, Args)]
pub struct Server {
    /// Server URL, e.g. ws://127.0.0.1:9001/ or, over TLS, wss://127.0.0.1:9001/
    #[arg(long, value_name = "URL")]
    pub url: String,

    /// Allow a server address outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_remote: bool,

    /// For a wss:// URL: the certificate authority (PEM) that issued the server's
    /// certificate; the only one trusted.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,

    /// For a wss:// URL: the name the server's certificate must carry, also sent as SNI
    /// (default: the URL's host).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

/// How to run and report (last in every mode's help).
#[derive(Debug, Args)]
pub struct Common {
    /// Worker threads, each running one event loop over a share of the connections
    /// (1 leaves the most CPU to a server on the same machine).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,

    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    pub json: bool,

    /// Most handshakes in flight at once while connecting.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,

    /// Give up on connections that are not open after this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub server: Server,

    /// Number of connections, each with one message in flight.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub connections: u64,

    /// Message payload size (bytes; suffixes k/KiB and m/MiB accepted).
    #[arg(long, value_name = "BYTES", default_value = "32", value_parser = parse_size)]
    pub size: usize,

    /// Length of the measured window.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Unmeasured traffic before the window (caches, TCP windows, CPU clocks).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Send text messages instead of binary ones.
    #[arg(long)]
    pub text: bool,

    /// Spread the connections over N rooms of a server that names rooms by path (wsecho
    /// --broadcast): connection i connects to the URL's path followed by /ROOM-(i mod N).
    /// Alone in its room, a connection's broadcast comes back to it like an echo.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rooms: Option<u64>,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub server: Server,

    /// Number of connections to open and hold.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections: u64,

    /// How long to keep the connections idle once all are open.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Server process id: report its RSS per connection and idle CPU time.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// The server's greeting delay: measure how late each connection's first
    /// text message arrives relative to handshake completion plus this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub greeting_delay: Option<Duration>,

    /// After the idle window, have every connection send one binary message of
    /// this many bytes and read its echo (at most --concurrency in flight), then,
    /// after --settle, take the server's figures again: what an idle
    /// connection keeps after it did something. Needs --pid.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, requires = "pid")]
    pub then_echo: Option<usize>,

    /// How long to wait before taking the server's figures again: after every
    /// connection got its greeting (with --greeting-delay and --pid), and after
    /// the --then-echo round trips. Time for a server to give back buffers it
    /// frees after a short idle time [default with --then-echo: 3s; without
    /// --then-echo no figures are taken after the greeting unless it is given].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub settle: Option<Duration>,

    /// Send each upgrade request but for its last line break, wait until the server (--pid)
    /// holds a descriptor for every connection, then complete all the requests at once: the
    /// handshakes complete close together instead of over the time the server takes to accept
    /// them all, and so do the greetings fall due (the report's opened_within_s says how
    /// close). Needs --pid.
    #[arg(long, requires = "pid")]
    pub upgrade_together: bool,

    /// Spread the connections over N rooms of a server that names rooms by path (wsecho
    /// --broadcast): connection i connects to the URL's path followed by /ROOM-(i mod N).
    /// Alone in its room, a connection's probe comes back to it like an echo.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rooms: Option<u64>,

    /// Spread the connections over N local addresses of 127.0.0.0/8: connection i binds
    /// 127.0.0.1 + (i mod N) (127.0.0.1, 127.0.0.2, ...) before it connects, for a server that
    /// caps what one address may do (wsecho --max-handshakes-per-ip, 64 by default). Linux
    /// answers on all of 127.0.0.0/8; the server's address must be in it too.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_534))]
    pub source_addresses: Option<u32>,

    /// During the hold, when the server closes a connection (a Close with any code, or the TCP
    /// connection dropped), open it again, after --jitter: a server restarting on a listening
    /// socket that is kept open (systemd's socket activation) closes every client with 1012
    /// and the next process takes them back. The hold then ends once every connection came
    /// back (at most --hold after all opened); reports how many came back, the attempts that
    /// were refused, answered 503 or failed otherwise (each is tried again after a backoff),
    /// the time from the first close to the last one back, and each one's time to come back.
    /// Once all are open it says so on stderr (a line starting `wsload: hold --reconnect:`).
    #[arg(long, conflicts_with_all = ["pid", "greeting_delay", "then_echo", "upgrade_together"])]
    pub reconnect: bool,

    /// With --reconnect: each connection waits a random time between zero and this (full
    /// jitter) before it comes back [default: 0, all at once].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "reconnect")]
    pub jitter: Option<Duration>,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub server: Server,

    /// Listener connections (there is one sender connection besides them).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub listeners: u64,

    /// Messages the sender sends.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub messages: u64,

    /// Messages per second; 0 sends as fast as the socket accepts them.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0)]
    pub rate: u64,

    /// Message payload size in bytes (at least 16: sequence number and timestamp).
    #[arg(long, value_name = "BYTES", default_value = "32", value_parser = parse_size)]
    pub size: usize,

    /// Give up (and report what is missing) after this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Once everything is sent, count what is still missing as lost when nothing has arrived
    /// for this long. Longer for a server that may hold every message back for a while (one
    /// that paces its senders to a stalled listener until its send timeout).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Connect the listeners to this server instead of --url (repeatable: they
    /// are spread over the URLs in turn), while the sender stays on --url: a
    /// broadcast crosses a cluster of instances. Loopback only, like --url,
    /// unless --allow-remote is given.
    #[arg(long = "listener-url", value_name = "URL")]
    pub listener_urls: Vec<String>,

    /// Add one more listener that reads its socket at most this many bytes per
    /// second (e.g. 2MiB or 2000000), to see a server pace a burst to a slow
    /// reader; it is checked like the others and reported apart.
    #[arg(long, value_name = "BYTES_PER_SECOND", value_parser = parse_rate)]
    pub slow_listener: Option<u64>,

    /// Server process id: report its CPU time (user + system) from the first
    /// message sent to the last delivered (the slow listener's aside), or to
    /// when the missing ones are given up: the sending's cost, not the
    /// connections' opening.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Listeners resume by position (a server that numbers its rooms' messages: wsecho
    /// --broadcast --history N): they connect with ?resume, read the header that names the
    /// room's epoch and offset, count the offsets of what follows, and when their connection
    /// ends (closed by the server, dropped) come back after a jittered backoff with
    /// ?resume=EPOCH:OFFSET. Reports reconnects, recovered and not, what was caught up and
    /// what was lost.
    #[arg(long)]
    pub resume: bool,

    /// With --resume: each listener (not the slow one) closes its connection once it has N
    /// messages, stays away until the sender has sent every message and got its own copy of
    /// each back, then comes back with its position; the report's resume_catch_up_* is the
    /// time from coming back to the last message. N must be below --messages.
    #[arg(long, value_name = "N", requires = "resume", value_parser = clap::value_parser!(u64).range(1..))]
    pub leave_after: Option<u64>,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// An instance of the cluster (repeatable): client G connects to the (G mod N)-th of the N
    /// URLs, and, when that connection ends, to another of them.
    #[arg(long = "url", value_name = "URL", required = true)]
    pub urls: Vec<String>,

    /// Allow server addresses outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_remote: bool,

    /// For wss:// URLs: the certificate authority (PEM) that issued the servers' certificates.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,

    /// For wss:// URLs: the name the servers' certificates must carry, also sent as SNI.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,

    /// This process's clients.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub clients: u64,

    /// The global number of this process's first client, when several processes share one
    /// plan: client G is in room /room-(G / --room-size). Give each process a multiple of
    /// the room size, so that each holds whole rooms.
    #[arg(long, value_name = "G", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub first_client: u64,

    /// Clients per room; one of each room's members sends in it.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub room_size: u64,

    /// Chat message payload size (bytes, at least 8: the room and a sequence number).
    #[arg(long, value_name = "BYTES", default_value = "32", value_parser = parse_size)]
    pub size: usize,

    /// When a client's connection ends, it waits a random time between zero and this (full
    /// jitter) before it comes back on another instance; a failed attempt backs off further
    /// (50 ms doubling, up to 2 s, jittered too).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub jitter: Duration,

    /// A phase ends, once everything is sent and every client is back, when every message is
    /// delivered or nothing has arrived for this long (what is then missing is lost).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub server: Server,

    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Longest duration any option accepts: every run must end by itself.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses `10s`, `1.5s`, `250ms`, `100us`, `2m`, `1h`; a bare number means
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown time unit {other:?} in {text:?}")),
    };
    let duration = Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("{text:?} is out of range"))?;
    if duration > MAX_DURATION {
        return Err(format!("{text:?} is longer than 24h"));
    }
    Ok(duration)
}

/// Largest message size accepted: 16 MiB.
const MAX_SIZE: usize = 16 * 1024 * 1024;

/// Largest reading rate accepted: 1 GiB/s (nothing slow about it).
const MAX_RATE: u64 = 1024 * 1024 * 1024;

/// Parses a byte count: `32`, `4096`, `4k`, `4KiB`, `1m`, `1MiB`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 32, 4096 or 4KiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1024,
        "m" | "mib" | "mb" => 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

/// Parses a message size: a byte count between 1 byte and 16 MiB.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let size = parse_bytes(text)?;
    usize::try_from(size)
        .ok()
        .filter(|s| (1..=MAX_SIZE).contains(s))
        .ok_or_else(|| format!("size {text:?} must be between 1 byte and 16 MiB"))
}

/// Parses a rate in bytes per second: a byte count like `2MiB` or `2000000`,
/// optionally followed by `/s`, between 1 byte and 1 GiB.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let count = text.strip_suffix("/s").unwrap_or(text).trim_end();
    let rate = parse_bytes(count)?;
    if !(1..=MAX_RATE).contains(&rate) {
        return Err(format!(
            "rate {text:?} must be between 1 byte and 1 GiB per second"
        ));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("48h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32"), Ok(32));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("17MiB").is_err());
        assert!(parse_size("4 GB").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(
            parse_size("17MiB"),
            Err("size \"17MiB\" must be between 1 byte and 16 MiB".into())
        );
        assert_eq!(
            parse_size("4 GB"),
            Err("unknown size unit \"gb\" in \"4 GB\"".into())
        );
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2MiB"), Ok(2 << 20));
        assert_eq!(parse_rate("2000000"), Ok(2_000_000));
        assert_eq!(parse_rate("512k/s"), Ok(512 << 10));
        assert_eq!(parse_rate("64MiB"), Ok(64 << 20));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("2048MiB").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("99999999999999999999").is_err());
    }

    #[test]
    fn parses_an_echo_command_line() {
        let cli = Cli::try_parse_from([
            "wsload",
            "echo",
            "--url",
            "ws://127.0.0.1:1",
            "--connections",
            "64",
            "--size",
            "4KiB",
            "--duration",
            "3s",
            "--json",
        ])
        .unwrap();
        let Command::Echo(args) = cli.command else {
            panic!("expected echo");
        };
        assert_eq!((args.connections, args.size), (64, 4096));
        assert!(args.common.json);
        assert_eq!(args.common.threads, 1);
    }

    #[test]
    fn then_echo_needs_a_pid() {
        let base = ["wsload", "hold", "--url", "ws://127.0.0.1:1"];
        let with = |extra: &[&'static str]| Cli::try_parse_from(base.iter().chain(extra).copied());
        assert!(with(&["--then-echo", "64KiB"]).is_err());
        let cli = with(&["--then-echo", "64KiB", "--pid", "1", "--settle", "2s"]).unwrap();
        let Command::Hold(args) = cli.command else {
            panic!("expected hold");
        };
        assert_eq!(args.then_echo, Some(65536));
        assert_eq!(args.settle, Some(Duration::from_secs(2)));
    }

    #[test]
    fn upgrade_together_needs_a_pid() {
        let base = ["wsload", "hold", "--url", "ws://127.0.0.1:1"];
        let with = |extra: &[&'static str]| Cli::try_parse_from(base.iter().chain(extra).copied());
        assert!(with(&["--upgrade-together"]).is_err());
        let cli = with(&["--upgrade-together", "--pid", "1", "--rooms", "50"]).unwrap();
        let Command::Hold(args) = cli.command else {
            panic!("expected hold");
        };
        assert!(args.upgrade_together);
        assert_eq!(args.rooms, Some(50));
        assert!(with(&["--rooms", "0"]).is_err());
    }

    #[test]
    fn reconnect_options() {
        let base = ["wsload", "hold", "--url", "ws://127.0.0.1:1"];
        let with = |extra: &[&'static str]| Cli::try_parse_from(base.iter().chain(extra).copied());
        assert!(with(&["--jitter", "1s"]).is_err());
        assert!(with(&["--reconnect", "--pid", "1"]).is_err());
        assert!(with(&["--reconnect", "--greeting-delay", "1s"]).is_err());
        assert!(with(&["--source-addresses", "0"]).is_err());
        assert!(with(&["--source-addresses", "65535"]).is_err());
        let cli = with(&["--reconnect", "--jitter", "1s", "--source-addresses", "200"]).unwrap();
        let Command::Hold(args) = cli.command else {
            panic!("expected hold");
        };
        assert!(args.reconnect);
        assert_eq!(args.jitter, Some(Duration::from_secs(1)));
        assert_eq!(args.source_addresses, Some(200));
    }

    #[test]
    fn parses_a_slow_listener_and_a_pid() {
        let cli = Cli::try_parse_from([
            "wsload",
            "fanout",
            "--url",
            "ws://127.0.0.1:1",
            "--size",
            "64KiB",
            "--slow-listener",
            "2MiB",
            "--pid",
            "42",
        ])
        .unwrap();
        let Command::Fanout(args) = cli.command else {
            panic!("expected fanout");
        };
        assert_eq!((args.size, args.slow_listener), (65536, Some(2 << 20)));
        assert_eq!(args.pid, Some(42));
        assert!(!args.resume);
    }

    #[test]
    fn leave_after_needs_resume() {
        let base = ["wsload", "fanout", "--url", "ws://127.0.0.1:1"];
        let with = |extra: &[&'static str]| Cli::try_parse_from(base.iter().chain(extra).copied());
        assert!(with(&["--leave-after", "1"]).is_err());
        assert!(with(&["--resume", "--leave-after", "0"]).is_err());
        let cli = with(&["--resume", "--leave-after", "1", "--messages", "10001"]).unwrap();
        let Command::Fanout(args) = cli.command else {
            panic!("expected fanout");
        };
        assert!(args.resume);
        assert_eq!((args.leave_after, args.messages), (Some(1), 10_001));
    }
}
