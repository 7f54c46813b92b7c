//! Recovery across reconnects on one node (memory broker): a client that misses publications
//! gets exactly those, in order, then live ones; with too little history it is told so. The
//! same holds for the subscriptions the server makes from the token (the user's channel).

mod common;
use common::*;
use std::time::Duration;
use tether_client::Event;

const T: Duration = Duration::from_secs(10);

async fn resubscribed(events: &mut tether_client::Events) -> Option<bool> {
    match next_event(events, T, "resubscribe", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await
    {
        Event::Subscribed { recovered, .. } => recovered,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_exactly_what_it_missed_then_continues_live() {
    let server = Server::start(&["--history", "chat:*=100/1m"]);
    let relay = Relay::start(server.addr).await;
    let (client, mut events) =
        tether_client::connect(fast_client(format!("ws://{}/ws", relay.addr)));
    client.subscribe("chat:room").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    for n in 1..=3 {
        server.publish("chat:room", &n.to_string());
    }
    assert_eq!(
        publications(&mut events, 3).await.iter().map(|p| p.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    relay.cut();
    next_event(&mut events, T, "close", |e| matches!(e, Event::Closed(_))).await;
    const N: u64 = 25;
    for n in 4..4 + N {
        server.publish("chat:room", &n.to_string());
    }
    relay.unblock();
    assert_eq!(resubscribed(&mut events).await, Some(true));
    server.publish("chat:room", "\"live\"");
    let got = publications(&mut events, N as usize + 1).await;
    let want: Vec<(u64, String)> =
        (4..4 + N).map(|n| (n, n.to_string())).chain([(4 + N, "\"live\"".to_owned())]).collect();
    assert_eq!(got, want, "exactly the missed ones, in order, then live");
    assert_eq!(server.metric("tether_recoveries_total{outcome=\"recovered\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_short_a_history_is_reported_as_not_recovered() {
    let server = Server::start(&["--history", "chat:*=5/1m"]);
    let relay = Relay::start(server.addr).await;
    let (client, mut events) =
        tether_client::connect(fast_client(format!("ws://{}/ws", relay.addr)));
    client.subscribe("chat:room").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    server.publish("chat:room", "1");
    publications(&mut events, 1).await;
    relay.cut();
    next_event(&mut events, T, "close", |e| matches!(e, Event::Closed(_))).await;
    for n in 2..=20 {
        server.publish("chat:room", &n.to_string());
    }
    relay.unblock();
    assert_eq!(
        resubscribed(&mut events).await,
        Some(false),
        "history holds 16..20 only; 2..15 are gone"
    );
    // Nothing is replayed; live publications continue from the top.
    server.publish("chat:room", "21");
    assert_eq!(publications(&mut events, 1).await, [(21, "21".to_owned())]);
    assert_eq!(server.metric("tether_recoveries_total{outcome=\"not_recovered\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publications_and_reconnects_never_gap_or_duplicate() {
    // Publications flow continuously from a separate thread while the relay cuts every client
    // again and again; each client's sequence must be exactly 1..=TOTAL.
    const CLIENTS: usize = 4;
    const TOTAL: u64 = 600;
    const CUTS: usize = 8;
    let server = Server::start(&["--history", "race:*=10000/5m"]);
    let relay = Relay::start(server.addr).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, mut events) =
            tether_client::connect(fast_client(format!("ws://{}/ws", relay.addr)));
        client.subscribe("race:x").await.unwrap();
        next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
        clients.push((client, events));
    }
    let url = server.http("/api/publish");
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let published = progress.clone();
    let publisher = std::thread::spawn(move || {
        for n in 1..=TOTAL {
            let (status, body) =
                http_request("POST", &url, Some(&format!(r#"{{"channel":"race:x","data":{n}}}"#)));
            assert_eq!(status, 200, "{body}");
            published.store(n, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for cut in 1..=CUTS as u64 {
        // Each time the publisher has made another share of its way, drop every client; they
        // come back through the relay and recover while publications keep flowing.
        let threshold = cut * TOTAL / (CUTS as u64 + 1);
        assert!(wait_until(T, || progress.load(std::sync::atomic::Ordering::SeqCst) >= threshold));
        relay.cut();
        relay.unblock();
    }
    publisher.join().unwrap();
    for (_, events) in &mut clients {
        let got = publications(events, TOTAL as usize).await;
        let offsets: Vec<u64> = got.iter().map(|p| p.0).collect();
        let want: Vec<u64> = (1..=TOTAL).collect();
        assert_eq!(offsets, want, "a gap or a duplicate");
        assert!(got.iter().all(|(o, d)| d == &o.to_string()));
    }
    let recovered = server.metric("tether_recoveries_total{outcome=\"recovered\"}");
    assert!(recovered >= CLIENTS as f64, "clients recovered after cuts ({recovered})");
    assert_eq!(server.metric("tether_recoveries_total{outcome=\"not_recovered\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_own_channel_is_made_by_the_server_and_recovered_through_connect() {
    const SECRET: &str = "recovery-secret-0123456789";
    let server = Server::start(&[
        "--jwt-secret",
        SECRET,
        "--user-channel",
        "user:{sub}",
        "--history",
        "user:*=100/1m",
    ]);
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({"sub": "eve", "exp": exp + 600});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let relay = Relay::start(server.addr).await;
    let config = fast_client(format!("ws://{}/ws", relay.addr)).token(token);
    // No subscribe: the server makes the subscription when the token is checked.
    let (_client, mut events) = tether_client::connect(config);
    let made = next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. }));
    match made.await {
        Event::Subscribed { channel, resubscribe: false, .. } => assert_eq!(channel, "user:eve"),
        other => panic!("{other:?}"),
    }
    server.publish("user:eve", "1");
    assert_eq!(publications(&mut events, 1).await, [(1, "1".to_owned())]);

    relay.cut();
    next_event(&mut events, T, "close", |e| matches!(e, Event::Closed(_))).await;
    for n in 2..=6 {
        server.publish("user:eve", &n.to_string());
    }
    relay.unblock();
    assert_eq!(resubscribed(&mut events).await, Some(true));
    server.publish("user:eve", "7");
    let got: Vec<u64> = publications(&mut events, 6).await.iter().map(|p| p.0).collect();
    assert_eq!(got, [2, 3, 4, 5, 6, 7], "exactly the missed ones, in order, then live");
}
