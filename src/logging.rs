//! Log output: the terminal (standard error), and a file if asked, through `simplelog`.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, LevelPadding, SharedLogger, TermLogger,
    TerminalMode, WriteLogger,
};

use crate::error::Error;

/// Time stamps like `2026-11-24T22:34:19.648642+00:00`: RFC 3339 with exactly six digits of
/// fraction, so that the columns of a log line up (the RFC 3339 default drops trailing zeros).
const TIME_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6][offset_hour sign:mandatory]:[offset_minute]"
);

/// A log line whose cause can repeat without bound (a flood of refusals, a full queue) is
/// written at most once per interval: the first occurrence is logged, the ones within the
/// interval after it are counted, and the next line may say how many were held back.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: Duration,
    gate: Mutex<Gate>,
}

impl Throttle {
    /// A line written at most once per `interval`.
    pub(crate) const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            gate: Mutex::new(Gate::new()),
        }
    }

    /// Whether the line may be written now; if so, how many occurrences were held back since
    /// the last one written.
    pub(crate) fn pass(&self) -> Option<u64> {
        crate::sync::lock(&self.gate).pass(Instant::now(), self.interval)
    }
}

/// The state behind one rate-limited line, for callers that keep one per key (an address, say)
/// under a lock of their own. [`Throttle`] is one of these with its lock.
#[derive(Debug)]
pub(crate) struct Gate {
    last: Option<Instant>,
    held_back: u64,
}

impl Gate {
    /// A line never written yet.
    pub(crate) const fn new() -> Gate {
        Gate {
            last: None,
            held_back: 0,
        }
    }

    /// Whether the line may be written at `now`, once per `interval`; if so, how many
    /// occurrences were held back since the last one written.
    pub(crate) fn pass(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        match self.last {
            Some(at) if now.duration_since(at) < interval => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }

    /// Whether the last line written is more than `interval` old: the gate is as good as new.
    pub(crate) fn expired(&self, now: Instant, interval: Duration) -> bool {
        self.last
            .is_none_or(|at| now.duration_since(at) >= interval)
    }
}

/// "1 connection", "2 connections": a count and its noun, for log lines.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A size for people to read in a log line: `11.7GiB`, `640KiB`, `12 bytes`.
pub(crate) fn approx_size(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = None;
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(next);
    }
    match unit {
        None => format!("{bytes} bytes"),
        Some(unit) if value.fract() == 0.0 => format!("{value}{unit}"),
        Some(unit) => format!("{value:.1}{unit}"),
    }
}

/// Sets up logging at `level` to standard error and, if given, appended to `file`.
///
/// Call it before starting threads: finding the local UTC offset for timestamps is only
/// reliable while the process has one thread.
pub fn init(level: LevelFilter, file: Option<&Path>) -> Result<(), Error> {
    let mut builder = ConfigBuilder::new();
    builder
        .set_time_format_custom(TIME_FORMAT)
        .set_level_padding(LevelPadding::Right)
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        // Our lines only: tungstenite's own debug lines would repeat ours in its words.
        .add_filter_allow_str("wsecho");
    // Without a known offset simplelog logs UTC, which is still a correct time.
    let _ = builder.set_time_offset_to_local();
    let config = builder.build();

    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![TermLogger::new(
        level,
        config.clone(),
        TerminalMode::Stderr,
        // Colours on a terminal only, never escape codes in a file or a pipe.
        if std::io::stderr().is_terminal() {
            ColorChoice::Auto
        } else {
            ColorChoice::Never
        },
    )];
    if let Some(path) = file {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::LogFile {
                path: path.to_path_buf(),
                source,
            })?;
        loggers.push(WriteLogger::new(level, config, file));
    }
    CombinedLogger::init(loggers).map_err(Error::Logger)
}
