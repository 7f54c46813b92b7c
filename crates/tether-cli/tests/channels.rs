//! Channel state in the memory broker: subscribing creates none, so subscribers alone cannot use
//! up `max_channels` and lock publishers out; idempotency keys are forgotten by the broker's
//! once-a-second housekeeping, not only when the next keyed publish comes.

mod common;
use common::json_ws::*;
use common::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn subscribers_alone_do_not_use_up_max_channels() {
    let server = Server::start(&["--max-channels", "4"]);
    // Two connections subscribe to three times as many distinct channels as streams allowed.
    let mut clients = [json_client(&server, ""), json_client(&server, "")];
    for (i, ws) in clients.iter_mut().enumerate() {
        for n in 0..6 {
            let channel = format!("room:{i}:{n}");
            let reply = call(ws, json!({"id": n, "cmd": "subscribe", "channel": channel}));
            assert!(reply["error"].is_null(), "subscribe to {channel}: {reply}");
        }
    }
    // A publisher can still reach a channel nobody subscribed to...
    let (status, body) = server.post_publish(r#"{"channel":"fresh","data":1}"#);
    assert_eq!(status, 200, "publish to a new channel: {body}");
    // ...and a subscribed one, whose subscriber gets it.
    server.publish("room:1:5", r#""hello""#);
    let publication = next_json(&mut clients[1]);
    assert_eq!(
        (publication["channel"].as_str(), publication["data"].as_str()),
        (Some("room:1:5"), Some("hello"))
    );
    // Streams held: the subscribed channel that was published to; `fresh` (no history, no
    // subscribers) goes at the next housekeeping.
    assert!(
        wait_until(T, || server.metric("tether_broker_streams") == 1.0),
        "{}",
        server.metrics()
    );
}

#[test]
fn idempotency_keys_expire_in_housekeeping_without_further_publishes() {
    let server = Server::start(&["--idempotency-window", "3s"]);
    let keyed = |n: u32| format!(r#"{{"channel":"orders","data":{n},"idempotency_key":"k{n}"}}"#);
    for n in 0..5 {
        let (status, body) = server.post_publish(&keyed(n));
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["duplicate"], json!(true), "{body}");
    }
    // Housekeeping (once a second) counts them...
    assert!(
        wait_until(T, || server.metric("tether_idempotency_keys") == 5.0),
        "{}",
        server.metrics()
    );
    // ...and keeps them although `orders` has no history and no subscribers: a retry within the
    // window is still answered from the first publication.
    let (status, body) = server.post_publish(&keyed(0));
    assert_eq!(
        (status, &body["duplicate"], &body["offset"]),
        (200, &json!(true), &json!(1)),
        "{body}"
    );
    // After the window they are forgotten, with no publish to trigger it.
    assert!(
        wait_until(T, || server.metric("tether_idempotency_keys") == 0.0),
        "{}",
        server.metrics()
    );
    assert!(wait_until(T, || server.metric("tether_broker_streams") == 0.0));
}
