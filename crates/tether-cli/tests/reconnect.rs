//! The client reconnects by itself, resubscribes, and explains each close; the server's graceful
//! shutdown and a kill -9 look different, as they should.

mod common;
use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tether_client::{Event, Initiator};

const T: Duration = Duration::from_secs(10);

fn closed(e: &Event) -> bool {
    matches!(e, Event::Closed(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_restart_on_the_same_port_reconnects_once_and_resubscribes() {
    let mut server = Server::start(&["--ping-interval", "100ms", "--pong-timeout", "200ms"]);
    let (client, mut events) = tether_client::connect(fast_client(server.ws_url("")));
    client.subscribe("news").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;

    server.kill9();
    let Event::Closed(info) = next_event(&mut events, T, "close after kill -9", closed).await
    else {
        unreachable!()
    };
    assert_eq!(info.code, 1006, "{info}");
    assert!(!info.was_clean, "{info}");
    assert_eq!(info.initiator, Initiator::Network, "{info}");
    assert!(info.will_reconnect && info.retry_in.is_some(), "{info}");

    let server = server.restart();
    next_event(&mut events, T, "reopen", |e| matches!(e, Event::Open { reconnected: true })).await;
    next_event(
        &mut events,
        T,
        "resubscribe",
        |e| matches!(e, Event::Subscribed { channel, resubscribe: true, .. } if channel == "news"),
    )
    .await;
    let reply = server.publish("news", r#"{"n":1}"#);
    assert_eq!(reply["delivered"], 1, "{reply}");
    let Event::Publication { channel, data, offset, .. } =
        next_event(&mut events, T, "publication", |e| matches!(e, Event::Publication { .. })).await
    else {
        unreachable!()
    };
    assert_eq!((channel.as_str(), data.get(), offset), ("news", r#"{"n":1}"#, 1));

    // Exactly one reconnect loop: one supervisor, and the new server saw exactly one handshake.
    assert_eq!(client.stats().supervisors.load(Ordering::Relaxed), 1);
    assert_eq!(server.metric("tether_connections_accepted_total"), 1.0);
    assert_eq!(server.metric("tether_connections_open"), 1.0);
    client.close().await;
    assert!(wait_until(T, || server.closed("1000", "client") == 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_is_1012_with_a_hint_and_clean() {
    let mut server = Server::start(&[]);
    let (_client, mut events) = tether_client::connect(fast_client(server.ws_url("")));
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    let Event::Closed(info) = next_event(&mut events, T, "close", closed).await else {
        unreachable!()
    };
    assert_eq!(info.code, 1012, "{info}");
    assert_eq!(info.reason, "server shutting down");
    assert!(info.was_clean, "{info}");
    assert_eq!(info.initiator, Initiator::Server);
    // The server's 500 ms hint: the client waits between 1x and 2x of it.
    let retry = info.retry_in.expect("reconnect scheduled");
    assert!(
        retry >= Duration::from_millis(500) && retry <= Duration::from_millis(1000),
        "{retry:?}"
    );
    let log = server.log();
    assert!(log.contains("code=1012") && log.contains("was_clean=true"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_can_say_going_away() {
    let mut server = Server::start(&["--shutdown-close", "going-away"]);
    let (_client, mut events) = tether_client::connect(fast_client(server.ws_url("")));
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    assert!(server.terminate().success());
    let Event::Closed(info) = next_event(&mut events, T, "close", closed).await else {
        unreachable!()
    };
    assert_eq!(
        (info.code, info.was_clean, info.initiator),
        (1001, true, Initiator::Server),
        "{info}"
    );
    assert!(info.will_reconnect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_violation_stops_the_client() {
    // A close code that means "retrying cannot help" ends the loop. Use a Python server that
    // closes with 1008, since Tether only sends it from later features (auth, rate limits).
    let Some(py) = py_server::PyServer::start("  await ws.close(1008, 'not allowed')") else {
        return;
    };
    let (client, mut events) =
        tether_client::connect(fast_client(format!("ws://127.0.0.1:{}/", py.port)).raw());
    let Event::Closed(info) = next_event(&mut events, T, "close", closed).await else {
        unreachable!()
    };
    assert_eq!((info.code, info.will_reconnect), (1008, false), "{info}");
    let stopped =
        next_event(&mut events, T, "stopped", |e| matches!(e, Event::Stopped { .. })).await;
    assert!(matches!(stopped, Event::Stopped { reason: tether_client::StopReason::CloseCode(_) }));
    assert_eq!(client.stats().connect_attempts.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_is_bounded_and_flushed_on_reconnect() {
    let mut server = Server::start(&["--client-publish", "chat:*"]);
    let mut cfg = fast_client(server.ws_url(""));
    cfg.offline_queue = 3;
    let (client, mut events) = tether_client::connect(cfg);
    client.subscribe("chat:room").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    server.kill9();
    next_event(&mut events, T, "close", closed).await;
    // While down: three fit, the fourth is refused with a clear error.
    for i in 0..3 {
        client
            .publish("chat:room", tether_core::codec::data_from_user_text(&i.to_string()))
            .await
            .unwrap();
    }
    let err = client
        .publish("chat:room", tether_core::codec::data_from_user_text("3"))
        .await
        .unwrap_err();
    assert_eq!(err, tether_client::ClientError::QueueFull(3));
    let _server = server.restart();
    // After the reconnect the queued publications go out, in order, and come back to us.
    for want in ["0", "1", "2"] {
        let Event::Publication { data, .. } =
            next_event(&mut events, T, "queued publication", |e| {
                matches!(e, Event::Publication { .. })
            })
            .await
        else {
            unreachable!()
        };
        assert_eq!(data.get(), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_refused_with_4xx_stops_instead_of_retrying_forever() {
    let server = Server::start(&[]);
    let url = format!("ws://{}/no-such-endpoint", server.addr);
    let (client, mut events) = tether_client::connect(fast_client(url));
    let Event::Closed(info) = next_event(&mut events, T, "close", closed).await else {
        unreachable!()
    };
    assert!(info.reason.contains("HTTP 404"), "{info}");
    assert!(!info.will_reconnect, "{info}");
    let Event::Stopped { reason } =
        next_event(&mut events, T, "stopped", |e| matches!(e, Event::Stopped { .. })).await
    else {
        unreachable!()
    };
    assert!(matches!(reason, tether_client::StopReason::Refused(_)), "{reason}");
    assert_eq!(client.stats().connect_attempts.load(Ordering::Relaxed), 1);
}
