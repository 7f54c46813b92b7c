//! Several nodes on one real Redis: fan-out across nodes, recovery on another node than the one
//! a client left, and a Redis outage survived with honest answers (not-ready, 503, a new epoch).

mod common;
use common::*;
use std::time::Duration;
use tether_client::Event;

const T: Duration = Duration::from_secs(10);

fn node(redis: &Redis) -> Server {
    Server::start(&["--broker", &redis.url(), "--history", "chat:*=1000/5m"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_fan_out_and_a_client_recovers_on_the_other_node() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (status, ready) = http_request("GET", &a.http("/readyz"), None);
    assert_eq!((status, ready["broker"].as_str()), (200, Some("redis")), "{ready}");

    // A subscriber on node B receives what is published through node A's HTTP API.
    let (on_b, mut b_events) = tether_client::connect(fast_client(b.ws_url("")));
    on_b.subscribe("chat:room").await.unwrap();
    next_event(&mut b_events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    let receipt = a.publish("chat:room", r#"{"via":"A"}"#);
    assert_eq!(receipt["offset"], 1, "{receipt}");
    assert_eq!(publications(&mut b_events, 1).await, [(1, r#"{"via":"A"}"#.to_owned())]);

    // A client on node A (through a relay standing in for a load balancer) loses its
    // connection, publications continue, and it comes back on node B: it recovers exactly the
    // missed ones from Redis, then continues live.
    let relay = Relay::start(a.addr).await;
    let (roamer, mut events) =
        tether_client::connect(fast_client(format!("ws://{}/ws", relay.addr)));
    roamer.subscribe("chat:room").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    a.publish("chat:room", "2");
    assert_eq!(publications(&mut events, 1).await, [(2, "2".to_owned())]);
    relay.cut();
    next_event(&mut events, T, "close", |e| matches!(e, Event::Closed(_))).await;
    for n in 3..=12 {
        let via = if n % 2 == 0 { &a } else { &b };
        via.publish("chat:room", &n.to_string());
    }
    relay.set_target(b.addr);
    relay.unblock();
    let Event::Subscribed { recovered, .. } = next_event(&mut events, T, "resubscribe", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(recovered, Some(true));
    b.publish("chat:room", "13");
    let got = publications(&mut events, 11).await;
    let want: Vec<(u64, String)> = (3..=13).map(|n| (n, n.to_string())).collect();
    assert_eq!(got, want, "exactly the missed ones, in order, then live — on another node");
    assert_eq!(b.metric("tether_recoveries_total{outcome=\"recovered\"}"), 1.0);
    // And B's first subscriber saw all of them too, in order.
    let b_got: Vec<u64> = publications(&mut b_events, 12).await.iter().map(|p| p.0).collect();
    assert_eq!(b_got, (2..=13).collect::<Vec<_>>());
    // The pub/sub link's keepalive pings are answered, and never mistaken for a lost link.
    assert!(wait_until(T, || b.metric("tether_broker_link_pings_total") >= 2.0));
    assert_eq!(b.metric("tether_broker_reconnects_total"), 0.0);
    assert_eq!(b.metric("tether_broker_up"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_on_another_node_with_its_idempotency_key_goes_out_once() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (client, mut events) = tether_client::connect(fast_client(b.ws_url("")));
    client.subscribe("chat:once").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;

    // The publisher did not hear back from node A and retries the same request on node B.
    let body = r#"{"channel":"chat:once","data":"order 17","idempotency_key":"order-17"}"#;
    let (status, first) = a.post_publish(body);
    assert_eq!((status, first["offset"].as_u64(), first.get("duplicate")), (200, Some(1), None));
    let (status, retry) = b.post_publish(body);
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!((&retry["offset"], &retry["epoch"]), (&first["offset"], &first["epoch"]));
    // Another key publishes; the subscriber sees each publication once.
    let (_, next) =
        b.post_publish(r#"{"channel":"chat:once","data":"order 18","idempotency_key":"order-18"}"#);
    assert_eq!(next["offset"], 2, "{next}");
    let got = publications(&mut events, 2).await;
    assert_eq!(got, [(1, r#""order 17""#.to_owned()), (2, r#""order 18""#.to_owned())]);
    assert_eq!(b.metric("tether_publications_deduplicated_total"), 1.0);
    // Without a key, the same body is simply published again.
    let plain = r#"{"channel":"chat:once","data":"order 17"}"#;
    assert_eq!(a.post_publish(plain).1["offset"], 3);
    assert_eq!(a.post_publish(plain).1["offset"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_reported_survived_and_never_a_silent_gap() {
    let Some(mut redis) = Redis::start() else { return };
    let mut a = node(&redis);
    let (client, mut events) = tether_client::connect(fast_client(a.ws_url("")));
    client.subscribe("chat:room").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    a.publish("chat:room", "1");
    publications(&mut events, 1).await;

    redis.kill9();
    // Not ready, and publishes are refused with a clear 503 — not lost silently.
    assert!(wait_until(T, || http_request("GET", &a.http("/readyz"), None).0 == 503));
    let (status, ready) = http_request("GET", &a.http("/readyz"), None);
    assert_eq!(status, 503);
    assert!(ready["reason"].as_str().unwrap().contains("Redis"), "{ready}");
    let (status, body) = a.post_publish(r#"{"channel":"chat:room","data":2}"#);
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unavailable"), "{body}");
    assert_eq!(http_request("GET", &a.http("/healthz"), None).0, 200, "alive while not ready");

    // Redis comes back empty: the node relinks by itself, and the client — asked to resubscribe —
    // learns that its history is gone (a new epoch) instead of being handed a silent gap.
    redis.restart();
    assert!(wait_until(Duration::from_secs(15), || http_request("GET", &a.http("/readyz"), None)
        .0
        == 200));
    let Event::Subscribed { recovered: resubscribed, .. } =
        next_event(&mut events, Duration::from_secs(15), "resubscribe", |e| {
            matches!(e, Event::Subscribed { resubscribe: true, .. })
        })
        .await
    else {
        unreachable!()
    };
    assert_eq!(resubscribed, Some(false), "the epoch changed: recovered must be false");
    let receipt = a.publish("chat:room", "3");
    assert_eq!(receipt["offset"], 1, "a new epoch starts at 1: {receipt}");
    assert_eq!(publications(&mut events, 1).await, [(1, "3".to_owned())]);
    assert!(a.metric("tether_broker_reconnects_total") >= 1.0);
    assert!(a.child.try_wait().unwrap().is_none(), "the node is still running");
    assert!(!a.log().contains("panicked"), "{}", a.log());
    a.kill9();
}

/// A node subscribes in Redis only to the channels it has subscribers for: publications to
/// channels it has none for never reach it, and a channel left by its last subscriber is
/// unsubscribed (after a linger of 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_from_redis_only_the_channels_it_has_subscribers_for() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (on_a, mut a_events) = tether_client::connect(fast_client(a.ws_url("")));
    let (on_b, mut b_events) = tether_client::connect(fast_client(b.ws_url("")));
    on_a.subscribe("room:a").await.unwrap();
    on_b.subscribe("room:b").await.unwrap();
    for events in [&mut a_events, &mut b_events] {
        next_event(events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    }
    let numsub = |channel: &str| {
        let reply = redis.command(&["PUBSUB", "NUMSUB", &format!("tether:p:{channel}")]);
        reply.trim_end().rsplit("\r\n").next().unwrap().trim_start_matches(':').to_owned()
    };
    assert_eq!((numsub("room:a"), numsub("room:b")), ("1".to_owned(), "1".to_owned()));
    for i in 0..50 {
        b.publish("room:b", &i.to_string());
    }
    a.publish("room:a", "0");
    assert_eq!(publications(&mut b_events, 50).await.len(), 50);
    assert_eq!(publications(&mut a_events, 1).await.len(), 1);
    // A got room:a's one publication and none of room:b's fifty.
    assert_eq!(a.metric("tether_broker_publications_received_total"), 1.0);
    assert_eq!(b.metric("tether_broker_publications_received_total"), 50.0);

    // The last subscriber leaves: unsubscribed in Redis after the linger.
    on_a.unsubscribe("room:a").await.unwrap();
    assert!(wait_until(T, || numsub("room:a") == "0"), "{}", a.log());
    assert_eq!(a.metric("tether_broker_channels_subscribed"), 0.0);
    on_a.close().await;
    on_b.close().await;
}

/// A stream whose state is gone from Redis (expired after `STATE_TTL` idle, or deleted) starts
/// a new epoch at its next publication. A subscriber on the live feed at offset 2 of the old
/// epoch cannot know whether it missed anything of it: it is told (1012, then
/// `recovered: false`), never moved to the new epoch silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_meeting_a_new_epoch_is_told_not_moved_on_silently() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (client, mut events) = tether_client::connect(fast_client(a.ws_url("")));
    client.subscribe("chat:quiet").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    let before = b.publish("chat:quiet", "1")["epoch"].as_str().unwrap().to_owned();
    b.publish("chat:quiet", "2");
    assert_eq!(publications(&mut events, 2).await.len(), 2);
    let deleted = redis_command(redis.port, &["DEL", "tether:s:{chat:quiet}"]);
    assert!(deleted.starts_with(":1"), "{deleted}");
    let after = b.publish("chat:quiet", "3");
    assert_ne!(after["epoch"].as_str(), Some(before.as_str()), "{after}");
    assert_eq!(after["offset"], 1, "{after}");

    let next = |e: &Event| matches!(e, Event::Publication { .. } | Event::Closed(_));
    let got = next_event(&mut events, T, "told of the new epoch", next).await;
    let Event::Closed(info) = &got else { panic!("moved on silently: {got:?}") };
    assert_eq!(info.code, 1012, "{info:?}");
    let back = next_event(&mut events, T, "resubscribed", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await;
    assert!(matches!(back, Event::Subscribed { recovered: Some(false), .. }), "{back:?}");
    // And on in the new epoch.
    b.publish("chat:quiet", "4");
    let got = next_event(&mut events, T, "the new epoch's next", next).await;
    assert!(matches!(got, Event::Publication { offset: 2, .. }), "{got:?}");
    client.close().await;
}
