//! A blocking `tether.v1.json` WebSocket client for tests that drive the protocol by hand: send a
//! command, read the next JSON message (heartbeats skipped), read a server's closing advice.
//! Every read has a 10 s timeout.

use super::Server;
use serde_json::Value;
use std::net::TcpStream;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

pub type JsonWs = WebSocket<MaybeTlsStream<TcpStream>>;

/// Open a `tether.v1.json` connection to `server` (`query` after `/ws`, e.g. `?token=…`).
pub fn json_client(server: &Server, query: &str) -> JsonWs {
    let mut req = server.ws_url(query).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "tether.v1.json".parse().unwrap());
    let (ws, _) = tungstenite::connect(req).unwrap();
    tcp(&ws).set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ws
}

/// The TCP socket under a plain (non-TLS) connection.
pub fn tcp(ws: &JsonWs) -> &TcpStream {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s,
        _ => unreachable!("plain TCP in these tests"),
    }
}

pub fn send(ws: &mut JsonWs, cmd: Value) {
    ws.send(Message::text(cmd.to_string())).unwrap();
}

/// Send a command and return the next JSON message.
pub fn call(ws: &mut JsonWs, cmd: Value) -> Value {
    send(ws, cmd);
    next_json(ws)
}

/// The next JSON message, skipping heartbeats.
pub fn next_json(ws: &mut JsonWs) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }
}

/// Subscribe to `channel` and read until the reply (skipping whatever comes before it, such as
/// membership changes); the client id the first reply carries, or empty on later replies.
pub fn subscribe_reply(ws: &mut JsonWs, channel: &str) -> String {
    send(ws, serde_json::json!({"id": 1, "cmd": "subscribe", "channel": channel}));
    loop {
        let msg = next_json(ws);
        if msg["type"] == "reply" {
            assert!(msg["error"].is_null(), "subscribe to {channel}: {msg}");
            return msg["result"]["client"].as_str().unwrap_or_default().to_owned();
        }
    }
}

/// The server's `disconnect` advice, then its close frame's code.
pub fn advice_and_close(ws: &mut JsonWs) -> (Value, u16) {
    let advice = next_json(ws);
    assert_eq!(advice["type"], "disconnect", "{advice}");
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return (advice, u16::from(frame.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame after {advice}: {e}"),
        }
    }
}
