//! Behind a real nginx with `proxy_read_timeout 3s`: heartbeats under the timeout keep a silent
//! connection open; without heartbeats nginx cuts it, and the client reports the close and
//! reconnects by itself.

mod common;
use common::*;
use std::time::{Duration, Instant};
use tether_client::Event;

const T: Duration = Duration::from_secs(10);

/// A server with this ping interval behind nginx with `proxy_read_timeout 3s`; `None` when
/// nginx is missing (skipped loudly, or a failure under CI).
async fn behind_nginx(ping_interval: &'static str) -> Option<(Server, Nginx)> {
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&["--ping-interval", ping_interval]);
        let nginx = Nginx::start(server.addr, "3s")?;
        Some((server, nginx))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_under_the_proxy_timeout_keep_a_silent_connection_open() {
    let Some((server, nginx)) = behind_nginx("1s").await else { return };
    let config = tether_client::ClientConfig::new(nginx.ws_url())
        .heartbeat(Duration::from_secs(1), Duration::from_secs(2));
    let (client, mut events) = tether_client::connect(config);
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    client.subscribe("news").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    // 15 s of application silence, five times nginx's read timeout: no close at all.
    let quiet = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.next().await {
                Some(Event::Closed(info)) => return info,
                Some(_) => {}
                None => panic!("the client stopped"),
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "closed during the silence: {:?}", quiet.ok());
    // And it still delivers.
    let publish = server.http("/api/publish");
    tokio::task::spawn_blocking(move || {
        http_request("POST", &publish, Some(r#"{"channel":"news","data":"alive"}"#))
    })
    .await
    .unwrap();
    next_event(&mut events, T, "the publication", |e| matches!(e, Event::Publication { .. })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_heartbeats_nginx_cuts_the_connection_and_the_client_reconnects() {
    // Heartbeats far beyond the proxy's 3 s on both sides.
    let Some((_server, nginx)) = behind_nginx("1h").await else { return };
    let config =
        fast_client(nginx.ws_url()).heartbeat(Duration::from_secs(3600), Duration::from_secs(10));
    let (_client, mut events) = tether_client::connect(config);
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    let opened = Instant::now();
    let closed = next_event(&mut events, T, "nginx's cut", |e| matches!(e, Event::Closed(_))).await;
    let cut_after = opened.elapsed();
    let Event::Closed(info) = closed else { unreachable!() };
    // nginx closes both legs with a FIN and no close frame: 1006, not clean, from the network.
    eprintln!("nginx cut the silent connection after {cut_after:?}: {info}");
    assert_eq!(info.code, 1006, "{info:?}");
    assert!(!info.was_clean);
    assert!(info.will_reconnect, "{info:?}");
    assert!(
        cut_after >= Duration::from_millis(2500) && cut_after < Duration::from_secs(6),
        "cut after {cut_after:?}, expected about nginx's 3 s"
    );
    next_event(&mut events, T, "the reconnect", |e| matches!(e, Event::Open { reconnected: true }))
        .await;
}
