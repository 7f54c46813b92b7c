//! Join/leave on channels with `join_leave = true`: subscribers are told of every subscription
//! that begins or ends, and of a user's first and last (`user_join` / `user_leave`), in order;
//! in a busy channel the changes come batched, so that a mass leave costs N messages, not N².

mod common;
use common::json_ws::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &str = "join-leave-secret-0123456789";
const T: Duration = Duration::from_secs(10);

fn token(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": sub, "exp": exp, "subscribe": ["*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn start(name: &str, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tether-join-leave-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.toml");
    let blocks = "[[channel]]\npattern = \"room:*\"\njoin_leave = true\nanonymous = true\n";
    std::fs::write(&file, blocks).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let mut args = vec!["--config", &file, "--jwt-secret", SECRET];
    args.extend(extra);
    (Server::start(&args), dir)
}

/// The next change the observer is told of: (type, client, user).
fn change(ws: &mut JsonWs) -> (String, String, Option<String>) {
    let msg = next_json(ws);
    let kind = msg["type"].as_str().unwrap_or_else(|| panic!("{msg}")).to_owned();
    let info = &msg["info"];
    (kind, info["client"].as_str().unwrap().to_owned(), info["user"].as_str().map(str::to_owned))
}

fn c(kind: &str, client: &str, user: &str) -> (String, String, Option<String>) {
    (kind.to_owned(), client.to_owned(), Some(user.to_owned()))
}

#[test]
fn subscribers_hear_joins_leaves_and_each_users_first_and_last_in_order() {
    let (server, dir) = start("order", &[]);
    let mut observer = json_client(&server, &format!("?token={}", token("obs")));
    let me = subscribe_reply(&mut observer, "room:1");
    // A subscriber hears its own join, after its subscribe's reply.
    assert_eq!(change(&mut observer), c("join", &me, "obs"));
    assert_eq!(change(&mut observer), c("user_join", &me, "obs"));

    let ada_token = format!("?token={}", token("ada"));
    let mut ada1 = json_client(&server, &ada_token);
    let id1 = subscribe_reply(&mut ada1, "room:1");
    assert_eq!(change(&mut observer), c("join", &id1, "ada"));
    assert_eq!(change(&mut observer), c("user_join", &id1, "ada"), "ada's first connection");
    let mut ada2 = json_client(&server, &ada_token);
    let id2 = subscribe_reply(&mut ada2, "room:1");
    assert_eq!(change(&mut observer), c("join", &id2, "ada"), "ada's second: no user_join");

    let reply = call(&mut ada1, json!({"id": 2, "cmd": "unsubscribe", "channel": "room:1"}));
    assert!(reply["error"].is_null(), "{reply}");
    assert_eq!(change(&mut observer), c("leave", &id1, "ada"), "ada still has a connection");
    drop(ada2); // the last one: the TCP connection ends without a close handshake
    assert_eq!(change(&mut observer), c("leave", &id2, "ada"));
    assert_eq!(change(&mut observer), c("user_leave", &id2, "ada"));

    // An anonymous subscriber has no user: join and leave only.
    let mut anon = json_client(&server, "");
    let anon_id = subscribe_reply(&mut anon, "room:1");
    let msg = next_json(&mut observer);
    assert_eq!(
        (msg["type"].as_str(), msg["info"].clone()),
        (Some("join"), json!({"client": anon_id}))
    );
    drop(anon);
    assert_eq!(next_json(&mut observer)["type"], "leave");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `n` members and one observer in `room:1`; then all members leave at once. The messages
/// that carried the changes to subscribers, the server CPU it took, and how many messages the
/// observer got for the `n` leaves.
fn mass_leave(server: &Server, n: usize) -> (f64, f64, usize) {
    let mut observer = json_client(server, "");
    subscribe_reply(&mut observer, "room:1");
    let mut members: Vec<JsonWs> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ws = json_client(server, "");
        subscribe_reply(&mut ws, "room:1");
        members.push(ws);
    }
    // Every join (the observer's own too) has reached the observer, alone or in batches,
    // before the leave starts.
    let mut joins = 0;
    while joins < n + 1 {
        let msg = next_json(&mut observer);
        joins += match msg["type"].as_str() {
            Some("join") => 1,
            Some("presence_batch") => {
                msg["events"].as_array().unwrap().iter().filter(|e| e["type"] == "join").count()
            }
            _ => 0,
        };
    }
    let (messages, cpu) =
        (server.metric("tether_presence_messages_total"), server.metric("process_cpu_seconds"));
    drop(members);
    let (mut leaves, mut received) = (0, 0);
    let deadline = Instant::now() + T;
    while leaves < n {
        assert!(Instant::now() < deadline, "{leaves} of {n} leaves heard");
        let msg = next_json(&mut observer);
        received += 1;
        leaves += match msg["type"].as_str() {
            Some("leave") => 1,
            Some("presence_batch") => {
                msg["events"].as_array().unwrap().iter().filter(|e| e["type"] == "leave").count()
            }
            _ => 0,
        };
    }
    // Every leave is counted once it is announced; the count settles as the last go out.
    let sent = server.metric("tether_presence_messages_total") - messages;
    (sent, server.metric("process_cpu_seconds") - cpu, received)
}

#[test]
fn a_mass_leave_in_a_busy_channel_costs_n_messages_not_n_squared() {
    const N: usize = 1000;
    // Without batching (every change alone to every remaining subscriber), and with it.
    let (alone, dir_a) = start("alone", &["--join-leave-batch-above", "100000"]);
    let (batched, dir_b) =
        start("batched", &["--join-leave-batch-above", "100", "--join-leave-interval", "200ms"]);
    let (sent_alone, cpu_alone, got_alone) = mass_leave(&alone, N);
    let (sent_batched, cpu_batched, got_batched) = mass_leave(&batched, N);
    eprintln!(
        "{N} members leave at once: {sent_alone} messages, {cpu_alone:.3} s server CPU, {got_alone} \
         messages to the observer without batching; {sent_batched} messages, {cpu_batched:.3} s, \
         {got_batched} with batches of 200 ms"
    );
    assert_eq!(got_alone, N, "alone: one message per leave");
    // Batches while the channel has more than 100 subscribers here; the last 100 leaves, in a
    // channel that small again, go alone.
    assert!(got_batched <= 100 + 10, "batched: {got_batched} messages for {N} leaves");
    assert!(sent_alone > (N * N / 4) as f64, "{sent_alone}: the N² the batching avoids");
    assert!(sent_batched < sent_alone / 50.0, "{sent_batched} vs {sent_alone}");
    std::fs::remove_dir_all(&dir_a).unwrap();
    std::fs::remove_dir_all(&dir_b).unwrap();
}
