//! One client address that floods the server: connections per address and handshakes per
//! second are refused with 429 while the server stays responsive and small, and a connection
//! that sends too fast is closed with 1008. Loopback is exempt by default, so these servers run
//! with `--limit-loopback`.

mod common;
use common::*;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message};

/// A WebSocket handshake from `source`; the status code and the open socket.
fn handshake_from(server: SocketAddr, source: &str) -> (u16, TcpStream) {
    raw_ws(server, "", RawWs { source: Some(source), ..RawWs::default() })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_flood_from_one_address_is_refused_while_the_server_stays_responsive() {
    let server = Server::start(&[
        "--limit-loopback",
        "--max-connections-per-ip",
        "50",
        "--handshake-rate-per-ip",
        "0",
    ]);
    let mut open = Vec::new();
    for _ in 0..50 {
        let (status, s) = handshake_from(server.addr, "127.0.0.1");
        assert_eq!(status, 101);
        open.push(s);
    }
    // The flood: 4 threads × 250 more handshakes from the same address, while the health
    // endpoint is timed from another one.
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                (0..250).filter(|_| handshake_from(addr, "127.0.0.1").0 == 429).count()
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while !flood.iter().all(|t| t.is_finished()) {
        let started = Instant::now();
        let (status, _) = http_request("GET", &server.http("/healthz"), None);
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
    }
    let refused: usize = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(refused, 1000, "every handshake beyond 50 from one address gets 429");
    assert!(slowest < Duration::from_secs(1), "/healthz took {slowest:?} during the flood");
    // Another address is not affected, and the refused sockets left nothing behind.
    let (status, _other) = handshake_from(server.addr, "127.0.0.2");
    assert_eq!(status, 101);
    assert!(
        wait_until(Duration::from_secs(5), || server.metric("tether_connections_open") == 51.0),
        "{}",
        server.metrics()
    );
    let m = server.metrics();
    assert_eq!(
        metric_sum(&m, "tether_handshakes_refused_total{reason=\"per_ip_connections\"}"),
        1000.0,
        "{m}"
    );
    let rss = rss_kib(server.child.id());
    assert!(rss < 150 * 1024, "server RSS {rss} KiB after the flood");
    // Closing some gives the address room again.
    open.truncate(40);
    assert!(wait_until(Duration::from_secs(5), || server.metric("tether_connections_open") == 41.0));
    assert_eq!(handshake_from(server.addr, "127.0.0.1").0, 101);
}

#[test]
fn handshakes_faster_than_the_rate_get_429() {
    let server = Server::start(&["--limit-loopback", "--handshake-rate-per-ip", "5"]);
    // A burst of twice the rate passes; the rest of 40 quick ones are refused.
    let statuses: Vec<u16> = (0..40).map(|_| handshake_from(server.addr, "127.0.0.3").0).collect();
    let accepted = statuses.iter().filter(|s| **s == 101).count();
    assert!((10..=12).contains(&accepted), "{accepted} accepted: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 40 - accepted);
    assert_eq!(
        server.metric("tether_handshakes_refused_total{reason=\"handshake_rate\"}"),
        (40 - accepted) as f64
    );
}

#[test]
fn a_connection_sending_faster_than_the_inbound_rate_is_closed_with_1008() {
    let server = Server::start(&["--max-inbound-rate", "20"]);
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(server.ws_url("")).unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "tether.v1.json".parse().unwrap());
    let (mut ws, _) = tungstenite::connect(req).unwrap();
    // Within the burst (one second's worth): answered.
    for id in 0..15 {
        ws.send(Message::text(format!(r#"{{"id":{id},"cmd":"ping"}}"#))).unwrap();
    }
    for _ in 0..15 {
        assert!(ws.read().unwrap().is_text());
    }
    // Far beyond it: closed with 1008 and a reason that says why.
    for id in 15..200 {
        if ws.send(Message::text(format!(r#"{{"id":{id},"cmd":"ping"}}"#))).is_err() {
            break;
        }
    }
    let close = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame.expect("a close frame with a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("rate limit"), "{}", close.reason);
    assert!(wait_until(Duration::from_secs(5), || server
        .metric("tether_inbound_rate_limited_total")
        == 1.0));
    assert!(wait_until(Duration::from_secs(5), || server.closed("1008", "server") == 1.0));
}
