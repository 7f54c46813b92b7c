//! A rolling restart without loss: two nodes on one real Redis behind a real nginx (round robin).
//! While a publisher keeps publishing through nginx, node A gets SIGTERM and comes back, then
//! node B does the same. Every client hears 1012 with a reconnect hint at least once, comes back
//! through nginx on the other node after a jittered delay, and recovers what it missed: each
//! client ends with every publication exactly once, in order.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_client::{Event, Initiator, Transport};

const CLIENTS: usize = 40;
/// At least this many publications, and the publisher keeps going until the roll is done.
const MIN_PUBLICATIONS: u64 = 3000;
/// Publisher pace, so that the roll happens in the middle of the stream.
const PUBLISH_EVERY: Duration = Duration::from_millis(2);
/// The server's restart hint (default): clients wait between 1× and 2× this.
const HINT: Duration = Duration::from_millis(500);

fn node(redis: &Redis) -> Server {
    Server::start(&[
        "--broker",
        &redis.url(),
        "--history",
        "feed=20000/5m",
        "--ping-interval",
        "1s",
    ])
}

#[derive(Default)]
struct Seen {
    /// (offset, data) of every publication, in arrival order.
    publications: Vec<(u64, u64)>,
    /// Closes with 1012, and for each the time until the client was resubscribed.
    restarts: Vec<(tether_client::CloseInfo, Option<Duration>)>,
    /// Resubscribes that did not recover everything.
    unrecovered: usize,
    /// Every other close, for the failure message.
    others: Vec<tether_client::CloseInfo>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_nginx_loses_and_duplicates_nothing() {
    rolling_restart(Transport::WebSocket).await;
}

/// The same over HTTP-streaming sessions (issue 21): each client's commands go to whichever
/// node nginx picks, not only to the one holding its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_and_duplicates_nothing_over_http_streaming_too() {
    rolling_restart(Transport::HttpStream).await;
}

async fn rolling_restart(transport: Transport) {
    let Some(redis) = Redis::start() else { return };
    let (mut a, mut b) = (node(&redis), node(&redis));
    let Some(nginx) = Nginx::start_group(&[a.addr, b.addr], "60s") else { return };

    // The clients, through nginx: round robin puts about half on each node.
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..CLIENTS {
        let config = fast_client(nginx.ws_url()).transports(vec![transport]);
        let (client, mut events) = tether_client::connect(config);
        client.subscribe("feed").await.unwrap();
        next_event(&mut events, Duration::from_secs(10), "subscribed", |e| {
            matches!(e, Event::Subscribed { .. })
        })
        .await;
        let log = Arc::new(Mutex::new(Seen::default()));
        let sink = log.clone();
        tokio::spawn(async move {
            let mut closed_at = None;
            while let Some(event) = events.next().await {
                let mut seen = sink.lock().unwrap();
                match event {
                    Event::Publication { offset, data, .. } => {
                        seen.publications.push((offset, data.get().parse().unwrap()));
                    }
                    Event::Closed(info) if info.code == 1012 => {
                        assert_eq!(info.transport, transport, "{info:?}");
                        closed_at = Some(Instant::now());
                        seen.restarts.push((info, None));
                    }
                    Event::Closed(info) => seen.others.push(info),
                    Event::Subscribed { resubscribe: true, recovered, .. } => {
                        if recovered != Some(true) {
                            seen.unrecovered += 1;
                        }
                        if let (Some(at), Some(last)) = (closed_at.take(), seen.restarts.last_mut())
                        {
                            last.1 = Some(at.elapsed());
                        }
                    }
                    _ => {}
                }
            }
        });
        clients.push(client);
        seen.push(log);
    }

    // The publisher, through nginx, paced; it stops once it has published enough and the roll
    // is over, so the roll always happens mid-stream.
    let published = Arc::new(AtomicU64::new(0));
    let rolled = Arc::new(AtomicBool::new(false));
    let publisher = std::thread::spawn({
        let (published, rolled) = (published.clone(), rolled.clone());
        let url = nginx.http("/api/publish");
        move || {
            let start = Instant::now();
            let mut n = 0u64;
            let (mut retries, mut deduplicated) = (0, 0);
            while n < MIN_PUBLICATIONS || !rolled.load(Ordering::SeqCst) {
                n += 1;
                // A request cut by a node going away (nginx answers 502: it cannot know whether
                // the POST was processed) is retried with the same idempotency key, so that it
                // is published once either way.
                let body = format!(r#"{{"channel":"feed","data":{n},"idempotency_key":"p{n}"}}"#);
                let mut attempt = 0;
                loop {
                    let (status, reply) = http_request("POST", &url, Some(&body));
                    if status == 200 {
                        deduplicated += reply["duplicate"].as_bool().unwrap_or(false) as u32;
                        break;
                    }
                    attempt += 1;
                    assert!(
                        attempt < 20,
                        "publication {n} failed {attempt} times: {status} {reply}"
                    );
                    retries += 1;
                    std::thread::sleep(Duration::from_millis(20)); // retry pacing
                }
                published.store(n, Ordering::SeqCst);
                let next = start + PUBLISH_EVERY * n as u32;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (n, retries, deduplicated)
        }
    });

    // The roll: A down and back, then B down and back, each while publications flow.
    let roll = tokio::task::spawn_blocking(move || {
        let reach = |n: u64| {
            assert!(
                wait_until(Duration::from_secs(30), || published.load(Ordering::SeqCst) >= n),
                "the publisher stalled before {n}"
            )
        };
        let mut steps = Vec::new();
        for node in [&mut a, &mut b] {
            reach(published.load(Ordering::SeqCst) + 500);
            let at = published.load(Ordering::SeqCst);
            let started = Instant::now();
            assert!(node.terminate().success(), "a node did not stop cleanly");
            let stopped = started.elapsed();
            *node = node.restart();
            steps.push((at, stopped, started.elapsed()));
        }
        reach(published.load(Ordering::SeqCst) + 500);
        rolled.store(true, Ordering::SeqCst);
        (steps, a, b)
    });
    let (steps, _a, _b) = roll.await.unwrap();
    let (total, retries, deduplicated) =
        tokio::task::spawn_blocking(move || publisher.join().unwrap()).await.unwrap();
    eprintln!("publisher: {retries} retried requests, {deduplicated} answered as duplicates");
    for (at, stopped, back) in &steps {
        eprintln!("node restarted after publication {at}: drained in {stopped:?}, serving again after {back:?}");
    }

    // Every client ends with every publication once, in order, offsets without a gap.
    let all_in = tokio::task::spawn_blocking({
        let seen = seen.clone();
        move || {
            wait_until(Duration::from_secs(30), || {
                seen.iter().all(|s| s.lock().unwrap().publications.len() as u64 >= total)
            })
        }
    })
    .await
    .unwrap();
    let want: Vec<u64> = (1..=total).collect();
    let mut delays = Vec::new();
    for (i, log) in seen.iter().enumerate() {
        let s = log.lock().unwrap();
        let data: Vec<u64> = s.publications.iter().map(|p| p.1).collect();
        let unique: std::collections::HashSet<u64> = data.iter().copied().collect();
        let lost = want.iter().filter(|n| !unique.contains(n)).count();
        let duplicated = data.len() - unique.len();
        assert!(
            data == want,
            "client {i}: {} received of {total}: {lost} lost, {duplicated} duplicated, or out of order",
            data.len()
        );
        let offsets: Vec<u64> = s.publications.iter().map(|p| p.0).collect();
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "client {i}: offsets with a gap");
        assert_eq!(s.unrecovered, 0, "client {i}: a resubscribe did not recover everything");
        // Everyone was on B when B restarted, so everyone heard 1012 at least once.
        assert!(!s.restarts.is_empty(), "client {i} never heard 1012: {:?}", s.others);
        for (info, back) in &s.restarts {
            assert_eq!(info.initiator, Initiator::Server, "client {i}: {info:?}");
            assert!(info.was_clean && info.will_reconnect, "client {i}: {info:?}");
            let wait = info.retry_in.expect("a retry delay");
            assert!(wait >= HINT && wait < HINT * 2, "client {i}: waits {wait:?}, hint {HINT:?}");
            delays.push(back.unwrap_or_else(|| panic!("client {i} never resubscribed")));
        }
    }
    assert!(all_in, "not every client received all {total} publications");
    delays.sort();
    let (first, last) = (delays[0], delays[delays.len() - 1]);
    eprintln!(
        "{CLIENTS} clients, {total} publications, {} restarts heard: none lost, none duplicated; \
         1012 → resubscribed: min {first:?}, median {:?}, max {last:?}",
        delays.len(),
        delays[delays.len() / 2]
    );
    // The jitter visibly spreads the comeback across the hint's window.
    assert!(last - first >= HINT / 4, "comebacks not spread: {first:?}..{last:?}");
    drop(clients);
}
