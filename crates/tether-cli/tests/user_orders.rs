//! Acting on users (issue 20, points 4 and 5), on one node (memory broker) and on two nodes
//! sharing a real Redis: the token's server-side subscriptions (`user_channel`, the `channels`
//! claim) reach every connection of the user and recover after a reconnect through
//! `connect`'s `subs`; the API's `subscribe`, `unsubscribe` and `disconnect` reach every
//! connection of the user on every node and nobody else; `history_remove`; the API's errors.

mod common;
use common::json_ws::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "user-orders-secret-0123456789";
const KEY: &str = "user-orders-api-key-0123456789";
const BLOCKS: &str = "[[channel]]\npattern = \"user:*\"\nhistory = \"100/5m\"\n\
                      [[channel]]\npattern = \"team:*\"\nhistory = \"100/5m\"\n\
                      [[channel]]\npattern = \"talk:*\"\njoin_leave = true\n";

fn token(sub: &str, channels: &[&str]) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": sub, "exp": exp, "channels": channels, "subscribe": ["talk:*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// One node, or two on one Redis: `a` and `b` (the same node without Redis).
struct Nodes {
    a: Server,
    b: Option<Server>,
    dir: std::path::PathBuf,
    _redis: Option<Redis>,
}

impl Nodes {
    fn start(name: &str, redis: Option<Redis>) -> Nodes {
        let dir =
            std::env::temp_dir().join(format!("tether-user-orders-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tether.toml");
        std::fs::write(&file, BLOCKS).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let mut args = vec![
            "--config",
            &file,
            "--jwt-secret",
            SECRET,
            "--api-key",
            KEY,
            "--user-channel",
            "user:{sub}",
        ];
        let url = redis.as_ref().map(Redis::url);
        if let Some(url) = &url {
            args.extend(["--broker", url.as_str()]);
        }
        let a = Server::start(&args);
        let b = redis.is_some().then(|| Server::start(&args));
        Nodes { a, b, dir, _redis: redis }
    }

    fn b(&self) -> &Server {
        self.b.as_ref().unwrap_or(&self.a)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn api(server: &Server, method: &str, body: Value) -> (u16, Value) {
    api_call(server, Some(KEY), method, &body.to_string())
}

/// A connection that authenticated with `connect` (recovering `subs`); the connect reply.
fn connected(server: &Server, sub: &str, channels: &[&str], subs: Value) -> (JsonWs, Value) {
    let mut ws = json_client(server, "");
    let cmd = json!({"id": 1, "cmd": "connect", "token": token(sub, channels), "subs": subs});
    let reply = call(&mut ws, cmd);
    assert!(reply["error"].is_null() && reply["id"] == 1, "{reply}");
    (ws, reply)
}

/// The next message of `ws` that is not a reply (publications, subscribed, …).
fn next_push(ws: &mut JsonWs) -> Value {
    loop {
        let msg = next_json(ws);
        if msg["type"] != "reply" {
            return msg;
        }
    }
}

/// Nothing arrived before a ping's answer: `ws` was sent nothing meanwhile.
fn quiet(ws: &mut JsonWs) {
    let reply = call(ws, json!({"id": 99, "cmd": "ping"}));
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_u64()),
        (Some("reply"), Some(99)),
        "{reply}"
    );
}

fn publish(server: &Server, channel: &str, data: Value) -> u64 {
    let (status, body) = api(server, "publish", json!({"channel": channel, "data": data}));
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().unwrap()
}

fn redis_or_skip() -> Option<Option<Redis>> {
    Redis::start().map(Some)
}

fn server_side_subscriptions(nodes: &Nodes) {
    // Ada on both nodes, Bob on one: the reply lists the token's server-side subscriptions.
    let (mut ada_a, reply) = connected(&nodes.a, "ada", &["team:red"], json!({}));
    let subs = &reply["result"]["subscriptions"];
    assert!(subs["user:ada"]["epoch"].is_string() && subs["team:red"].is_object(), "{reply}");
    assert!(reply["result"]["client"].is_string(), "{reply}");
    let (mut ada_b, _) = connected(nodes.b(), "ada", &[], json!({}));
    let (mut bob, _) = connected(&nodes.a, "bob", &["team:red"], json!({}));

    let offset = publish(nodes.b(), "user:ada", json!("for ada"));
    for ws in [&mut ada_a, &mut ada_b] {
        let p = next_push(ws);
        assert_eq!((p["channel"].as_str(), p["offset"].as_u64()), (Some("user:ada"), Some(offset)));
        assert_eq!(p["data"], "for ada");
    }
    publish(&nodes.a, "team:red", json!("team"));
    assert_eq!(next_push(&mut ada_a)["data"], "team");
    assert_eq!(next_push(&mut bob)["data"], "team");
    quiet(&mut ada_b); // its token has no team:red
    quiet(&mut bob); // nor Ada's channel

    // A second `connect` (a fresh token) lists what it holds, where delivery stands.
    let cmd = json!({"id": 7, "cmd": "connect", "token": token("ada", &["team:red"])});
    let again = call(&mut ada_a, cmd);
    let subs = &again["result"]["subscriptions"];
    assert_eq!(subs["user:ada"]["offset"].as_u64(), Some(offset), "{again}");
    assert!(subs["team:red"].is_object() && subs["user:ada"]["recovered"].is_null(), "{again}");

    // A client may attach to its own channel like to any other: a plain ok, no second
    // subscription (one publication, one delivery).
    let again = call(&mut ada_a, json!({"id": 5, "cmd": "subscribe", "channel": "user:ada"}));
    assert!(again["error"].is_null() && again["result"]["epoch"].is_null(), "{again}");
    let offset = publish(&nodes.a, "user:ada", json!("once"));
    assert_eq!(next_push(&mut ada_a)["offset"].as_u64(), Some(offset));
    quiet(&mut ada_a);
    next_push(&mut ada_b);
    let other = call(&mut ada_a, json!({"id": 6, "cmd": "subscribe", "channel": "user:bob"}));
    assert_eq!(other["error"]["code"], "forbidden", "{other}");
}

#[test]
fn the_tokens_server_side_subscriptions_reach_every_connection_of_the_user() {
    server_side_subscriptions(&Nodes::start("sss-memory", None));
    let Some(redis) = redis_or_skip() else { return };
    server_side_subscriptions(&Nodes::start("sss-redis", redis));
}

fn recovery(nodes: &Nodes) {
    let (mut ws, reply) = connected(&nodes.a, "cy", &[], json!({}));
    let made = &reply["result"]["subscriptions"]["user:cy"];
    let epoch = made["epoch"].as_str().unwrap().to_owned();
    let first = publish(nodes.b(), "user:cy", json!(1));
    let p = next_push(&mut ws);
    assert_eq!(p["offset"].as_u64(), Some(first));
    let epoch = p["epoch"].as_str().map(str::to_owned).unwrap_or(epoch);
    drop(ws);

    // Missed while away, on the other node.
    let second = publish(nodes.b(), "user:cy", json!(2));
    let third = publish(nodes.b(), "user:cy", json!(3));
    let subs = json!({"user:cy": {"epoch": epoch, "offset": first}});
    let (mut ws, reply) = connected(nodes.b(), "cy", &[], subs);
    let made = &reply["result"]["subscriptions"]["user:cy"];
    assert_eq!(made["recovered"], true, "{reply}");
    assert_eq!(made["offset"].as_u64(), Some(third), "{reply}");
    for (offset, data) in [(second, 2), (third, 3)] {
        let p = next_push(&mut ws);
        assert_eq!((p["offset"].as_u64(), p["data"].as_u64()), (Some(offset), Some(data)), "{p}");
    }
    let fourth = publish(&nodes.a, "user:cy", json!(4));
    assert_eq!(next_push(&mut ws)["offset"].as_u64(), Some(fourth));

    // A position from another epoch cannot be continued: said so, and live from the top.
    let subs = json!({"user:cy": {"epoch": "not-this-one", "offset": 1}});
    let (mut ws2, reply) = connected(&nodes.a, "cy", &[], subs);
    let made = &reply["result"]["subscriptions"]["user:cy"];
    assert_eq!(made["recovered"], false, "{reply}");
    assert!(made["reason"].is_string(), "{reply}");
    quiet(&mut ws2);
}

#[test]
fn server_side_subscriptions_recover_what_a_reconnecting_client_missed() {
    recovery(&Nodes::start("recovery-memory", None));
    let Some(redis) = redis_or_skip() else { return };
    recovery(&Nodes::start("recovery-redis", redis));
}

fn orders(nodes: &Nodes) {
    // Ada on both nodes (one through `connect`, one with `?token=`), Bob beside her.
    let (mut ada_a, _) = connected(&nodes.a, "ada", &[], json!({}));
    let mut ada_b = json_client(nodes.b(), &format!("?token={}", token("ada", &[])));
    quiet(&mut ada_b);
    let (mut bob, _) = connected(nodes.b(), "bob", &[], json!({}));

    let (status, body) = api(&nodes.a, "subscribe", json!({"user": "ada", "channel": "news"}));
    assert_eq!(status, 200, "{body}");
    for ws in [&mut ada_a, &mut ada_b] {
        let told = next_push(ws);
        assert_eq!(
            (told["type"].as_str(), told["channel"].as_str()),
            (Some("subscribed"), Some("news"))
        );
        assert!(told["epoch"].is_string() && told["offset"].is_u64(), "{told}");
    }
    let offset = publish(nodes.b(), "news", json!("extra"));
    for ws in [&mut ada_a, &mut ada_b] {
        let p = next_push(ws);
        assert_eq!((p["channel"].as_str(), p["offset"].as_u64()), (Some("news"), Some(offset)));
    }
    quiet(&mut bob);

    let (status, body) = api(nodes.b(), "unsubscribe", json!({"user": "ada", "channel": "news"}));
    assert_eq!(status, 200, "{body}");
    for ws in [&mut ada_a, &mut ada_b] {
        let told = next_push(ws);
        assert_eq!(
            (told["type"].as_str(), told["channel"].as_str()),
            (Some("unsubscribed"), Some("news"))
        );
    }
    publish(&nodes.a, "news", json!("not for ada any more"));
    quiet(&mut ada_a);
    quiet(&mut ada_b);

    // Logged out everywhere, told why and that coming back may help; Bob stays.
    let bye = json!({"user": "ada", "code": 4321, "reason": "moved elsewhere", "reconnect": true});
    let (status, body) = api(nodes.b(), "disconnect", bye);
    assert_eq!(status, 200, "{body}");
    for ws in [&mut ada_a, &mut ada_b] {
        let (advice, code) = advice_and_close(ws);
        assert_eq!(code, 4321);
        assert_eq!(advice["code"], 4321);
        assert_eq!(advice["reason"], "moved elsewhere");
        assert_eq!(advice["reconnect"], true);
    }
    quiet(&mut bob);
    let (status, _) = api(&nodes.a, "disconnect", json!({"user": "bob"}));
    assert_eq!(status, 200);
    let (advice, code) = advice_and_close(&mut bob);
    assert_eq!((code, advice["reconnect"].as_bool()), (4500, Some(false)), "{advice}");
    let on = |s: &Server| s.metric("tether_user_orders_total");
    let orders = on(&nodes.a) + nodes.b.as_ref().map_or(0.0, on);
    // Two connections each for subscribe, unsubscribe and Ada's disconnect, one for Bob's.
    assert_eq!(orders, 7.0, "tether_user_orders_total");
}

#[test]
fn api_subscribe_unsubscribe_and_disconnect_reach_the_user_on_every_node() {
    orders(&Nodes::start("orders-memory", None));
    let Some(redis) = redis_or_skip() else { return };
    orders(&Nodes::start("orders-redis", redis));
}

fn history_remove(nodes: &Nodes) {
    let (_, reply) = connected(&nodes.a, "dee", &[], json!({}));
    let epoch = reply["result"]["subscriptions"]["user:dee"]["epoch"].as_str().unwrap().to_owned();
    let first = publish(&nodes.a, "user:dee", json!(1));
    let top = publish(&nodes.a, "user:dee", json!(2));
    let epoch = if epoch.is_empty() {
        let (_, h) = api(&nodes.a, "history", json!({"channel": "user:dee", "limit": 0}));
        h["epoch"].as_str().unwrap().to_owned()
    } else {
        epoch
    };
    let (status, body) = api(nodes.b(), "history_remove", json!({"channel": "user:dee"}));
    assert_eq!((status, body), (200, json!({})));
    let (_, page) = api(&nodes.a, "history", json!({"channel": "user:dee"}));
    assert_eq!(page["publications"], json!([]), "{page}");
    assert_eq!(page["offset"].as_u64(), Some(top), "the position stays: {page}");
    assert_eq!(publish(&nodes.a, "user:dee", json!(3)), top + 1);
    let subs = json!({"user:dee": {"epoch": epoch, "offset": first}});
    let (_, reply) = connected(nodes.b(), "dee", &[], subs);
    assert_eq!(reply["result"]["subscriptions"]["user:dee"]["recovered"], false, "{reply}");
}

#[test]
fn history_remove_forgets_the_publications_and_keeps_the_position() {
    history_remove(&Nodes::start("remove-memory", None));
    let Some(redis) = redis_or_skip() else { return };
    history_remove(&Nodes::start("remove-redis", redis));
}

#[test]
fn the_user_methods_refuse_what_does_not_fit() {
    let nodes = Nodes::start("errors", None);
    let bad = |method: &str, body: Value, field: &str| {
        let (status, answer) = api(&nodes.a, method, body.clone());
        assert_eq!(status, 400, "{method} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(field), "{method} {body}: {error} should name {field}");
    };
    bad("subscribe", json!({"channel": "news"}), "user");
    bad("subscribe", json!({"user": "ada", "channel": "bad channel"}), "channel");
    bad("unsubscribe", json!({"user": "", "channel": "news"}), "user");
    bad("disconnect", json!({"user": "ada", "code": 1000}), "code");
    bad("disconnect", json!({"user": "ada", "code": 4000}), "code");
    bad("disconnect", json!({"user": "ada", "code": 4500, "reconnect": true}), "reconnect");
    bad("disconnect", json!({"user": "ada", "code": 4001, "reconnect": false}), "reconnect");
    bad("disconnect", json!({"user": "ada", "reason": "x".repeat(200)}), "reason");
    bad("disconnect", json!({"user": "ada", "extra": 1}), "extra");
    bad("history_remove", json!({}), "channel");
    let (status, _) = api_call(&nodes.a, None, "disconnect", r#"{"user": "ada"}"#);
    assert_eq!(status, 401);
    let (status, body) = api(&nodes.a, "logout", json!({}));
    assert_eq!(status, 404, "{body}");
    // Nobody of that name here: fine, it reached no connection.
    let (status, body) = api(&nodes.a, "disconnect", json!({"user": "nobody"}));
    assert_eq!((status, body), (200, json!({"connections": 0})));
}

#[test]
fn channels_and_info_answer_for_every_node() {
    let Some(redis) = redis_or_skip() else { return };
    let nodes = Nodes::start("cluster", redis);
    let (mut a1, _) = connected(&nodes.a, "ann", &["team:blue"], json!({}));
    let (mut a2, _) = connected(&nodes.a, "abe", &["team:blue"], json!({}));
    let (mut b1, _) = connected(nodes.b(), "ben", &["team:blue", "team:green"], json!({}));
    for ws in [&mut a1, &mut a2, &mut b1] {
        quiet(ws);
    }
    for server in [&nodes.a, nodes.b()] {
        let (status, listed) = api(server, "channels", json!({"pattern": "team:*"}));
        assert_eq!(status, 200, "{listed}");
        assert_eq!(
            listed,
            json!({"channels": {"team:blue": {"num_clients": 3}, "team:green": {"num_clients": 1}}})
        );
        let (_, all) = api(server, "channels", json!({}));
        assert_eq!(all["channels"]["user:ben"], json!({"num_clients": 1}), "{all}");

        let (status, info) = api(server, "info", json!({}));
        assert_eq!(status, 200, "{info}");
        let listed = info["nodes"].as_array().unwrap();
        assert_eq!(listed.len(), 2, "{info}");
        let mut connections: Vec<u64> =
            listed.iter().map(|n| n["connections"].as_u64().unwrap()).collect();
        connections.sort();
        assert_eq!(connections, vec![1, 2], "{info}");
        assert_ne!(listed[0]["name"], listed[1]["name"], "{info}");
        assert!(info.get("missing_nodes").is_none(), "{info}");
    }
}

fn user_edges(nodes: &Nodes) {
    let (mut observer, _) = connected(&nodes.a, "obs", &[], json!({}));
    let joined = call(&mut observer, json!({"id": 2, "cmd": "subscribe", "channel": "talk:1"}));
    assert!(joined["error"].is_null(), "{joined}");
    assert_eq!(next_push(&mut observer)["type"], "join"); // its own
    assert_eq!(next_push(&mut observer)["type"], "user_join");
    let mut seen = Vec::new();
    let mut hear = |ws: &mut JsonWs, n: usize| {
        for _ in 0..n {
            let m = next_push(ws);
            seen.push(format!(
                "{} {}",
                m["type"].as_str().unwrap(),
                m["info"]["client"].as_str().unwrap()
            ));
        }
    };
    // Ada's first connection (node A), then her second (node B): one user_join, for the first.
    let (mut ada_a, reply) = connected(&nodes.a, "ada", &[], json!({}));
    let a_id = reply["result"]["client"].as_str().unwrap().to_owned();
    call(&mut ada_a, json!({"id": 2, "cmd": "subscribe", "channel": "talk:1"}));
    hear(&mut observer, 2);
    let (mut ada_b, reply) = connected(nodes.b(), "ada", &[], json!({}));
    let b_id = reply["result"]["client"].as_str().unwrap().to_owned();
    call(&mut ada_b, json!({"id": 2, "cmd": "subscribe", "channel": "talk:1"}));
    hear(&mut observer, 1);
    // Her second goes (unsubscribe on B), then her first (closed on A): one user_leave, last.
    call(&mut ada_b, json!({"id": 3, "cmd": "unsubscribe", "channel": "talk:1"}));
    hear(&mut observer, 1);
    drop(ada_a);
    hear(&mut observer, 2);
    let want = [
        format!("join {a_id}"),
        format!("user_join {a_id}"),
        format!("join {b_id}"),
        format!("leave {b_id}"),
        format!("leave {a_id}"),
        format!("user_leave {a_id}"),
    ];
    assert_eq!(seen, want);
    quiet(&mut observer);
}

#[test]
fn a_users_first_join_and_last_leave_are_told_once_across_nodes() {
    user_edges(&Nodes::start("edges-memory", None));
    let Some(redis) = redis_or_skip() else { return };
    user_edges(&Nodes::start("edges-redis", redis));
}

#[test]
fn a_new_token_for_someone_else_ends_the_previous_users_channel() {
    let nodes = Nodes::start("switch", None);
    let (mut ws, _) = connected(&nodes.a, "ada", &["team:red"], json!({}));
    // Bob's token on the same connection: Ada's channel (and a claim Bob lacks) end, said so.
    let cmd = json!({"id": 2, "cmd": "connect", "token": token("bob", &[])});
    send(&mut ws, cmd);
    let mut ended = [next_json(&mut ws), next_json(&mut ws)];
    ended.sort_by_key(|m| m["channel"].as_str().unwrap_or_default().to_owned());
    assert_eq!(ended[0], json!({"type": "unsubscribed", "channel": "team:red"}));
    assert_eq!(ended[1], json!({"type": "unsubscribed", "channel": "user:ada"}));
    let reply = next_json(&mut ws);
    let subs = reply["result"]["subscriptions"].as_object().unwrap();
    assert_eq!(subs.keys().collect::<Vec<_>>(), ["user:bob"], "{reply}");
    publish(&nodes.a, "user:ada", json!("for ada"));
    quiet(&mut ws);
    // And orders for Ada no longer reach it; Bob's do.
    let (_, body) = api(&nodes.a, "disconnect", json!({"user": "ada"}));
    assert_eq!(body, json!({"connections": 0}));
    quiet(&mut ws);
}

#[test]
fn handshake_channels_keep_their_place_before_the_tokens_own() {
    // One subscription allowed: the `?channel=` the client asked for wins over the user's
    // channel (which is skipped and logged).
    let server = Server::start(&[
        "--jwt-secret",
        SECRET,
        "--user-channel",
        "user:{sub}",
        "--max-subscriptions",
        "1",
        "--anonymous-channel",
        "feed",
    ]);
    let query = format!("?token={}&channel=feed", token("ada", &[]));
    let mut ws = json_client(&server, &query);
    quiet(&mut ws);
    let offset = server.publish("feed", "\"hello\"")["offset"].as_u64();
    let p = next_push(&mut ws);
    assert_eq!((p["channel"].as_str(), p["offset"].as_u64()), (Some("feed"), offset), "{p}");
}

#[test]
fn questions_whose_asker_hangs_up_do_not_use_up_the_node() {
    use std::io::Write;
    let Some(redis) = redis_or_skip() else { return };
    let nodes = Nodes::start("hang-up", redis);
    let waiting = || nodes.a.metric("tether_cluster_questions_waiting");
    // Node B hears questions but cannot answer while stopped: node A's `info` waits 2 s for
    // it, at most 64 at once (the rest get 429).
    nodes.b().signal(nix::sys::signal::Signal::SIGSTOP);
    let request = format!(
        "POST /api/info HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    let askers: Vec<std::net::TcpStream> = (0..70)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(nodes.a.addr).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            s
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || waiting() >= 1.0), "{}", waiting());
    // They hang up while waiting: however each question ends (forgotten with its asker, or
    // its 2 s up), none stays waiting...
    drop(askers);
    assert!(wait_until(Duration::from_secs(10), || waiting() == 0.0), "{}", waiting());
    // ...so the node still asks (a leaked 64 would make every question a 429).
    nodes.b().signal(nix::sys::signal::Signal::SIGCONT);
    let (status, info) = api(&nodes.a, "info", json!({}));
    assert_eq!((status, info["nodes"].as_array().map(Vec::len)), (200, Some(2)), "{info}");
}
