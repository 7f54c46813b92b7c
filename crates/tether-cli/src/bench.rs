//! `tether bench`: load generators that measure the gateway from the outside, over real sockets.
//!
//! `bench fanout`: N raw-mode subscribers on one channel, a publisher at a fixed rate through the
//! HTTP API (possibly of another node), each message carrying a sequence number and a send
//! timestamp. It reports deliveries per second, delivery latency percentiles, and lost and
//! duplicated messages per subscriber — so that one run compares two setups as a ratio.

use crate::units;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Fan-out: N subscribers, one publisher at a fixed rate; deliveries/s, latency, loss.
    Fanout(FanoutArgs),
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// WebSocket URL subscribers connect to (raw mode)
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    sub_url: String,
    /// HTTP base URL the publisher posts to (another node than --sub-url tests a backplane)
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    publish_url: String,
    /// Subscribers
    #[arg(long, default_value_t = 100)]
    subs: usize,
    /// Publications per second
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// How long to publish
    #[arg(long, default_value = "10s", value_parser = units::duration)]
    duration: Duration,
    /// Padding bytes per message (the payload is about this plus 60 bytes)
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Channel to use
    #[arg(long, default_value = "bench:fanout")]
    channel: String,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Fanout(args) => fanout(args).await,
    }
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    received: u64,
    duplicates: u64,
    /// Highest sequence number seen, and which were seen (for loss counting).
    seqs: Vec<bool>,
}

async fn fanout(args: FanoutArgs) -> Result<ExitCode> {
    if args.subs == 0 || args.rate == 0 {
        bail!("--subs and --rate must be at least 1");
    }
    let total = (args.rate as f64 * args.duration.as_secs_f64()).round() as u64;
    let sep = if args.sub_url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}channel={}", args.sub_url, args.channel);
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let delivered = Arc::new(AtomicU64::new(0));

    eprintln!("connecting {} subscribers to {url} …", args.subs);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.subs);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(args.subs);
    // A watch, not a Notify: a subscriber busy with a message when the stop comes must still see it.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    for _ in 0..args.subs {
        let (url, latency, delivered, ready, mut stop) =
            (url.clone(), latency.clone(), delivered.clone(), ready_tx.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((ws, _)) => ws,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string())).await;
                    return Seen::default();
                }
            };
            let _ = ready.send(Ok(())).await;
            let mut seen = Seen { seqs: vec![false; total as usize + 1], ..Default::default() };
            let mut local =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            loop {
                let msg = tokio::select! {
                    _ = stop.changed() => break,
                    m = ws.next() => m,
                };
                let Some(Ok(Message::Text(text))) = msg else {
                    if matches!(msg, Some(Ok(_))) {
                        continue;
                    }
                    break;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                    continue;
                };
                let (Some(seq), Some(sent)) = (v["seq"].as_u64(), v["t"].as_u64()) else {
                    continue;
                };
                let _ = local.record(unix_micros().saturating_sub(sent).max(1));
                seen.received += 1;
                delivered.fetch_add(1, Ordering::Relaxed);
                match seen.seqs.get_mut(seq as usize) {
                    Some(slot) if *slot => seen.duplicates += 1,
                    Some(slot) => *slot = true,
                    None => {}
                }
            }
            latency.lock().expect("latency lock").add(&local).ok();
            seen
        }));
    }
    drop(ready_tx);
    let mut failed = Vec::new();
    for _ in 0..args.subs {
        match tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => failed.push(e),
            Ok(None) | Err(_) => failed.push("no answer within 30 s".into()),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} subscribers could not connect (first error: {}); is the server at {url}?",
            failed.len(),
            args.subs,
            failed[0]
        );
    }
    eprintln!(
        "connected in {:.2} s; publishing {total} messages at {}/s to {}",
        started.elapsed().as_secs_f64(),
        args.rate,
        args.publish_url
    );

    let publish_url = format!("{}/api/publish", args.publish_url.trim_end_matches('/'));
    let (channel, pad, rate) = (args.channel.clone(), "x".repeat(args.payload), args.rate);
    let publisher = tokio::task::spawn_blocking(move || -> Result<u64> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let start = Instant::now();
        let mut failures = 0;
        for seq in 1..=total {
            // Fixed schedule: message `seq` is due at start + seq/rate (no drift, no bursts).
            let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let body = format!(
                r#"{{"channel":{},"data":{{"seq":{seq},"t":{},"pad":"{pad}"}}}}"#,
                serde_json::json!(channel),
                unix_micros()
            );
            match agent.post(&publish_url).header("content-type", "application/json").send(&body) {
                Ok(r) if r.status().is_success() => {}
                _ => failures += 1,
            }
            if seq % rate as u64 == 0 {
                eprintln!("  {:>5.1} s: published {seq}/{total}", start.elapsed().as_secs_f64());
            }
        }
        Ok(failures)
    });
    let publish_started = Instant::now();
    let publish_failures = publisher.await.context("publisher task failed")??;
    let publish_secs = publish_started.elapsed().as_secs_f64();
    // Give in-flight deliveries a bounded moment to land, then stop.
    let expected = (total - publish_failures) * args.subs as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut received = 0;
    let mut duplicates = 0;
    let mut lost = 0;
    for task in tasks {
        let seen = task.await.context("subscriber task failed")?;
        received += seen.received;
        duplicates += seen.duplicates;
        lost += seen.seqs.iter().skip(1).filter(|s| !**s).count() as u64;
    }
    let lost = lost.saturating_sub(publish_failures * args.subs as u64);
    let h = latency.lock().expect("latency lock");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let result = serde_json::json!({
        "subs": args.subs,
        "rate": args.rate,
        "published": total - publish_failures,
        "publish_failures": publish_failures,
        "deliveries": received,
        "deliveries_per_sec": (received as f64 / publish_secs).round(),
        "lost": lost,
        "duplicated": duplicates,
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0},
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "fanout: {} subscribers × {} publications ({}/s): {} deliveries, {}/s; lost {}, duplicated {}; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            args.subs, result["published"], args.rate, received, result["deliveries_per_sec"], lost, duplicates,
            ms(0.5), ms(0.99), ms(0.999), h.max() as f64 / 1000.0
        );
    }
    Ok(if lost == 0 && duplicates == 0 && publish_failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
