//! Limits that must not be turned against the users they protect (decision 0009): admission
//! order, half-sent requests (slowloris), clients behind a proxy, DNS rebinding and cross-site
//! requests, and settings that contradict each other. Loopback is exempt from the per-address
//! limits by default, so these servers run with `--limit-loopback` where those matter.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A WebSocket handshake by hand from `source` with extra header lines; returns the status,
/// the whole response head and the socket.
fn handshake(
    server: SocketAddr,
    source: &str,
    query: &str,
    headers: &str,
) -> (u16, String, TcpStream) {
    let (head, s) =
        raw_ws_head(server, query, RawWs { source: Some(source), headers, ..RawWs::default() });
    (head[9..12].parse().unwrap(), head, s)
}

/// After a 101 in raw mode: send a masked text "ping" and return the first frame's opcode
/// that comes back (0x1 text for the "pong" of a working connection, 0x8 for a close).
fn first_frame_after_ping(s: &mut TcpStream) -> u8 {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 4];
    frame.extend_from_slice(&mask);
    frame.extend(b"ping".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    // The server may have closed already (the 1013 of a refused handshake): then the close
    // frame is waiting to be read anyway.
    let _ = s.write_all(&frame);
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("a frame from the server");
    head[0] & 0x0f
}

/// A plain HTTP request with these extra header lines; returns the status and the body.
fn http_raw(server: SocketAddr, request_head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{request_head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    (text[9..12].parse().unwrap(), text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

#[test]
fn a_flooding_address_spends_its_own_limit_not_the_servers_budget() {
    let server = Server::start(&[
        "--limit-loopback",
        "--handshake-rate-per-ip",
        "5",
        "--max-handshake-rate",
        "20",
    ]);
    // 127.0.0.2 floods: beyond its burst (10) it gets 429, and those refusals take nothing
    // from the server-wide budget (20 a second).
    let statuses: Vec<u16> =
        (0..200).map(|_| handshake(server.addr, "127.0.0.2", "", "").0).collect();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused >= 185, "{refused} of 200 refused with 429: {statuses:?}");
    // 127.0.0.3 still gets working connections, not 1013.
    for n in 0..5 {
        let (status, head, mut s) = handshake(server.addr, "127.0.0.3", "", "");
        assert_eq!(status, 101, "{head}");
        assert_eq!(first_frame_after_ping(&mut s), 0x1, "connection {n} was closed (1013?)");
    }
    assert_eq!(
        server.metric("tether_handshakes_refused_total{reason=\"max_handshake_rate\"}"),
        0.0
    );
}

#[test]
fn invalid_tokens_are_rate_limited_before_any_signature_check() {
    let server = Server::start(&[
        "--limit-loopback",
        "--handshake-rate-per-ip",
        "5",
        "--jwt-secret",
        "s3cret-s3cret-s3cret",
    ]);
    let statuses: Vec<u16> =
        (0..40).map(|_| handshake(server.addr, "127.0.0.4", "?token=not.a.jwt", "").0).collect();
    let (unauthorized, limited) = (
        statuses.iter().filter(|s| **s == 401).count(),
        statuses.iter().filter(|s| **s == 429).count(),
    );
    assert!((10..=12).contains(&unauthorized), "{statuses:?}");
    assert_eq!(unauthorized + limited, 40, "{statuses:?}");
}

#[test]
fn refusals_over_the_budget_are_bounded_in_number() {
    // A budget of 1 handshake a second, and at most 8 refused handshakes lingering over their
    // 1013 close (max_pending_handshakes); the rest of the storm gets a plain 503.
    let server = Server::start(&["--max-handshake-rate", "1", "--max-pending-handshakes", "8"]);
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (status, _, s) = handshake(server.addr, "127.0.0.1", "", "");
        statuses.push(status);
        held.push(s); // never read, never closed: each 1013 lingers until close_timeout
    }
    let upgraded = statuses.iter().filter(|s| **s == 101).count();
    assert!(upgraded <= 1 + 8 + 1, "{upgraded} upgraded: {statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 503).count() >= 20, "{statuses:?}");
    let lingering = server.metric("tether_storm_refusals_lingering");
    assert!(lingering <= 8.0, "{lingering}");
    drop(held);
    assert!(wait_until(Duration::from_secs(10), || server
        .metric("tether_storm_refusals_lingering")
        == 0.0));
}

/// The descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn half_sent_requests_cannot_hold_the_server() {
    let server = Server::start(&["--max-pending-handshakes", "100", "--handshake-timeout", "1s"]);
    let baseline = open_fds(server.child.id());
    // 2,000 sockets that send half a request head and then nothing, from 8 addresses.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..2000)
        .map(|n| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let local: SocketAddr = format!("127.0.0.{}:0", 10 + n % 8).parse().unwrap();
            socket.bind(&local.into()).unwrap();
            socket.connect(&server.addr.into()).unwrap();
            let mut s: TcpStream = socket.into();
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs").unwrap();
            s
        })
        .collect();
    // The health check and a real client get through at once.
    let (status, body) = http_request("GET", &server.http("/healthz"), None);
    assert_eq!(status, 200, "{body}");
    let (status, head, mut ws) = handshake(server.addr, "127.0.0.2", "", "");
    assert_eq!(status, 101, "{head}");
    assert_eq!(first_frame_after_ping(&mut ws), 0x1);
    let fds = open_fds(server.child.id());
    assert!(fds <= baseline + 100 + 20, "{fds} descriptors open (baseline {baseline})");
    // Every half-sent request is closed by the server within the timeout (or sooner, evicted).
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in &mut slow {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        let mut buf = [0u8; 512];
        let ended = match s.read(&mut buf) {
            Ok(_) => true, // EOF, or a 408 before it
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(ended, "a half-sent request still open after {:?}", started.elapsed());
    }
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let m = server.metrics();
    let evicted = metric_sum(&m, "tether_pending_handshakes_evicted_total");
    assert!(evicted >= 1800.0, "{evicted}: {m}");
    assert!(
        // Only the request asking is still an unfinished HTTP connection.
        wait_until(Duration::from_secs(5), || server.metric("tether_pending_handshakes") <= 1.0),
        "{}",
        server.metrics()
    );
}

#[test]
fn an_oversized_request_head_gets_431() {
    let server = Server::start(&["--max-header-size", "4KiB"]);
    let big = format!("X-Filler: {}\r\n", "a".repeat(8 * 1024));
    let (status, _) =
        http_raw(server.addr, &format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{big}"), "");
    assert_eq!(status, 431);
    let (status, _) = http_raw(server.addr, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", "");
    assert_eq!(status, 200);
}

#[test]
fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let server = Server::start(&[
        "--limit-loopback",
        "--max-connections-per-ip",
        "2",
        "--handshake-rate-per-ip",
        "0",
        "--trusted-proxy",
        "127.0.0.5/32",
    ]);
    let via_proxy = |client: &str| {
        handshake(server.addr, "127.0.0.5", "", &format!("X-Forwarded-For: {client}\r\n"))
    };
    let _a1 = via_proxy("203.0.113.5");
    let _a2 = via_proxy("203.0.113.5");
    let (status, head, mut refused) = via_proxy("203.0.113.5");
    assert_eq!(status, 429, "{head}");
    let mut body = String::new();
    let _ = refused.read_to_string(&mut body);
    assert!(body.contains("203.0.113.5"), "{body}");
    // Other clients of the same proxy are not affected.
    assert_eq!(via_proxy("203.0.113.6").0, 101);
    let forwarded =
        handshake(server.addr, "127.0.0.5", "", "Forwarded: for=\"[2001:db8::1]:4711\"\r\n");
    assert_eq!(forwarded.0, 101);
    // A peer that is not a trusted proxy cannot pick its address.
    let untrusted =
        |c: &str| handshake(server.addr, "127.0.0.6", "", &format!("X-Forwarded-For: {c}\r\n"));
    let (_b1, _b2) = (untrusted("198.51.100.1"), untrusted("198.51.100.2"));
    assert_eq!(untrusted("198.51.100.3").0, 429, "all three are 127.0.0.6");
}

#[test]
fn a_loopback_server_answers_only_loopback_host_names() {
    let server = Server::start(&["--allowed-host", "dev.example"]);
    let port = server.addr.port();
    let get = |host: &str, path: &str| {
        http_raw(server.addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n"), "")
    };
    for path in ["/metrics", "/healthz", "/", "/tether.js"] {
        let (status, body) = get(&format!("rebind.evil.example:{port}"), path);
        assert_eq!(status, 421, "{path}: {body}");
        assert!(body.contains("allowed_hosts"), "{body}");
        assert_eq!(get(&format!("localhost:{port}"), path).0, 200, "{path}");
        assert_eq!(get(&format!("127.0.0.1:{port}"), path).0, 200, "{path}");
        assert_eq!(get(&format!("dev.example:{port}"), path).0, 200, "{path}");
    }
    // The WebSocket too, even with an Origin that matches the rebound Host.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\n\
         Origin: http://rebind.evil.example:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 421"), "{text}");
    assert!(server.metric("tether_handshakes_refused_total{reason=\"host\"}") >= 1.0);
}

#[test]
fn the_publish_api_takes_json_only() {
    let server = Server::start(&[]);
    let head = "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    let body = r#"{"channel":"news","data":"hi"}"#;
    // What a cross-site `no-cors` form or fetch can send.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"] {
        let (status, reply) =
            http_raw(server.addr, &format!("{head}Content-Type: {content_type}\r\n"), body);
        assert_eq!(status, 415, "{content_type}: {reply}");
        assert!(reply.contains("application/json"), "{reply}");
    }
    let (status, _) = http_raw(server.addr, head, body);
    assert_eq!(status, 415, "no Content-Type");
    let json = format!("{head}Content-Type: application/json; charset=utf-8\r\n");
    assert_eq!(http_raw(server.addr, &json, body).0, 200);
}

#[test]
fn heap_profiles_are_served_only_with_an_api_key() {
    let server = Server::start(&[]);
    let (status, body) = http_request("GET", &server.http("/debug/pprof/heap"), None);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--api-key"), "{body}");
    let (status, _) = http_request("POST", &server.http("/debug/pprof/heap/activate"), None);
    assert_eq!(status, 403);
    // Asking for profiling at start-up without a key is refused with a way out.
    let stderr = refused_at_start(&["--heap-profiling"]);
    assert!(stderr.contains("--api-key"), "{stderr}");
}

#[test]
fn settings_that_contradict_each_other_are_refused_at_start() {
    // A publication as large as max_message_size would not fit any subscriber's queue.
    let stderr = refused_at_start(&["--max-message-size", "32MiB"]);
    assert!(
        stderr.contains("outbound_queue_bytes") && stderr.contains("max_message_size"),
        "{stderr}"
    );
}

/// `tether serve ARGS` must exit with an error at start; returns its stderr. A server that
/// starts instead is stopped (by PID) and the test fails.
fn refused_at_start(args: &[&str]) -> String {
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`tether serve {}` started instead of refusing", args.join(" "));
    }
    assert!(!child.wait().unwrap().success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    stderr
}
