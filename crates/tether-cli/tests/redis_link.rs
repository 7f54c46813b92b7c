//! The Redis pub/sub link under trouble (issue 22, point 4): a stall of Redis a little longer
//! than one ping's timeout (a fork for BGSAVE, a page swapped in) is not a lost link, and
//! closes no client.

mod common;
use common::*;
use std::time::Duration;
use tether_client::Event;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_longer_than_one_ping_timeout_closes_nobody() {
    let Some((redis, server, client, mut events)) = subscribed_node().await else { return };

    // Redis stalls for 3 s: the link's ping waits longer than its 2 s response timeout, then
    // is answered. The stall's length is the scenario, not a synchronisation.
    redis.signal(nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.signal(nix::sys::signal::Signal::SIGCONT);
    let pings = server.metric("tether_broker_link_pings_total");
    assert!(wait_until(T, || server.metric("tether_broker_link_pings_total") > pings));

    server.publish("feed", r#"{"n": 1}"#);
    let got = next_event(&mut events, T, "the publication or a close", |e| {
        matches!(e, Event::Publication { .. } | Event::Closed(_))
    })
    .await;
    assert!(matches!(got, Event::Publication { .. }), "{got:?}");
    assert_eq!(server.metric("tether_broker_reconnects_total"), 0.0, "{}", server.log());
    assert_eq!(server.closed("1012", "server"), 0.0);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_silent_past_the_link_timeout_is_a_lost_link_and_clients_recover() {
    let Some((redis, server, client, mut events)) = subscribed_node().await else { return };
    // Silent for longer than the link's 6 s: lost, and the node's clients told to recover.
    redis.signal(nix::sys::signal::Signal::SIGSTOP);
    let lost = wait_until(Duration::from_secs(15), || server.metric("tether_broker_up") == 0.0);
    redis.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(lost, "the link was not given up: {}", server.log());
    let closed = next_event(&mut events, Duration::from_secs(20), "the resync", |e| {
        matches!(e, Event::Closed(_))
    })
    .await;
    let Event::Closed(info) = closed else { unreachable!() };
    assert_eq!(info.code, 1012, "{info:?}");
    let back = next_event(&mut events, T, "the resubscribe", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await;
    assert!(matches!(back, Event::Subscribed { recovered: Some(true), .. }), "{back:?}");
    client.close().await;
}

/// Redis, a node on it whose link has answered a ping, and a client subscribed to `feed`
/// (which has history); `None` when redis-server is missing (an error under CI).
async fn subscribed_node() -> Option<(Redis, Server, tether_client::Client, tether_client::Events)>
{
    let redis = Redis::start()?;
    let server = Server::start(&["--broker", &redis.url(), "--history", "feed=100/5m"]);
    let (client, mut events) = tether_client::connect(fast_client(server.ws_url("")));
    client.subscribe("feed").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    assert!(wait_until(T, || server.metric("tether_broker_link_pings_total") >= 1.0));
    Some((redis, server, client, events))
}
