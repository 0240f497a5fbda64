//! Summaries of samples (percentiles, medians) and the formatting of the figures.

use std::time::Duration;

/// Latency samples, sorted, with the run's wall time.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    sorted: Vec<Duration>,
    /// Wall time of the whole run, warm-up included.
    pub(crate) wall: Duration,
    /// Calls completed in `wall`, warm-up included.
    pub(crate) completed: usize,
}

impl Latencies {
    pub(crate) fn new(mut samples: Vec<Duration>, wall: Duration, completed: usize) -> Self {
        samples.sort_unstable();
        Self { sorted: samples, wall, completed }
    }

    pub(crate) fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The `p`-th percentile (nearest rank), `p` in 0..=100.
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        percentile(&self.sorted, p)
    }

    pub(crate) fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    pub(crate) fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    pub(crate) fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }

    /// Completed calls per second over the whole run.
    pub(crate) fn throughput(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 { self.completed as f64 / secs } else { 0.0 }
    }
}

/// The `p`-th percentile of sorted samples (nearest rank); zero when there are none.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of unsorted samples (the mean of the middle two for an even count).
pub(crate) fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    match n {
        0 => Duration::ZERO,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// Milliseconds with three decimals ("0.052 ms").
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Mebibytes ("9.8 MiB") from kibibytes, as /proc reports them.
pub(crate) fn mib_from_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Megabytes, decimal ("12.3 MB"), as binary sizes are usually quoted.
pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        let odd = [3, 1, 2].map(Duration::from_millis);
        assert_eq!(median(&odd), Duration::from_millis(2));
        let even = [4, 1, 2, 3].map(Duration::from_millis);
        assert_eq!(median(&even), Duration::from_micros(2500));
    }
}
