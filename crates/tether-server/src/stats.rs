//! Figures the connection tasks report beyond the Prometheus counters, for the dashboard:
//! heartbeat round trips over the last 30–60 s, and closes by code and initiator.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use tether_core::channel::{DASHBOARD_CHANNEL, RESERVED_PREFIX};

/// Round-trip quantiles cover the last 30–60 s (two rotating histograms).
const RTT_ROTATE: Duration = Duration::from_secs(30);

struct RttWindow {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    rotated_at: Instant,
}

/// Figures the connection tasks report beyond the Prometheus counters.
pub struct Stats {
    rtt: Mutex<RttWindow>,
    /// Closes by (code label, initiator); labels are bounded (see `metrics::close_code_label`).
    closes: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        // 1 µs .. 60 s at 2 significant digits: a few KB, fixed.
        let hist = || Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds");
        Stats {
            rtt: Mutex::new(RttWindow {
                current: hist(),
                previous: hist(),
                rotated_at: Instant::now(),
            }),
            closes: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Stats {
    pub fn record_rtt(&self, rtt: Duration) {
        let mut guard = crate::sync::lock(&self.rtt);
        let w = &mut *guard;
        if w.rotated_at.elapsed() >= RTT_ROTATE {
            std::mem::swap(&mut w.previous, &mut w.current);
            w.current.reset();
            w.rotated_at = Instant::now();
        }
        let micros = (rtt.as_micros() as u64).clamp(1, 60_000_000);
        let _ = w.current.record(micros);
    }

    /// (p50, p99) in milliseconds over the recent window, or `None` without samples.
    pub fn rtt_quantiles(&self) -> Option<(f64, f64)> {
        let w = crate::sync::lock(&self.rtt);
        let mut merged = w.previous.clone();
        merged.add(&w.current).ok()?;
        if merged.is_empty() {
            return None;
        }
        Some((
            merged.value_at_quantile(0.5) as f64 / 1000.0,
            merged.value_at_quantile(0.99) as f64 / 1000.0,
        ))
    }

    pub fn record_close(&self, code_label: String, initiator: &'static str) {
        *crate::sync::lock(&self.closes).entry((code_label, initiator)).or_default() += 1;
    }

    /// Closes so far by (code label, initiator), in order.
    pub fn closes(&self) -> Vec<((String, &'static str), u64)> {
        crate::sync::lock(&self.closes).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
