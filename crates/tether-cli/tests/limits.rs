//! Bounded resources: a consumer that stops reading is closed, not buffered forever; the
//! connection limit refuses with 503; an idle connection stays small.

mod common;
use common::*;
use futures_util::StreamExt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_closed_as_slow_and_others_are_served() {
    let server = Server::start(&[
        "--outbound-queue",
        "8",
        "--write-timeout",
        "300ms",
        "--max-message-size",
        "256KiB",
    ]);
    // The slow peer: handshake by hand, subscribe via the query, then never read again.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    write!(
        slow,
        "GET /ws?channel=feed HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    slow.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let (mut fast, _) = connect_async(server.ws_url("?channel=feed")).await.unwrap();

    let payload = format!("\"{}\"", "x".repeat(200 * 1024));
    let mut published = 0;
    while server.metric("tether_slow_consumers_total") < 1.0 {
        assert!(
            published < 400,
            "the slow consumer was never closed after {published} publications"
        );
        server.publish("feed", &payload);
        published += 1;
        // The fast subscriber reads each one.
        match tokio::time::timeout(T, fast.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => assert_eq!(t.len(), 200 * 1024),
            other => panic!("fast subscriber got {other:?}"),
        }
    }
    // The count comes first; the connection's ending is recorded once it is closed (a close
    // handshake with a peer that does not read takes up to close_timeout).
    assert!(wait_until(T, || server.closed("1013", "server") == 1.0), "{}", server.metrics());
    let m = server.metrics();
    assert_eq!(
        metric_sum(&m, "tether_connections_open"),
        1.0,
        "only the fast subscriber is left: {m}"
    );
    assert!(server.log().contains("slow consumer"), "{}", server.log());
    // And the fast one still gets the next publication.
    server.publish("feed", "\"after\"");
    match tokio::time::timeout(T, fast.next()).await.unwrap() {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "after"),
        other => panic!("fast subscriber got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_with_503() {
    let server = Server::start(&["--max-connections", "2"]);
    let (_a, _) = connect_async(server.ws_url("")).await.unwrap();
    let (_b, _) = connect_async(server.ws_url("")).await.unwrap();
    match connect_async(server.ws_url("")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
            let body = String::from_utf8_lossy(resp.body().as_ref().unwrap()).into_owned();
            assert!(body.contains("connection limit"), "{body}");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    assert_eq!(server.metric("tether_handshakes_refused_total{reason=\"max_connections\"}"), 1.0);
    drop(_a);
    // A slot frees up when a connection ends.
    assert!(wait_until(T, || server.metric("tether_connections_open") == 1.0));
    assert!(connect_async(server.ws_url("")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_handshake_budget_clients_hear_1013_with_a_hint_and_come_back_later() {
    use tether_client::{Event, Initiator};
    // One handshake per second for the whole server; the hint is 300 ms (1x to 2x of it).
    let server = Server::start(&["--max-handshake-rate", "1", "--storm-retry-hint", "300ms"]);
    let (_first, mut first_events) = tether_client::connect(fast_client(server.ws_url("")));
    next_event(&mut first_events, T, "first open", |e| matches!(e, Event::Open { .. })).await;

    // A JSON-mode client (the hint arrives in a `disconnect` message) and a raw one (the close
    // frame alone): both are upgraded, then closed at once with 1013, and told when to retry.
    for config in [fast_client(server.ws_url("")), fast_client(server.ws_url("")).raw()] {
        let raw = config.mode == tether_client::Mode::Raw;
        let (client, mut events) = tether_client::connect(config);
        let Event::Closed(info) =
            next_event(&mut events, T, "the 1013", |e| matches!(e, Event::Closed(_))).await
        else {
            unreachable!()
        };
        assert_eq!(info.code, 1013, "{info:?}");
        assert!(info.reason.contains("try again later"), "{info:?}");
        assert_eq!(info.initiator, Initiator::Server, "{info:?}");
        assert!(info.was_clean && info.will_reconnect, "{info:?}");
        if !raw {
            let wait = info.retry_in.unwrap();
            let hint = Duration::from_millis(300);
            assert!(wait >= hint && wait < hint * 2, "waits {wait:?}, hint {hint:?}");
        }
        // Later, with the budget refilled, it gets in and is served (each open before that is
        // followed by another 1013).
        if !raw {
            client.subscribe("after").await.unwrap();
        }
        loop {
            match next_event(&mut events, T, "open, 1013, or being served", |_| true).await {
                Event::Open { .. } if raw => client.send_text("ping").await.unwrap(),
                Event::Message(m) if raw && m == "pong" => break,
                Event::Subscribed { .. } if !raw => break,
                Event::Closed(info) => assert_eq!(info.code, 1013, "{info:?}"),
                _ => {}
            }
        }
    }
    let refused = server.metric("tether_handshakes_refused_total{reason=\"max_handshake_rate\"}");
    assert!(refused >= 2.0, "refusals counted: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_costs_little_server_memory() {
    // Pins what makes idle connections cheap: small WebSocket buffers (decision 0001) and
    // parking (decision 0007: an idle connection drops its WebSocket state and its socket leaves
    // tokio's reactor). The live heap per connection (jemalloc's own count, steady and exact) is
    // ~700 bytes in a release build and ~1,150 in this debug one; an active (unparked)
    // connection holds over 3 KB, with tungstenite's defaults ~140 KB. RSS, noisier in a debug
    // build with only 2,000 connections, gets a looser bound.
    const N: usize = 2000;
    let server = Server::start(&[]);
    let heap = || server.metric("tether_allocator_allocated_bytes");
    let rss = || server.metric("process_resident_memory_bytes");
    let (heap_before, rss_before) = (heap(), rss());
    assert!(heap_before > 0.0, "the tether binary reports its allocator's figures");
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let (mut ws, _) = connect_async(server.ws_url("?channel=idle")).await.unwrap();
        futures_util::SinkExt::send(&mut ws, Message::Text("ping".into())).await.unwrap();
        conns.push(ws);
    }
    for ws in &mut conns {
        match tokio::time::timeout(T, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "pong"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(server.metric("tether_connections_open"), N as f64);
    assert!(
        wait_until(T, || server.metric("tether_connections_parked") == N as f64),
        "idle connections park"
    );
    let heap_per_conn = (heap() - heap_before) / N as f64;
    // Freed pages go back to the OS within about a second (jemalloc's decay).
    let rss_per_conn = || (rss() - rss_before) / N as f64;
    let settled = wait_until(T, || rss_per_conn() < 4_000.0);
    eprintln!(
        "per parked idle connection: {heap_per_conn:.0} bytes of heap, {:.0} bytes of RSS",
        rss_per_conn()
    );
    assert!(heap_per_conn < 1_800.0, "{heap_per_conn} bytes of heap per idle connection");
    assert!(settled, "{} bytes of RSS per idle connection", rss_per_conn());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receiving_publications_costs_little_server_memory() {
    // Issue 19's headline: a subscriber that receives costs what an idle one does (decision
    // 0016: it stays parked and publishers write to its socket). Before, each stayed active
    // while it received: ~3 KB of heap in this debug build, ~9.5 KB of RSS in a release one.
    const N: usize = 1000;
    const MESSAGES: usize = 20;
    let server = Server::start(&["--ping-interval", "30s", "--pong-timeout", "5s"]);
    let heap = || server.metric("tether_allocator_allocated_bytes");
    let heap_before = heap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..N {
        let (mut ws, _) = connect_async(server.ws_url("?channel=feed")).await.unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut texts = 0;
            while let Some(Ok(msg)) = ws.next().await {
                texts += usize::from(msg.is_text());
                if texts == MESSAGES {
                    let _ = tx.send(());
                }
            }
        });
    }
    assert!(wait_until(T, || server.metric("tether_connections_parked") == N as f64));
    for i in 0..MESSAGES {
        server.publish("feed", &format!("{{\"tick\":{i}}}"));
    }
    for _ in 0..N {
        tokio::time::timeout(T, rx.recv()).await.expect("every subscriber gets all").unwrap();
    }
    // At once, while the last deliveries are fresh: nobody had to wake to receive them.
    let heap_per_conn = (heap() - heap_before) / N as f64;
    eprintln!("per subscriber after {MESSAGES} publications: {heap_per_conn:.0} bytes of heap");
    assert!(heap_per_conn < 1_800.0, "{heap_per_conn} bytes of heap per receiving subscriber");
    assert_eq!(server.metric("tether_connection_wakeups_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_publication_does_not_stay_resident_in_every_connection() {
    // tungstenite keeps its write buffer's capacity after a flush; unfragmented, one 200 KB
    // publication to N subscribers leaves N × 200 KB behind for good.
    const N: usize = 300;
    let server = Server::start(&["--max-message-size", "256KiB"]);
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let (ws, _) = connect_async(server.ws_url("?channel=big")).await.unwrap();
        conns.push(ws);
    }
    assert!(wait_until(T, || server.metric("tether_subscriptions") == N as f64));
    let before = server.metric("process_resident_memory_bytes");
    let payload = "x".repeat(200 * 1024);
    server.publish("big", &format!("\"{payload}\""));
    for ws in &mut conns {
        match tokio::time::timeout(T, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => assert_eq!(t.len(), payload.len()),
            other => panic!("{other:?}"),
        }
    }
    let grown = server.metric("process_resident_memory_bytes") - before;
    eprintln!("resident after one 200 KB publication to {N}: +{:.1} MB", grown / 1e6);
    assert!(
        grown < (N * 60 * 1024) as f64,
        "{grown} bytes stayed resident (unfragmented: ~{} MB)",
        N * 200 / 1000
    );
}

#[test]
fn thousands_of_publications_to_a_consumer_that_never_reads_stay_bounded() {
    let server = Server::start(&[]); // default limits: 1,024 queued messages, 10 s write timeout
    let rss_kib = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    // The stuck client: a 4 KiB receive buffer, subscribed by query, never reads.
    let opts = RawWs { recv_buf: Some(4096), ..RawWs::default() };
    let (status, _stuck) = raw_ws(server.addr, "?channel=feed", opts);
    assert_eq!(status, 101);
    let mut reader =
        tokio_tungstenite::tungstenite::connect(server.ws_url("?channel=feed")).unwrap().0;
    assert!(wait_until(T, || server.metric("tether_subscriptions") == 2.0));
    let before = rss_kib();

    let pad = "x".repeat(1000);
    let n = 3000; // beyond the 1,024-message queue plus what the small socket buffers hold
    for seq in 0..n {
        server.publish("feed", &format!("\"{seq} {pad}\""));
        // The healthy subscriber reads everything, in order.
        let msg = reader.read().unwrap();
        assert!(msg.to_text().unwrap().starts_with(&format!("{seq} ")), "message {seq}: {msg:?}");
    }
    assert!(
        wait_until(T, || server.closed("1013", "server") == 1.0),
        "the stuck client was not closed as a slow consumer: {}",
        server.metrics()
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 40 * 1024, "server RSS grew by {grown} KiB for one stuck client");
    assert_eq!(server.metric("tether_slow_consumers_total"), 1.0);
}

#[test]
fn the_outbound_queue_is_bounded_in_bytes_too_and_missed_publications_are_counted() {
    // A large message count, a small byte budget: bytes decide.
    let server = Server::start(&["--outbound-queue", "10000", "--outbound-queue-bytes", "256KiB"]);
    let opts = RawWs { recv_buf: Some(4096), ..RawWs::default() };
    let (status, _stuck) = raw_ws(server.addr, "?channel=feed", opts);
    assert_eq!(status, 101);
    assert!(wait_until(T, || server.metric("tether_subscriptions") == 1.0));
    let payload = format!("\"{}\"", "x".repeat(50 * 1024));
    let mut published = 0;
    while server.closed("1013", "server") < 1.0 {
        assert!(published < 400, "never closed after {published} publications of 50 KB");
        server.publish("feed", &payload);
        published += 1;
    }
    // 256 KiB is five 50 KB messages queued, plus what the socket buffers took.
    assert!(published < 200, "{published} publications before the 256 KiB limit closed it");
    let dropped = server.metric("tether_deliveries_dropped_total");
    assert!(dropped >= 1.0, "the publications the slow consumer missed are counted: {dropped}");
}
