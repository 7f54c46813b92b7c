//! Who may use the server: API keys on the HTTP API, the refusal to serve an open API beyond
//! loopback, and the browser-origin check on WebSocket handshakes.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "k3y-for-tests-0123456789";

/// POST a publication with `headers`; returns (status, body, WWW-Authenticate).
fn publish_with(server: &Server, headers: &[(&str, &str)]) -> (u16, serde_json::Value, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req =
        agent.post(&server.http("/api/publish")).header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut resp = req.send(r#"{"channel":"news","data":"hi"}"#).expect("POST /api/publish");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null), challenge)
}

#[test]
fn the_publish_api_needs_the_key_once_one_is_configured() {
    let server = Server::start(&["--api-key", KEY]);
    let (status, body, challenge) = publish_with(&server, &[]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge, "Bearer");
    assert!(body["error"].as_str().unwrap().contains("X-API-Key"), "{body}");

    let (status, body, _) =
        publish_with(&server, &[("authorization", "Bearer not-the-key-at-all")]);
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = publish_with(&server, &[("x-api-key", "not-the-key-at-all")]);
    assert_eq!(status, 403);

    let bearer = format!("Bearer {KEY}");
    let (status, body, _) = publish_with(&server, &[("authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 1, "{body}");
    let (status, _, _) = publish_with(&server, &[("x-api-key", KEY)]);
    assert_eq!(status, 200);

    let m = server.metrics();
    assert_eq!(metric_sum(&m, "tether_api_refused_total{reason=\"missing_key\"}"), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "tether_api_refused_total{reason=\"wrong_key\"}"), 2.0, "{m}");
    assert_eq!(metric_sum(&m, "tether_publications_total"), 2.0, "{m}");
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(http_request("GET", &server.http("/healthz"), None).0, 200);
}

#[test]
fn without_a_key_the_api_stays_open_on_loopback() {
    let server = Server::start(&[]);
    assert_eq!(publish_with(&server, &[]).0, 200);
}

/// Run `tether serve ARGS` expecting it to exit by itself within 10 s; (status, stderr).
fn serve_exits(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`tether serve {}` kept running; it should have refused", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn an_open_api_beyond_loopback_is_refused_unless_insecure_or_keyed() {
    let (status, stderr) = serve_exits(&["--listen", "0.0.0.0:0"]);
    assert!(!status.success());
    assert!(
        stderr.contains("without an API key")
            && stderr.contains("--api-key")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
    // Either way out starts it.
    let open = Server::start_on("0.0.0.0:0", &["--insecure"]);
    assert_eq!(
        http_request("GET", &format!("http://127.0.0.1:{}/healthz", open.addr.port()), None).0,
        200
    );
    let keyed = Server::start_on("0.0.0.0:0", &["--api-key", KEY]);
    assert_eq!(
        http_request("GET", &format!("http://127.0.0.1:{}/healthz", keyed.addr.port()), None).0,
        200
    );
    // A short key is refused with the reason.
    let (status, stderr) = serve_exits(&["--api-key", "short"]);
    assert!(!status.success());
    assert!(stderr.contains("api_keys") && stderr.contains("16"), "{stderr}");
}

/// A WebSocket handshake with these `Host` and `Origin` headers; returns the status line and
/// the response body (empty for 101).
fn handshake(server: &Server, host: &str, origin: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the head is complete and, for a refusal, its JSON body (small, one chunk).
    while !buf.windows(4).any(|w| w == b"\r\n\r\n")
        || (buf.starts_with(b"HTTP/1.1 4") && !buf.ends_with(b"}"))
    {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed mid-response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.lines().next().unwrap().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[test]
fn browser_handshakes_from_other_origins_get_403() {
    let server = Server::start(&["--allowed-origin", "https://*.example.com"]);
    let host = format!("127.0.0.1:{}", server.addr.port());
    let own = format!("http://{host}");
    let accepted = |origin| handshake(&server, &host, origin).0.starts_with("HTTP/1.1 101");
    assert!(accepted(None), "a client without Origin (not a browser)");
    assert!(accepted(Some(own.as_str())), "the server's own origin");
    assert!(accepted(Some("http://localhost:5173")), "localhost");
    assert!(accepted(Some("https://app.example.com")), "an allowed wildcard origin");

    let (status, body) = handshake(&server, &host, Some("https://evil.example"));
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("https://evil.example"), "{body}");
    assert!(!accepted(Some("https://example.com")), "a wildcard covers subdomains only");
    assert!(!accepted(Some("null")));
    assert_eq!(
        server.metric("tether_handshakes_refused_total{reason=\"origin\"}"),
        3.0,
        "{}",
        server.metrics()
    );
}

#[test]
fn json_nested_deeper_than_the_limit_is_refused_before_parsing() {
    let server = Server::start(&[]);
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    // HTTP: the body object is level 1, so data may nest 31 deep under the default 32.
    let (status, body) =
        server.post_publish(&format!(r#"{{"channel":"news","data":{}}}"#, nested(31)));
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        server.post_publish(&format!(r#"{{"channel":"news","data":{}}}"#, nested(10_000)));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("deeper than 32"), "{body}");

    // WebSocket: an error reply, and the connection keeps working.
    let mut ws = tungstenite_json(&server);
    let deep = format!(r#"{{"id":1,"cmd":"ping","x":{}}}"#, nested(10_000));
    ws.send(tokio_tungstenite::tungstenite::Message::text(deep)).unwrap();
    let reply: serde_json::Value =
        serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(reply["error"]["code"], "malformed_json", "{reply}");
    ws.send(tokio_tungstenite::tungstenite::Message::text(r#"{"id":2,"cmd":"ping"}"#)).unwrap();
    let reply: serde_json::Value =
        serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(reply["id"], 2, "{reply}");
    assert_eq!(
        server.metric("tether_json_too_deep_total"),
        2.0,
        "one over HTTP, one over WebSocket"
    );
}

/// A blocking `tether.v1.json` client.
fn tungstenite_json(
    server: &Server,
) -> tokio_tungstenite::tungstenite::WebSocket<
    tokio_tungstenite::tungstenite::stream::MaybeTlsStream<TcpStream>,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = server.ws_url("").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "tether.v1.json".parse().unwrap());
    let (ws, _) = tokio_tungstenite::tungstenite::connect(req).unwrap();
    ws
}
