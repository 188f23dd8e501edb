//! The command line: `--name value` pairs, parsed by hand to keep the
//! client's dependencies to the WebSocket stack and its runtime.

use std::time::Duration;

/// What one run does.
#[derive(Debug)]
pub struct Args {
    /// The server, `ws://127.0.0.1:PORT` (loopback only: see [`Args::parse`]).
    pub url: String,
    pub listeners: usize,
    pub messages: u64,
    /// Bytes per message, at least [`crate::payload::HEADER`].
    pub size: usize,
    /// Messages per second (not 0: the fan-out rows pace their sender).
    pub rate: u64,
    /// The server's process id, to read its CPU time over the sending.
    pub pid: Option<u32>,
    /// Text frames instead of binary ones: for a server that, as its docs
    /// show it, sends every message on as text (websocat's default).
    pub text: bool,
    /// Handshakes in flight at once, as wsload's --concurrency: a server's
    /// listen backlog is not flooded, so no connection waits for a SYN retry.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// The bound on the run once every connection is open.
    pub timeout: Duration,
    /// Once everything is sent, how long nothing may arrive before what is
    /// still missing counts as lost (wsload's --drain).
    pub drain: Duration,
}

const USAGE: &str = "usage: fanclient --url ws://127.0.0.1:PORT --listeners N --messages M --size BYTES \
                     --rate PER_S [--pid PID] [--text] [--concurrency N] [--connect-timeout S] \
                     [--timeout S] [--drain S]";

impl Args {
    pub fn parse(mut words: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args {
            url: String::new(),
            listeners: 0,
            messages: 0,
            size: 32,
            rate: 0,
            pid: None,
            text: false,
            concurrency: 64,
            connect_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(60),
            drain: Duration::from_secs(2),
        };
        while let Some(flag) = words.next() {
            if flag == "--text" {
                args.text = true;
                continue;
            }
            let value = words
                .next()
                .ok_or(format!("{flag} needs a value\n{USAGE}"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag} {value}: not a number"))
            };
            match flag.as_str() {
                "--url" => args.url = value.clone(),
                "--listeners" => args.listeners = number()? as usize,
                "--messages" => args.messages = number()?,
                "--size" => args.size = number()? as usize,
                "--rate" => args.rate = number()?,
                "--pid" => args.pid = Some(number()? as u32),
                "--concurrency" => args.concurrency = number()?.max(1) as usize,
                "--connect-timeout" => args.connect_timeout = Duration::from_secs(number()?),
                "--timeout" => args.timeout = Duration::from_secs(number()?),
                "--drain" => args.drain = Duration::from_secs(number()?),
                _ => return Err(format!("unknown option {flag}\n{USAGE}")),
            }
        }
        // A load client that can be pointed at any address is a flood tool: this
        // one only talks to servers on this machine.
        if !(args.url.starts_with("ws://127.") || args.url.starts_with("ws://localhost")) {
            return Err(format!(
                "--url {:?}: give a ws:// URL on 127.0.0.0/8\n{USAGE}",
                args.url
            ));
        }
        if args.listeners == 0 || args.messages == 0 || args.rate == 0 {
            return Err(format!(
                "--listeners, --messages and --rate must be above 0\n{USAGE}"
            ));
        }
        if args.size < crate::payload::HEADER {
            return Err(format!(
                "--size must be at least {} bytes",
                crate::payload::HEADER
            ));
        }
        Ok(args)
    }
}
