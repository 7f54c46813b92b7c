//! `tether bench storm`: N reconnecting clients (Tether's own Rust client, its real backoff with
//! jitter), the server killed and restarted, and how the comeback goes: time until 99% and 100%
//! are back, the peak accept rate, a histogram of reconnect times, how many were told to come
//! back later (1013), and whether `/healthz` stayed responsive while it lasted.
//!
//! The clients live in worker processes (this same executable, `--worker-offset`), a few
//! thousand each, so that no process nears the open-files limit; on loopback their source
//! addresses are spread over 127.0.0.2–251. Workers report each open and close as a line with a
//! wall-clock timestamp, which the coordinator compares with the moment it killed the server.

use crate::progress::progress;
use crate::units;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[derive(Args, Debug)]
pub struct StormArgs {
    /// Clients (Tether's Rust client, raw mode, its default reconnect policy but --backoff-initial)
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Address for the server this tool starts, kills (SIGKILL) and restarts itself
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: std::net::SocketAddr,
    /// Instead of starting a server: the WebSocket URL of one you restart with --restart-cmd
    #[arg(long)]
    url: Option<String>,
    /// Shell command that restarts the server at --url (run with sh -c)
    #[arg(long)]
    restart_cmd: Option<String>,
    /// An extra argument for the server this tool starts (repeat it), e.g. --server-arg=--max-handshake-rate=2000
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// The `tether` executable to serve with [default: this one]
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// First reconnect delay ceiling of the clients (full jitter below it)
    #[arg(long, default_value = "1s", value_parser = units::duration)]
    backoff_initial: Duration,
    /// Probe this health URL instead of /healthz on the WebSocket port (e.g. the server's
    /// --health-listen address)
    #[arg(long)]
    healthz_url: Option<String>,
    /// Probe the server's /healthz this often during the storm
    #[arg(long, default_value = "20ms", value_parser = units::duration)]
    healthz_every: Duration,
    /// Clients per worker process (each process stays well below the open-files limit)
    #[arg(long, default_value_t = 5000)]
    per_worker: usize,
    /// Give up waiting for the clients after this long
    #[arg(long, default_value = "60s", value_parser = units::duration)]
    timeout: Duration,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Internal: run as a worker holding clients numbered from this offset
    #[arg(long, hide = true)]
    worker_offset: Option<usize>,
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub async fn storm(args: StormArgs) -> Result<ExitCode> {
    if let Some(offset) = args.worker_offset {
        return worker(args, offset).await;
    }
    if args.url.is_some() && args.restart_cmd.is_none() {
        bail!("--url needs --restart-cmd: the command that restarts the server at that URL");
    }
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    let server_bin = args.server_bin.clone().unwrap_or_else(|| exe.clone());
    // The server's log, for when it does not come up.
    let server_log = std::env::temp_dir().join(format!("tether-storm-{}.log", std::process::id()));
    let spawn_server = || -> Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server_log)
            .with_context(|| format!("cannot write {}", server_log.display()))?;
        tokio::process::Command::new(&server_bin)
            .args(["serve", "--listen", &args.listen.to_string(), "--max-connections", "30000"])
            .args(&args.server_arg)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} serve", server_bin.display()))
    };
    let mut server = None;
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            server = Some(spawn_server()?);
            format!("ws://{}/ws", args.listen)
        }
    };
    let healthz = match &args.healthz_url {
        Some(url) => url.clone(),
        None => healthz_url(&url)?,
    };
    if !wait_healthy(&healthz, Duration::from_secs(20)).await {
        let log = std::fs::read_to_string(&server_log).unwrap_or_default();
        bail!("the server at {healthz} did not become healthy within 20 s; its log:\n{log}");
    }

    // Workers: start them, then wait until every client is connected.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut workers = Vec::new();
    let mut offset = 0;
    while offset < args.conns {
        let share = (args.conns - offset).min(args.per_worker.max(1));
        let mut child = tokio::process::Command::new(&exe)
            .args(["bench", "storm", "--url", &url, "--conns", &share.to_string()])
            .args(["--backoff-initial", &format!("{}ms", args.backoff_initial.as_millis())])
            .args(["--worker-offset", &offset.to_string()])
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let out = child.stdout.take().context("worker stdout")?;
        let tx = lines_tx.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
        workers.push(child);
        offset += share;
    }
    drop(lines_tx);
    eprintln!(
        "connecting {} clients from {} worker process(es) to {url} …",
        args.conns,
        workers.len()
    );
    let bar = progress(args.conns as u64, "connected");
    let (mut ready, mut connected) = (0, 0usize);
    let deadline = Instant::now() + args.timeout;
    while ready < workers.len() {
        match tokio::time::timeout_at(deadline.into(), lines.recv()).await {
            Ok(Some(line)) if line.starts_with("UP ") => {
                connected += 1;
                bar.set_position(connected as u64);
            }
            Ok(Some(line)) if line.starts_with("READY") => ready += 1,
            Ok(Some(_)) => {}
            _ => bail!(
                "only {connected} of {} clients connected within {:?}",
                args.conns,
                args.timeout
            ),
        }
    }
    bar.finish_and_clear();

    // The storm: kill and restart the server; watch /healthz and count everyone back.
    eprintln!("all {} connected; killing and restarting the server …", args.conns);
    let killed_us = unix_micros();
    let killed_at = Instant::now();
    match (&args.restart_cmd, server.as_mut()) {
        (Some(cmd), _) => {
            let status = tokio::process::Command::new("sh").args(["-c", cmd]).status().await?;
            if !status.success() {
                bail!("--restart-cmd failed: {status}");
            }
        }
        (None, Some(child)) => {
            child.kill().await.context("cannot kill the server")?;
            server = Some(spawn_server()?);
        }
        (None, None) => unreachable!("a server is started when --url is absent"),
    }
    let probing = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(Mutex::new(Vec::new()));
    let prober = std::thread::spawn({
        let (probing, probes, every) = (probing.clone(), probes.clone(), args.healthz_every);
        move || probe_healthz(&healthz, killed_at, every, &probing, &probes)
    });
    // Each client's latest open since the kill; a 1013 (over the server's handshake budget)
    // takes it out again until it reopens.
    let mut back = std::collections::HashMap::new();
    let mut told_later = 0usize;
    let bar = progress(args.conns as u64, "back");
    let give_up = killed_at + args.timeout;
    loop {
        // Once everyone looks back, wait for a short quiet spell: a 1013 follows its open
        // within milliseconds.
        let wait_until = if back.len() == args.conns {
            (Instant::now() + Duration::from_millis(300)).min(give_up)
        } else {
            give_up
        };
        let line = match tokio::time::timeout_at(wait_until.into(), lines.recv()).await {
            Ok(Some(line)) => line,
            _ => break,
        };
        let mut words = line.split_whitespace();
        let (kind, client, at) = (words.next(), words.next(), words.next());
        let (Some(client), Some(at)) =
            (client.and_then(|v| v.parse::<usize>().ok()), at.and_then(|v| v.parse::<u64>().ok()))
        else {
            continue;
        };
        if at < killed_us {
            continue;
        }
        match kind {
            Some("OPEN") => {
                back.insert(client, (at - killed_us) as f64 / 1e6);
            }
            Some("LATER") => {
                told_later += 1;
                back.remove(&client);
            }
            _ => {}
        }
        bar.set_position(back.len() as u64);
    }
    let times: Vec<f64> = back.into_values().collect();
    bar.finish_and_clear();
    probing.store(false, Ordering::SeqCst);
    let _ = prober.join();
    for w in &mut workers {
        if let Some(mut stdin) = w.stdin.take() {
            let _ = stdin.write_all(b"stop\n").await;
        }
    }
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w.wait()).await;
    }
    // Wait for the server to be gone, so that its port is free for whatever runs next.
    if let Some(mut child) = server.take() {
        let _ = child.kill().await;
    }
    let _ = std::fs::remove_file(&server_log);

    let report = Report::new(args.conns, times, told_later, &probes.lock().unwrap());
    if args.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.human());
    }
    Ok(if report.back == args.conns { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// `http://host:port/healthz` for a `ws://host:port/...` URL.
fn healthz_url(ws_url: &str) -> Result<String> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = ws_url.parse().context("bad --url")?;
    let scheme = if uri.scheme_str() == Some("wss") { "https" } else { "http" };
    let authority = uri.authority().context("--url has no host")?;
    Ok(format!("{scheme}://{authority}/healthz"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        // A fresh connection per probe, as a load balancer's health check makes: it has to get
        // through the same accept queue as the storm.
        .max_idle_connections(0)
        .build()
        .into()
}

async fn wait_healthy(url: &str, within: Duration) -> bool {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if agent.get(&url).call().map(|r| r.status() == 200).unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// One `/healthz` probe: when it started (since the kill), how long it took, whether it was 200.
struct Probe {
    at: f64,
    took: f64,
    ok: bool,
}

fn probe_healthz(
    url: &str,
    since: Instant,
    every: Duration,
    probing: &AtomicBool,
    probes: &Mutex<Vec<Probe>>,
) {
    let agent = agent();
    let mut next = Instant::now();
    while probing.load(Ordering::SeqCst) {
        let start = Instant::now();
        let ok = agent.get(url).call().map(|r| r.status() == 200).unwrap_or(false);
        let took = start.elapsed().as_secs_f64();
        probes.lock().unwrap().push(Probe {
            at: start.duration_since(since).as_secs_f64(),
            took,
            ok,
        });
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

struct Report {
    conns: usize,
    back: usize,
    t99: Option<f64>,
    t100: Option<f64>,
    /// Most reopens in any 100 ms window, per second.
    peak_per_sec: usize,
    /// (from, to, count) seconds after the kill.
    histogram: Vec<(f64, f64, usize)>,
    told_later: usize,
    /// Seconds after the kill until /healthz first answered 200 again.
    healthy_after: Option<f64>,
    healthz_probes: usize,
    /// Slowest and 99th-percentile /healthz answer from the first 200 on, and failures then.
    healthz_max: Option<f64>,
    healthz_p99: Option<f64>,
    healthz_failures: usize,
}

impl Report {
    fn new(conns: usize, mut times: Vec<f64>, told_later: usize, probes: &[Probe]) -> Report {
        times.sort_by(|a, b| a.total_cmp(b));
        let at = |fraction: f64| -> Option<f64> {
            let need = ((conns as f64) * fraction).ceil() as usize;
            (times.len() >= need && need > 0).then(|| times[need - 1])
        };
        let mut peak = 0usize;
        for (k, t) in times.iter().enumerate() {
            peak = peak.max(times[k..].partition_point(|u| *u < t + 0.1));
        }
        const BUCKETS: usize = 20;
        let span = times.last().copied().unwrap_or(0.0).max(0.1);
        let width = span / BUCKETS as f64;
        let mut histogram: Vec<(f64, f64, usize)> =
            (0..BUCKETS).map(|b| (b as f64 * width, (b + 1) as f64 * width, 0)).collect();
        for t in &times {
            histogram[((t / width) as usize).min(BUCKETS - 1)].2 += 1;
        }
        let first_ok = probes.iter().position(|p| p.ok);
        let after: Vec<&Probe> = first_ok.map(|i| probes[i..].iter().collect()).unwrap_or_default();
        let mut took: Vec<f64> = after.iter().filter(|p| p.ok).map(|p| p.took).collect();
        took.sort_by(|a, b| a.total_cmp(b));
        let p99 = (!took.is_empty())
            .then(|| took[((took.len() as f64 * 0.99).ceil() as usize).max(1) - 1]);
        Report {
            conns,
            back: times.len(),
            t99: at(0.99),
            t100: at(1.0),
            peak_per_sec: peak * 10,
            histogram,
            told_later,
            healthy_after: first_ok.map(|i| probes[i].at + probes[i].took),
            healthz_probes: after.len(),
            healthz_max: took.last().copied(),
            healthz_p99: p99,
            healthz_failures: after.iter().filter(|p| !p.ok).count(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "conns": self.conns, "back": self.back,
            "seconds_to_99_percent": self.t99, "seconds_to_100_percent": self.t100,
            "peak_reconnects_per_sec": self.peak_per_sec,
            "told_to_come_back_later": self.told_later,
            "histogram": self.histogram.iter().map(|(from, to, n)| serde_json::json!({"from": from, "to": to, "count": n})).collect::<Vec<_>>(),
            "healthz": {
                "healthy_after_seconds": self.healthy_after,
                "probes": self.healthz_probes,
                "max_ms": self.healthz_max.map(|s| s * 1e3),
                "p99_ms": self.healthz_p99.map(|s| s * 1e3),
                "failures": self.healthz_failures,
            },
        })
    }

    fn human(&self) -> String {
        let f = |v: Option<f64>| v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "never".into());
        let ms =
            |v: Option<f64>| v.map(|s| format!("{:.1} ms", s * 1e3)).unwrap_or_else(|| "-".into());
        let mut out = format!(
            "storm: {}/{} clients back; 99% after {}, 100% after {}; peak {} reconnects/s; {} told to come back later (1013)\n\
             /healthz: 200 again {} after the kill; then {} probes, max {}, p99 {}, {} failed\n\
             reconnects after the kill:\n",
            self.back, self.conns, f(self.t99), f(self.t100), self.peak_per_sec, self.told_later,
            f(self.healthy_after), self.healthz_probes, ms(self.healthz_max), ms(self.healthz_p99),
            self.healthz_failures,
        );
        let most = self.histogram.iter().map(|b| b.2).max().unwrap_or(0).max(1);
        for (from, to, n) in &self.histogram {
            let bar = "#".repeat((n * 50).div_ceil(most));
            out.push_str(&format!("  {from:6.2}–{to:6.2} s {n:6} {bar}\n"));
        }
        out.pop();
        out
    }
}

/// A worker: `conns` clients; prints `UP i t` for each first open, `READY` once all are up,
/// then `OPEN i t` for each reopen and `LATER i t` for each 1013; exits on a line on stdin.
async fn worker(args: StormArgs, offset: usize) -> Result<ExitCode> {
    use tether_client::{ClientConfig, Event, ReconnectPolicy};
    let url = args.url.clone().context("a worker needs --url")?;
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().context("bad --url")?;
    let loopback = matches!(uri.host(), Some("127.0.0.1") | Some("localhost"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut clients = Vec::with_capacity(args.conns);
    for i in offset..offset + args.conns {
        let mut config = ClientConfig::new(url.clone()).raw();
        if loopback {
            config = config
                .local_address(std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8).into());
        }
        config.reconnect = ReconnectPolicy {
            backoff: tether_core::backoff::Backoff {
                initial: args.backoff_initial,
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, mut events) = tether_client::connect(config);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let line = match event {
                    Event::Open { reconnected: false } => format!("UP {i} {}", unix_micros()),
                    Event::Open { reconnected: true } => format!("OPEN {i} {}", unix_micros()),
                    Event::Closed(info) if info.code == 1013 => {
                        format!("LATER {i} {}", unix_micros())
                    }
                    _ => continue,
                };
                let _ = tx.send(line);
            }
        });
        clients.push(client);
    }
    drop(tx);
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut up = 0;
    loop {
        tokio::select! {
            line = rx.recv() => {
                let Some(line) = line else { break };
                up += line.starts_with("UP ") as usize;
                out.write_all(line.as_bytes()).await?;
                out.write_all(b"\n").await?;
                if up == args.conns && line.starts_with("UP ") {
                    out.write_all(b"READY\n").await?;
                }
                if rx.is_empty() {
                    out.flush().await?;
                }
            }
            _ = stdin.next_line() => break,
        }
    }
    out.flush().await?;
    // Exit without closing 5,000 clients one by one: the process's end closes the sockets.
    std::process::exit(0)
}
