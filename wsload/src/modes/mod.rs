//! The load modes, one module each, and what they have in common.

pub mod chat;
pub mod echo;
pub mod fanout;
pub mod hold;
pub mod wait;

use crate::target::Target;
use crate::worker::Worker;
use anyhow::{Result, bail};
use serde::Serialize;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::thread;

/// A finished run's figures: printable for people and as JSON for scripts.
pub trait Report: Serialize {
    /// True when every verification passed (decides the exit status).
    fn passed(&self) -> bool;
    /// Prints the human-readable report to stdout.
    fn print_human(&self);
}

/// How many of `total` items part `index` of `parts` gets (the first
/// `total % parts` parts get one extra).
pub fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

/// Runs every worker on a thread of its own, each with its share of `connections`:
/// `run(worker, index, count)`. `meanwhile` runs on the calling thread while they work (the
/// hold mode measures the server there). Returns the workers' results in order, and
/// `meanwhile`'s.
pub fn on_workers<T, R>(
    workers: Vec<Worker>,
    connections: usize,
    run: impl Fn(Worker, usize, usize) -> Result<T> + Sync,
    meanwhile: impl FnOnce() -> R,
) -> (Vec<Result<T>>, R)
where
    T: Send,
{
    let threads = workers.len();
    thread::scope(|s| {
        let run = &run;
        let handles: Vec<_> = workers
            .into_iter()
            .enumerate()
            .map(|(t, worker)| s.spawn(move || run(worker, t, share(connections, threads, t))))
            .collect();
        let during = meanwhile();
        let results = handles
            .into_iter()
            .map(|h| h.join().expect("a worker thread panicked"))
            .collect();
        (results, during)
    })
}

/// One worker per thread, its connections spread over `rooms` rooms of a server that names
/// rooms by path (`--rooms`): connection gid goes to the URL's path followed by
/// `/room-(gid mod rooms)` (see [`on_workers`] on how ids map); without rooms, every
/// connection goes to `target`.
pub fn room_workers(
    target: &Arc<Target>,
    rooms: Option<u64>,
    threads: usize,
) -> std::io::Result<Vec<Worker>> {
    let rooms: Vec<Arc<Target>> = (0..rooms.unwrap_or(0))
        .map(|room| Arc::new(in_room(target, room)))
        .collect();
    (0..threads)
        .map(|t| {
            if rooms.is_empty() {
                return Worker::new(target.clone());
            }
            let rooms = rooms.clone();
            let route = move |id: usize| Arc::clone(&rooms[(t + id * threads) % rooms.len()]);
            Worker::with_route(target.clone(), Arc::new(route))
        })
        .collect()
}

/// The first local address `--source-addresses` spreads connections over; the k-th is this
/// plus k.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// The k-th of the local addresses (k from 0): 127.0.0.1, 127.0.0.2, ..., 127.0.1.0, ...
pub fn source_address(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_SOURCE) + k)
}

/// Binds the connections of `workers` (one per thread, as [`on_workers`] runs them) to `count`
/// local addresses of 127.0.0.0/8 in turn: connection gid (see [`on_workers`] on how ids map)
/// to the (gid mod count)-th. The server must be on 127.0.0.0/8 too, as a socket bound to a
/// loopback address can reach no other.
pub fn spread_sources(workers: &mut [Worker], target: &Target, count: u32) -> Result<()> {
    if !matches!(target.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
        bail!(
            "--source-addresses binds 127.0.0.0/8 addresses, which reach only a server on              127.0.0.0/8, and {} is not there",
            target.addr.ip()
        );
    }
    let threads = workers.len();
    for (t, worker) in workers.iter_mut().enumerate() {
        let source = move |id: usize| {
            let k = (t + id * threads) % count as usize;
            IpAddr::V4(source_address(k as u32))
        };
        worker.bind_sources(Arc::new(source));
    }
    Ok(())
}

/// `target` with `/room-N` added to its path.
fn in_room(target: &Target, room: u64) -> Target {
    let mut in_room = target.clone();
    in_room.path = format!("{}/room-{room}", target.path.trim_end_matches('/'));
    in_room
}

/// A run that could not open a single connection has nothing to report: it is an error,
/// with the first failure as its cause.
pub fn ensure_opened(opened: usize, url: &str, first_error: Option<&str>) -> Result<()> {
    if opened == 0 {
        anyhow::bail!(
            "could not open any connection to {url}: {}",
            first_error.unwrap_or("unknown error")
        );
    }
    Ok(())
}

/// Counts failures and keeps the first one's description, which is usually
/// the one that explains the rest.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    pub count: u64,
    pub first: Option<String>,
}

impl Errors {
    pub fn record(&mut self, what: impl Display) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(what.to_string());
        }
    }

    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// Prints one aligned `label value` line of a human-readable report.
pub fn row(label: &str, value: impl Display) {
    println!("  {label:<13} {value}");
}

/// `OK` or `FAILED`, for the last line of a report.
pub fn verdict(passed: bool) -> &'static str {
    if passed { "OK" } else { "FAILED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for total in [0, 1, 5, 64, 10_001] {
            for parts in 1..5 {
                let sum: usize = (0..parts).map(|i| share(total, parts, i)).sum();
                assert_eq!(sum, total);
            }
        }
        assert_eq!(share(5, 2, 0), 3);
        assert_eq!(share(5, 2, 1), 2);
    }

    #[test]
    fn rooms_extend_the_path() {
        let target = crate::target::resolve("ws://127.0.0.1:9/soak", false).unwrap();
        assert_eq!(in_room(&target, 3).path, "/soak/room-3");
        let root = crate::target::resolve("ws://127.0.0.1:9/", false).unwrap();
        assert_eq!(in_room(&root, 0).path, "/room-0");
    }

    #[test]
    fn source_addresses_count_up_from_127_0_0_1() {
        assert_eq!(source_address(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_address(199), Ipv4Addr::new(127, 0, 0, 200));
        assert_eq!(source_address(255), Ipv4Addr::new(127, 0, 1, 0));
        assert_eq!(source_address(65_533), Ipv4Addr::new(127, 0, 255, 254));
    }

    #[test]
    fn sources_need_a_server_on_127() {
        let v6 = crate::target::resolve("ws://[::1]:9/", false).unwrap();
        let mut workers = vec![Worker::new(Arc::new(v6.clone())).unwrap()];
        assert!(spread_sources(&mut workers, &v6, 2).is_err());
        let v4 = crate::target::resolve("ws://127.0.0.9:9/", false).unwrap();
        assert!(spread_sources(&mut workers, &v4, 2).is_ok());
    }

    #[test]
    fn errors_keep_the_first() {
        let mut e = Errors::default();
        e.record("boom");
        e.record("later");
        assert_eq!((e.count, e.first.as_deref()), (2, Some("boom")));
    }
}
