//! Streaming sessions over plain HTTP (issue 21, point 1): `POST /stream` (newline-delimited
//! JSON) and `GET /stream/sse` carry the same `tether.v1.json` session as a WebSocket, with
//! commands `POST`ed to `/stream/send` on any node. Driven over real sockets by a plain HTTP
//! client: subscribe, publish, replies, history recovery, the heartbeat and a silent client
//! found dead in bounded time, `Last-Event-ID`, commands that land on another node (Redis),
//! behind a real nginx that balances round-robin, and the refusals.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// An open session: its messages, read by a thread, and where its commands go.
struct Session {
    id: String,
    messages: mpsc::Receiver<Value>,
    /// Where `/stream/send` is `POST`ed (any node, or a balancer).
    send_base: String,
    /// When the stream ended (the reader thread saw its end).
    ended: mpsc::Receiver<Instant>,
}

/// Open `POST {base}/stream` with these first commands.
fn open(base: &str, first: &[Value]) -> Session {
    let body: String = first.iter().map(|c| format!("{c}\n")).collect();
    let resp = agent().post(format!("{base}/stream")).send(body.as_str()).expect("POST /stream");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert_eq!(ct, "application/x-ndjson");
    let (tx, messages) = mpsc::channel();
    let (end_tx, ended) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
        let _ = end_tx.send(Instant::now());
    });
    let hello = messages.recv_timeout(T).expect("the session's first message");
    assert_eq!(hello["type"], "session", "{hello}");
    let id = hello["session"].as_str().unwrap().to_owned();
    Session { id, messages, send_base: base.to_owned(), ended }
}

impl Session {
    /// `POST /stream/send` these commands; the answer's status and body.
    fn send(&self, commands: &[Value]) -> (u16, Value) {
        let body: String = commands.iter().map(|c| format!("{c}\n")).collect();
        let url = format!("{}/stream/send?session={}", self.send_base, self.id);
        let mut resp = agent().post(url).send(body.as_str()).expect("POST /stream/send");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn sent(&self, commands: &[Value]) {
        let (status, body) = self.send(commands);
        assert_eq!(status, 202, "{body}");
    }

    /// The next message that is not a heartbeat ping.
    fn next(&self) -> Value {
        loop {
            let m = self.messages.recv_timeout(T).expect("a message within 10 s");
            if m["type"] != "ping" {
                return m;
            }
        }
    }

    fn reply(&self, id: u64) -> Value {
        let m = self.next();
        assert_eq!((m["type"].as_str(), m["id"].as_u64()), (Some("reply"), Some(id)), "{m}");
        m
    }

    fn publication(&self) -> Value {
        let m = self.next();
        assert_eq!(m["type"], "publication", "{m}");
        m
    }
}

#[test]
fn a_session_subscribes_publishes_and_recovers_over_http_streaming() {
    let server = Server::start(&["--history", "feed=100/5m", "--client-publish", "feed"]);
    let base = server.http("");
    let s = open(&base, &[json!({"id": 1, "cmd": "subscribe", "channel": "feed"})]);
    let subscribed = s.reply(1);
    assert!(subscribed["result"]["client"].is_string(), "{subscribed}");

    // A publication from the API, and one from the client's own command.
    let epoch = server.publish("feed", r#"{"n": 1}"#)["epoch"].as_str().unwrap().to_owned();
    let p = s.publication();
    assert_eq!((p["offset"].as_u64(), p["data"]["n"].as_u64()), (Some(1), Some(1)), "{p}");
    s.sent(&[json!({"id": 2, "cmd": "publish", "channel": "feed", "data": {"n": 2}})]);
    // The reply and the publication, in whichever order they happened.
    let (a, b) = (s.next(), s.next());
    let mut kinds = [a["type"].as_str().unwrap(), b["type"].as_str().unwrap()];
    kinds.sort();
    assert_eq!(kinds, ["publication", "reply"], "{a} {b}");

    // A second session recovers exactly what came after offset 1, then goes on live.
    for n in 3..=5 {
        server.publish("feed", &format!(r#"{{"n": {n}}}"#));
    }
    let recover = json!({"epoch": epoch, "offset": 1});
    let cmd = json!({"id": 7, "cmd": "subscribe", "channel": "feed", "recover": recover});
    let again = open(&base, &[cmd]);
    let reply = again.reply(7);
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let offsets: Vec<u64> =
        (0..4).map(|_| again.publication()["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [2, 3, 4, 5]);
    server.publish("feed", r#"{"n": 6}"#);
    assert_eq!(again.publication()["offset"], 6);

    // Commands for a session that does not exist, or do not name one.
    // (`s`'s id with its secret's last digit changed: another secret, always.)
    let last = if s.id.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &s.id[..s.id.len() - 1]);
    let gone = Session { id: forged, ..open(&base, &[]) };
    let (status, body) = gone.send(&[json!({"id": 1, "cmd": "ping"})]);
    assert_eq!((status, body["error"].as_str()), (404, Some("session_unknown")), "{body}");
    let (status, body) = Session { id: "nonsense".into(), ..open(&base, &[]) }.send(&[]);
    assert_eq!(status, 400, "{body}");
    let metrics = server.metrics();
    assert!(metric_sum(&metrics, "tether_stream_batches_total{reason=\"unknown\"}") >= 1.0);
    // What keeps proxies from buffering or caching the stream.
    let resp = agent().post(format!("{base}/stream")).send("").unwrap();
    let header = |name| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert!(metric_sum(&metrics, "tether_connections_accepted_total{mode=\"http_stream\"}") >= 3.0);
}

#[test]
fn a_client_that_stops_answering_pings_is_ended_within_the_heartbeats_bound() {
    let server = Server::start(&["--ping-interval", "200ms", "--pong-timeout", "300ms"]);
    let s = open(&server.http(""), &[]);
    let opened = Instant::now();
    // Answer pings for a while: the session lives well past one ping + pong.
    let mut answered = 0;
    while opened.elapsed() < Duration::from_millis(1200) {
        let m = s.messages.recv_timeout(T).expect("a message");
        if m["type"] == "ping" {
            answered += 1;
            s.sent(&[json!({"id": 100 + answered, "cmd": "ping"})]);
        }
    }
    assert!(answered >= 4, "pings every 200 ms: {answered}");
    // Then go silent: told why, and the stream ends.
    let silent = Instant::now();
    let bye = loop {
        let m = s.messages.recv_timeout(T).expect("the server's disconnect");
        if m["type"] == "disconnect" {
            break m;
        }
    };
    assert_eq!(
        (bye["code"].as_u64(), bye["reconnect"].as_bool()),
        (Some(4000), Some(true)),
        "{bye}"
    );
    let ended = s.ended.recv_timeout(T).expect("the stream ends");
    let took = ended - silent;
    // The last ping at most 200 ms after the last answer, then 300 ms of silence (and CI slack).
    assert!(took < Duration::from_millis(1500), "ended {took:?} after the client went silent");
    assert!(wait_until(T, || server.closed("4000", "server") >= 1.0), "{}", server.metrics());
}

#[test]
fn an_sse_session_carries_commands_and_recovers_from_last_event_id() {
    let server = Server::start(&["--history", "feed=100/5m", "--ping-interval", "5s"]);
    let first = json!({"id": 1, "cmd": "subscribe", "channel": "feed"}).to_string();
    let url = server.http(&format!("/stream/sse?commands={}", urlencode(&first)));
    let (events, id) = sse(&url, None);
    let hello: Value = serde_json::from_str(&events.recv_timeout(T).unwrap().1).unwrap();
    assert_eq!(hello["type"], "session");
    let reply: Value = serde_json::from_str(&events.recv_timeout(T).unwrap().1).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    server.publish("feed", r#"{"n": 1}"#);
    let (last_id, data) = events.recv_timeout(T).unwrap();
    let p: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(p["offset"], 1);
    let last_id = last_id.expect("a publication event carries an id");
    assert!(last_id.starts_with("feed=") && last_id.ends_with(":1"), "{last_id}");
    // Commands through `/stream/send` reach it.
    let send = server.http(&format!("/stream/send?session={id}"));
    let mut resp = agent().post(send).send(r#"{"id": 2, "cmd": "ping"}"#).unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{}", resp.body_mut().read_to_string().unwrap());
    let pong: Value = serde_json::from_str(&events.recv_timeout(T).unwrap().1).unwrap();
    assert_eq!(pong["id"], 2, "{pong}");

    // The browser's own reconnect: same URL, `Last-Event-ID`: exactly what was missed.
    for n in 2..=4 {
        server.publish("feed", &format!(r#"{{"n": {n}}}"#));
    }
    let (events, _) = sse(&url, Some(&last_id));
    let _hello = events.recv_timeout(T).unwrap();
    let reply: Value = serde_json::from_str(&events.recv_timeout(T).unwrap().1).unwrap();
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let offsets: Vec<u64> = (0..3)
        .map(|_| {
            let p: Value = serde_json::from_str(&events.recv_timeout(T).unwrap().1).unwrap();
            p["offset"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(offsets, [2, 3, 4]);
}

/// An SSE stream's events (`id:`, `data:`), read by a thread; and the session id.
fn sse(
    url: &str,
    last_event_id: Option<&str>,
) -> (mpsc::Receiver<(Option<String>, String)>, String) {
    let mut req = agent().get(url);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.call().expect("GET /stream/sse");
    assert_eq!(resp.status().as_u16(), 200);
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let (mut id, mut data) = (None, String::new());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if !data.is_empty() && tx.send((id.take(), std::mem::take(&mut data))).is_err() {
                    return;
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    });
    let hello = events.recv_timeout(T).expect("the session's first event");
    let v: Value = serde_json::from_str(&hello.1).unwrap();
    let id = v["session"].as_str().expect("a session id").to_owned();
    // Put it back in front: callers read it too.
    let (tx2, rx2) = mpsc::channel();
    tx2.send(hello).unwrap();
    std::thread::spawn(move || {
        while let Ok(e) = events.recv() {
            if tx2.send(e).is_err() {
                return;
            }
        }
    });
    (rx2, id)
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn commands_reach_a_session_held_by_another_node_and_through_a_round_robin_balancer() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let args = ["--broker", url.as_str(), "--history", "room=100/5m", "--client-publish", "room"];
    let a = Server::start(&args);
    let b = Server::start(&args);
    // Opened on A, commanded through B: subscribe, publish, and the replies come back on A's stream.
    let s = Session { send_base: b.http(""), ..open(&a.http(""), &[]) };
    s.sent(&[json!({"id": 1, "cmd": "subscribe", "channel": "room"})]);
    s.reply(1);
    s.sent(&[json!({"id": 2, "cmd": "publish", "channel": "room", "data": "via b"})]);
    let (x, y) = (s.next(), s.next());
    let p = if x["type"] == "publication" { x } else { y };
    assert_eq!(p["data"], "via b", "{p}");

    // Behind nginx, round-robin over both nodes, no stickiness: every command lands somewhere
    // and every reply comes back, in order.
    let Some(nginx) = Nginx::start_group(&[a.addr, b.addr], "60s") else { return };
    let s = Session { send_base: nginx.http(""), ..open(&nginx.http(""), &[]) };
    s.sent(&[json!({"id": 1, "cmd": "subscribe", "channel": "room"})]);
    s.reply(1);
    for id in 2..=11 {
        s.sent(&[json!({"id": id, "cmd": "ping"})]);
        s.reply(id);
    }
    let landed =
        |n: &Server| metric_sum(&n.metrics(), "tether_stream_batches_total{reason=\"delivered\"}");
    assert!(landed(&a) >= 3.0 && landed(&b) >= 3.0, "a {} b {}", landed(&a), landed(&b));

    // The node holding a session is gone: the others say so.
    let mut a = a;
    let on_a = Session { send_base: b.http(""), ..open(&a.http(""), &[]) };
    a.kill9();
    assert!(wait_until(T, || on_a.send(&[json!({"id": 1, "cmd": "ping"})]).0 == 404));
}

// --- the Rust client over HTTP-streaming ---------------------------------------------------

use tether_client::{ClientConfig, Event, Initiator, Transport};

/// A client with a 200 ms heartbeat (400 ms of silence tolerated) and quick reconnects.
fn rust_client(url: String) -> ClientConfig {
    fast_client(url).heartbeat(Duration::from_millis(200), Duration::from_millis(400))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_falls_back_to_http_streaming_behind_a_proxy_that_refuses_upgrades() {
    let args = [
        "--history",
        "feed=100/5m",
        "--client-publish",
        "feed",
        "--ping-interval",
        "200ms",
        "--pong-timeout",
        "400ms",
    ];
    let server = Server::start(&args);
    let Some(nginx) = Nginx::start_with(&[server.addr], "60s", true) else { return };
    let (client, mut events) = tether_client::connect(rust_client(nginx.ws_url()).with_fallback());
    client.subscribe("feed").await.unwrap();
    let refused =
        next_event(&mut events, T, "the refused upgrade", |e| matches!(e, Event::Closed(_))).await;
    let Event::Closed(refused) = refused else { unreachable!() };
    assert_eq!(refused.transport, Transport::WebSocket, "{refused:?}");
    assert!(refused.reason.contains("403") && refused.will_reconnect, "{refused:?}");
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    server.publish("feed", r#"{"n": 1}"#);
    client
        .publish("feed", serde_json::value::RawValue::from_string(r#"{"n": 2}"#.into()).unwrap())
        .await
        .unwrap();
    for n in 1..=2 {
        let p =
            next_event(&mut events, T, "a publication", |e| matches!(e, Event::Publication { .. }))
                .await;
        let Event::Publication { data, .. } = p else { unreachable!() };
        assert_eq!(data.get().replace(' ', ""), format!(r#"{{"n":{n}}}"#));
    }
    // Heartbeats both ways keep it open, well past ping + pong timeout, with no other close.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            if let Some(Event::Closed(info)) = events.next().await {
                return info;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "the session closed: {quiet:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_of_a_streaming_session_is_found_within_the_heartbeat_bound() {
    // A frozen client process (SIGSTOP): the server ends its session after ping + pong timeout.
    let server = Server::start(&["--ping-interval", "200ms", "--pong-timeout", "300ms"]);
    let mut child = std::process::Command::new(BIN)
        .args(["connect", &server.ws_url(""), "--transport", "http-stream", "--channel", "feed"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = LineReader::new(child.stdout.take().unwrap());
    lines.expect_line(T, "subscribed", |l| l.contains("subscribed"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    assert!(wait_until(T, || server.closed("4000", "server") >= 1.0), "{}", server.metrics());
    let took = stopped.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = child.wait();
    assert!(took < Duration::from_millis(1500), "found dead after {took:?}; bound 200 + 300 ms");

    // A frozen server (SIGSTOP): the Rust client's watchdog ends the session.
    let (client, mut events) = tether_client::connect(
        rust_client(server.ws_url("")).transports(vec![Transport::HttpStream]),
    );
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    server.signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen = Instant::now();
    let ended = next_event(&mut events, T, "a close", |e| matches!(e, Event::Closed(_))).await;
    let took = frozen.elapsed();
    server.signal(nix::sys::signal::Signal::SIGCONT);
    let Event::Closed(info) = ended else { unreachable!() };
    assert_eq!(
        (info.code, info.initiator, info.transport),
        (4000, Initiator::Client, Transport::HttpStream),
        "{info:?}"
    );
    assert!(took < Duration::from_millis(1500), "found dead after {took:?}; bound 200 + 400 ms");
    client.close().await;
}

#[test]
fn sessions_are_admitted_like_websockets_origin_and_max_connections() {
    let server =
        Server::start(&["--max-connections", "1", "--allowed-origin", "https://app.example"]);
    let url = server.http("/stream");
    let foreign = agent().post(&url).header("origin", "https://evil.example").send("").unwrap();
    assert_eq!(foreign.status().as_u16(), 403);
    // The allowed origin may read the stream (CORS), and holds the one connection there is.
    let held = agent().post(&url).header("origin", "https://app.example").send("").unwrap();
    assert_eq!(held.status().as_u16(), 200);
    let allow = held.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap());
    assert_eq!(allow, Some("https://app.example"));
    let mut over = agent().post(&url).send("").unwrap();
    let body = over.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(over.status().as_u16(), 503, "{body}");
    assert!(body.contains("connection limit"), "{body}");
    drop(held);
    // Its slot comes back when the session ends.
    assert!(wait_until(T, || agent().post(&url).send("").unwrap().status().as_u16() == 200));
}
