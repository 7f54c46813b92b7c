//! Presence across nodes on a real Redis: every node answers with the union of all nodes'
//! entries; a node killed with `kill -9` vanishes within `presence_ttl`; a node shut down
//! cleanly takes its entries with it at once; keeping presence alive costs Redis a few
//! commands per node, not a write per client, before and after a restart; and joins and
//! leaves (with each user's first and last) reach subscribers on every node, a killed node's
//! leaves included. The same on a Redis Cluster (three masters with a replica each), where
//! liveness is kept per channel.

mod common;
use common::json_ws::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const KEY: &str = "presence-api-key-0123456789";
const T: Duration = Duration::from_secs(10);
const BLOCKS: &str = "[[channel]]\npattern = \"room:*\"\npresence = true\n\
                      [[channel]]\npattern = \"talk:*\"\njoin_leave = true\n";

struct Nodes {
    dir: std::path::PathBuf,
    file: String,
}

impl Nodes {
    fn new(name: &str) -> Nodes {
        let dir = std::env::temp_dir()
            .join(format!("tether-presence-redis-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tether.toml");
        std::fs::write(&file, BLOCKS).unwrap();
        Nodes { file: file.to_str().unwrap().to_owned(), dir }
    }

    fn start(&self, broker: &str, ttl: &str) -> Server {
        Server::start(&[
            "--config",
            &self.file,
            "--broker",
            broker,
            "--presence-ttl",
            ttl,
            "--api-key",
            KEY,
        ])
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A subscriber of `room:1` on `server`; its connection and client id.
fn member(server: &Server) -> (JsonWs, String) {
    let mut ws = json_client(server, "");
    let reply = call(&mut ws, json!({"id": 1, "cmd": "subscribe", "channel": "room:1"}));
    let client = reply["result"]["client"].as_str().unwrap_or_else(|| panic!("{reply}"));
    (ws, client.to_owned())
}

/// The client ids `server` sees in `room:1`, sorted.
fn present(server: &Server) -> Vec<String> {
    let (status, body) = api_call(server, Some(KEY), "presence", r#"{"channel":"room:1"}"#);
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> = body["clients"].as_object().unwrap().keys().cloned().collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn every_node_sees_every_nodes_entries_and_a_killed_node_vanishes_within_presence_ttl() {
    let Some(redis) = Redis::start() else { return };
    entries_across_nodes(&redis.url(), "kill");
}

/// The same on a Redis Cluster, where a node's liveness is kept per channel (one script call
/// per channel; see `redis_presence`).
#[test]
fn on_a_cluster_every_node_sees_every_nodes_entries_and_a_killed_node_vanishes() {
    let Some(cluster) = common::cluster::Cluster::start() else { return };
    entries_across_nodes(&cluster.url(), "cluster-kill");
}

fn entries_across_nodes(broker: &str, name: &str) {
    let nodes = Nodes::new(name);
    let (a, mut b) = (nodes.start(broker, "1s"), nodes.start(broker, "1s"));
    let (_a1, a1) = member(&a);
    let (a2_ws, a2) = member(&a);
    let (_b1, b1) = member(&b);
    let all = sorted(&[&a1, &a2, &b1]);
    assert!(
        wait_until(T, || present(&a) == all && present(&b) == all),
        "{:?} {:?}",
        present(&a),
        present(&b)
    );
    let (_, stats) = api_call(&b, Some(KEY), "presence_stats", r#"{"channel":"room:1"}"#);
    assert_eq!((stats["num_clients"].as_u64(), stats["num_users"].as_u64()), (Some(3), Some(3)));

    // A subscription that ends on one node is gone on the other.
    drop(a2_ws);
    let left = sorted(&[&a1, &b1]);
    assert!(wait_until(T, || present(&b) == left), "{:?}", present(&b));

    // kill -9: no goodbye. Node A stops showing B's entry within presence_ttl (1 s) plus a
    // refresh period's slack.
    b.kill9();
    let killed = Instant::now();
    assert!(wait_until(T, || present(&a) == [a1.clone()]), "{:?}", present(&a));
    let took = killed.elapsed();
    assert!(took <= Duration::from_millis(1_800), "B's entry outlived it by {took:?}");
    eprintln!("a killed node's entries vanished after {took:?} (presence_ttl 1s)");
}

#[test]
fn a_clean_shutdown_takes_its_entries_with_it_long_before_presence_ttl() {
    let Some(redis) = Redis::start() else { return };
    clean_shutdown(&redis.url(), "clean");
}

#[test]
fn on_a_cluster_a_clean_shutdown_takes_its_entries_with_it() {
    let Some(cluster) = common::cluster::Cluster::start() else { return };
    clean_shutdown(&cluster.url(), "cluster-clean");
}

fn clean_shutdown(broker: &str, name: &str) {
    let nodes = Nodes::new(name);
    // A long ttl: what disappears within seconds below was removed, not expired.
    let (a, mut b) = (nodes.start(broker, "30s"), nodes.start(broker, "30s"));
    let (_a1, a1) = member(&a);
    const N: usize = 200;
    let held: Vec<JsonWs> = (0..N).map(|_| member(&b).0).collect();
    assert!(wait_until(T, || present(&a).len() == N + 1), "{}", present(&a).len());
    let stopping = Instant::now();
    let status = b.terminate();
    assert!(status.success(), "{status:?}");
    assert!(wait_until(T, || present(&a) == [a1.clone()]), "{}", present(&a).len());
    let took = stopping.elapsed();
    eprintln!("a cleanly stopped node's {N} entries were gone {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(10), "{took:?}: expired rather than removed");
    drop(held);
}

#[test]
fn presence_costs_redis_per_node_not_per_client_and_a_restart_brings_no_resync_burst() {
    let Some(redis) = Redis::start() else { return };
    let nodes = Nodes::new("restart");
    let mut a = nodes.start(&redis.url(), "900ms");
    const N: usize = 200;
    let clients: Vec<(JsonWs, String)> = (0..N).map(|_| member(&a)).collect();
    assert!(wait_until(T, || present(&a).len() == N), "{}", present(&a).len());
    let quiet = |redis: &Redis| {
        let before = redis.commands_processed();
        std::thread::sleep(Duration::from_secs(2)); // a measurement window
        (redis.commands_processed() - before) as f64 / 2.0
    };
    // Steady state: the node's entries stay alive with its liveness key and one extension per
    // channel every 300 ms (plus the pub/sub link's pings): not N writes each time, which
    // would be ~670 commands/s here.
    let before = quiet(&redis);
    assert!(before < 40.0, "{before:.1} commands/s: presence traffic grows with clients");
    // The node is killed and started again; 50 clients join the new process. The old
    // process's entries stop counting when its liveness key expires.
    a.kill9();
    drop(clients);
    let a = a.restart();
    let _again: Vec<(JsonWs, String)> = (0..N).map(|_| member(&a)).collect();
    assert!(wait_until(T, || present(&a).len() == N), "{}", present(&a).len());
    let after = quiet(&redis);
    eprintln!("Redis commands/s with {N} presence entries (900ms ttl): {before:.1} before a restart, {after:.1} after");
    assert!(after <= before * 1.5 + 5.0, "{before:.1} → {after:.1} commands/s after the restart");
}

/// Read until a message of `kind` about `client` comes; panics after 10 s (the read timeout).
fn heard(ws: &mut JsonWs, kind: &str, client: &str) -> Instant {
    loop {
        let msg = next_json(ws);
        if msg["type"] == kind && msg["info"]["client"] == client {
            return Instant::now();
        }
    }
}

#[test]
fn joins_and_leaves_cross_nodes_and_a_killed_nodes_members_leave_within_presence_ttl() {
    let Some(redis) = Redis::start() else { return };
    joins_and_leaves_across_nodes(&redis.url(), "join-leave");
}

/// The same on a Redis Cluster: changes go out with `SPUBLISH` in the channel's slot.
#[test]
fn on_a_cluster_joins_and_leaves_cross_nodes_and_a_killed_nodes_members_leave() {
    let Some(cluster) = common::cluster::Cluster::start() else { return };
    joins_and_leaves_across_nodes(&cluster.url(), "cluster-join-leave");
}

fn joins_and_leaves_across_nodes(broker: &str, name: &str) {
    let nodes = Nodes::new(name);
    let (a, mut b) = (nodes.start(broker, "1s"), nodes.start(broker, "1s"));
    let mut observer = json_client(&a, "");
    subscribe_reply(&mut observer, "talk:1");
    // A member on node B: the observer on node A hears it join.
    let mut far = json_client(&b, "");
    let far_id = subscribe_reply(&mut far, "talk:1");
    heard(&mut observer, "join", &far_id);
    // Node B dies without a goodbye: A's subscribers hear the leave once B's liveness lapses.
    b.kill9();
    let killed = Instant::now();
    let at = heard(&mut observer, "leave", &far_id);
    let took = at - killed;
    eprintln!("a killed node's member was announced as left after {took:?} (presence_ttl 1s)");
    assert!(took <= Duration::from_millis(2_500), "{took:?}");
}

/// On a cluster, a node cut off for longer than `presence_ttl` (here: stopped) has its entries
/// deleted by the other nodes' reads. When it comes back, whichever of its writes reaches Redis
/// first — a refresh, or a join that was waiting — must find that it had lapsed, and it writes
/// every entry again: a member that never left is present again.
#[test]
fn on_a_cluster_a_node_back_after_presence_ttl_writes_its_entries_again() {
    let Some(cluster) = common::cluster::Cluster::start() else { return };
    let nodes = Nodes::new("cluster-lapse");
    let url = cluster.url();
    let (a, b) = (nodes.start(&url, "1s"), nodes.start(&url, "1s"));
    let (_a1, a1) = member(&a);
    let (_b1, b1) = member(&b);
    assert!(wait_until(T, || present(&a) == sorted(&[&a1, &b1])), "{:?}", present(&a));
    let mut late = json_client(&b, "");
    b.signal(nix::sys::signal::Signal::SIGSTOP);
    let lapsed = wait_until(T, || present(&a) == [a1.clone()]);
    // Queued in the kernel while B is stopped: a join that races B's refresh when it wakes.
    send(&mut late, json!({"id": 1, "cmd": "subscribe", "channel": "room:1"}));
    b.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(lapsed, "B's entry outlived B's liveness: {:?}", present(&a));
    let reply = next_json(&mut late);
    let late_id = reply["result"]["client"].as_str().unwrap_or_else(|| panic!("{reply}"));
    let all = sorted(&[&a1, &b1, &late_id.to_owned()]);
    assert!(wait_until(T, || present(&a) == all), "{:?}, want {all:?}", present(&a));
}
