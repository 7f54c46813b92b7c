//! Redis Cluster (issue 22, point 2): three masters with a replica each, two Tether nodes.
//! Each channel's keys live in one slot; publications go over sharded pub/sub to the shard
//! that owns it, and a node subscribes (`SSUBSCRIBE`) only where it has subscribers.

mod common;
use common::cluster::Cluster;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_client::Event;

const T: Duration = Duration::from_secs(10);

fn nodes(cluster: &Cluster) -> (Server, Server) {
    let url = cluster.url();
    let args = ["--broker", url.as_str(), "--history", "c*=100/5m"];
    (Server::start(&args), Server::start(&args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_history_recovery_and_idempotency_across_nodes_on_a_cluster() {
    let Some(cluster) = Cluster::start() else { return };
    let (a, b) = nodes(&cluster);
    // Ten channels: their slots are spread over the three shards.
    let channels: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let owners: std::collections::BTreeSet<usize> =
        channels.iter().map(|c| cluster.owner(&format!("{{{c}}}"))).collect();
    assert_eq!(owners.len(), 3, "the channels should span every shard");
    let (client, mut events) = tether_client::connect(fast_client(a.ws_url("")));
    for channel in &channels {
        client.subscribe(channel).await.unwrap();
        next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    }
    for channel in &channels {
        for i in 1..=2 {
            let receipt = b.publish(channel, &i.to_string());
            assert_eq!(receipt["offset"], i, "{receipt}");
        }
    }
    let got = publications(&mut events, 20).await;
    assert_eq!(got.len(), 20);
    // Each channel's subscription is on its own shard: one subscriber there (node A).
    let owner = &cluster.nodes[cluster.owner("{c0}")];
    let count = owner.command(&["PUBSUB", "SHARDNUMSUB", "tether:p:{c0}"]);
    assert!(count.trim_end().ends_with(":1"), "{count}");
    assert_eq!(a.metric("tether_broker_publications_received_total"), 20.0);
    assert_eq!(b.metric("tether_broker_publications_received_total"), 0.0, "B has no subscriber");

    // Idempotent publish through either node: the channel gets it once.
    let body = json!({"channel": "c0", "data": 3, "idempotency_key": "k1"}).to_string();
    let (first, second) = (a.post_publish(&body), b.post_publish(&body));
    assert_eq!((first.0, second.0), (200, 200));
    assert_eq!(second.1["duplicate"], true, "{}", second.1);
    assert_eq!(first.1["offset"], second.1["offset"]);

    // A client that was at c0's offset 1 recovers on node B from the cluster's history.
    let epoch = first.1["epoch"].as_str().unwrap().to_owned();
    let mut late = common::json_ws::json_client(&b, "");
    let recover = json!({"epoch": epoch, "offset": 1});
    let cmd = json!({"id": 1, "cmd": "subscribe", "channel": "c0", "recover": recover});
    let reply = common::json_ws::call(&mut late, cmd);
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let replay: Vec<serde_json::Value> =
        (0..2).map(|_| common::json_ws::next_json(&mut late)).collect();
    assert_eq!((replay[0]["offset"].as_u64(), replay[1]["offset"].as_u64()), (Some(2), Some(3)));
    client.close().await;
}

/// A master killed with kill -9: its replica takes over, the cluster client subscribes there
/// again by itself, and the node repairs: the client on that shard's channel is told
/// (`recovered: false`: the new master is another Redis process), never handed a gap; the
/// channels of the other shards are not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_its_channels_subscribers_are_told() {
    let Some(mut cluster) = Cluster::start() else { return };
    let (a, b) = nodes(&cluster);
    let doomed = cluster.owner("{c0}");
    let spared = (1..10)
        .map(|i| format!("c{i}"))
        .find(|c| cluster.owner(&format!("{{{c}}}")) != doomed)
        .unwrap();
    let mut clients = Vec::new();
    for channel in ["c0", spared.as_str()] {
        let (client, mut events) = tether_client::connect(fast_client(a.ws_url("")));
        client.subscribe(channel).await.unwrap();
        next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
        b.publish(channel, "1");
        assert_eq!(publications(&mut events, 1).await.len(), 1);
        clients.push((client, events));
    }
    cluster.nodes[doomed].kill9();
    let publishes = || b.post_publish(r#"{"channel":"c0","data":2}"#).0 == 200;
    assert!(wait_until(Duration::from_secs(30), publishes), "c0 never writable again: {}", b.log());

    let [(_, told), (_, untouched)] = &mut clients[..] else { unreachable!() };
    let next = |e: &Event| matches!(e, Event::Publication { .. } | Event::Closed(_));
    let got = next_event(told, Duration::from_secs(20), "c0's subscriber told", next).await;
    let Event::Closed(info) = &got else { panic!("a silent continuation: {got:?}") };
    assert_eq!(info.code, 1012, "{info:?}");
    let back = next_event(told, T, "resubscribed", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await;
    assert!(matches!(back, Event::Subscribed { recovered: Some(false), .. }), "{back:?}");
    b.publish(&spared, "2");
    let got = next_event(untouched, T, "the other shard's publication", next).await;
    assert!(matches!(got, Event::Publication { offset: 2, .. }), "{got:?}");
    for (client, _) in clients {
        client.close().await;
    }
}

/// A channel's slot migrated to another master while a publisher goes on (the steps
/// `redis-cli --cluster reshard` takes). MIGRATE moves the channel's state whole, and its old
/// master is still a master outside the new one's replication line, so the stream goes on in
/// its epoch there (`redis_lineage`). The cluster takes the node's subscription away; the node
/// subscribes again where the slot is now and repairs from history what was published on the
/// new master meanwhile: the subscriber gets every acknowledged publication once, in order, in
/// one epoch (no loss within history), and a late client recovers across the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_during_publishing_loses_nothing_within_history() {
    let Some(cluster) = Cluster::start() else { return };
    let (a, b) = nodes(&cluster);
    let src = cluster.owner("{c0}");
    let dst = (1..10).map(|i| cluster.owner(&format!("{{c{i}}}"))).find(|o| *o != src).unwrap();
    let (client, mut events) = tether_client::connect(fast_client(a.ws_url("")));
    client.subscribe("c0").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    let first = b.publish("c0", "1");
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    assert_eq!(publications(&mut events, 1).await.len(), 1);

    // A publisher through node B until told to stop; what Redis acknowledged is what counts.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(1));
    let publisher = {
        let (url, stop, count) = (b.http("/api/publish"), stop.clone(), count.clone());
        std::thread::spawn(move || {
            let (mut acked, mut refused) = (vec![1u64], 0u32);
            for i in 2..5_000u64 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let body = json!({"channel": "c0", "data": i}).to_string();
                match http_request("POST", &url, Some(&body)) {
                    (200, receipt) => {
                        acked.push(receipt["offset"].as_u64().unwrap());
                        count.fetch_add(1, Ordering::Release);
                    }
                    _ => refused += 1,
                }
            }
            (acked, refused)
        })
    };
    let a = &a;
    let published = |n: f64| move || a.metric("tether_broker_publications_received_total") >= n;
    assert!(wait_until(T, published(20.0)), "the publisher never got going");

    let port = |i: usize| cluster.nodes[i].port;
    let id = |i: usize| {
        let reply = redis_command(port(i), &["CLUSTER", "MYID"]);
        reply.lines().nth(1).unwrap().to_owned()
    };
    let (src_id, dst_id) = (id(src), id(dst));
    let slot = redis_command(port(src), &["CLUSTER", "KEYSLOT", "{c0}"]);
    let slot = slot.trim().trim_start_matches(':').to_owned();
    let ok = |reply: String| assert!(reply.starts_with("+OK"), "{reply}");
    ok(redis_command(port(dst), &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]));
    ok(redis_command(port(src), &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]));
    let keys = redis_command(port(src), &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.starts_with(['*', '$'])).collect();
    assert!(!keys.is_empty(), "the channel's keys are in its slot");
    let dst_port = port(dst).to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &dst_port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().copied());
    ok(redis_command(port(src), &migrate));
    // Publications now reach the new master (ASK) while node A still listens at the old one.
    let before = a.metric("tether_broker_publications_received_total");
    let migrated = count.load(Ordering::Acquire);
    let asked = || count.load(Ordering::Acquire) >= migrated + 10;
    assert!(wait_until(T, asked), "no publish went through after the MIGRATE: {}", b.log());
    for master in [src, dst] {
        ok(redis_command(port(master), &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]));
    }
    assert!(wait_until(T, || cluster.owner("{c0}") == dst), "the slot did not move");
    // Node A follows the slot: it repairs and receives from the new master.
    assert!(wait_until(Duration::from_secs(20), published(before + 20.0)), "{}", a.log());
    stop.store(true, Ordering::Release);
    let (acked, refused) = publisher.join().unwrap();
    let last = *acked.last().unwrap();
    assert_eq!(acked, (1..=last).collect::<Vec<_>>(), "offsets go on, no new epoch");

    // Every acknowledged publication, once, in order, in the one epoch, on the one connection:
    // what A missed while its subscription moved is replayed before what the new one brings.
    let mut seen = 1;
    while seen < last {
        let got = next_event(&mut events, Duration::from_secs(20), "the next publication", |e| {
            matches!(e, Event::Publication { .. } | Event::Closed(_))
        })
        .await;
        let Event::Publication { offset, epoch: e, .. } = got else { panic!("{got:?}") };
        assert_eq!((offset, e.as_str()), (seen + 1, epoch.as_str()), "after {seen}");
        seen = offset;
    }
    assert_eq!(a.metric(r#"tether_broker_repairs_total{outcome="told"}"#), 0.0, "{}", a.log());
    eprintln!(
        "{last} acknowledged ({refused} refused), repairs: {} replayed, {} current",
        a.metric(r#"tether_broker_repairs_total{outcome="replayed"}"#),
        a.metric(r#"tether_broker_repairs_total{outcome="current"}"#)
    );

    // A client that was at offset 1 before the move recovers on node B.
    let mut late = common::json_ws::json_client(&b, "");
    let recover = json!({"epoch": epoch, "offset": 1});
    let cmd = json!({"id": 1, "cmd": "subscribe", "channel": "c0", "recover": recover});
    let reply = common::json_ws::call(&mut late, cmd);
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    assert_eq!(reply["result"]["offset"], last, "{reply}");
    client.close().await;
}
