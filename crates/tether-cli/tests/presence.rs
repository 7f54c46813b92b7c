//! Presence on one node (memory broker): every subscription to a presence channel is an entry
//! with its client id, user and token `info`; subscribers and the HTTP API can ask who is
//! there and how many; entries go when their connection unsubscribes or closes. The API's
//! errors: 401 without a key, 404 for an unknown method, 400 naming the field.

mod common;
use common::json_ws::*;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "presence-secret-0123456789";
const KEY: &str = "presence-api-key-0123456789";
const T: Duration = Duration::from_secs(10);

const BLOCKS: &str = "[[channel]]\npattern = \"room:*\"\npresence = true\nanonymous = true\n";

fn token(claims: Value) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut claims = claims;
    claims["exp"] = json!(exp);
    claims["subscribe"] = json!(["*"]);
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn start(name: &str) -> (Server, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tether-presence-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.toml");
    std::fs::write(&file, BLOCKS).unwrap();
    let file_arg = file.to_str().unwrap().to_owned();
    let server = Server::start(&["--config", &file_arg, "--jwt-secret", SECRET, "--api-key", KEY]);
    (server, dir)
}

/// Connect (with a token, if any) and subscribe to `room:1`; the connection and the client id
/// its first reply carried.
fn member(server: &Server, claims: Option<Value>) -> (JsonWs, String) {
    let query = claims.map(|c| format!("?token={}", token(c))).unwrap_or_default();
    let mut ws = json_client(server, &query);
    let reply = call(&mut ws, json!({"id": 1, "cmd": "subscribe", "channel": "room:1"}));
    let client = reply["result"]["client"].as_str().unwrap_or_else(|| panic!("{reply}"));
    (ws, client.to_owned())
}

fn api(server: &Server, method: &str, body: Value) -> (u16, Value) {
    api_call(server, Some(KEY), method, &body.to_string())
}

fn stats(server: &Server) -> (u64, u64) {
    let (status, body) = api(server, "presence_stats", json!({"channel": "room:1"}));
    assert_eq!(status, 200, "{body}");
    (body["num_clients"].as_u64().unwrap(), body["num_users"].as_u64().unwrap())
}

#[test]
fn presence_lists_every_subscription_and_forgets_the_ones_that_end() {
    let (server, dir) = start("members");
    let (mut ada1, ada1_id) = member(&server, Some(json!({"sub": "ada"})));
    let (_ada2, ada2_id) = member(&server, Some(json!({"sub": "ada"})));
    let (bob, bob_id) = member(&server, Some(json!({"sub": "bob", "info": {"name": "Bob"}})));
    let (_anon, anon_id) = member(&server, None);
    let ids: BTreeSet<_> = [&ada1_id, &ada2_id, &bob_id, &anon_id].into_iter().collect();
    assert_eq!(ids.len(), 4, "client ids are unique: {ids:?}");

    // Only the first successful reply carries the client id.
    let again = call(&mut ada1, json!({"id": 2, "cmd": "ping"}));
    assert!(again["result"]["client"].is_null(), "{again}");

    // A subscriber asks who is there...
    let reply = call(&mut ada1, json!({"id": 3, "cmd": "presence", "channel": "room:1"}));
    let clients = reply["result"]["clients"].as_object().unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(clients.len(), 4, "{reply}");
    assert_eq!(clients[&bob_id], json!({"client": bob_id, "user": "bob", "info": {"name": "Bob"}}));
    assert_eq!(clients[&ada2_id]["user"], "ada");
    assert_eq!(clients[&anon_id], json!({"client": anon_id}), "no token: no user, no info");
    let reply = call(&mut ada1, json!({"id": 4, "cmd": "presence_stats", "channel": "room:1"}));
    assert_eq!(
        (&reply["result"]["num_clients"], &reply["result"]["num_users"]),
        (&json!(4), &json!(3))
    );
    // ...and the HTTP API answers the same.
    let (status, body) = api(&server, "presence", json!({"channel": "room:1"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["clients"].as_object().map(|c| c.len()), Some(4), "{body}");
    assert_eq!(stats(&server), (4, 3));

    // Not a subscriber, or no presence on the channel: refused.
    let mut outsider = json_client(&server, &format!("?token={}", token(json!({"sub": "eve"}))));
    let refused = call(&mut outsider, json!({"id": 1, "cmd": "presence", "channel": "room:1"}));
    assert_eq!(refused["error"]["code"], "not_subscribed", "{refused}");
    call(&mut outsider, json!({"id": 2, "cmd": "subscribe", "channel": "news"}));
    let refused = call(&mut outsider, json!({"id": 3, "cmd": "presence", "channel": "news"}));
    assert_eq!(refused["error"]["code"], "presence_disabled", "{refused}");

    // Unsubscribing and closing take the entries away.
    let reply = call(&mut ada1, json!({"id": 5, "cmd": "unsubscribe", "channel": "room:1"}));
    assert!(reply["error"].is_null(), "{reply}");
    drop(bob); // the TCP connection ends without a close handshake
    assert!(wait_until(T, || stats(&server) == (2, 2)), "{:?}", stats(&server));
    let (_, body) = api(&server, "presence", json!({"channel": "room:1"}));
    let left: BTreeSet<_> = body["clients"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(left, [ada2_id, anon_id].into_iter().collect());
    assert!(
        wait_until(T, || server.metric("tether_presence_entries") == 2.0),
        "{}",
        server.metrics()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_api_refuses_unknown_methods_bad_params_and_missing_keys_by_name() {
    let (server, dir) = start("api");
    let (status, body) = api_call(&server, None, "presence", r#"{"channel":"room:1"}"#);
    assert_eq!(status, 401, "{body}");
    let (status, body) = api(&server, "presense", json!({"channel": "room:1"}));
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("presence_stats"),
        "lists the methods: {body}"
    );
    for (params, field) in [
        (json!({}), "`channel`"),
        (json!({"channel": "room:1", "limit": 3}), "`limit`"),
        (json!({"channel": 7}), "invalid type"),
        (json!({"channel": "news"}), "keeps no presence"),
        (json!({"channel": "bad channel"}), "bad channel"),
    ] {
        let (status, body) = api(&server, "presence_stats", params.clone());
        assert_eq!(status, 400, "{params}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(field), "{params}: expected {field:?} in {error:?}");
    }
    // `publish` is a method like the others.
    let (status, body) = api(&server, "publish", json!({"channel": "room:1", "data": 1}));
    assert_eq!((status, body["offset"].as_u64()), (200, Some(1)), "{body}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_knows_its_client_id_and_asks_for_presence() {
    let (server, dir) = start("rust-client");
    let config =
        fast_client(server.ws_url("")).token(token(json!({"sub": "ada", "info": {"n": 1}})));
    let (client, mut events) = tether_client::connect(config);
    // The id arrives with the server's first reply, right after the connection opens.
    let deadline = std::time::Instant::now() + T;
    while client.client_id().is_none() {
        assert!(std::time::Instant::now() < deadline, "no client id");
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a value, with a deadline
    }
    let id = client.client_id().unwrap();
    client.subscribe("room:7").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| {
        matches!(e, tether_client::Event::Subscribed { .. })
    })
    .await;
    let present = client.presence("room:7").await.unwrap();
    assert_eq!(present.keys().collect::<Vec<_>>(), [&id]);
    assert_eq!(present[&id].user.as_deref(), Some("ada"));
    assert_eq!(present[&id].info, Some(json!({"n": 1})));
    let stats = client.presence_stats("room:7").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));
    // History through the client: room:* keeps none here, so only where the channel stands.
    let page = client.history("room:7", 10, None, false).await.unwrap();
    assert_eq!((page.offset, page.publications.map(|p| p.len())), (Some(0), Some(0)));
    match client.presence("room:8").await {
        Err(tether_client::ClientError::Refused(e)) => {
            assert_eq!(e.code.as_str(), "not_subscribed")
        }
        other => panic!("{other:?}"),
    }
    client.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tether_api_and_tether_presence_call_the_server_api_from_the_shell() {
    let (server, dir) = start("cli");
    let (_ws, id) = member(&server, Some(json!({"sub": "ada", "info": {"name": "Ada"}})));
    let base = server.http("");
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &base, "--api-key", KEY]);
        let out = tether(&all, &[]);
        let (stdout, stderr) = text(&out);
        (out.status.success(), stdout, stderr)
    };
    let (ok, stdout, stderr) = run(&["presence", "room:1"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), format!("{id}\tada\t{{\"name\":\"Ada\"}}"));
    assert!(stderr.contains("1 client(s) in `room:1`"), "{stderr}");
    let (ok, stdout, _) = run(&["presence", "--stats", "room:1"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"num_clients": 1, "num_users": 1})
    );
    let (ok, stdout, _) = run(&["api", "presence_stats", r#"{"channel":"room:1"}"#]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["num_clients"], 1);
    // What is wrong, said plainly, and a failing exit.
    for (args, needle) in [
        (vec!["api", "nope"], "no API method `nope`"),
        (vec!["api", "presence", "not json"], "PARAMS must be a JSON object"),
        (vec!["api", "presence", "{}"], "missing field `channel`"),
        (vec!["presence", "news"], "keeps no presence"),
    ] {
        let (ok, _, stderr) = run(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in {stderr}");
    }
    let out = tether(&["presence", "--server", &base, "room:1"], &[]);
    assert!(text(&out).1.contains("needs an API key"), "{}", text(&out).1);
    std::fs::remove_dir_all(&dir).unwrap();
}
