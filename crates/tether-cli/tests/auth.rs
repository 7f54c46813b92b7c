//! JWT on connect: valid, expired, forged and missing tokens; channel claims; `?token=` for raw
//! mode; a token that expires during the connection; ES256 with a key made by the test.

mod common;
use common::json_ws::{advice_and_close, json_client, next_json, send as command};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite;

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn news_reader(exp: u64) -> String {
    hs256(json!({"sub": "ada", "exp": exp, "subscribe": ["news:*"]}), SECRET)
}

#[test]
fn tokens_valid_expired_forged_and_missing() {
    let server = Server::start(&["--jwt-secret", SECRET, "--anonymous-channel", "public:*"]);

    // Valid: news:* is allowed, admin is refused for that channel only.
    let mut ws = json_client(&server, "");
    command(&mut ws, json!({"id": 1, "cmd": "connect", "token": news_reader(now() + 600)}));
    assert_eq!(next_json(&mut ws)["id"], 1);
    command(&mut ws, json!({"id": 2, "cmd": "subscribe", "channel": "news:eu"}));
    let reply = next_json(&mut ws);
    assert!(reply["error"].is_null(), "{reply}");
    command(&mut ws, json!({"id": 3, "cmd": "subscribe", "channel": "admin"}));
    let reply = next_json(&mut ws);
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    server.publish("news:eu", "\"hello\"");
    let publication = next_json(&mut ws);
    assert_eq!(
        (publication["channel"].as_str(), publication["data"].as_str()),
        (Some("news:eu"), Some("hello"))
    );

    // Expired: 4002, and the advice says to reconnect (with a fresh token).
    let mut ws = json_client(&server, "");
    command(&mut ws, json!({"id": 1, "cmd": "connect", "token": news_reader(now() - 60)}));
    let (advice, code) = advice_and_close(&mut ws);
    assert_eq!(code, 4002);
    assert_eq!(advice["reconnect"], true, "{advice}");

    // Forged (another secret): 4502, do not retry.
    let mut ws = json_client(&server, "");
    let forged = hs256(json!({"exp": now() + 600, "subscribe": ["*"]}), "not-the-server-secret");
    command(&mut ws, json!({"id": 1, "cmd": "connect", "token": forged}));
    let (advice, code) = advice_and_close(&mut ws);
    assert_eq!(code, 4502);
    assert_eq!(advice["reconnect"], false, "{advice}");
    assert!(advice["reason"].as_str().unwrap().contains("token not accepted"), "{advice}");

    // Missing: anonymous channels work without a token, others close with 4501.
    let mut ws = json_client(&server, "");
    command(&mut ws, json!({"id": 1, "cmd": "subscribe", "channel": "public:lobby"}));
    assert!(next_json(&mut ws)["error"].is_null());
    command(&mut ws, json!({"id": 2, "cmd": "subscribe", "channel": "news:eu"}));
    let (advice, code) = advice_and_close(&mut ws);
    assert_eq!(code, 4501);
    assert_eq!(advice["reconnect"], false, "{advice}");

    let m = server.metrics();
    for (code, n) in [("4002", 1.0), ("4502", 1.0), ("4501", 1.0)] {
        assert!(
            wait_until(Duration::from_secs(5), || server.closed(code, "server") == n),
            "{code}: {m}"
        );
    }
}

#[test]
fn raw_mode_takes_the_token_in_the_url() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let status = |query: &str| match tungstenite::connect(server.ws_url(query)) {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    let token = news_reader(now() + 600);
    assert_eq!(status("?channel=news:eu"), 401, "no token");
    assert_eq!(status(&format!("?channel=admin&token={token}")), 403, "not covered");
    assert_eq!(
        status(&format!("?channel=news:eu&token={}", news_reader(now() - 60))),
        401,
        "expired"
    );
    let (mut ws, _) =
        tungstenite::connect(server.ws_url(&format!("?channel=news:eu&token={token}"))).unwrap();
    server.publish("news:eu", "\"raw hello\"");
    assert_eq!(ws.read().unwrap().to_text().unwrap(), "raw hello");
}

#[test]
fn a_token_that_expires_during_the_connection_closes_it_with_4002() {
    let server = Server::start(&["--jwt-secret", SECRET, "--ping-interval", "100ms"]);
    let mut ws = json_client(&server, "");
    let exp = now() + 2;
    command(&mut ws, json!({"id": 1, "cmd": "connect", "token": news_reader(exp)}));
    assert_eq!(next_json(&mut ws)["id"], 1);
    let (advice, code) = advice_and_close(&mut ws);
    assert_eq!(code, 4002);
    assert_eq!(advice["reconnect"], true);
    assert!(now() >= exp, "closed before the token expired");
}

#[test]
fn es256_with_a_public_key_file() {
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let dir = std::env::temp_dir().join(format!("tether-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let public = dir.join("jwt-public.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let server = Server::start(&["--jwt-public-key", public.to_str().unwrap()]);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({"exp": now() + 600, "subscribe": ["news:*"]}),
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let mut ws = json_client(&server, "");
    command(&mut ws, json!({"id": 1, "cmd": "connect", "token": token}));
    assert!(next_json(&mut ws)["error"].is_null());
    command(&mut ws, json!({"id": 2, "cmd": "subscribe", "channel": "news:eu"}));
    assert!(next_json(&mut ws)["error"].is_null());
    // An HS256 token is not accepted by an ES256 server.
    let mut ws = json_client(&server, "");
    command(&mut ws, json!({"id": 1, "cmd": "connect", "token": news_reader(now() + 600)}));
    assert_eq!(advice_and_close(&mut ws).1, 4502);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_refreshes_an_expired_token_and_carries_on() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tether_client::{Event, StopReason};
    let t = Duration::from_secs(10);
    let server = tokio::task::spawn_blocking(|| {
        Server::start(&["--jwt-secret", SECRET, "--ping-interval", "100ms"])
    })
    .await
    .unwrap();
    let refreshed = Arc::new(AtomicU32::new(0));
    let counter = refreshed.clone();
    let config =
        fast_client(server.ws_url("")).token(news_reader(now() + 2)).token_refresh(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(news_reader(now() + 600)) }
        });
    let (client, mut events) = tether_client::connect(config);
    client.subscribe("news:eu").await.unwrap();
    next_event(&mut events, t, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    let closed = next_event(
        &mut events,
        t,
        "the 4002 close",
        |e| matches!(e, Event::Closed(c) if c.code == 4002),
    )
    .await;
    let Event::Closed(info) = closed else { unreachable!() };
    assert!(info.will_reconnect, "{info:?}");
    next_event(&mut events, t, "resubscribed", |e| {
        matches!(e, Event::Subscribed { resubscribe: true, .. })
    })
    .await;
    assert_eq!(refreshed.load(Ordering::SeqCst), 1);
    let publisher = server.http("/api/publish");
    tokio::task::spawn_blocking(move || {
        http_request("POST", &publisher, Some(r#"{"channel":"news:eu","data":"fresh"}"#))
    })
    .await
    .unwrap();
    let got =
        next_event(&mut events, t, "a publication", |e| matches!(e, Event::Publication { .. }))
            .await;
    let Event::Publication { data, .. } = got else { unreachable!() };
    assert_eq!(data.get(), r#""fresh""#);

    // Without a refresh hook, an expired token stops the client and says why.
    let config = fast_client(server.ws_url("")).token(news_reader(now() - 60));
    let (client, mut events) = tether_client::connect(config);
    client.subscribe("news:eu").await.unwrap();
    let stopped =
        next_event(&mut events, t, "stopped", |e| matches!(e, Event::Stopped { .. })).await;
    let Event::Stopped { reason: StopReason::Refused(why) } = stopped else {
        panic!("expected a refusal, got {stopped:?}")
    };
    assert!(why.contains("token_refresh"), "{why}");

    // An invalid token: the server advises not to retry, and the client stops.
    let config = fast_client(server.ws_url("")).token("not.a.jwt");
    let (client, mut events) = tether_client::connect(config);
    client.subscribe("news:eu").await.unwrap();
    let stopped =
        next_event(&mut events, t, "stopped", |e| matches!(e, Event::Stopped { .. })).await;
    assert!(
        matches!(stopped, Event::Stopped { reason: StopReason::ServerAdvisedNoReconnect }),
        "{stopped:?}"
    );
}
