//! A peer for comparison: the smallest reasonable tokio-tungstenite server with the plain
//! contract of Tether's raw mode (the "minimal tokio-tungstenite server" of issue 5's table).
//!   GET /ws?channel=NAME (repeatable)   WebSocket; the text "ping" is answered "pong"
//!   POST /api/publish {"channel","data"} delivers data (a string as its text, else JSON)
//! No heartbeats, no history, no limits: a floor to compare against, not a product.
//! Prints "listening on http://HOST:PORT" like `tether serve`. Usage: tokio-minimal-peer [PORT]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Channels = Arc<Mutex<HashMap<String, HashMap<u64, UnboundedSender<Utf8Bytes>>>>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn respond(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r
}

async fn handle(channels: Channels, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.method() == hyper::Method::POST && req.uri().path() == "/api/publish" {
        let body = req.into_body().collect().await?.to_bytes();
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Ok(respond(StatusCode::BAD_REQUEST, r#"{"error":"bad json"}"#));
        };
        let text: Utf8Bytes = match &msg["data"] {
            serde_json::Value::String(s) => s.as_str().into(),
            other => other.to_string().into(),
        };
        let channel = msg["channel"].as_str().unwrap_or_default();
        let delivered = match channels.lock().unwrap().get(channel) {
            Some(subs) => subs.values().filter(|tx| tx.send(text.clone()).is_ok()).count(),
            None => 0,
        };
        return Ok(respond(StatusCode::OK, &format!(r#"{{"delivered":{delivered}}}"#)));
    }
    let key = req.headers().get("sec-websocket-key").cloned();
    if req.uri().path() != "/ws" || key.is_none() {
        return Ok(respond(StatusCode::NOT_FOUND, ""));
    }
    let mine: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "channel")
        .map(|(_, v)| v.into_owned())
        .collect();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = unbounded_channel();
        for c in &mine {
            channels.lock().unwrap().entry(c.clone()).or_default().insert(id, tx.clone());
        }
        drop(tx);
        loop {
            tokio::select! {
                inbound = ws.next() => match inbound {
                    Some(Ok(Message::Text(t))) if t.as_str() == "ping" => {
                        if ws.send(Message::Text("pong".into())).await.is_err() { break }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                Some(text) = rx.recv() => {
                    if ws.send(Message::Text(text)).await.is_err() { break }
                }
            }
        }
        let mut map = channels.lock().unwrap();
        for c in &mine {
            if let Some(subs) = map.get_mut(c) {
                subs.remove(&id);
            }
        }
    });
    let mut resp = respond(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = resp.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("sec-websocket-accept", derive_accept_key(key.unwrap().as_bytes()).parse().unwrap());
    Ok(resp)
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("listening on http://{}", listener.local_addr().unwrap());
    let channels: Channels = Arc::default();
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let channels = channels.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(channels.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}
