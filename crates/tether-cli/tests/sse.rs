//! `GET /sse?channel=` (issue 21, point 2): publications as Server-Sent Events, with the
//! positions in `id:`, recovery from `Last-Event-ID` (exactly the missed ones, then live; a
//! `gap` event when history cannot), heartbeat comments, the server's `disconnect` event on
//! shutdown, and the same refusals as a WebSocket handshake. Read over a real socket by a
//! plain HTTP client, as any `EventSource` would.

mod common;
use common::*;
use std::io::BufRead;
use std::sync::mpsc;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// One event as an `EventSource` sees it (`comment` for `: …` lines).
#[derive(Debug, Default, Clone)]
struct Event {
    event: String,
    id: Option<String>,
    data: String,
    comment: bool,
    /// A `retry:` line in the event.
    retry: Option<u64>,
}

impl Event {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// A stream's events, read by a thread (a blocking reader cannot time out per event).
struct Stream {
    events: mpsc::Receiver<Event>,
    status: u16,
    content_type: String,
}

fn open(url: &str, last_event_id: Option<&str>) -> Stream {
    let headers: Vec<(&str, &str)> =
        last_event_id.map(|id| ("last-event-id", id)).into_iter().collect();
    open_with(url, &headers).0
}

/// A stream with these request headers; also the response's `Access-Control-Allow-Origin`.
fn open_with(url: &str, headers: &[(&str, &str)]) -> (Stream, Option<String>) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut req = agent.get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.call().expect("GET /sse");
    let status = resp.status().as_u16();
    let allow = resp
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut event = Event { event: "message".into(), ..Event::default() };
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                let done = std::mem::replace(
                    &mut event,
                    Event { event: "message".into(), ..Event::default() },
                );
                let something = !done.data.is_empty() || done.event != "message" || done.comment;
                if something && tx.send(done).is_err() {
                    return;
                }
                continue;
            }
            if line.starts_with(':') {
                event.comment = true;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event.event = value.to_owned(),
                "id" => event.id = Some(value.to_owned()),
                "retry" => event.retry = value.parse().ok(),
                "data" if event.data.is_empty() => event.data = value.to_owned(),
                "data" => {
                    event.data.push('\n');
                    event.data.push_str(value);
                }
                _ => {}
            }
        }
    });
    (Stream { events, status, content_type }, allow)
}

impl Stream {
    /// The next event, a `disconnect` with `code` that says to come back; with its advice.
    fn disconnect(&self, code: u64) -> (Event, serde_json::Value) {
        let bye = self.next();
        assert_eq!(bye.event, "disconnect", "{bye:?}");
        let advice = bye.json();
        let said = (advice["code"].as_u64(), advice["reconnect"].as_bool());
        assert_eq!(said, (Some(code), Some(true)), "{advice}");
        (bye, advice)
    }

    /// The next event that is not a heartbeat comment.
    fn next(&self) -> Event {
        loop {
            let e = self.events.recv_timeout(T).expect("an event within 10 s");
            if !e.comment {
                return e;
            }
        }
    }
}

#[test]
fn publications_arrive_as_events_and_a_reconnect_recovers_exactly_what_was_missed() {
    let server = Server::start(&["--history", "feed=100/5m", "--ping-interval", "100ms"]);
    let url = server.http("/sse?channel=feed");
    let first = open(&url, None);
    assert_eq!(first.status, 200);
    assert!(first.content_type.starts_with("text/event-stream"), "{}", first.content_type);
    let hello = first.next();
    assert_eq!(hello.event, "subscribed", "{hello:?}");
    assert_eq!(hello.json()["feed"]["offset"], 0);
    let retry = hello.retry.expect("a retry line");
    assert!((1000..=2000).contains(&retry), "reconnect pace 1-2 s, per stream: {retry}");

    let epoch = server.publish("feed", r#"{"n": 1}"#)["epoch"].as_str().unwrap().to_owned();
    server.publish("feed", "{\n  \"n\": 2\n}"); // line breaks in the data: several data lines
    for n in 1..=2u64 {
        let e = first.next();
        assert_eq!((e.event.as_str(), e.id.clone()), ("message", Some(format!("{epoch}:{n}"))));
        let p = e.json();
        assert_eq!((p["channel"].as_str(), p["offset"].as_u64()), (Some("feed"), Some(n)), "{p}");
        assert_eq!(p["data"]["n"], n);
    }
    // Heartbeats: comments every ping_interval.
    let ping = first.events.recv_timeout(T).expect("a heartbeat");
    assert!(ping.comment, "{ping:?}");
    drop(first);

    // Missed while away; the browser comes back with the last id it saw.
    for n in 3..=5 {
        server.publish("feed", &format!(r#"{{"n": {n}}}"#));
    }
    let again = open(&url, Some(&format!("{epoch}:2")));
    let hello = again.next();
    assert_eq!(hello.event, "subscribed");
    assert_eq!(
        (hello.json()["feed"]["recovered"].as_bool(), hello.id.clone()),
        (Some(true), Some(format!("{epoch}:2")))
    );
    server.publish("feed", r#"{"n": 6}"#);
    let got: Vec<(Option<String>, u64)> = (0..4)
        .map(|_| {
            let e = again.next();
            (e.id.clone(), e.json()["data"]["n"].as_u64().unwrap())
        })
        .collect();
    let want: Vec<(Option<String>, u64)> =
        (3..=6).map(|n| (Some(format!("{epoch}:{n}")), n)).collect();
    assert_eq!(got, want, "exactly the missed ones, in order, then live");

    // A position history cannot continue: said so, then live from now.
    let stale = open(&url, Some("not-this-epoch:1"));
    let gap = stale.next();
    assert_eq!(gap.event, "gap", "{gap:?}");
    assert_eq!(gap.json()["channel"], "feed");
    assert_eq!(stale.next().event, "subscribed");
}

#[test]
fn several_channels_share_one_id_and_shutdown_says_when_to_come_back() {
    let mut server = Server::start(&["--history", "a=100/5m", "--history", "b=100/5m"]);
    let s = open(&server.http("/sse?channel=a&channel=b"), None);
    assert_eq!(s.next().event, "subscribed");
    let ea = server.publish("a", "1")["epoch"].as_str().unwrap().to_owned();
    let e = s.next();
    assert_eq!(e.id, Some(format!("{ea}:1 :0")), "a's position, then b's (no publication yet)");
    let eb = server.publish("b", "2")["epoch"].as_str().unwrap().to_owned();
    assert_eq!(s.next().id, Some(format!("{ea}:1 {eb}:1")));

    // Graceful shutdown: the stream is told to come back (1012, with the hint), then ends.
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let (bye, advice) = s.disconnect(1012);
    assert_eq!(advice["retry_after_ms"], 500, "{advice}");
    let retry = bye.retry.expect("a retry line");
    assert!((500..=1000).contains(&retry), "the hint to twice it: {retry}");
    assert!(server.terminate().success());
}

#[test]
fn the_stream_is_refused_like_a_websocket_handshake() {
    const SECRET: &str = "sse-secret-0123456789";
    let server = Server::start(&["--jwt-secret", SECRET]);
    let get = |path: &str| http_request("GET", &server.http(path), None);
    let (status, body) = get("/sse");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("channel"), "{body}");
    let (status, body) = get("/sse?channel=bad%20name");
    assert_eq!(status, 400, "{body}");
    let (status, body) = get("/sse?channel=news");
    assert_eq!(
        (status, body["error"].as_str().is_some_and(|e| e.contains("token"))),
        (401, true),
        "{body}"
    );
    let (status, _) = get("/sse?channel=news&token=not.a.token");
    assert_eq!(status, 401);
    // With a token that covers the channel: streamed.
    let token = tether(&["token", "--secret", SECRET, "--subscribe", "news", "--ttl", "1h"], &[]);
    let token = String::from_utf8(token.stdout).unwrap();
    let s = open(&server.http(&format!("/sse?channel=news&token={}", token.trim())), None);
    assert_eq!((s.status, s.next().event.as_str()), (200, "subscribed"));
    assert_eq!(server.metric("tether_connections_accepted_total{mode=\"sse\"}"), 1.0);
}

#[test]
fn events_get_through_nginx_as_they_come() {
    // nginx's defaults (`proxy_buffering on`, the helper's config has no SSE settings): each
    // event still gets through as it is published. (The stream also sends
    // `X-Accel-Buffering: no`; this nginx passed events without it too, so this test shows the
    // path works, not that the header is needed.)
    let server = Server::start(&["--ping-interval", "100ms"]);
    let Some(nginx) = Nginx::start(server.addr, "60s") else { return };
    let s = open(&nginx.http("/sse?channel=news"), None);
    assert_eq!((s.status, s.next().event.as_str()), (200, "subscribed"));
    server.publish("news", "\"through nginx\"");
    assert_eq!(s.next().json()["data"], "through nginx");
}

#[test]
fn a_stream_does_not_count_as_an_unfinished_handshake() {
    // Two unfinished connections at most: the oldest gives way to a new one (slowloris
    // defence). An open stream is established, not unfinished: it must not be the one cut.
    let server = Server::start(&["--max-pending-handshakes", "2"]);
    let s = open(&server.http("/sse?channel=news"), None);
    assert_eq!(s.next().event, "subscribed");
    let idle: Vec<std::net::TcpStream> =
        (0..4).map(|_| std::net::TcpStream::connect(server.addr).unwrap()).collect();
    assert!(wait_until(T, || server.metric("tether_pending_handshakes_evicted_total") >= 2.0));
    server.publish("news", "\"still here\"");
    assert_eq!(s.next().json()["data"], "still here");
    drop(idle);
}

#[test]
fn over_a_limit_the_reader_is_told_when_to_come_back_not_refused() {
    // An EventSource gives up for good on any answer but 200: a limit it can wait out comes
    // as a stream of one `disconnect` event with a `retry:`.
    let server = Server::start(&["--max-connections", "1"]);
    let first = open(&server.http("/sse?channel=news"), None);
    assert_eq!(first.next().event, "subscribed");
    let second = open(&server.http("/sse?channel=news"), None);
    assert_eq!(second.status, 200);
    let (bye, _) = second.disconnect(1013);
    let retry = bye.retry.expect("a retry line");
    assert!((5000..=10000).contains(&retry), "Retry-After 5 s to twice it: {retry}");
}

#[test]
fn odd_input_is_told_not_mangled() {
    let server =
        Server::start(&["--history", "feed=10/1m", "--allowed-origin", "https://app.example"]);
    // A Last-Event-ID that names no position: a gap on every channel, then live.
    let s = open(&server.http("/sse?channel=feed&channel=other"), Some("garbage"));
    for channel in ["feed", "other"] {
        let gap = s.next();
        assert_eq!((gap.event.as_str(), gap.json()["channel"].as_str()), ("gap", Some(channel)));
    }
    assert_eq!(s.next().event, "subscribed");
    // A lone CR between JSON tokens (valid JSON whitespace) must not end the SSE line.
    let (status, body) = server.post_publish("{\"channel\":\"feed\",\"data\":{\"a\":1,\r\"b\":2}}");
    assert_eq!(status, 200, "{body}");
    let p = s.next().json();
    assert_eq!((p["data"]["a"].as_u64(), p["data"]["b"].as_u64()), (Some(1), Some(2)), "{p}");
    // A page of an allowed origin may read the stream.
    let (s, allow) =
        open_with(&server.http("/sse?channel=feed"), &[("origin", "https://app.example")]);
    assert_eq!((s.status, allow.as_deref()), (200, Some("https://app.example")));
}

#[test]
fn the_apis_disconnect_reaches_a_users_streams() {
    const SECRET: &str = "sse-secret-0123456789";
    const KEY: &str = "sse-api-key-0123456789";
    let server = Server::start(&["--jwt-secret", SECRET, "--api-key", KEY]);
    let token = tether(&["token", "--secret", SECRET, "--sub", "ada", "--subscribe", "news"], &[]);
    let token = String::from_utf8(token.stdout).unwrap();
    let s = open(&server.http(&format!("/sse?channel=news&token={}", token.trim())), None);
    assert_eq!(s.next().event, "subscribed");
    let body = r#"{"user": "ada", "code": 4321, "reason": "moved"}"#;
    let (status, answer) = api_call(&server, Some(KEY), "disconnect", body);
    assert_eq!((status, answer["connections"].as_u64()), (200, Some(1)), "{answer}");
    let bye = s.next();
    assert_eq!(bye.event, "disconnect");
    assert_eq!(bye.json()["code"], 4321);
    assert_eq!(bye.json()["reason"], "moved");
}

#[test]
fn a_reader_cut_off_without_a_word_is_dropped_within_the_heartbeat_bound() {
    use common::netns::{Pair, SERVER_IP};
    // Server and reader in two network namespaces; then every packet between them vanishes
    // (no FIN, no RST). The stream's heartbeat comments go unacknowledged, and the socket's
    // TCP_USER_TIMEOUT (ping_interval + pong_timeout = 600 ms) gives it up.
    let Some(pair) = Pair::create() else { return };
    let server = Pair::run_in(&pair.server_ns, || {
        let args = ["--insecure", "--ping-interval", "300ms", "--pong-timeout", "300ms"];
        Server::start_on(&format!("{SERVER_IP}:0"), &args)
    });
    let url = server.http("/sse?channel=news");
    let s = Pair::run_in(&pair.client_ns, || open(&url, None));
    assert_eq!(s.next().event, "subscribed");
    let ns = pair.server_ns.clone();
    let streams = || Pair::run_in(&ns, || server.metric("tether_connections_open"));
    assert_eq!(streams(), 1.0);
    pair.partition();
    let cut = std::time::Instant::now();
    assert!(wait_until(Duration::from_secs(20), || streams() == 0.0), "still open");
    let took = cut.elapsed();
    eprintln!("a vanished SSE reader was dropped {took:?} after the cut");
    // A ping within 300 ms, unacknowledged for 600 ms, then the kernel's next retransmission.
    assert!(took < Duration::from_secs(3), "{took:?}");
}
