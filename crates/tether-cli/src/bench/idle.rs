//! `tether bench idle`: hold N connections; connect rate, drops, server memory per connection.

use super::*;

#[derive(Args, Debug)]
pub struct IdleArgs {
    /// WebSocket URL (raw mode; add ?channel=… to subscribe every connection), or an
    /// http:// SSE URL (http://HOST/sse?channel=…) to hold Server-Sent Events streams instead,
    /// or http://HOST/stream?channel=… to hold HTTP-streaming sessions (each subscribed with
    /// its first command; they answer no pings, so hold them less than the server's
    /// ping_interval + pong_timeout)
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws?channel=idle")]
    url: String,
    /// Connections to open and hold
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// How long to hold them (heartbeats are answered meanwhile)
    #[arg(long, default_value = "10s", value_parser = units::duration)]
    hold: Duration,
    /// Offer permessage-deflate on every connection (to see what it costs an idle one)
    #[arg(long)]
    deflate: bool,
    /// Send a text "ping" on every connection this often (raw mode answers "pong"): connections
    /// that work instead of idling, to see what an active one costs
    #[arg(long, value_parser = units::period)]
    ping_every: Option<Duration>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    probe: ServerProbe,
    /// Internal: run as one worker process of a larger run
    #[arg(long, hide = true)]
    worker_offset: Option<usize>,
}

/// Connections one process holds at most (the open-files limit here is 20,000).
pub(super) const PER_PROCESS: usize = 15_000;

/// Open `n` connections, spreading loopback source addresses over 127.0.0.2–251 so that more
/// than one address's ~28k ephemeral ports are available.
pub(super) async fn open_idle(
    url: &str,
    n: usize,
    offset: usize,
    deflate: bool,
    ping_every: Option<Duration>,
) -> Result<(Vec<tokio::task::JoinHandle<bool>>, usize)> {
    let parsed: tokio_tungstenite::tungstenite::http::Uri = url.parse().context("bad --url")?;
    let sse = parsed.scheme_str() == Some("http");
    if sse && (deflate || ping_every.is_some()) {
        bail!("--deflate and --ping-every are for WebSocket URLs; a stream only listens");
    }
    let path = parsed.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let host = parsed.host().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port_u16().unwrap_or(80);
    let target: std::net::SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .context("cannot resolve the --url host")?;
    let loopback = target.ip().is_loopback() && target.is_ipv4();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(256));
    let mut handles = Vec::with_capacity(n);
    let failed = Arc::new(AtomicU64::new(0));
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<bool>(n.max(1));
    for i in 0..n {
        let (url, semaphore, opened, failed) =
            (url.to_owned(), semaphore.clone(), opened_tx.clone(), failed.clone());
        let (path, host) = (path.clone(), host.clone());
        let source =
            loopback.then(|| std::net::Ipv4Addr::new(127, 0, 0, 2 + ((offset + i) % 250) as u8));
        handles.push(tokio::spawn(async move {
            let permit = semaphore.acquire_owned().await;
            let socket = tokio::net::TcpSocket::new_v4();
            let connected = async {
                let socket = socket.ok()?;
                if let Some(ip) = source {
                    socket.bind((ip, 0).into()).ok()?;
                }
                let mut stream = socket.connect(target).await.ok()?;
                if sse {
                    return http_open(&mut stream, &host, &path).await.map(|()| Held::Sse(stream));
                }
                let mut request =
                    tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                        url.as_str(),
                    )
                    .ok()?;
                if deflate {
                    request.headers_mut().insert(
                        "sec-websocket-extensions",
                        tether_core::permessage_deflate::CLIENT_OFFER.parse().ok()?,
                    );
                }
                let ws = tokio_tungstenite::client_async(request, stream).await.ok()?.0;
                Some(Held::Ws(Box::new(ws)))
            }
            .await;
            drop(permit);
            let mut ws = match connected {
                Some(Held::Ws(ws)) => ws,
                Some(Held::Sse(mut stream)) => {
                    let _ = opened.send(true).await;
                    // Hold: read (and drop) the stream's events until it ends.
                    let mut scratch = [0u8; 4096];
                    while let Ok(1..) =
                        tokio::io::AsyncReadExt::read(&mut stream, &mut scratch).await
                    {
                    }
                    return true;
                }
                None => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let _ = opened.send(false).await;
                    return false;
                }
            };
            let _ = opened.send(true).await;
            // Hold: read (which answers the server's pings) until the connection ends, and
            // send a "ping" every `ping_every` when asked to keep the connection working.
            let Some(every) = ping_every else {
                while let Some(Ok(_)) = ws.next().await {}
                return true;
            };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    msg = ws.next() => if !matches!(msg, Some(Ok(_))) { return true },
                    _ = tick.tick() => {
                        let ping = tokio_tungstenite::tungstenite::Message::text("ping");
                        if futures_util::SinkExt::send(&mut ws, ping).await.is_err() {
                            return true;
                        }
                    }
                }
            }
        }));
    }
    drop(opened_tx);
    let mut connected = 0;
    let bar = progress(n as u64, "connecting");
    for _ in 0..n {
        if let Some(true) = opened_rx.recv().await {
            connected += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((handles, connected))
}

/// A held connection: a WebSocket, or an SSE stream's or HTTP-streaming session's socket.
enum Held {
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>),
    Sse(tokio::net::TcpStream),
}

/// Ask for an SSE stream (or, for a `/stream` path, open an HTTP-streaming session whose first
/// command subscribes to `?channel=`) on `stream`, and read the answer's head: `Some` on a 200.
async fn http_open(stream: &mut tokio::net::TcpStream, host: &str, path: &str) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let request = if route.ends_with("/stream") {
        let channel = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "channel");
        let body = channel
            .map(|(_, c)| {
                serde_json::json!({"id": 1, "cmd": "subscribe", "channel": c}).to_string()
            })
            .unwrap_or_default();
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
    };
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 200").then_some(())
}

/// Wait `hold`, with a progress bar when it is long enough to wonder.
pub(super) async fn hold_with_progress(hold: Duration) {
    let bar = if hold >= Duration::from_secs(5) {
        let bar = indicatif::ProgressBar::new(hold.as_secs());
        bar.set_style(
            indicatif::ProgressStyle::with_template("holding {bar:30} {pos}/{len} s")
                .expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let end = Instant::now() + hold;
    while Instant::now() < end {
        tokio::time::sleep((end - Instant::now()).min(Duration::from_secs(1))).await;
        bar.set_position(hold.as_secs() - (end - Instant::now()).as_secs());
    }
    bar.finish_and_clear();
}

pub(super) async fn idle(args: IdleArgs) -> Result<ExitCode> {
    if let Some(offset) = args.worker_offset {
        // A worker: connect, report, hold until told to stop (a line on stdin), report drops.
        let started = Instant::now();
        let (handles, connected) =
            open_idle(&args.url, args.conns, offset, args.deflate, args.ping_every).await?;
        println!("READY {connected} {:.3}", started.elapsed().as_secs_f64());
        let mut stop = String::new();
        let _ = tokio::io::AsyncBufReadExt::read_line(
            &mut tokio::io::BufReader::new(tokio::io::stdin()),
            &mut stop,
        )
        .await;
        let drops = handles.iter().filter(|h| h.is_finished()).count() - (args.conns - connected);
        println!("DONE {drops}");
        std::process::exit(0);
    }
    let before = args.probe.rss();
    eprintln!("opening {} connections to {} …", args.conns, args.url);
    let started = Instant::now();
    let (connected, connect_secs, held);
    if args.conns <= PER_PROCESS {
        let (handles, n) =
            open_idle(&args.url, args.conns, 0, args.deflate, args.ping_every).await?;
        connect_secs = started.elapsed().as_secs_f64();
        connected = n;
        eprintln!("{n} connected in {connect_secs:.2} s; holding for {:?} …", args.hold);
        let rss = args.probe.rss();
        hold_with_progress(args.hold).await;
        let drops = handles.iter().filter(|h| h.is_finished()).count() - (args.conns - n);
        held = (rss, args.probe.rss(), drops);
    } else {
        // Several worker processes, each below the open-files limit.
        let exe =
            std::env::current_exe().context("cannot find this executable to start workers")?;
        let mut workers = Vec::new();
        let mut left = args.conns;
        let mut offset = 0;
        while left > 0 {
            let share = left.min(PER_PROCESS);
            let child = tokio::process::Command::new(&exe)
                .args(["bench", "idle", "--url", &args.url, "--conns", &share.to_string()])
                .args([
                    "--hold",
                    &format!("{}ms", args.hold.as_millis()),
                    "--worker-offset",
                    &offset.to_string(),
                ])
                .args(args.deflate.then_some("--deflate"))
                .args(
                    args.ping_every
                        .iter()
                        .flat_map(|d| ["--ping-every".to_owned(), format!("{}ms", d.as_millis())]),
                )
                .stdout(std::process::Stdio::piped())
                .stdin(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker process")?;
            workers.push(child);
            left -= share;
            offset += share;
        }
        let mut lines = Vec::new();
        let mut n = 0;
        for w in &mut workers {
            let out = w.stdout.take().context("worker stdout")?;
            let mut reader = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
            let line = reader.next_line().await?.context("a worker exited before connecting")?;
            n += line.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            lines.push(reader);
        }
        connect_secs = started.elapsed().as_secs_f64();
        connected = n;
        eprintln!(
            "{n} connected by {} workers in {connect_secs:.2} s; holding for {:?} …",
            workers.len(),
            args.hold
        );
        let rss = args.probe.rss();
        hold_with_progress(args.hold).await;
        let rss_held = args.probe.rss();
        for w in &mut workers {
            if let Some(mut stdin) = w.stdin.take() {
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, b"stop\n").await;
            }
        }
        let mut drops = 0;
        for reader in &mut lines {
            if let Some(line) = reader.next_line().await? {
                drops += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
            }
        }
        held = (rss, rss_held, drops);
    }
    let (rss_connected, rss_held, drops) = held;
    let per = |rss: Option<f64>| match (before, rss) {
        (Some(b), Some(a)) if connected > 0 => Some((a - b) / connected as f64),
        _ => None,
    };
    // The figure that matters is the steady state at the end of the hold (idle connections
    // settled, heartbeats running); right after connecting is reported beside it.
    let per_conn = per(rss_held);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "conns": args.conns, "connected": connected, "connect_secs": connect_secs,
                "ping_every_ms": args.ping_every.map(|d| d.as_millis() as u64),
                "connects_per_sec": (connected as f64 / connect_secs).round(), "drops": drops,
                "server_rss_bytes_per_conn": per_conn,
                "server_rss_bytes_per_conn_after_connect": per(rss_connected),
            })
        );
    } else {
        println!(
            "{}: {connected}/{} connected in {connect_secs:.2} s ({:.0}/s); {drops} dropped while held; server memory per connection: {}",
            if args.ping_every.is_some() { "working" } else { "idle" },
            args.conns,
            connected as f64 / connect_secs,
            per_conn.map(|b| format!("{b:.0} bytes")).unwrap_or_else(|| "unknown (pass --server-pid or --metrics-url)".into())
        );
    }
    Ok(if connected == args.conns && drops == 0 { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
