//! Dead peers are detected in bounded time, on both sides.

mod common;
use common::*;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tether_client::{Event, Initiator};

/// Do a WebSocket handshake by hand on a raw TCP socket, then return it.
fn raw_handshake(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

#[test]
fn server_drops_a_silent_peer_within_ping_interval_plus_pong_timeout() {
    let server = Server::start(&["--ping-interval", "100ms", "--pong-timeout", "200ms"]);
    let mut peer = raw_handshake(&server);
    let opened = Instant::now();
    // The peer reads what the server sends (its pings) but never answers anything.
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    let mut pings = 0;
    let ended = loop {
        match peer.read(&mut buf) {
            Ok(0) | Err(_) => break opened.elapsed(),
            Ok(n) => pings += buf[..n].iter().filter(|&&b| b == 0x89).count(),
        }
    };
    assert!(pings >= 2, "the server pinged ({pings} ping frames seen)");
    assert!(ended >= Duration::from_millis(250), "dropped too early: {ended:?}");
    assert!(
        ended <= Duration::from_millis(300 + 600),
        "dropped after {ended:?}, bound is 300 ms + slack"
    );
    assert!(wait_until(Duration::from_secs(5), || server
        .metric("tether_heartbeat_timeouts_total")
        == 1.0));
    assert_eq!(server.closed("4000", "server"), 1.0);
    let log = server.log();
    assert!(log.contains("reason=heartbeat timeout"), "log names the reason:\n{log}");
    assert!(log.contains("was_clean=false"), "{log}");
}

#[test]
fn server_drops_a_sigstopped_python_client() {
    // A real client process frozen by SIGSTOP: alive at TCP level, silent at the application.
    let Some(python) = python() else { return };
    let server = Server::start(&["--ping-interval", "100ms", "--pong-timeout", "200ms"]);
    let code = format!(
        "import asyncio\nfrom websockets.asyncio.client import connect\n\
         async def m():\n  async with connect('{}', ping_interval=None, proxy=None) as ws:\n    print('open', flush=True)\n    await asyncio.sleep(60)\n\
         asyncio.run(m())",
        server.ws_url("")
    );
    let mut child = std::process::Command::new(python)
        .args(["-c", &code])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = LineReader::new(child.stdout.take().unwrap());
    out.expect_line(Duration::from_secs(10), "python open", |l| l == "open");
    assert!(wait_until(Duration::from_secs(5), || server.metric("tether_connections_open") == 1.0));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || server.metric("tether_connections_open") == 0.0));
    let detected = stopped.elapsed();
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = child.wait();
    assert!(detected <= Duration::from_millis(300 + 600), "detected after {detected:?}");
    assert_eq!(server.metric("tether_heartbeat_timeouts_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_detects_a_frozen_server_and_reconnects_after_sigcont() {
    let server = Server::start(&[]);
    let (client, mut events) = tether_client::connect(fast_client(server.ws_url("")));
    client.subscribe("news").await.unwrap();
    let t = Duration::from_secs(10);
    next_event(&mut events, t, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;

    server.signal(Signal::SIGSTOP);
    let frozen = Instant::now();
    let closed =
        next_event(&mut events, t, "heartbeat close", |e| matches!(e, Event::Closed(_))).await;
    let detected = frozen.elapsed();
    let Event::Closed(info) = closed else { unreachable!() };
    assert_eq!(info.code, 4000, "{info}");
    assert_eq!(info.initiator, Initiator::Client);
    assert!(!info.was_clean);
    assert!(info.reason.contains("heartbeat timeout"), "{info}");
    assert!(info.will_reconnect);
    assert!(detected <= Duration::from_millis(300 + 600), "detected after {detected:?}");
    assert_eq!(client.stats().heartbeat_timeouts.load(std::sync::atomic::Ordering::Relaxed), 1);

    server.signal(Signal::SIGCONT);
    next_event(&mut events, Duration::from_secs(15), "reopen", |e| {
        matches!(e, Event::Open { reconnected: true })
    })
    .await;
    next_event(&mut events, t, "resubscribed", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await;
    server.publish("news", "42");
    let got =
        next_event(&mut events, t, "publication", |e| matches!(e, Event::Publication { .. })).await;
    let Event::Publication { data, .. } = got else { unreachable!() };
    assert_eq!(data.get(), "42");
}
