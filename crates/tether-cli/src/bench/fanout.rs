//! `tether bench fanout`: N subscribers, a publisher at a fixed rate; deliveries/s, latency, loss.

use super::*;

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
    /// Make the payload realistic JSON (quotes with varying prices, sizes and times, about
    /// --payload bytes) instead of one run of padding, which compresses unrealistically well
    #[arg(long)]
    json_payload: bool,
    /// Subscribers offer permessage-deflate (the report then shows the bytes on the wire)
    #[arg(long)]
    deflate: bool,
    /// Keep the generator's threads spinning instead of sleeping in epoll, so that the server's
    /// sends never pay for waking them (an artifact of sharing one machine; costs a core)
    #[arg(long)]
    busy_poll: bool,
    /// HTTP connections publishing concurrently. The schedule does not wait for answers (an
    /// open loop), so a slow server cannot slow the offered rate down and hide its latency.
    /// With too few, a busy server's HTTP answers still hold publications back.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Channel to use
    #[arg(long, default_value = "bench:fanout")]
    channel: String,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    probe: ServerProbe,
}

/// About `size` bytes of realistic JSON for publication `seq`: quotes whose prices, sizes,
/// times and ids vary the way a market feed's do (numbers differ, keys repeat), so that
/// compression ratios mean something.
pub(super) fn quotes(seq: u64, size: usize) -> String {
    const SYMBOLS: [&str; 8] = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AVGO"];
    let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = String::from("[");
    while out.len() < size {
        let r = next();
        let bid = 100.0 + (r % 50_000) as f64 / 100.0;
        out.push_str(&format!(
            r#"{{"symbol":"{}","bid":{bid:.2},"ask":{:.2},"bid_size":{},"ask_size":{},"ts":{},"id":"{:016x}"}},"#,
            SYMBOLS[(r >> 20) as usize % SYMBOLS.len()],
            bid + (r >> 40) as f64 % 7.0 / 100.0 + 0.01,
            (r >> 8) % 5000 + 1,
            (r >> 24) % 5000 + 1,
            1_764_000_000_000u64 + (r >> 30) % 1_000_000,
            next(),
        ));
    }
    out.pop();
    out.push(']');
    out
}

/// Latencies recorded by many tasks into one histogram per thread, merged at the end. A
/// histogram per connection (5,000 of them, ~200 KB each) made every record a cache miss: a
/// fifth of the generator's CPU in a profile of 5,000 × 100/s.
pub(super) struct LatencyRecorder {
    /// Tells this recorder's histograms from an earlier one's in a thread's slot.
    id: u64,
    threads: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>>,
}

type ThreadHistogram = (u64, Arc<Mutex<Histogram<u64>>>);

thread_local! {
    /// This thread's histogram and the recorder it belongs to (which also holds it).
    static THREAD_LATENCY: std::cell::RefCell<Option<ThreadHistogram>> =
        const { std::cell::RefCell::new(None) };
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        LatencyRecorder { id: NEXT.fetch_add(1, Ordering::Relaxed), threads: Mutex::default() }
    }
}

impl LatencyRecorder {
    /// Record `micros` in this thread's histogram (its lock is only contended by the final
    /// merge).
    fn record(&self, micros: u64) {
        THREAD_LATENCY.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.as_ref().is_none_or(|(id, _)| *id != self.id) {
                let h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .expect("constant histogram bounds");
                let h = Arc::new(Mutex::new(h));
                if let Ok(mut all) = self.threads.lock() {
                    all.push(h.clone());
                }
                *slot = Some((self.id, h));
            }
            if let Some((_, h)) = slot.as_ref() {
                if let Ok(mut h) = h.lock() {
                    let _ = h.record(micros);
                }
            }
        });
    }

    fn merged(&self) -> Result<Histogram<u64>> {
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for h in self.threads.lock().map_err(|_| anyhow::anyhow!("latency lock poisoned"))?.iter() {
            if let Ok(h) = h.lock() {
                all.add(&*h).ok();
            }
        }
        Ok(all)
    }
}

/// A quantile of a shared histogram of microseconds, in milliseconds.
pub(super) fn quantile_ms(h: &Mutex<Histogram<u64>>, q: f64) -> f64 {
    h.lock().map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
}

pub(super) fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// An open-loop publication schedule: message `seq` is due at `start + seq/rate`, whatever the
/// server's answers to earlier ones. Each message is stamped with its due time, not the moment it
/// left, so a publisher held up by a busy server shows up as latency instead of vanishing from the
/// figures ("coordinated omission").
pub(super) struct Schedule {
    total: u64,
    rate: u32,
    senders: usize,
}

impl Schedule {
    /// Posts every message through `send(agent, seq, due_unix_micros) -> ok` on `senders`
    /// threads with one keep-alive connection each; returns how many failed.
    fn run<F>(self, send: F) -> Result<u64>
    where
        F: Fn(&ureq::Agent, u64, u64) -> bool + Send + Sync + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, u64)>(self.total as usize + 1);
        let rx = Arc::new(Mutex::new(rx));
        let send = Arc::new(send);
        let failures = Arc::new(AtomicU64::new(0));
        let bar = progress(self.total, "publishing");
        let workers: Vec<_> = (0..self.senders)
            .map(|_| {
                let (rx, send, failures, bar) =
                    (rx.clone(), send.clone(), failures.clone(), bar.clone());
                std::thread::spawn(move || {
                    publisher_priority();
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(10)))
                        .build()
                        .into();
                    loop {
                        let next = rx.lock().map(|rx| rx.recv());
                        let Ok(Ok((seq, due))) = next else { break };
                        if !send(&agent, seq, due) {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        bar.inc(1);
                    }
                })
            })
            .collect();
        publisher_priority();
        let (start, start_unix) = (Instant::now(), unix_micros());
        for seq in 1..=self.total {
            let offset = Duration::from_secs_f64(seq as f64 / self.rate as f64);
            if let Some(wait) = (start + offset).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Cannot fail: the channel holds every message and the workers outlive the sender.
            let _ = tx.send((seq, start_unix + offset.as_micros() as u64));
        }
        drop(tx);
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("a publisher thread panicked"))?;
        }
        bar.finish_and_clear();
        Ok(failures.load(Ordering::Relaxed))
    }
}

/// Run the calling publisher thread ahead of the subscribers' readers (real-time FIFO, the
/// lowest such priority), where the system allows it. The generator's core is busy reading
/// every delivery; at normal priority a publisher woken by the server's answer waits its turn
/// behind those readers, and the publish answer's p99 measured the generator's scheduler (4-6 ms
/// for every server in one run) more than the server. The thread sleeps between publications,
/// so it never holds the core. Without the privilege it runs as before, and says so once.
fn publisher_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    static WARNED: std::sync::Once = std::sync::Once::new();
    let fifo = ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, fifo) {
        WARNED.call_once(|| {
            eprintln!(
                "note: publisher threads run at normal priority ({e:?}): the publish answer's \
                 times include this machine's scheduling of the subscribers' readers"
            );
        });
    }
}

/// What one subscriber saw.
#[derive(Default)]
pub(super) struct Seen {
    received: u64,
    duplicates: u64,
    /// Highest sequence number seen, and which were seen (for loss counting).
    seqs: Vec<bool>,
    /// Bytes the server sent this subscriber, frames and all.
    wire_bytes: u64,
}

pub(super) async fn fanout(args: FanoutArgs) -> Result<ExitCode> {
    if args.subs == 0 || args.rate == 0 {
        bail!("--subs and --rate must be at least 1");
    }
    let total = (args.rate as f64 * args.duration.as_secs_f64()).round() as u64;
    let sep = if args.sub_url.contains('?') { '&' } else { '?' };
    let spinning = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(args.busy_poll));
    if args.busy_poll {
        // One always-ready task per worker keeps the workers from parking: they poll the
        // reactor without sleeping in it.
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        for _ in 0..workers {
            let spinning = spinning.clone();
            tokio::spawn(async move {
                while spinning.load(Ordering::Relaxed) {
                    tokio::task::yield_now().await;
                }
            });
        }
    }
    let url = format!("{}{sep}channel={}", args.sub_url, args.channel);
    let latency = Arc::new(LatencyRecorder::default());
    let delivered = Arc::new(AtomicU64::new(0));

    // The server's memory before the subscribers: the baseline for their cost per subscriber.
    let rss_baseline = args.probe.rss();
    eprintln!("connecting {} subscribers to {url} …", args.subs);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.subs);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(args.subs);
    // A watch, not a Notify: a subscriber busy with a message when the stop comes must still see it.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let deflate = args.deflate;
    for _ in 0..args.subs {
        let (url, latency, delivered, ready, mut stop) =
            (url.clone(), latency.clone(), delivered.clone(), ready_tx.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = match LeanWs::connect_with(url.as_str(), deflate).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string())).await;
                    return Seen::default();
                }
            };
            let _ = ready.send(Ok(())).await;
            let mut seen = Seen { seqs: vec![false; total as usize + 1], ..Default::default() };
            // Pinned once: a fresh `changed()` per read would register a waiter each time.
            let stopped = stop.changed();
            tokio::pin!(stopped);
            loop {
                let mut batch = 0;
                // One clock reading per read: the messages of one read arrived together.
                let mut now = None;
                let read = tokio::select! {
                    _ = &mut stopped => break,
                    r = ws.read_some(|event| {
                        let lean_ws::Event::Message(m) = event else { return };
                        let Some((seq, sent)) = lean_ws::stamp(m) else { return };
                        let now = *now.get_or_insert_with(unix_micros);
                        latency.record(now.saturating_sub(sent).max(1));
                        batch += 1;
                        match seen.seqs.get_mut(seq as usize) {
                            Some(slot) if *slot => seen.duplicates += 1,
                            Some(slot) => *slot = true,
                            None => {}
                        }
                    }) => r,
                };
                seen.received += batch;
                delivered.fetch_add(batch, Ordering::Relaxed);
                if !matches!(read, Ok(true)) {
                    break;
                }
            }
            seen.wire_bytes = ws.wire_bytes;
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
    let schedule = Schedule { total, rate: args.rate, senders: args.publishers.max(1) };
    let (channel, pad) = (args.channel.clone(), "x".repeat(args.payload));
    let (json_payload, payload) = (args.json_payload, args.payload);
    // Where a publication's time goes before the server has it: waiting on this machine to send
    // it (after its due time), and the HTTP round trip.
    let publish_lag = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let publish_rtt = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let (lag, rtt) = (publish_lag.clone(), publish_rtt.clone());
    let publisher = tokio::task::spawn_blocking(move || {
        schedule.run(move |agent: &ureq::Agent, seq, due| {
            let sending = unix_micros();
            let _ = lag.lock().map(|mut h| h.record(sending.saturating_sub(due).max(1)));
            let rest = match json_payload {
                true => format!(r#""quotes":{}"#, quotes(seq, payload)),
                false => format!(r#""pad":"{pad}""#),
            };
            let body = format!(
                r#"{{"channel":{},"data":{{"seq":{seq},"t":{due},{rest}}}}}"#,
                serde_json::json!(channel),
            );
            let ok = matches!(
                agent.post(&publish_url).header("content-type", "application/json").send(&body),
                Ok(r) if r.status().is_success()
            );
            let _ = rtt.lock().map(|mut h| h.record(unix_micros().saturating_sub(sending).max(1)));
            ok
        })
    });
    let publish_started = Instant::now();
    let cpu = CpuMeter::start(&args.probe);
    let rss_sampler = super::rss::RssSampler::start(&args.probe);
    let publish_failures = publisher.await.context("publisher task failed")??;
    let publish_secs = publish_started.elapsed().as_secs_f64();
    // Give in-flight deliveries a bounded moment to land, then stop.
    let expected = (total - publish_failures) * args.subs as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (server_cpu, my_cpu) = cpu.finish(&args.probe);
    let rss = match rss_sampler {
        Some(sampler) => sampler.finish().await,
        None => None,
    };
    // Per subscriber at the median (while they receive, settled) and at the peak (the worst
    // moment while they receive: the first publications, an allocator that has not decayed).
    let rss_per_sub = match (rss, rss_baseline) {
        (Some(rss), Some(base)) => {
            let per = |at: f64| (at - base) / args.subs as f64;
            Some((per(rss.median), per(rss.peak)))
        }
        _ => None,
    };
    let _ = stop_tx.send(true);
    let mut received = 0;
    let mut duplicates = 0;
    let mut lost = 0;
    let mut wire_bytes = 0;
    for task in tasks {
        let seen = task.await.context("subscriber task failed")?;
        received += seen.received;
        wire_bytes += seen.wire_bytes;
        duplicates += seen.duplicates;
        lost += seen.seqs.iter().skip(1).filter(|s| !**s).count() as u64;
    }
    let lost = lost.saturating_sub(publish_failures * args.subs as u64);
    let h = latency.merged()?;
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
        "server_cpu_percent": server_cpu,
        "generator_cpu_percent": my_cpu,
        "server_cpu_us_per_delivery": server_cpu.map(|c| c / 100.0 * publish_secs * 1e6 / received.max(1) as f64),
        "wire_bytes_per_delivery": (wire_bytes as f64 / received.max(1) as f64).round(),
        "deflate": args.deflate,
        "publisher_ms": {
            "sent_after_due_p99": quantile_ms(&publish_lag, 0.99),
            "http_answer_p99": quantile_ms(&publish_rtt, 0.99),
        },
        // From sending each POST /api/publish to its HTTP answer (publisher_ms.http_answer_p99
        // again, with p50 and max).
        "publish_answer_ms": {
            "p50": quantile_ms(&publish_rtt, 0.5),
            "p99": quantile_ms(&publish_rtt, 0.99),
            "max": publish_rtt.lock().map_or(0.0, |h| h.max() as f64 / 1000.0),
        },
        // VmRSS sampled every 50 ms from the first publication until the deliveries are in
        // (with --server-pid); the baseline is read before the subscribers connect.
        "server_rss_bytes": {
            "baseline": rss_baseline,
            "median": rss.map(|r| r.median),
            "peak": rss.map(|r| r.peak),
            "samples": rss.map_or(0, |r| r.samples),
        },
        "server_rss_bytes_per_sub_above_baseline": rss_per_sub.map(|(_, peak)| peak.round()),
        "server_rss_bytes_per_sub_median_above_baseline": rss_per_sub.map(|(median, _)| median.round()),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "fanout: {} subscribers × {} publications ({}/s): {} deliveries, {}/s; lost {}, duplicated {}; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            args.subs, result["published"], args.rate, received, result["deliveries_per_sec"], lost, duplicates,
            ms(0.5), ms(0.99), ms(0.999), h.max() as f64 / 1000.0
        );
        println!("{}", cpu_line(server_cpu, my_cpu));
        println!(
            "publisher: sent p99 {:.2} ms after due; HTTP answer p50 {:.2} ms, p99 {:.2} ms",
            quantile_ms(&publish_lag, 0.99),
            quantile_ms(&publish_rtt, 0.5),
            quantile_ms(&publish_rtt, 0.99)
        );
        println!("{}", rss_line(rss, rss_baseline, rss_per_sub));
        println!(
            "on the wire: {} bytes per delivery{}",
            result["wire_bytes_per_delivery"],
            if args.deflate { " (permessage-deflate offered)" } else { "" }
        );
    }
    Ok(if lost == 0 && duplicates == 0 && publish_failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The server's memory while the subscribers received, for the human report.
fn rss_line(
    rss: Option<super::rss::RssSummary>,
    baseline: Option<f64>,
    per_sub: Option<(f64, f64)>,
) -> String {
    let mib = |b: f64| b / 1_048_576.0;
    let Some(rss) = rss else {
        return "server RSS while receiving: unknown (pass --server-pid)".into();
    };
    let mut line = format!(
        "server RSS while receiving: peak {:.1} MiB, median {:.1} MiB ({} samples)",
        mib(rss.peak),
        mib(rss.median),
        rss.samples
    );
    if let (Some(base), Some((median, peak))) = (baseline, per_sub) {
        line += &format!(
            "; {:.1} MiB before the subscribers: {median:.0} bytes per subscriber at the median, {peak:.0} at the peak",
            mib(base)
        );
    }
    line
}
