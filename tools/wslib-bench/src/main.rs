//! wslib-bench: compare Rust WebSocket server crates (see docs/decisions/0001-websocket-library.md).
//!
//! Every server variant is an echo server on 127.0.0.1, mounted the same way: a hyper 1
//! HTTP/1.1 connection with `with_upgrades()`, the WebSocket handshake answered by the
//! crate (or by us, for crates without a hyper helper), then one tokio task per socket
//! running `read message -> write message (flushed)`. The load generator always uses the
//! tokio-tungstenite client, so the client side is the same for every server.
//!
//! Subcommands:
//!   server --lib LIB --port P [--threads N]      echo server (N=0: current_thread runtime)
//!   client --port P [--conns C] [--secs S] [--size B] [--window W] [--src S]
//!                                                throughput load against a running server
//!   run --bench throughput|memory [--libs a,b] [--reps R] [--conns C] [--secs S]
//!       [--size B] [--window W] [--threads N] [--server-cpu K]
//!                                                spawns each server in turn (order rotated
//!                                                per repetition), loads it, reads /proc;
//!                                                run it under `taskset -c 1` together with
//!                                                `--server-cpu 0` to give each side a core;
//!                                                `--raw-client`: pre-encoded frames, byte
//!                                                counting (cheap client, server-bound)
//!
//! LIB: tungstenite | tungstenite-4k | axum | fastwebsockets | tokio-websockets | yawc
//!      tungstenite-r4k (read buffer 4 KiB only) | floor (hyper upgrade + task, no WS codec;
//!      memory bench only) | yawc-deflate | yawc-deflate-pool   (memory bench only; the client then uses yawc
//!                                         with permessage-deflate so it is negotiated)

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const LIBS: &[&str] =
    &["tungstenite", "tungstenite-4k", "axum", "fastwebsockets", "tokio-websockets", "yawc"];

// ---------------------------------------------------------------- argument helpers

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn arg_num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => {
            let lib = arg(&args, "--lib").expect("--lib");
            let port: u16 = arg_num(&args, "--port", 9001);
            let threads: usize = arg_num(&args, "--threads", 0);
            runtime(threads).block_on(server(lib, port));
        }
        Some("client") => {
            let port: u16 = arg_num(&args, "--port", 9001);
            let p = LoadParams::from_args(&args);
            let src: u8 = arg_num(&args, "--src", 1);
            let rt = runtime(0);
            let r = rt.block_on(throughput_client(port, &p, src, || {}));
            println!(
                "{} msgs in {:.2}s = {:.0} msg/s",
                r.0,
                r.1.as_secs_f64(),
                r.0 as f64 / r.1.as_secs_f64()
            );
        }
        Some("run") => run(&args),
        _ => {
            eprintln!("usage: see the header of src/main.rs");
            std::process::exit(2);
        }
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    }
}

// ---------------------------------------------------------------- servers

type Resp = Response<Empty<Bytes>>;

fn bad_request() -> Resp {
    Response::builder().status(StatusCode::BAD_REQUEST).body(Empty::new()).unwrap()
}

/// Handshake response for the crates that do not build one themselves from a hyper request.
fn switching_protocols(req: &Request<Incoming>) -> Option<Resp> {
    let key = req.headers().get("sec-websocket-key")?;
    if req.headers().get("sec-websocket-version")?.as_bytes() != b"13" {
        return None;
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Some(
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Empty::new())
            .unwrap(),
    )
}

async fn server(lib: String, port: u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await.unwrap();
    let lib: &'static str = Box::leak(lib.into_boxed_str());
    assert!(
        LIBS.contains(&lib)
            || lib.starts_with("yawc-deflate")
            || lib == "tungstenite-r4k"
            || lib == "floor",
        "unknown --lib {lib}"
    );
    let router = axum::Router::new().route("/", axum::routing::get(axum_handler));
    println!("READY {lib} pid={}", std::process::id());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if lib == "axum" {
            let svc = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await;
            });
        } else {
            let svc = hyper::service::service_fn(move |req| handle(lib, req));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await;
            });
        }
    }
}

async fn handle(lib: &'static str, mut req: Request<Incoming>) -> Result<Resp, Infallible> {
    match lib {
        "tungstenite" | "tungstenite-4k" | "tungstenite-r4k" => {
            use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
            let Some(resp) = switching_protocols(&req) else {
                return Ok(bad_request());
            };
            let cfg = if lib == "tungstenite-4k" {
                WebSocketConfig::default()
                    .read_buffer_size(4 * 1024)
                    .write_buffer_size(0)
                    .max_message_size(Some(1 << 20))
                    .max_frame_size(Some(1 << 20))
            } else if lib == "tungstenite-r4k" {
                // Only the read buffer changed: isolates its effect.
                WebSocketConfig::default().read_buffer_size(4 * 1024)
            } else {
                WebSocketConfig::default()
            };
            tokio::spawn(async move {
                let Ok(up) = hyper::upgrade::on(&mut req).await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    Role::Server,
                    Some(cfg),
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            Ok(resp)
        }
        "fastwebsockets" => {
            use fastwebsockets::{FragmentCollector, OpCode};
            let Ok((resp, fut)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                return Ok(bad_request());
            };
            tokio::spawn(async move {
                let Ok(ws) = fut.await else { return };
                let mut ws = FragmentCollector::new(ws);
                while let Ok(frame) = ws.read_frame().await {
                    match frame.opcode {
                        OpCode::Text | OpCode::Binary => {
                            if ws.write_frame(frame).await.is_err() {
                                break;
                            }
                        }
                        OpCode::Close => break,
                        _ => {}
                    }
                }
            });
            Ok(resp)
        }
        "tokio-websockets" => {
            let Some(resp) = switching_protocols(&req) else {
                return Ok(bad_request());
            };
            tokio::spawn(async move {
                let Ok(up) = hyper::upgrade::on(&mut req).await else { return };
                let mut ws = tokio_websockets::ServerBuilder::new().serve(TokioIo::new(up));
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            Ok(resp)
        }
        "yawc" | "yawc-deflate" | "yawc-deflate-pool" => {
            use yawc::{OpCode, Options, WebSocket};
            static POOL: std::sync::OnceLock<yawc::DeflatePool> = std::sync::OnceLock::new();
            let mut opts = Options::default().with_utf8();
            if lib == "yawc-deflate" {
                // permessage-deflate, context takeover (per-connection zlib state).
                opts = opts.with_balanced_compression();
            } else if lib == "yawc-deflate-pool" {
                // permessage-deflate, no context takeover, deflate state borrowed from a
                // process-wide pool for one message at a time.
                opts = opts
                    .with_balanced_compression()
                    .server_no_context_takeover()
                    .client_no_context_takeover()
                    .with_deflate_pool(POOL.get_or_init(|| yawc::DeflatePool::new(64)).clone());
            }
            let Ok((resp, fut)) = WebSocket::upgrade_with_options(&mut req, opts) else {
                return Ok(bad_request());
            };
            tokio::spawn(async move {
                let Ok(mut ws) = fut.await else { return };
                while let Some(frame) = ws.next().await {
                    match frame.opcode() {
                        OpCode::Text | OpCode::Binary => {
                            if ws.send(frame).await.is_err() {
                                break;
                            }
                        }
                        OpCode::Close => break,
                        _ => {}
                    }
                }
            });
            Ok(resp)
        }
        "floor" => {
            // Not a WebSocket implementation: hyper upgrade + one task per socket that
            // answers every read with a fixed 64-byte text frame. Measures the cost of the
            // plumbing shared by all variants (hyper, tokio task, socket), nothing else.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Some(resp) = switching_protocols(&req) else {
                return Ok(bad_request());
            };
            tokio::spawn(async move {
                let Ok(up) = hyper::upgrade::on(&mut req).await else { return };
                let mut io = TokioIo::new(up);
                let mut reply = vec![0x81u8, 64];
                reply.extend_from_slice(payload(64).as_bytes());
                let mut buf = [0u8; 256];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if io.write_all(&reply).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            Ok(resp)
        }
        _ => Ok(bad_request()),
    }
}

/// axum 0.8 `ws` feature with its default WebSocketUpgrade settings.
async fn axum_handler(ws: axum::extract::ws::WebSocketUpgrade) -> axum::response::Response {
    ws.on_upgrade(|mut socket| async move {
        use axum::extract::ws::Message;
        while let Some(Ok(msg)) = socket.recv().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    if socket.send(msg).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
}

// ---------------------------------------------------------------- client side

#[derive(Clone)]
struct LoadParams {
    conns: usize,
    secs: f64,
    size: usize,
    window: usize,
    /// After the tokio-tungstenite handshake, drive the socket with pre-encoded masked
    /// frames and count echoed bytes instead of parsing them: a much cheaper client, so
    /// the server becomes the bottleneck on a 2-core machine.
    raw: bool,
}

impl LoadParams {
    fn from_args(args: &[String]) -> Self {
        LoadParams {
            conns: arg_num(args, "--conns", 50),
            secs: arg_num(args, "--secs", 5.0),
            size: arg_num(args, "--size", 64),
            window: arg_num(args, "--window", 1),
            raw: args.iter().any(|a| a == "--raw-client"),
        }
    }
}

/// Client sockets are spread over 127.0.<src>.1..=200 so that repeated runs do not run
/// out of ephemeral ports (TIME_WAIT) on a single source address.
async fn connect_tcp(port: u16, src: u8, i: usize) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    let ip = Ipv4Addr::new(127, 0, src, 1 + (i % 200) as u8);
    sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    let s = sock.connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

type ClientWs = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect_ws(port: u16, src: u8, i: usize) -> Result<ClientWs, String> {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let tcp = connect_tcp(port, src, i).await.map_err(|e| e.to_string())?;
    let cfg = WebSocketConfig::default().read_buffer_size(16 * 1024).write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://127.0.0.1:{port}/"),
        tcp,
        Some(cfg),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn payload(size: usize) -> String {
    "abcdefghijklmnopqrstuvwxyz0123456789".chars().cycle().take(size).collect()
}

/// Opens `conns` connections, calls `at_start` once all are connected, then each
/// connection loops for `secs`: send `window` text messages (one flush), read `window`
/// echoes. Returns (echoes received, measured wall time).
async fn throughput_client(
    port: u16,
    p: &LoadParams,
    src: u8,
    at_start: impl FnOnce(),
) -> (u64, Duration) {
    use tokio_tungstenite::tungstenite::Message;
    let mut socks = Vec::with_capacity(p.conns);
    for i in 0..p.conns {
        socks.push(connect_ws(port, src, i).await.expect("connect"));
    }
    let text: tokio_tungstenite::tungstenite::Utf8Bytes = payload(p.size).into();
    let count = Arc::new(AtomicU64::new(0));
    // Warm-up: one round trip per connection.
    for ws in socks.iter_mut() {
        ws.send(Message::Text(text.clone())).await.unwrap();
        ws.next().await.unwrap().unwrap();
    }
    at_start();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(p.secs);
    let mut tasks = Vec::new();
    if p.raw {
        // 64-byte text frame, masked with a fixed key (RFC 6455 5.3 only asks that the
        // client mask; the server cost is identical for any key).
        let key = [0x12u8, 0x34, 0x56, 0x78];
        let body = payload(p.size);
        assert!(p.size < 126, "--raw-client supports payloads < 126 bytes");
        let mut frame = vec![0x81u8, 0x80 | p.size as u8];
        frame.extend_from_slice(&key);
        frame.extend(body.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
        let burst: Arc<Vec<u8>> = Arc::new(frame.repeat(p.window));
        let echo_len = 2 + p.size; // unmasked server frame
        for ws in socks {
            let count = count.clone();
            let burst = burst.clone();
            let window = p.window;
            tasks.push(tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut tcp = ws.into_inner();
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if tcp.write_all(&burst).await.is_err() {
                        return;
                    }
                    let want = window * echo_len;
                    let mut got = 0;
                    while got < want {
                        match tcp.read(&mut buf[..(want - got).min(64 * 1024)]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got += k,
                        }
                    }
                    n += window as u64;
                }
                count.fetch_add(n, Ordering::Relaxed);
            }));
        }
    } else {
        for mut ws in socks {
            let count = count.clone();
            let text = text.clone();
            let window = p.window;
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..window {
                        if ws.feed(Message::Text(text.clone())).await.is_err() {
                            return;
                        }
                    }
                    if ws.flush().await.is_err() {
                        return;
                    }
                    for _ in 0..window {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) if t.len() == text.len() => n += 1,
                            _ => return,
                        }
                    }
                }
                count.fetch_add(n, Ordering::Relaxed);
                let _ = ws.close(None).await;
            }));
        }
    }
    let bound = Duration::from_secs_f64(p.secs + 15.0);
    for t in tasks {
        let _ = tokio::time::timeout(bound, t).await;
    }
    (count.load(Ordering::Relaxed), start.elapsed())
}

// ---------------------------------------------------------------- /proc helpers

fn clk_tck() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on Linux x86_64/aarch64.
    100.0
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after ")": state(0) ... utime is field 14 overall -> index 11 here, stime 12
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / clk_tck()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `cpu`: when set, the server is started through `taskset -c CPU` (taskset execs, so the
/// child PID is the server's PID).
fn spawn_server(lib: &str, port: u16, threads: usize, cpu: Option<&str>) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match cpu {
        Some(c) => {
            let mut c0 = Command::new("taskset");
            c0.args(["-c", c]).arg(exe);
            c0
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .args(["server", "--lib", lib, "--port", &port.to_string()])
        .args(["--threads", &threads.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("READY"), "server did not start: {line}");
    child
}

fn stop(mut child: Child) {
    let _ = child.kill(); // SIGKILL to this PID only
    let _ = child.wait();
}

// ---------------------------------------------------------------- orchestrator

fn run(args: &[String]) {
    let bench = arg(args, "--bench").unwrap_or_else(|| "throughput".into());
    let libs: Vec<String> = arg(args, "--libs")
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_else(|| LIBS.iter().map(|s| s.to_string()).collect());
    let reps: usize = arg_num(args, "--reps", 3);
    let threads: usize = arg_num(args, "--threads", 0);
    let base_port: u16 = arg_num(args, "--port", 19100);
    let mut src: u8 = arg_num(args, "--src", 1);
    let server_cpu = arg(args, "--server-cpu");
    let p = LoadParams::from_args(args);
    let idle_conns: usize = arg_num(args, "--conns", 5000);

    println!(
        "# bench={bench} reps={reps} server_threads={threads} (0=current_thread) server_cpu={} conns={} window={} size={} secs={} client={}",
        server_cpu.as_deref().unwrap_or("any"),
        p.conns,
        p.window,
        p.size,
        p.secs,
        if p.raw { "raw" } else { "tokio-tungstenite" }
    );
    let mut port = base_port;
    for rep in 1..=reps {
        // Rotate the order each repetition so no library always runs first/last.
        let n = libs.len();
        for k in 0..n {
            let lib = &libs[(k + rep - 1) % n];
            port += 1;
            src = src.wrapping_add(1).max(1);
            let child = spawn_server(lib, port, threads, server_cpu.as_deref());
            let pid = child.id();
            std::thread::sleep(Duration::from_millis(200));
            match bench.as_str() {
                "throughput" => {
                    let rt = runtime(0);
                    let me = std::process::id();
                    let mut c0 = (0.0, 0.0);
                    let (msgs, wall) = rt.block_on(throughput_client(port, &p, src, || {
                        c0 = (cpu_secs(pid), cpu_secs(me));
                    }));
                    let (s1, c1) = (cpu_secs(pid), cpu_secs(me));
                    drop(rt);
                    let w = wall.as_secs_f64();
                    let srv_cpu = s1 - c0.0;
                    let cli_cpu = c1 - c0.1;
                    println!(
                        "rep={rep} lib={lib:<17} msgs/s={:>9.0} server_cpu={:>5.1}% client_cpu={:>5.1}% server_us/msg={:.2}",
                        msgs as f64 / w,
                        100.0 * srv_cpu / w,
                        100.0 * cli_cpu / w,
                        1e6 * srv_cpu / msgs.max(1) as f64
                    );
                }
                "memory" => {
                    let before = vm_rss_kib(pid);
                    let rt = runtime(0);
                    let deflate = match lib.as_str() {
                        "yawc-deflate" => 1,
                        "yawc-deflate-pool" => 2,
                        _ => 0,
                    };
                    let (ok, after) = rt.block_on(idle_client(port, idle_conns, src, pid, deflate));
                    drop(rt);
                    println!(
                        "rep={rep} lib={lib:<17} conns={ok} rss_before={before}KiB rss_after={after}KiB bytes/conn={:.0}",
                        (after.saturating_sub(before) as f64 * 1024.0) / ok.max(1) as f64
                    );
                }
                other => panic!("unknown --bench {other}"),
            }
            stop(child);
            // Let the kernel tear the sockets down before the next server starts.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[allow(dead_code)] // held only to keep the sockets open
enum IdleWs {
    Tung(ClientWs),
    Yawc(yawc::WebSocket<TcpStream>),
}

/// Opens `n` connections (200 handshakes in flight at most), sends one 64-byte text
/// message on each and waits for its echo, then holds them idle until the server RSS
/// is stable. Returns (connections held, final server VmRSS in KiB).
async fn idle_client(port: u16, n: usize, src: u8, server_pid: u32, deflate: u8) -> (usize, u64) {
    use futures_util::stream;
    use tokio_tungstenite::tungstenite::Message;
    let text = payload(64);
    let deadline = Instant::now() + Duration::from_secs(120);
    let conns: Vec<Option<IdleWs>> = stream::iter(0..n)
        .map(|i| {
            let text = text.clone();
            async move {
                if Instant::now() > deadline {
                    return None;
                }
                let r = tokio::time::timeout(Duration::from_secs(20), async {
                    if deflate > 0 {
                        let tcp = connect_tcp(port, src, i).await.ok()?;
                        let url: url::Url = format!("ws://127.0.0.1:{port}/").parse().ok()?;
                        let mut opts = yawc::Options::default().with_balanced_compression();
                        if deflate == 2 {
                            opts = opts.client_no_context_takeover().server_no_context_takeover();
                        }
                        let mut ws = yawc::WebSocket::handshake(url, tcp, opts).await.ok()?;
                        ws.send(yawc::Frame::text(text.clone())).await.ok()?;
                        let f = ws.next().await?;
                        (f.payload().len() == 64).then_some(IdleWs::Yawc(ws))
                    } else {
                        let mut ws = connect_ws(port, src, i).await.ok()?;
                        ws.send(Message::text(text.clone())).await.ok()?;
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) if t.len() == 64 => Some(IdleWs::Tung(ws)),
                            _ => None,
                        }
                    }
                })
                .await;
                r.ok().flatten()
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let held: Vec<IdleWs> = conns.into_iter().flatten().collect();
    // Wait for RSS to settle: three consecutive samples within 64 KiB, 20 s at most.
    let mut last = vm_rss_kib(server_pid);
    let mut stable = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = vm_rss_kib(server_pid);
        if now.abs_diff(last) <= 64 {
            stable += 1;
            if stable >= 3 {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    let ok = held.len();
    drop(held);
    (ok, last)
}
