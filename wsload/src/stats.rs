//! Exact percentiles from recorded samples.
//!
//! A run records at most a few million latencies, so keeping every sample
//! and sorting once at the end is cheap and gives exact figures, with no
//! bucketing error to explain in a teaching project.

use serde::Serialize;
use std::time::Duration;

/// Latency (or lateness) figures in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The sample at percentile `p` (0 < p <= 100) of a sorted slice, by the
/// nearest-rank method: the smallest sample with at least p% of all samples
/// at or below it.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    // The small tolerance keeps float noise (0.999 * 1000 = 999.0000000001)
    // from pushing the rank one sample too far.
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sorts nanosecond samples in place and summarises them.
pub fn summarize_ns(samples: &mut [i64]) -> Summary {
    samples.sort_unstable();
    let us = |p: f64| percentile(samples, p).map_or(0.0, |ns| ns as f64 / 1000.0);
    Summary {
        count: samples.len(),
        p50_us: us(50.0),
        p99_us: us(99.0),
        p999_us: us(99.9),
        max_us: samples.last().map_or(0.0, |&ns| ns as f64 / 1000.0),
    }
}

/// A duration as signed nanoseconds, saturating (fits 292 years).
pub fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Formats microseconds for people: `87.3 µs`, `1.24 ms`, `2.10 s`.
pub fn human_us(us: f64) -> String {
    let abs = us.abs();
    if abs >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if abs >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

impl Summary {
    /// One line: `p50 … p99 … p99.9 … max …`.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".to_string();
        }
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            human_us(self.p50_us),
            human_us(self.p99_us),
            human_us(self.p999_us),
            human_us(self.max_us),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.9), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.001), Some(1));
        assert_eq!(percentile::<i64>(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.9), Some(7));
    }

    #[test]
    fn thousand_samples_p999_is_the_largest_but_one() {
        let v: Vec<i64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.9), Some(999));
    }

    #[test]
    fn summary_sorts_and_converts() {
        let mut v = vec![3000, 1000, 2000, -500];
        let s = summarize_ns(&mut v);
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_us, 1.0);
        assert_eq!(s.max_us, 3.0);
        assert_eq!(summarize_ns(&mut []), Summary::default());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(87.34), "87.3 µs");
        assert_eq!(human_us(1240.0), "1.24 ms");
        assert_eq!(human_us(2_100_000.0), "2.10 s");
        assert_eq!(human_us(-1500.0), "-1.50 ms");
    }
}
