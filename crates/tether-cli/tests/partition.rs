//! A half-open partition: server and client in two network namespaces joined by a veth pair,
//! then every packet between them dropped silently (no FIN, no RST). Both sides must notice
//! through their heartbeats alone, within their bounds; after the network heals, the client
//! reconnects by itself and recovers the publications it missed.

mod common;
use common::netns::{Pair, SERVER_IP};
use common::*;
use std::time::{Duration, Instant};
use tether_client::Event;

const T: Duration = Duration::from_secs(10);
/// Server heartbeat: a ping every 300 ms, dead after 300 ms more of silence.
const SERVER_PING: Duration = Duration::from_millis(300);
const SERVER_PONG: Duration = Duration::from_millis(300);
/// Client heartbeat: a ping every 200 ms, dead after 400 ms more of silence.
const CLIENT_PING: Duration = Duration::from_millis(200);
const CLIENT_PONG: Duration = Duration::from_millis(400);
/// Timer and polling granularity allowed on top of a bound.
const SLACK: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_is_detected_by_both_heartbeats_and_healed_with_recovery() {
    let Some(pair) = Pair::create() else { return };
    let server = Pair::run_in(&pair.server_ns, || {
        Server::start_on(
            &format!("{SERVER_IP}:0"),
            // --insecure: the address is private to the namespace pair.
            &[
                "--insecure",
                "--ping-interval",
                "300ms",
                "--pong-timeout",
                "300ms",
                "--history",
                "news=1000/5m",
            ],
        )
    });
    // Publishing and metrics go over the server namespace's own loopback, which the partition
    // does not touch.
    let server = std::sync::Arc::new(server);
    let ns = pair.server_ns.clone();
    let publish = |n: u32| Pair::run_in(&ns, || server.publish("news", &n.to_string()));

    let mut config = fast_client(server.ws_url("")).heartbeat(CLIENT_PING, CLIENT_PONG).reconnect(
        tether_client::ReconnectPolicy {
            backoff: tether_core::backoff::Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(300),
                factor: 2.0,
            },
            ..Default::default()
        },
    );
    // A connect attempt into the partition gets no answer at all (SYNs are dropped): give up
    // on it quickly so the first attempt after the heal is not stuck behind it.
    config.connect_timeout = Duration::from_millis(500);
    let ((client, mut events), _runtime) =
        Pair::runtime_in(&pair.client_ns, move || tether_client::connect(config));
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    client.subscribe("news").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    for n in 1..=5 {
        publish(n);
    }
    let got = publications(&mut events, 5).await;
    assert_eq!(got.last(), Some(&(5, "5".to_owned())));

    // The partition: from now on nothing crosses, and nobody is told.
    pair.partition();
    let cut = Instant::now();

    // The server's side, measured by polling its metrics until it has dropped the peer.
    let server_detected = tokio::task::spawn_blocking({
        let deadline = SERVER_PING + SERVER_PONG + Duration::from_secs(3);
        let (server, ns) = (server.clone(), ns.clone());
        move || {
            let timeouts =
                || closed_total(&Pair::run_in(&ns, || server.metrics()), "4000", "server");
            let seen = wait_until(deadline, || timeouts() >= 1.0);
            (seen, cut.elapsed())
        }
    });
    // The client's side: its own heartbeat timeout, 4000, initiated by the client.
    let Event::Closed(info) = next_event(&mut events, T, "the client's heartbeat timeout", |e| {
        matches!(e, Event::Closed(_))
    })
    .await
    else {
        unreachable!()
    };
    let client_detection = cut.elapsed();
    assert_eq!(info.code, 4000, "{info:?}");
    assert!(info.will_reconnect, "{info:?}");
    let (seen, server_detection) = server_detected.await.unwrap();
    assert!(seen, "the server never dropped the silent peer");

    eprintln!(
        "partition detected: server after {server_detection:?} (bound {:?}), client after \
         {client_detection:?} (bound {:?})",
        SERVER_PING + SERVER_PONG,
        CLIENT_PING + CLIENT_PONG
    );
    assert!(
        server_detection <= SERVER_PING + SERVER_PONG + SLACK,
        "server took {server_detection:?}, bound ping_interval + pong_timeout = {:?}",
        SERVER_PING + SERVER_PONG
    );
    assert!(
        client_detection <= CLIENT_PING + CLIENT_PONG + SLACK,
        "client took {client_detection:?}, bound {:?}",
        CLIENT_PING + CLIENT_PONG
    );

    // Publications the client cannot see, while it keeps trying into the void.
    for n in 6..=15 {
        publish(n);
    }
    // Let the client fail a few connect attempts into the partition (timeouts, no answer).
    for attempt in 0..2 {
        let Event::Closed(failed) =
            next_event(&mut events, T, "a failed attempt during the partition", |e| {
                matches!(e, Event::Closed(_))
            })
            .await
        else {
            unreachable!()
        };
        assert!(failed.will_reconnect, "attempt {attempt}: {failed:?}");
    }
    pair.heal();
    let healed = Instant::now();
    let Event::Subscribed { recovered, .. } =
        next_event(&mut events, T, "resubscribe after heal", |e| {
            matches!(e, Event::Subscribed { resubscribe: true, .. })
        })
        .await
    else {
        unreachable!()
    };
    let back_after = healed.elapsed();
    assert_eq!(recovered, Some(true));
    publish(16);
    let got = publications(&mut events, 11).await;
    let want: Vec<(u64, String)> = (6..=16).map(|n| (n as u64, n.to_string())).collect();
    assert_eq!(got, want, "exactly the missed ones, in order, then live");
    eprintln!("partition healed: client resubscribed with recovery after {back_after:?}");
    // Bound: a connect attempt in flight into the partition (500 ms) plus the longest backoff
    // (300 ms) plus the handshake.
    assert!(back_after < Duration::from_secs(3), "back after {back_after:?}");
    drop(client);
}
