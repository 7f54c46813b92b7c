//! The Rust client under reconnect churn: thousands of connections, each ended a different way
//! by a real third-party server (`web/test/peers/churn_server.mjs`, Node's `ws`): closed by the
//! server, dropped without a close frame, gone silent (the heartbeat must time out), refused
//! with HTTP 503, or refused outright while the server is down. Nothing may accumulate: tasks
//! alive in the runtime, the client's own sessions and supervisors, and process memory after
//! the first hundred reconnects against after the last.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tether_client::Event;

/// Reconnects to go through (`TETHER_SOAK_RECONNECTS` for a longer run).
fn reconnects() -> u64 {
    std::env::var("TETHER_SOAK_RECONNECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// Resident memory of this test process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_survives_thousands_of_reconnects_without_growing() {
    let Some(node) = require("Node.js (apt-get install nodejs)", which("node")) else { return };
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../web/test/peers/churn_server.mjs");
    let mut peer = Command::new(node)
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut out = LineReader::new(peer.stdout.take().unwrap());
    let _peer = Kill(peer);
    let line = out.expect_line(Duration::from_secs(10), "the port", |l| l.contains("port"));
    let port = serde_json::from_str::<serde_json::Value>(&line).unwrap()["port"].as_u64().unwrap();

    let config = tether_client::ClientConfig::new(format!("ws://127.0.0.1:{port}/"))
        .raw()
        // A silent server is declared dead after 25 ms.
        .heartbeat(Duration::from_millis(10), Duration::from_millis(15))
        .reconnect(tether_client::ReconnectPolicy {
            backoff: tether_core::backoff::Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(4),
                factor: 2.0,
            },
            ..Default::default()
        });
    let (client, mut events) = tether_client::connect(config);
    let runtime = tokio::runtime::Handle::current().metrics();
    let target = reconnects();
    let (mut opens, mut by_code) = (0u64, std::collections::BTreeMap::<u16, u64>::new());
    let mut baseline = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while opens < target {
        let event = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .expect("the reconnect loop stalled")
            .expect("the client stopped");
        match event {
            Event::Open { .. } => {
                opens += 1;
                if opens == 100 {
                    baseline = Some((rss(), runtime.num_alive_tasks()));
                }
            }
            Event::Closed(info) => *by_code.entry(info.code).or_default() += 1,
            Event::Stopped { reason } => panic!("the client stopped: {reason:?}"),
            _ => {}
        }
    }
    let (rss_at_100, tasks_at_100) = baseline.unwrap();
    let (rss_end, tasks_end) = (rss(), runtime.num_alive_tasks());
    let stats = client.stats();
    eprintln!(
        "{opens} reconnects ({} connect attempts); closes by code {by_code:?}; RSS {} KiB after \
         100, {} KiB after {opens}; tasks {tasks_at_100} → {tasks_end}",
        stats.connect_attempts.load(Ordering::Relaxed),
        rss_at_100 / 1024,
        rss_end / 1024
    );
    // Every way of ending happened, many times.
    for (code, what) in
        [(1012, "server close"), (1006, "dropped or refused"), (4000, "heartbeat timeout")]
    {
        assert!(
            by_code.get(&code).copied().unwrap_or(0) >= target / 10,
            "too few {what} ({code}): {by_code:?}"
        );
    }
    // Nothing piles up: one supervisor, the same tasks, memory within a small bound.
    assert_eq!(stats.supervisors.load(Ordering::Relaxed), 1);
    assert!(tasks_end <= tasks_at_100, "tasks grew: {tasks_at_100} → {tasks_end}");
    let growth = rss_end.saturating_sub(rss_at_100);
    assert!(growth < 4 << 20, "RSS grew by {} KiB over {opens} reconnects", growth / 1024);
    client.close().await;
}
