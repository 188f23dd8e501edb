//! The run's figures, as one line of JSON with wsload fanout's keys (the
//! bench reads both clients' lines the same way).

use crate::args::Args;
use crate::listener::Tally;
use serde_json::json;
use std::time::Duration;

#[derive(Default)]
pub struct Report {
    listeners: usize,
    messages: u64,
    pub opened: usize,
    delivered: u64,
    out_of_order: u64,
    duplicates: u64,
    foreign: u64,
    pub sender_echoes: u64,
    /// Sync messages sent before every listener had one: each is a broadcast
    /// to every listener that the counted messages may queue behind.
    pub syncs: u64,
    send_s: f64,
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    server_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
    json: serde_json::Value,
}

/// The sample at percentile P of a sorted slice, nearest rank (as wsload's
/// stats::percentile): the smallest with at least P % at or below it.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

impl Report {
    pub fn new(args: &Args) -> Report {
        Report {
            listeners: args.listeners,
            messages: args.messages,
            json: json!({
                "mode": "fanout",
                "client": format!("fanclient (tokio-tungstenite, tokio's multi-threaded runtime, {} threads)",
                                  std::thread::available_parallelism().map_or(1, |n| n.get())),
                "url": args.url, "listeners": args.listeners, "messages": args.messages,
                "rate": args.rate, "size": args.size, "text": args.text, "pid": args.pid,
            }),
            ..Report::default()
        }
    }

    pub fn error(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }

    pub fn sent_in(&mut self, took: Duration) {
        self.send_s = took.as_secs_f64();
    }

    pub fn add(&mut self, mut tally: Tally) {
        self.delivered += tally.distinct;
        self.out_of_order += tally.out_of_order;
        self.duplicates += tally.duplicates;
        self.foreign += tally.foreign;
        self.latencies_ns.append(&mut tally.latencies_ns);
        if let Some(why) = tally.error {
            self.error(why);
        }
    }

    pub fn finish(&mut self, server_cpu_s: Option<f64>, client_cpu_s: Option<f64>) {
        self.server_cpu_s = server_cpu_s;
        self.client_cpu_s = client_cpu_s;
        self.latencies_ns.sort_unstable();
    }

    pub fn ok(&self) -> bool {
        let expected = self.listeners as u64 * self.messages;
        self.opened == self.listeners + 1
            && self.delivered == expected
            && self.out_of_order == 0
            && self.duplicates == 0
            && self.errors == 0
    }

    pub fn to_json(&self) -> String {
        let expected = self.listeners as u64 * self.messages;
        let l = &self.latencies_ns;
        let mut json = self.json.clone();
        let more = json!({
            "opened": self.opened, "expected": expected, "delivered": self.delivered,
            "missing": expected - self.delivered, "out_of_order": self.out_of_order,
            "duplicates": self.duplicates, "foreign_messages": self.foreign,
            "sender_echoes": self.sender_echoes, "sync_messages": self.syncs, "send_s": self.send_s,
            "latency_us": {
                "count": l.len(), "p50_us": percentile(l, 50.0), "p99_us": percentile(l, 99.0),
                "p999_us": percentile(l, 99.9), "max_us": percentile(l, 100.0),
            },
            "errors": self.errors, "first_error": self.first_error,
            "server_cpu_s": self.server_cpu_s, "client_cpu_s": self.client_cpu_s, "ok": self.ok(),
        });
        json.as_object_mut()
            .expect("an object")
            .extend(more.as_object().expect("an object").clone());
        json.to_string()
    }
}
