//! Parked idle connections (see crates/tether-server/src/connection.rs): they park, keep their
//! heartbeats through the shared timer, wake for publications and shutdown, and never park in
//! the middle of a frame or of a fragmented message.

mod common;

use common::{wait_until, Server};
use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::Message;

const N: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_park_keep_their_heartbeat_and_wake_for_publications_and_shutdown() {
    // park_after = min(1 s, ping_interval / 2) = 300 ms; the shared timer ticks every 60 ms.
    let mut server = Server::start(&["--ping-interval", "600ms", "--pong-timeout", "1s"]);
    let mut clients = Vec::new();
    for _ in 0..N {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("?channel=p")).await.unwrap();
        clients.push(ws);
    }
    // Each client reads (answering pings) and reports every text message and its close.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, mut ws) in clients.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(t) => {
                        let _ = tx.send((i, t.to_string()));
                    }
                    Message::Close(f) => {
                        let code = f.map(|f| u16::from(f.code)).unwrap_or(0);
                        let _ = tx.send((i, format!("close {code}")));
                    }
                    _ => {}
                }
            }
        });
    }
    let parked = |s: &Server| s.metric("tether_connections_parked") as usize;
    assert!(
        wait_until(Duration::from_secs(10), || parked(&server) == N),
        "all {N} idle connections park; parked: {}",
        parked(&server)
    );

    // Heartbeats go on while parked: three rounds of pings, answered, and nobody dropped.
    let rtts = |s: &Server| s.metric("tether_heartbeat_rtt_seconds_count") as usize;
    assert!(
        wait_until(Duration::from_secs(10), || rtts(&server) >= 3 * N),
        "pings keep flowing to parked connections; round trips: {}",
        rtts(&server)
    );
    assert_eq!(server.metric("tether_connections_open") as usize, N);
    assert_eq!(server.metric("tether_heartbeat_timeouts_total"), 0.0);

    // A publication wakes every parked subscriber.
    assert!(wait_until(Duration::from_secs(10), || parked(&server) == N));
    server.publish("p", r#""hello""#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = [false; N];
    while got.iter().any(|g| !g) {
        let (i, text) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("every parked subscriber receives the publication")
            .unwrap();
        assert_eq!(text, "hello");
        got[i] = true;
    }
    assert!(wait_until(Duration::from_secs(10), || parked(&server) == N), "they park again");

    // Shutdown reaches parked connections at once: everyone gets its 1012.
    let started = Instant::now();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let mut closed = [false; N];
    while closed.iter().any(|c| !c) {
        let (i, text) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("every parked connection is closed on shutdown")
            .unwrap();
        assert_eq!(text, "close 1012");
        closed[i] = true;
    }
    assert!(started.elapsed() < Duration::from_secs(2), "closed promptly: {:?}", started.elapsed());
    assert!(server.terminate().success());
}

/// A new connection starts parked: the server has nothing to say before the first heartbeat, so
/// it holds no WebSocket state until its peer speaks (before: each was active for its first
/// `park_after`, about 9 KB each, so 5,000 arriving together cost ~45 MB for a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_starts_parked_and_wakes_when_its_peer_speaks() {
    let server = Server::start(&["--ping-interval", "30s", "--pong-timeout", "5s"]);
    let mut clients = Vec::new();
    for _ in 0..N {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("?channel=p")).await.unwrap();
        clients.push(ws);
    }
    let parked = |s: &Server| s.metric("tether_connections_parked") as usize;
    assert!(wait_until(Duration::from_secs(10), || parked(&server) == N), "all {N} park");
    let wakeups = |s: &Server| s.metric("tether_connection_wakeups_total") as usize;
    assert_eq!(wakeups(&server), 0, "none was active before it parked");

    // A browser's heartbeat wakes its connection, which answers and parks again.
    let ws = &mut clients[0];
    ws.send(Message::text("ping")).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
    assert_eq!(pong.unwrap().unwrap(), Message::text("pong"));
    assert_eq!(wakeups(&server), 1);
    assert!(wait_until(Duration::from_secs(10), || parked(&server) == N), "it parks again");
}

/// A peer that talks every few hundred milliseconds (a chat client, a browser's heartbeat)
/// parks right after each answer, rather than staying active for `park_after` (1 s here) and
/// so never parking at all: its connection costs a parked connection's memory, not ~5 KB.
#[tokio::test]
async fn a_peer_that_talks_slowly_is_parked_between_its_messages() {
    const MESSAGES: usize = 10;
    let bin = std::env::var("TETHER_TEST_BIN").unwrap_or_else(|_| common::BIN.to_owned());
    let server = Server::start_with(
        &bin,
        "127.0.0.1:0",
        &["--ping-interval", "10s", "--pong-timeout", "5s", "--max-inbound-rate", "0"],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("?channel=p")).await.unwrap();
    let parked = |s: &Server| s.metric("tether_connections_parked") as usize;
    assert!(wait_until(Duration::from_secs(10), || parked(&server) == 1), "it parks");
    let wakeups = |s: &Server| s.metric("tether_connection_wakeups_total") as usize;
    for _ in 0..MESSAGES {
        // Pacing, not synchronisation: the quiet before each message is the point.
        tokio::time::sleep(Duration::from_millis(250)).await;
        ws.send(Message::text("ping")).await.unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
        assert_eq!(pong.unwrap().unwrap(), Message::text("pong"));
    }
    // Each message found the connection parked: one wake-up each (before, one in all: the
    // first message woke it and the next ones kept it active).
    assert_eq!(wakeups(&server), MESSAGES, "a wake-up per message");
    assert!(wait_until(Duration::from_secs(10), || parked(&server) == 1), "parked at the end");
}

/// A client frame as it goes on the wire: masked.
fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let header = FrameHeader { is_final: fin, opcode, mask: Some(mask), ..Default::default() };
    let mut out = Vec::new();
    header.format(payload.len() as u64, &mut out).unwrap();
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Read server frames until a text frame arrives; return it. Pings are skipped (this client
/// does not answer them; the pong timeout is long).
fn next_text(sock: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut cursor = std::io::Cursor::new(&buf[..]);
        if let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) {
            let start = cursor.position() as usize;
            if buf.len() >= start + len as usize {
                let payload = buf[start..start + len as usize].to_vec();
                buf.drain(..start + len as usize);
                match header.opcode {
                    OpCode::Data(Data::Text) => return String::from_utf8(payload).unwrap(),
                    OpCode::Control(Control::Ping) => continue,
                    other => panic!("unexpected frame {other:?}"),
                }
            }
        }
        assert!(Instant::now() < deadline, "no text frame within 5 s");
        let mut chunk = [0u8; 1024];
        let n = sock.read(&mut chunk).expect("read");
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_frame_or_message_cut_by_a_pause_is_never_parked_mid_way() {
    // park_after = 200 ms.
    let server = Server::start(&["--ping-interval", "400ms", "--pong-timeout", "10s"]);
    let mut sock = TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        sock,
        "GET /ws?channel=x HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = sock.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    buf.drain(..end);
    let parked = || server.metric("tether_connections_parked") as usize;
    // Stays unparked for a whole window of 3 × park_after (an observation, not a wait).
    let stays_active = || {
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            if parked() != 0 {
                return false;
            }
        }
        true
    };

    // At rest, it parks.
    assert!(wait_until(Duration::from_secs(5), || parked() == 1), "an idle raw connection parks");

    // Half a frame: the server must keep tungstenite's partial read, so it must not park.
    let ping = client_frame(OpCode::Data(Data::Text), true, b"ping");
    sock.write_all(&ping[..3]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || parked() == 0), "woken by the bytes");
    assert!(stays_active(), "parked with half a frame read");
    sock.write_all(&ping[3..]).unwrap();
    assert_eq!(next_text(&mut sock, &mut buf), "pong", "the frame completed after the pause");

    // A fragmented message: first fragment, pause, last fragment.
    assert!(wait_until(Duration::from_secs(5), || parked() == 1), "parks again at rest");
    sock.write_all(&client_frame(OpCode::Data(Data::Text), false, b"pi")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || parked() == 0));
    assert!(stays_active(), "parked in the middle of a fragmented message");
    sock.write_all(&client_frame(OpCode::Data(Data::Continue), true, b"ng")).unwrap();
    assert_eq!(next_text(&mut sock, &mut buf), "pong", "the message completed after the pause");
    assert_eq!(server.metric("tether_connections_open"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_sees_its_peer_leave_at_once() {
    // Heartbeats are 10 s apart, so only the parked socket's own readiness (reported by the
    // parking lot's epoll set) can explain an ending noticed within a couple of seconds.
    let server = Server::start(&["--ping-interval", "10s", "--pong-timeout", "10s"]);
    let parked = || server.metric("tether_connections_parked");
    let closed = |code: &str, by: &str| server.closed(code, by);

    // A clean close while parked: the close frame wakes it, the handshake completes.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("?channel=p")).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || parked() == 1.0), "it parks");
    let started = Instant::now();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    assert!(
        wait_until(Duration::from_secs(5), || closed("1005", "client") == 1.0
            || closed("1000", "client") == 1.0),
        "clean close counted"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "noticed in {:?}", started.elapsed());

    // The peer's socket simply goes away while parked (no close frame): end of stream.
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("?channel=p")).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || parked() == 1.0), "it parks");
    let started = Instant::now();
    drop(ws);
    assert!(
        wait_until(Duration::from_secs(5), || closed("1006", "network") == 1.0),
        "abrupt end counted; log:\n{}",
        server.log()
    );
    assert!(started.elapsed() < Duration::from_secs(2), "noticed in {:?}", started.elapsed());
    assert_eq!(server.metric("tether_connections_open"), 0.0);
    assert_eq!(parked(), 0.0);
}

/// A subscriber that only receives publications is idle: it parks, and publishers write to its
/// parked socket as they would to an active one. It stays parked while they do (before: it
/// stayed active, a whole WebSocket state and its buffers per receiving subscriber).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_only_receives_stays_parked_and_gets_every_publication_directly() {
    // park_after = 1 s; no heartbeat is due again while it receives (every 30 s).
    let server = Server::start(&["--ping-interval", "30s", "--pong-timeout", "5s"]);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.ws_url("?channel=busy")).await.unwrap();
    // Reads on (answering pings); reports each text as it comes.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                let _ = tx.send(t.to_string());
            }
        }
    });
    let parked = |s: &Server| s.metric("tether_connections_parked") as usize;
    assert!(wait_until(Duration::from_secs(10), || parked(&server) == 1), "it parks while idle");
    let server = std::sync::Arc::new(server);
    let publisher = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let mut woken = 0;
            for i in 0..60u32 {
                let due = start + Duration::from_millis(50) * i;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                server.publish("busy", &i.to_string());
                woken += usize::from(parked(&server) != 1);
            }
            woken
        })
    };
    for i in 0..60 {
        let text = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap();
        let text = text.expect("the subscriber is still connected");
        assert_eq!(text, i.to_string(), "publication {i}, in order"); // raw: the data alone
    }
    let woken = publisher.await.unwrap();
    assert_eq!(woken, 0, "seen active after {woken} of 60 publications");
    assert_eq!(parked(&server), 1, "still parked after the last one");
    let direct = server.metric("tether_direct_deliveries_total");
    assert_eq!(direct, 60.0, "every publication is written by its publisher");
}
