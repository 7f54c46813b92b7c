//! `tether soak`: does server memory come back after clients come and go?
//!
//! Repeated cycles of: connect N raw clients (subscribed to one channel), exchange messages
//! (each sends "ping" and gets "pong"; one publication reaches all), then disconnect — half with
//! a clean close, half abruptly (the socket dropped, no close frame) — and wait until the server
//! reports them gone. The server's resident memory is sampled every second (from `/metrics`, or
//! `/proc/PID` with `--server-pid`) and after each cycle. The verdict compares the memory after
//! the last cycle with the memory after the first, and fits a slope across cycles; growth beyond
//! the threshold exits non-zero. A table goes to stdout, a chart of memory over time to `--chart`.

use crate::probe::ServerProbe;
use crate::units;
use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Server base URL (HTTP API and /metrics)
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Read memory from /proc/PID/status instead of /metrics (for servers without Tether's metrics)
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connections per cycle
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Cycles
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Allowed growth of memory from the first cycle to the last, in percent
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
    threshold: f64,
    /// Write an SVG chart of memory over time here
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// Longest wait for the server to see a cycle's connections gone
    #[arg(long, default_value = "30s", value_parser = units::duration)]
    settle_timeout: Duration,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

fn ws_url(base: &str) -> String {
    let rest = base
        .strip_prefix("http://")
        .map(|r| format!("ws://{r}"))
        .or_else(|| base.strip_prefix("https://").map(|r| format!("wss://{r}")));
    format!("{}/ws?channel=soak", rest.unwrap_or_else(|| base.to_owned()).trim_end_matches('/'))
}

/// One cycle: connect, exchange, disconnect (half clean, half abrupt).
async fn cycle(
    url: &str,
    agent: &ureq::Agent,
    conns: usize,
    publish_url: &str,
    n: usize,
) -> Result<()> {
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        sockets.push(ws);
    }
    for ws in &mut sockets {
        ws.send(Message::Text("ping".into())).await?;
    }
    let body = format!(r#"{{"channel":"soak","data":"cycle {n}"}}"#);
    let agent = agent.clone();
    let publish_url = publish_url.to_owned();
    tokio::task::spawn_blocking(move || {
        agent.post(&publish_url).header("content-type", "application/json").send(&body)
    })
    .await?
    .context("publish failed")?;
    for ws in &mut sockets {
        let mut got = (false, false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while got != (true, true) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "pong" => got.0 = true,
                Ok(Some(Ok(Message::Text(_)))) => got.1 = true,
                Ok(Some(Ok(_))) => {}
                _ => bail!("a soak client did not get its pong and the publication within 10 s"),
            }
        }
    }
    let half = sockets.len() / 2;
    for (i, mut ws) in sockets.into_iter().enumerate() {
        if i < half {
            let _ = ws.close(None).await;
        } // else: dropped without a close frame
    }
    Ok(())
}

/// Live-heap growth always allowed, per connection of a cycle (see the verdict).
const HEAP_SLACK_PER_CONN: u64 = 256;

pub async fn run(args: SoakArgs) -> Result<ExitCode> {
    if args.conns == 0 || args.cycles < 2 {
        bail!("--conns must be at least 1 and --cycles at least 2 (the verdict compares first and last)");
    }
    let base = args.server.trim_end_matches('/').to_owned();
    let probe =
        ServerProbe { server_pid: args.server_pid, metrics_url: Some(format!("{base}/metrics")) };
    let rss = || -> Result<f64> {
        probe.rss().context("cannot read the server's memory: no process_resident_memory_bytes in its /metrics; pass --server-pid")
    };
    let open_connections = || probe.metric("tether_connections_open");
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let url = ws_url(&base);
    let publish_url = format!("{base}/api/publish");
    let baseline_open = open_connections().unwrap_or(0.0);
    let started = Instant::now();
    let mut timeline: Vec<(f64, f64)> = vec![(0.0, rss()?)];
    let mut after_cycle: Vec<u64> = Vec::with_capacity(args.cycles);
    // The server's live heap, when it reports its allocator's figures (Tether does).
    let mut heap_after_cycle: Vec<Option<u64>> = Vec::with_capacity(args.cycles);
    eprintln!("soak: {} cycles × {} connections against {url}", args.cycles, args.conns);
    let bar = crate::progress::progress(args.cycles as u64, "cycles");
    for n in 1..=args.cycles {
        let work = cycle(&url, &agent, args.conns, &publish_url, n);
        tokio::pin!(work);
        // Sample memory every second while the cycle runs.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = &mut work => { r?; break; }
                _ = tick.tick() => timeline.push((started.elapsed().as_secs_f64(), rss()?)),
            }
        }
        // Wait until the server has let every connection of the cycle go.
        let deadline = Instant::now() + args.settle_timeout;
        while open_connections().is_some_and(|open| open > baseline_open) {
            if Instant::now() > deadline {
                bail!(
                    "the server still reports open connections {:?} after cycle {n}",
                    args.settle_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Allocators hand freed memory back over time (Tether's jemalloc: within about a
        // second; a GC at its own pace): sample every 250 ms until resident memory has held
        // within 1% for 1.5 s, at most 6 s.
        let settle_until = Instant::now() + Duration::from_secs(6);
        let mut window = vec![rss()?];
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            window.push(rss()?);
            timeline.push((started.elapsed().as_secs_f64(), *window.last().expect("sampled")));
            let recent = &window[window.len().saturating_sub(7)..];
            let (lo, hi) = recent.iter().fold((f64::MAX, 0f64), |(l, h), v| (l.min(*v), h.max(*v)));
            if (recent.len() == 7 && hi - lo <= lo * 0.01) || Instant::now() > settle_until {
                break;
            }
        }
        let rss = *window.last().expect("sampled") as u64;
        after_cycle.push(rss);
        // The live heap: the least of a few samples. One sample also catches whatever is in
        // flight at that instant (the server rendering this very /metrics answer, its request
        // buffers, a background task's tick), which swung a 0.5 MB heap by ±20% between cycles.
        let mut heap = None;
        for _ in 0..5 {
            let sample = probe.metric("tether_allocator_allocated_bytes").map(|b| b as u64);
            heap = match (heap, sample) {
                (Some(h), Some(s)) => Some(u64::min(h, s)),
                (h, s) => h.or(s),
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        heap_after_cycle.push(heap);
        // (Even so, jemalloc merges its threads' counts lazily: a small heap still reads
        // ±150 KB apart between cycles. See HEAP_SLACK_PER_CONN.)
        bar.inc(1);
        bar.set_message(format!("{:.1} MiB", rss as f64 / 1048576.0));
    }
    bar.finish_and_clear();
    let first = after_cycle[0] as f64;
    let last = *after_cycle.last().expect("at least two cycles") as f64;
    let growth = (last - first) / first * 100.0;
    let slope = slope_per_cycle(&after_cycle);
    // The live heap is the exact leak signal when the server reports it: it must not grow
    // beyond the threshold either (resident memory also shows fragmentation and caches).
    let heap: Option<Vec<u64>> = heap_after_cycle.iter().copied().collect();
    let heap_growth = heap.as_ref().map(|h| {
        let (first, last) = (h[0] as f64, *h.last().expect("at least two cycles") as f64);
        (last - first) / first * 100.0
    });
    // The heap verdict allows the threshold, or HEAP_SLACK_PER_CONN per connection of a cycle,
    // whichever is more: a small idle heap reads ±150 KB apart between cycles (jemalloc merges
    // per-thread counts lazily), while a leak of a kilobyte per connection per cycle still
    // fails by a wide margin.
    let heap_slack = (HEAP_SLACK_PER_CONN * args.conns as u64) as f64;
    let heap_ok = heap.as_ref().is_none_or(|h| {
        let (first, last) = (h[0] as f64, *h.last().expect("at least two cycles") as f64);
        last - first <= (first * args.threshold / 100.0).max(heap_slack)
    });
    let passed = growth <= args.threshold && heap_ok;

    if let Some(path) = &args.chart {
        std::fs::write(path, chart(&timeline))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "conns": args.conns, "cycles": args.cycles,
                "rss_after_cycle": after_cycle, "heap_after_cycle": heap_after_cycle,
                "growth_percent": growth, "heap_growth_percent": heap_growth,
                "slope_bytes_per_cycle": slope, "threshold_percent": args.threshold,
                "heap_slack_bytes": heap_slack, "passed": passed,
            })
        );
    } else {
        println!("cycle  server RSS after cycle  live heap (allocator)");
        for (i, (rss, heap)) in after_cycle.iter().zip(&heap_after_cycle).enumerate() {
            let heap = heap.map_or("-".to_owned(), |h| format!("{:.1} MiB", h as f64 / 1048576.0));
            println!("{:>5}  {:>10.1} MiB  {heap:>20}", i + 1, *rss as f64 / 1048576.0);
        }
        println!(
            "verdict: {} — last cycle {:.1} MiB vs first {:.1} MiB ({growth:+.2}%, threshold {}%), slope {:+.0} bytes/cycle{}",
            if passed { "no growth" } else { "MEMORY GROWS" },
            last / 1048576.0,
            first / 1048576.0,
            args.threshold,
            slope,
            heap_growth.map_or(String::new(), |g| format!("; live heap {g:+.2}%")),
        );
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(4) })
}

/// Least-squares slope of memory over cycle number.
fn slope_per_cycle(values: &[u64]) -> f64 {
    let n = values.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = values.iter().map(|v| *v as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, v) in values.iter().enumerate() {
        num += (i as f64 - mean_x) * (*v as f64 - mean_y);
        den += (i as f64 - mean_x).powi(2);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// A standalone SVG (styles inlined) of memory over time, using the dashboard's chart renderer.
fn chart(timeline: &[(f64, f64)]) -> String {
    let values: Vec<Option<f64>> = timeline.iter().map(|(_, b)| Some(b / 1048576.0)).collect();
    let step = timeline.last().map(|(t, _)| t / (timeline.len().max(2) - 1) as f64).unwrap_or(1.0);
    let svg = tether_server::svg_chart::line_chart(
        &[tether_server::svg_chart::Series {
            name: "server RSS (MiB)",
            class: "s1",
            values: &values,
        }],
        step,
        &|v| format!("{v:.0} MiB"),
    );
    let style = "<style>.grid{stroke:#ddd}.axis{fill:#555;font:10px sans-serif}.line{fill:none;stroke-width:2}.area{opacity:.15}.s1{stroke:#2f6fdd;fill:#2f6fdd}polyline.line{fill:none}</style>";
    svg.replacen('>', &format!(">{style}"), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_and_urls() {
        assert_eq!(slope_per_cycle(&[10, 10, 10]), 0.0);
        assert!((slope_per_cycle(&[10, 20, 30]) - 10.0).abs() < 1e-9);
        assert_eq!(ws_url("http://127.0.0.1:8080/"), "ws://127.0.0.1:8080/ws?channel=soak");
    }
}
