//! Bounded recovery replays (issue 17): a replay counts against the connection's outbound budget
//! (`outbound_queue_bytes`) and is streamed, never rendered whole. One that cannot fit is
//! answered `recovered: false` with a reason, and the connection stays.

mod common;
use common::json_ws::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tether_client::Event;

const T: Duration = Duration::from_secs(10);

/// A figure from /proc/PID/status, in bytes (`VmRSS`, `VmHWM`).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Reset the process's peak resident set (VmHWM) to its current one (Linux ≥ 4.0).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// Publish `n` copies of `data` to `channel`; the epoch of the channel.
fn fill(server: &Server, channel: &str, data: &str, n: usize) -> String {
    let epoch = server.publish(channel, data)["epoch"].as_str().unwrap().to_owned();
    for _ in 1..n {
        server.publish(channel, data);
    }
    epoch
}

/// History on `big`, and an outbound budget of 64 KiB that a long replay does not fit.
const SMALL_BUDGET: &[&str] =
    &["--history", "big=500/10m", "--outbound-queue-bytes", "64KiB", "--max-message-size", "16KiB"];

#[test]
fn a_replay_over_the_outbound_budget_is_refused_with_a_reason_and_the_connection_stays() {
    let server = Server::start(&["--history", "big=2000/10m", "--outbound-queue-bytes", "1MiB"]);
    // 40 MB of history: a replay 40 times the connection's budget.
    let epoch = fill(&server, "big", &format!("\"{}\"", "x".repeat(40_000)), 1000);
    let pid = server.child.id();
    let rss = proc_status(pid, "VmRSS");
    reset_peak(pid);
    let mut ws = json_client(&server, "");
    for id in 0..5 {
        // Asked again and again on one connection, as anyone may, up to max_subscriptions.
        let recover = json!({"epoch": epoch, "offset": 0});
        let reply = call(
            &mut ws,
            json!({"id": id, "cmd": "subscribe", "channel": "big", "recover": recover}),
        );
        let grown = proc_status(pid, "VmHWM").saturating_sub(rss);
        assert!(grown < 16 << 20, "server peak RSS grew by {} MiB for {reply:.200}", grown >> 20);
        eprintln!("recovery {id}: server peak RSS {} KiB above its RSS before", grown >> 10);
        let result = &reply["result"];
        assert_eq!(result["recovered"], json!(false), "{reply:.300}");
        let reason = result["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("outbound_queue_bytes"), "the reason names the budget: {reply}");
        assert_eq!(result["offset"], json!(1000), "{reply}");
        let reply = call(&mut ws, json!({"id": 100 + id, "cmd": "unsubscribe", "channel": "big"}));
        assert!(reply["error"].is_null(), "{reply}");
    }
    // Still connected, and served: a live publication arrives.
    let reply = call(&mut ws, json!({"id": 200, "cmd": "subscribe", "channel": "big"}));
    assert!(reply["error"].is_null(), "{reply}");
    server.publish("big", r#""live""#);
    let live = next_json(&mut ws);
    assert_eq!(
        (live["data"].as_str(), &live["offset"]),
        (Some("live"), &json!(1001)),
        "{live:.200}"
    );
    assert_eq!(server.metric("tether_recoveries_total{outcome=\"over_budget\"}"), 5.0);
    assert_eq!(server.metric("tether_connections_closed_total"), 0.0);
}

#[test]
fn a_replay_within_the_budget_is_streamed_whole_and_in_order() {
    let server = Server::start(&["--history", "feed=1000/10m", "--outbound-queue-bytes", "1MiB"]);
    // 300 × 2 KB: 600 KB, many write chunks, inside the 1 MiB budget.
    let data = |n: usize| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "y".repeat(2000));
    let epoch = server.publish("feed", &data(1))["epoch"].as_str().unwrap().to_owned();
    for n in 2..=300 {
        server.publish("feed", &data(n));
    }
    let mut ws = json_client(&server, "");
    let recover = json!({"epoch": epoch, "offset": 0});
    let reply =
        call(&mut ws, json!({"id": 1, "cmd": "subscribe", "channel": "feed", "recover": recover}));
    assert_eq!(reply["result"]["recovered"], json!(true), "{reply}");
    assert!(reply["result"]["reason"].is_null(), "{reply}");
    for n in 1..=300u64 {
        let p: Value = next_json(&mut ws);
        assert_eq!((&p["offset"], &p["data"]["n"]), (&json!(n), &json!(n)), "{p:.100}");
    }
    server.publish("feed", &data(301));
    assert_eq!(next_json(&mut ws)["offset"], json!(301));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_reports_why_a_resubscribe_did_not_recover() {
    let server = tokio::task::spawn_blocking(|| Server::start(SMALL_BUDGET)).await.unwrap();
    let relay = Relay::start(server.addr).await;
    let (client, mut events) =
        tether_client::connect(fast_client(format!("ws://{}/ws", relay.addr)));
    client.subscribe("big").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    let publisher = server.http("/api/publish");
    let publish = move |body: String| {
        let url = publisher.clone();
        async move {
            let (status, reply) =
                tokio::task::spawn_blocking(move || http_request("POST", &url, Some(&body)))
                    .await
                    .unwrap();
            assert_eq!(status, 200, "{reply}");
        }
    };
    publish(r#"{"channel":"big","data":0}"#.into()).await;
    publications(&mut events, 1).await;
    relay.cut();
    next_event(&mut events, T, "close", |e| matches!(e, Event::Closed(_))).await;
    // 200 KB missed: more than the 64 KiB budget.
    let pad = "z".repeat(10_000);
    for _ in 0..20 {
        publish(format!(r#"{{"channel":"big","data":"{pad}"}}"#)).await;
    }
    relay.unblock();
    let resubscribed = next_event(&mut events, T, "resubscribe", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await;
    let Event::Subscribed { recovered, reason, .. } = resubscribed else { unreachable!() };
    assert_eq!(recovered, Some(false));
    let reason = reason.expect("a reason with recovered: false");
    assert!(reason.contains("outbound_queue_bytes"), "{reason}");
    // And live publications continue.
    publish(r#"{"channel":"big","data":"live"}"#.into()).await;
    assert_eq!(publications(&mut events, 1).await, [(22, "\"live\"".to_owned())]);
}

#[test]
fn the_redis_broker_keeps_replays_within_the_budget_too() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let server = Server::start(&[&["--broker", url.as_str()], SMALL_BUDGET].concat());
    // 200 KB missed from offset 0: over the 64 KiB budget; the last three fit.
    let epoch = fill(&server, "big", &format!("\"{}\"", "z".repeat(10_000)), 20);
    let mut ws = json_client(&server, "");
    let subscribe = |ws: &mut JsonWs, id: u64, offset: u64| {
        let recover = json!({"epoch": epoch, "offset": offset});
        call(ws, json!({"id": id, "cmd": "subscribe", "channel": "big", "recover": recover}))
    };
    let reply = subscribe(&mut ws, 1, 0);
    assert_eq!(reply["result"]["recovered"], json!(false), "{reply}");
    let reason = reply["result"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("outbound_queue_bytes"), "{reply}");
    let reply = call(&mut ws, json!({"id": 2, "cmd": "unsubscribe", "channel": "big"}));
    assert!(reply["error"].is_null(), "{reply}");
    let reply = subscribe(&mut ws, 3, 17);
    assert_eq!(reply["result"]["recovered"], json!(true), "{reply}");
    for offset in 18..=20 {
        assert_eq!(next_json(&mut ws)["offset"], json!(offset));
    }
    assert_eq!(server.metric("tether_recoveries_total{outcome=\"over_budget\"}"), 1.0);
}
