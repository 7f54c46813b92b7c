//! The dashboard's live figures. Once a second the sampler reads the gateway's counters into a
//! bounded ring (five minutes), and — only while someone is subscribed to the reserved channel
//! `_tether:dashboard` — renders SVG charts and publishes one snapshot there. The dashboard
//! page is thus a `tether.js` client like any other.

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::stats::{Stats, DASHBOARD_CHANNEL};
use crate::svg_chart::{line_chart, Series};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Samples kept: five minutes at one per second.
const WINDOW: usize = 300;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct CloseCount {
    code: String,
    name: &'static str,
    initiator: &'static str,
    count: u64,
}

#[derive(Serialize)]
struct Charts {
    connections: String,
    messages: String,
    rtt: String,
    memory: String,
}

#[derive(Serialize)]
struct Snapshot {
    /// Milliseconds since the Unix epoch.
    at: u64,
    connections: i64,
    messages_per_sec: f64,
    rtt_p50_ms: Option<f64>,
    rtt_p99_ms: Option<f64>,
    rss_bytes: Option<u64>,
    /// The allocator's live heap, when the binary reports it (the `tether` binary does).
    heap_bytes: Option<u64>,
    accepted: u64,
    publications: u64,
    heartbeat_timeouts: u64,
    closes: Vec<CloseCount>,
    /// The most subscribed channels on this node.
    channels: Vec<ChannelRow>,
    charts: Charts,
}

/// A channel as the dashboard lists it.
#[derive(Serialize)]
struct ChannelRow {
    name: String,
    /// Subscribers on this node (each one a presence entry when `presence` is on).
    subscribers: usize,
    presence: bool,
    join_leave: bool,
}

/// Channels the dashboard lists at most.
const CHANNELS_SHOWN: usize = 20;

#[derive(Clone, Copy)]
struct Sample {
    connections: f64,
    messages_per_sec: f64,
    rtt_p50: Option<f64>,
    rtt_p99: Option<f64>,
    rss_mib: Option<f64>,
    heap_mib: Option<f64>,
}

fn megabytes(v: f64) -> String {
    format!("{v:.0} MiB")
}

/// Sample once a second until `stop`; publish snapshots while the dashboard channel has
/// subscribers.
pub async fn run_sampler(
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
    hub: Arc<Hub>,
    rules: Vec<crate::config::ChannelRule>,
    stop: CancellationToken,
) {
    // The dashboard channel is the node's own: its stream lives here, not in the broker.
    let epoch: Arc<str> = Arc::from(tether_core::stream::epoch_from(rand::random()).as_str());
    let mut offset = 0;
    let mut ring: VecDeque<Sample> = VecDeque::with_capacity(WINDOW);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let messages = || metrics.messages_in.get() + metrics.messages_out.get();
    let (mut last_messages, mut last_at) = (messages(), Instant::now());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let total = messages();
        let elapsed = now.duration_since(last_at).as_secs_f64().max(1e-3);
        let rate = total.saturating_sub(last_messages) as f64 / elapsed;
        (last_messages, last_at) = (total, now);
        let rtt = stats.rtt_quantiles();
        let rss = crate::metrics::resident_memory_bytes();
        let heap = crate::metrics::allocated_bytes();
        if ring.len() == WINDOW {
            ring.pop_front();
        }
        ring.push_back(Sample {
            connections: metrics.connections_open.get() as f64,
            messages_per_sec: rate,
            rtt_p50: rtt.map(|r| r.0),
            rtt_p99: rtt.map(|r| r.1),
            rss_mib: rss.map(|b| b as f64 / (1024.0 * 1024.0)),
            heap_mib: heap.map(|b| b as f64 / (1024.0 * 1024.0)),
        });
        if !hub.has_subscribers(DASHBOARD_CHANNEL) {
            continue;
        }
        let mut snapshot = snapshot(&metrics, &stats, &ring, rate, rtt, (rss, heap));
        let listed =
            hub.channels(|n| !n.starts_with(tether_core::channel::RESERVED_PREFIX), CHANNELS_SHOWN);
        snapshot.channels = listed
            .into_iter()
            .map(|(name, subscribers)| ChannelRow {
                presence: crate::config::presence_on(&rules, &name),
                join_leave: crate::config::join_leave_on(&rules, &name),
                name: name.to_string(),
                subscribers,
            })
            .collect();
        match serde_json::value::to_raw_value(&snapshot) {
            Ok(data) => {
                offset += 1;
                hub.publish(DASHBOARD_CHANNEL, &epoch, offset, &data);
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the dashboard snapshot"),
        }
    }
}

fn snapshot(
    metrics: &Metrics,
    stats: &Stats,
    ring: &VecDeque<Sample>,
    rate: f64,
    rtt: Option<(f64, f64)>,
    (rss, heap): (Option<u64>, Option<u64>),
) -> Snapshot {
    let column = |f: fn(&Sample) -> Option<f64>| ring.iter().map(f).collect::<Vec<_>>();
    let step = SAMPLE_EVERY.as_secs_f64();
    let connections = column(|s| Some(s.connections));
    let rates = column(|s| Some(s.messages_per_sec));
    let p50 = column(|s| s.rtt_p50);
    let p99 = column(|s| s.rtt_p99);
    let memory = column(|s| s.rss_mib);
    let heap_memory = column(|s| s.heap_mib);
    let charts = Charts {
        connections: line_chart(
            &[Series { name: "open connections", class: "s1", values: &connections }],
            step,
            &|v| format!("{v:.0}"),
        ),
        messages: line_chart(
            &[Series { name: "messages/s (in + out)", class: "s2", values: &rates }],
            step,
            &|v| format!("{v:.0}/s"),
        ),
        rtt: line_chart(
            &[
                Series { name: "p50", class: "s3", values: &p50 },
                Series { name: "p99", class: "s4", values: &p99 },
            ],
            step,
            &|v| format!("{v:.1} ms"),
        ),
        memory: line_chart(
            &[
                Series { name: "resident memory", class: "s5", values: &memory },
                Series { name: "heap (allocated)", class: "s1", values: &heap_memory },
            ],
            step,
            &megabytes,
        ),
    };
    let closes = stats
        .closes()
        .into_iter()
        .map(|((code, initiator), count)| CloseCount {
            name: code
                .parse::<u16>()
                .map(|c| tether_core::CloseCode(c).info().name)
                .unwrap_or("peer-chosen"),
            code,
            initiator,
            count,
        })
        .collect();
    Snapshot {
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        connections: metrics.connections_open.get(),
        messages_per_sec: (rate * 10.0).round() / 10.0,
        rtt_p50_ms: rtt.map(|r| r.0),
        rtt_p99_ms: rtt.map(|r| r.1),
        rss_bytes: rss,
        heap_bytes: heap,
        accepted: accepted(metrics),
        publications: metrics.publications.get(),
        heartbeat_timeouts: metrics.heartbeat_timeouts.get(),
        closes,
        channels: Vec::new(),
        charts,
    }
}

/// Handshakes accepted in both modes. One statement per label: a `Family` guard held across a
/// second `get_or_create` (which may need the write lock) would deadlock.
fn accepted(metrics: &Metrics) -> u64 {
    let json = metrics
        .connections_accepted
        .get_or_create(&crate::metrics::ModeLabels { mode: "json" })
        .get();
    let raw = metrics
        .connections_accepted
        .get_or_create(&crate::metrics::ModeLabels { mode: "raw" })
        .get();
    json + raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_quantiles_over_the_window() {
        let stats = Stats::default();
        assert_eq!(stats.rtt_quantiles(), None);
        for ms in 1..=100 {
            stats.record_rtt(Duration::from_millis(ms));
        }
        let (p50, p99) = stats.rtt_quantiles().unwrap();
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        assert!((98.0..=100.5).contains(&p99), "{p99}");
    }
}
