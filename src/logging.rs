//! Helpers for log lines: counts with their noun, sizes for people, and lines whose cause can
//! repeat without bound, written at most once per interval. (Where the log goes, the terminal
//! or a file, is the `wsecho` command's business: `src/log_output.rs`.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
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
