//! Bad input gets a clear refusal — an error reply, the right close code, or a 4xx JSON body —
//! and everyone else keeps being served.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;
const T: Duration = Duration::from_secs(10);

async fn json_client(server: &Server) -> Ws {
    let mut req = server.ws_url("").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "tether.v1.json".parse().unwrap());
    let (ws, resp) = connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "tether.v1.json");
    ws
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("timed out waiting for a message") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// Read until the server's close frame; returns its code and reason.
async fn close_code(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("timed out waiting for a close") {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string())
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The bystander must see every publication, in order, whatever the others do.
struct Bystander {
    ws: Ws,
    sent: u32,
}

impl Bystander {
    async fn check(&mut self, server: &Server) {
        self.sent += 1;
        server.publish("news", &self.sent.to_string());
        assert_eq!(next_text(&mut self.ws).await, self.sent.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_others_keep_being_served() {
    let server = Server::start(&["--max-message-size", "1KiB", "--max-subscriptions", "2"]);
    let (ws, _) = connect_async(server.ws_url("?channel=news")).await.unwrap();
    let mut bystander = Bystander { ws, sent: 0 };
    bystander.check(&server).await;

    // Oversized message → 1009.
    let mut ws = json_client(&server).await;
    ws.send(Message::Text("x".repeat(2048).into())).await.unwrap();
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("too big"), "{reason}");
    drop(ws);
    bystander.check(&server).await;

    // Far over the limit (1 MiB against 1 KiB): still a clean 1009, not a TCP reset, because the
    // server drains what the peer is still sending instead of dropping the socket on it.
    let mut ws = json_client(&server).await;
    ws.send(Message::Binary(vec![7u8; 1 << 20].into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await.0, 1009);
    drop(ws);
    bystander.check(&server).await;

    // Invalid UTF-8 in a text frame → 1007 (raw mode here; JSON mode is the same).
    let (mut ws, _) = connect_async(server.ws_url("")).await.unwrap();
    ws.send(Message::Frame(Frame::message(vec![b'a', 0xff, 0xfe], OpCode::Data(Data::Text), true)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await.0, 1007);
    drop(ws);
    bystander.check(&server).await;

    // Malformed commands → error replies; the connection stays open and keeps working.
    let mut ws = json_client(&server).await;
    ws.send(Message::Text("{nope".into())).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["error"]["code"].as_str()),
        (Some("error"), Some("malformed_json")),
        "{reply}"
    );
    let cases = [
        (r#"{"id":1,"cmd":"dance"}"#, "unknown_command"),
        (r#"{"id":2,"cmd":"subscribe"}"#, "invalid_command"),
        (r#"{"id":3,"cmd":"subscribe","channel":"has space"}"#, "bad_channel"),
        (r#"{"id":4,"cmd":"publish","channel":"news","data":1}"#, "publish_forbidden"),
        (r#"{"id":5,"cmd":"unsubscribe","channel":"never"}"#, "not_subscribed"),
    ];
    for (command, code) in cases {
        ws.send(Message::Text(command.into())).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["error"]["code"], code, "{command} → {reply}");
        assert!(reply["id"].is_u64(), "{reply}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], "binary_not_supported");
    // Subscription limit (2): the third is refused, the first two work.
    for (id, channel) in [(10, "a"), (11, "b"), (12, "c")] {
        ws.send(Message::Text(
            format!(r#"{{"id":{id},"cmd":"subscribe","channel":"{channel}"}}"#).into(),
        ))
        .await
        .unwrap();
    }
    let first = next_json(&mut ws).await;
    assert_eq!(first["result"]["offset"], 0, "{first}");
    assert!(first["result"]["epoch"].is_string(), "{first}");
    assert_eq!(next_json(&mut ws).await["id"], 11);
    assert_eq!(next_json(&mut ws).await["error"]["code"], "too_many_subscriptions");
    ws.send(Message::Text(r#"{"id":13,"cmd":"subscribe","channel":"a"}"#.into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], "already_subscribed");
    ws.send(Message::Text(r#"{"id":99,"cmd":"ping"}"#.into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await, serde_json::json!({"type":"reply","id":99,"result":{}}));
    bystander.check(&server).await;

    // Bad publish bodies → 4xx with a JSON error that names the problem.
    for (body, status, needle) in [
        ("not json", 400, "body must be"),
        (r#"{"data":1}"#, 400, "channel"),
        (r#"{"channel":"news"}"#, 400, "data"),
        (r#"{"channel":"bad channel","data":1}"#, 400, "bad channel"),
        (r#"{"channel":"news","data":1,"extra":true}"#, 400, "extra"),
        ("", 400, "empty body"),
        (r#"{"channel":"news","data":1,"idempotency_key":""}"#, 400, "idempotency_key"),
        (r#"{"channel":"news","data":1,"idempotency_key":"a b"}"#, 400, "idempotency_key"),
        (r#"{"channel":"news","data":1,"idempotency_key":7}"#, 400, "idempotency_key"),
    ] {
        let (got, json) = server.post_publish(body);
        assert_eq!(got, status, "{body:?} → {json}");
        assert!(json["error"].as_str().unwrap().contains(needle), "{body:?} → {json}");
    }
    let (got, json) =
        server.post_publish(&format!(r#"{{"channel":"news","data":"{}"}}"#, "x".repeat(4096)));
    assert_eq!(got, 413, "{json}");
    let (got, json) = http_request("GET", &server.http("/api/publish"), None);
    assert_eq!(got, 405, "{json}");
    assert!(json["error"].is_string());
    let (got, json) = http_request("GET", &server.http("/nowhere"), None);
    assert_eq!(got, 404, "{json}");
    assert!(json["error"].as_str().unwrap().contains("/nowhere"));
    // A plain GET on /ws (no upgrade) is told to upgrade.
    let (got, json) = http_request("GET", &server.http("/ws"), None);
    assert_eq!(got, 426, "{json}");
    bystander.check(&server).await;

    // Only unknown subprotocols offered → HTTP 400 that lists what is supported.
    let mut req = server.ws_url("").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "mqtt, wamp.2.json".parse().unwrap());
    match connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body: Value = serde_json::from_slice(resp.body().as_ref().unwrap()).unwrap();
            assert_eq!(body["supported"], serde_json::json!(["tether.v1.json"]), "{body}");
            assert!(body["error"].as_str().unwrap().contains("mqtt"), "{body}");
        }
        other => panic!("expected HTTP 400, got {:?}", other.map(|_| ())),
    }
    // A bad ?channel= is refused before the upgrade too.
    assert!(connect_async(server.ws_url("?channel=bad%20name")).await.is_err());
    bystander.check(&server).await;

    // All of it is visible in the metrics (once the closed connections have finished closing).
    assert!(
        wait_until(T, || server.metric("tether_connections_open") == 2.0),
        "{}",
        server.metrics()
    );
    let m = server.metrics();
    assert_eq!(closed_total(&m, "1009", "server"), 2.0, "{m}");
    assert_eq!(closed_total(&m, "1007", "server"), 1.0, "{m}");
    assert_eq!(
        metric_sum(&m, "tether_handshakes_refused_total{reason=\"unsupported_subprotocol\"}"),
        1.0,
        "{m}"
    );
    assert!(metric_sum(&m, "tether_command_errors_total") >= 9.0, "{m}");
}
