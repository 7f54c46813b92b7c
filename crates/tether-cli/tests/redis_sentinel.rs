//! Redis with Sentinel (issue 22, point 3): a master, a replica and three Sentinels. When the
//! master is killed (kill -9) and the replica promoted, the nodes follow the new master by
//! themselves, and the stated guarantee holds: a failover starts every channel's new epoch, so
//! a client is told `recovered: false` — never a silent gap (docs/protocol.md).

mod common;
use common::sentinel::Sentinels;
use common::*;
use std::time::Duration;
use tether_client::Event;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_sentinel_failover_and_clients_are_told_what_they_cannot_recover() {
    let Some(mut redis) = Sentinels::start() else { return };
    let url = redis.url();
    let args = ["--broker", url.as_str(), "--history", "feed=100/5m"];
    let (a, b) = (Server::start(&args), Server::start(&args));
    let (client, mut events) = tether_client::connect(fast_client(a.ws_url("")));
    client.subscribe("feed").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    for i in 1..=2 {
        b.publish("feed", &i.to_string());
    }
    assert_eq!(publications(&mut events, 2).await.len(), 2);
    let before = b.publish("feed", "3")["epoch"].as_str().unwrap().to_owned();
    assert_eq!(publications(&mut events, 1).await, [(3, "3".to_owned())]);

    let replica = redis.replica.port;
    redis.master.kill9();
    let promoted = || redis.master_port() == replica;
    // Sentinels whose vote split try again after twice the failover timeout (8 s here): a
    // run once needed more than 30 s.
    assert!(wait_until(Duration::from_secs(60), promoted), "no failover");
    // Both nodes follow: publishing through either works again, on the new master.
    for node in [&a, &b] {
        let publishes = || node.post_publish(r#"{"channel":"other","data":0}"#).0 == 200;
        assert!(wait_until(Duration::from_secs(30), publishes), "{}", node.log());
    }

    // The client was on a stream of the old master: it is told, and its recovery says so.
    let told = next_event(&mut events, T, "told of the failover", |e| {
        matches!(e, Event::Closed(_) | Event::Publication { .. })
    })
    .await;
    let Event::Closed(info) = &told else { panic!("a silent continuation: {told:?}") };
    assert_eq!(info.code, 1012, "{info:?}");
    let back = next_event(&mut events, T, "resubscribed", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await;
    assert!(matches!(back, Event::Subscribed { recovered: Some(false), .. }), "{back:?}");
    let after = b.publish("feed", "4");
    assert_ne!(after["epoch"].as_str(), Some(before.as_str()), "a new epoch: {after}");
    let got = next_event(&mut events, T, "the next publication", |e| {
        matches!(e, Event::Publication { .. } | Event::Closed(_))
    })
    .await;
    assert!(matches!(&got, Event::Publication { offset: 1, .. }), "{got:?}");
    assert!(a.metric("tether_broker_reconnects_total") >= 1.0);
    client.close().await;
}
