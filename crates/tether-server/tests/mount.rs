//! The gateway mounted inside a host axum application, as `examples/mount_in_axum.rs` does:
//! the host's routes and the gateway's share one listener, the host publishes from its own
//! handler, and shutting the gateway down closes its WebSocket clients with 1012.

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use tether_server::{Gateway, GatewayConfig};
use tokio_tungstenite::tungstenite::Message;

async fn place_order(State(gateway): State<Gateway>, body: String) -> String {
    let data = serde_json::value::to_raw_value(&serde_json::json!({ "order": body })).unwrap();
    let receipt = gateway.publish("orders", &data).await.unwrap();
    format!("told {}", receipt.delivered)
}

async fn http(method: &str, url: String, body: &str) -> (u16, String) {
    let (method, body) = (method.to_owned(), body.to_owned());
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut resp = match method.as_str() {
            "GET" => agent.get(&url).call(),
            _ => agent.post(&url).send(&body),
        }
        .unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mounted_beside_host_routes_on_one_listener() {
    let gateway = Gateway::new(GatewayConfig::default()).unwrap();
    let app = Router::new()
        .route("/", get(|| async { "the host application" }))
        .route("/orders", post(place_order))
        .with_state(gateway.clone())
        .nest("/realtime", gateway.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gw = gateway.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
                gw.shutdown().await;
            })
            .await
            .unwrap();
    });

    assert_eq!(
        http("GET", format!("http://{addr}/"), "").await,
        (200, "the host application".into())
    );
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/realtime/ws?channel=orders"))
            .await
            .unwrap();
    // Wait until the subscription is registered (the handshake completes before the task runs).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gateway.open_connections() == 0
        || gateway.metrics().render().contains("tether_subscriptions 0")
    {
        assert!(tokio::time::Instant::now() < deadline, "subscription never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        http("POST", format!("http://{addr}/orders"), "two coffees").await,
        (200, "told 1".into())
    );
    let msg =
        tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(msg, Message::Text(r#"{"order":"two coffees"}"#.into()));
    let (status, body) = http("GET", format!("http://{addr}/realtime/healthz"), "").await;
    assert_eq!(status, 200, "{body}");

    stop_tx.send(()).unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1012);
    while ws.next().await.is_some() {}
    tokio::time::timeout(Duration::from_secs(15), server).await.unwrap().unwrap();
}

/// Mounted under axum::serve, the upgraded socket is hidden behind axum's own wrapper (it cannot
/// leave tokio's reactor): parking then waits with a small read whose bytes are kept for the
/// WebSocket layer. A message sent to a parked connection must arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_gateway_parks_idle_connections_and_wakes_them() {
    let config = GatewayConfig {
        ping_interval: Duration::from_millis(400), // park_after = 200 ms
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(config).unwrap();
    let app = Router::new().nest("/realtime", gateway.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    let parked = |g: &Gateway| g.metrics().render().contains("\ntether_connections_parked 1\n");
    let wait_parked = |g: Gateway| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !parked(&g) {
            assert!(tokio::time::Instant::now() < deadline, "the connection never parked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/realtime/ws?channel=orders"))
            .await
            .unwrap();
    for round in 0..3 {
        wait_parked(gateway.clone()).await;
        futures_util::SinkExt::send(&mut ws, Message::Text("ping".into())).await.unwrap();
        assert_eq!(next_text(&mut ws).await, "pong", "round {round}");
        wait_parked(gateway.clone()).await;
        let data = serde_json::value::to_raw_value(&serde_json::json!({ "round": round })).unwrap();
        assert_eq!(gateway.publish("orders", &data).await.unwrap().delivered, 1);
        assert_eq!(next_text(&mut ws).await, format!(r#"{{"round":{round}}}"#));
    }
    server.abort();
}

/// The next text message (pings in between are answered by tungstenite), within 10 s.
async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let next = async {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => return t.to_string(),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), next).await.expect("a text message within 10 s")
}

/// A host application may publish from a runtime of its own that does not live long (a
/// blocking thread's `block_on`, a test's runtime). A sweep started by such a publication must
/// run on the gateway's runtime: on the publisher's, it dies with it, and the channel stays
/// routed to a sweep nobody drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_from_a_short_lived_runtime_are_still_delivered() {
    let config = GatewayConfig {
        fanout_sweep: tether_server::FanoutSweep::Always, // every publication starts or joins a sweep
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(config).unwrap();
    let app = gateway.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?channel=prices")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gateway.metrics().render().contains("\ntether_subscriptions 1\n") {
        assert!(tokio::time::Instant::now() < deadline, "subscription never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let publisher = gateway.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            for n in 1..=5 {
                let data = serde_json::value::to_raw_value(&n).unwrap();
                publisher.publish("prices", &data).await.unwrap();
            }
        });
        // The runtime ends here, with whatever it had spawned.
    })
    .join()
    .unwrap();
    for n in 1..=5 {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("publication {n} never arrived"))
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::Text(n.to_string().into()));
    }
}
