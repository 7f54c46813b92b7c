//! The interoperability matrix, third-party side: real peers against the real `tether` binary,
//! each in every configuration it offers. Every row checks the handshake (with and without the
//! subprotocol, with and without compression offered), ping/pong at both levels, publications
//! of 1 byte, 200 KiB and non-ASCII text, and a close in each direction with its code and reason
//! preserved. Rows are written for the matrix in `docs/interop.md` (see `common::interop`).

mod common;
use common::interop::Row;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);
const SMALL: &str = r#""x""#;
const UTF8: &str = r#""héllo ✓ 日本語 🎉""#;

fn event(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

fn big() -> String {
    format!("\"{}\"", "a".repeat(200 * 1024))
}

fn python_version(python: &std::path::Path) -> String {
    let out = Command::new(python)
        .args(["-c", "import websockets; print(websockets.__version__)"])
        .output()
        .unwrap();
    format!("Python websockets {}", String::from_utf8_lossy(&out.stdout).trim())
}

/// One row: the Python client in `mode` (raw or json), offering compression or not.
fn python_client_row(mode: &str, compression: bool) {
    let Some(python) = python() else { return };
    let server = Server::start(&[
        "--ping-interval",
        "200ms",
        "--client-publish",
        "interop",
        "--max-inbound-rate",
        "0",
        "--max-message-size",
        "1MiB",
    ]);
    let url = if mode == "raw" { server.ws_url("?channel=interop") } else { server.ws_url("") };
    let mut child = Command::new(&python)
        .arg(script("interop_client.py"))
        .args([url.as_str(), mode, if compression { "on" } else { "off" }])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = LineReader::new(child.stdout.take().unwrap());
    let mut row = Row::new(&python_version(&python), "client of tether serve", mode, compression);
    let mut next = |name: &str| event(&out.expect_line(T, name, |l| event(l)["event"] == name));

    let open = next("open");
    let want =
        if mode == "json" { serde_json::json!("tether.v1.json") } else { serde_json::Value::Null };
    row.check("handshake", open["subprotocol"] == want);
    row.negotiated = open["extensions"].as_str().unwrap_or("").to_owned();
    row.check("text ping → pong", next("ping")["ok"] == true);
    row.check("protocol ping → pong", next("protocol_ping")["ok"] == true);
    next("ready");
    for (kind, data) in
        [("1 byte", SMALL.to_owned()), ("200 KiB", big()), ("UTF-8", UTF8.to_owned())]
    {
        server.publish("interop", &data);
        row.check(kind, next("received")["ok"] == true);
    }
    if mode == "json" {
        row.check("200 KiB in 4 fragments, inbound", next("fragmented")["ok"] == true);
    } else {
        row.not_applicable("200 KiB in 4 fragments, inbound", "raw mode ignores what clients send");
    }
    let closed = next("closed");
    let logged = wait_until(T, || server.log().contains("code=4100 reason=bye from peer ✓"));
    row.check("close by peer (4100, reason)", closed["code"] == 4100 && logged);
    next("ready2");
    let mut server = server;
    server.terminate();
    let by_server = next("server_closed");
    row.check(
        "close by Tether (1012, reason)",
        by_server["code"] == 1012 && by_server["reason"] == "server shutting down",
    );
    assert!(child.wait().unwrap().success());
    row.finish();
}

#[test]
fn python_websockets_client_raw() {
    python_client_row("raw", false);
}

#[test]
fn python_websockets_client_raw_offering_compression() {
    python_client_row("raw", true);
}

#[test]
fn python_websockets_client_json() {
    python_client_row("json", false);
}

#[test]
fn python_websockets_client_json_offering_compression() {
    python_client_row("json", true);
}

/// A third-party server speaking the peer-server contract of `tests/python/interop_server.py`.
struct PeerServer {
    child: std::process::Child,
    out: LineReader,
    port: u16,
}

impl PeerServer {
    fn start(mut cmd: Command) -> PeerServer {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut out = LineReader::new(child.stdout.take().unwrap());
        let line = out.expect_line(T, "the port", |l| event(l)["port"].is_u64());
        let port = event(&line)["port"].as_u64().unwrap() as u16;
        PeerServer { child, out, port }
    }

    fn client_closed(&mut self) -> serde_json::Value {
        event(&self.out.expect_line(T, "client_closed", |l| event(l)["event"] == "client_closed"))
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One row: Tether's Rust client (raw mode: third-party servers do not speak tether.v1.json)
/// against `peer`.
async fn rust_client_row(name: String, peer: Command, compression: bool) {
    use tether_client::{Event, Initiator};
    let mut peer = tokio::task::spawn_blocking(move || PeerServer::start(peer)).await.unwrap();
    // The Rust client offers permessage-deflate; the peer agrees when its compression is on.
    let mut row = Row::new(&name, "server for the Rust client", "raw", true);
    if compression {
        row.role = "server for the Rust client, compression enabled".into();
    }
    let url = format!("ws://127.0.0.1:{}/", peer.port);
    let (client, mut events) = tether_client::connect(fast_client(url).raw());
    let text = |want: &'static str| move |e: &Event| matches!(e, Event::Message(m) if m == want);
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    next_event(&mut events, T, "hello", text("hello")).await;
    row.negotiated = client.stats().extensions.lock().unwrap().clone();
    row.check("handshake", compression != row.negotiated.is_empty());
    client.send_text("ping").await.unwrap();
    next_event(&mut events, T, "pong", text("pong")).await;
    row.check("text ping → pong", true);
    client.send_text("server-ping").await.unwrap();
    next_event(&mut events, T, "the peer's ping answered", text("server-ping ok")).await;
    row.check(
        "protocol ping → pong",
        client.stats().heartbeat_timeouts.load(std::sync::atomic::Ordering::Relaxed) == 0,
    );
    let big = "a".repeat(200 * 1024);
    for (kind, request, want) in [
        ("1 byte", "send small", "x".to_owned()),
        ("200 KiB", "send big", big.clone()),
        ("UTF-8", "send utf8", "héllo ✓ 日本語 🎉".to_owned()),
        ("200 KiB in 4 fragments, inbound", "send big-fragmented", big.clone()),
    ] {
        client.send_text(request).await.unwrap();
        let got = next_event(&mut events, T, kind, |e| matches!(e, Event::Message(_))).await;
        row.check(kind, matches!(got, Event::Message(m) if m == want));
    }
    client.send_text("close-me").await.unwrap();
    let Event::Closed(info) =
        next_event(&mut events, T, "the peer's close", |e| matches!(e, Event::Closed(_))).await
    else {
        unreachable!()
    };
    let echoed = tokio::task::block_in_place(|| peer.client_closed());
    row.check(
        "close by peer (4200, reason)",
        info.code == 4200
            && info.reason == "bye from server ✓"
            && info.initiator == Initiator::Server
            && info.was_clean
            && echoed["code"] == 4200,
    );
    // The client reconnects by itself; then it closes, and the peer sees its code and reason.
    next_event(&mut events, T, "the reconnect", |e| matches!(e, Event::Open { reconnected: true }))
        .await;
    client.close().await;
    let seen = tokio::task::block_in_place(|| peer.client_closed());
    row.check(
        "close by Tether (1000, reason)",
        seen["code"] == 1000 && seen["reason"] == "client closing",
    );
    row.finish();
}

fn node() -> Option<std::path::PathBuf> {
    require("Node.js (apt-get install nodejs)", which("node"))
}

fn node_ws_version() -> String {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../web/node_modules/ws/package.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|_| {
        panic!("{} missing: run npm ci in web/ (scripts/test does)", manifest.display())
    });
    let version = serde_json::from_str::<serde_json::Value>(&text).unwrap()["version"].clone();
    format!("Node ws {}", version.as_str().unwrap_or("?"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_against_a_python_websockets_server() {
    for compression in [false, true] {
        let Some(python) = python() else { return };
        let name = python_version(&python);
        let mut cmd = Command::new(python);
        cmd.arg(script("interop_server.py")).arg(if compression { "on" } else { "off" });
        rust_client_row(name, cmd, compression).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_against_a_node_ws_server() {
    for compression in [false, true] {
        let Some(node) = node() else { return };
        let mut cmd = Command::new(node);
        cmd.arg(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../web/test/peers/interop_server.mjs"),
        )
        .arg(if compression { "on" } else { "off" });
        rust_client_row(node_ws_version(), cmd, compression).await;
    }
}

fn websocat() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("TETHER_WEBSOCAT").map(std::path::PathBuf::from).or_else(|| {
        let local = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/tools/bin/websocat");
        local.is_file().then_some(local).or_else(|| which("websocat"))
    });
    require("websocat (cargo install websocat; scripts/test does)", found)
}

/// One row: websocat (a line-oriented command-line client) in `mode`.
fn websocat_row(mode: &str) {
    use std::io::Write;
    let Some(bin) = websocat() else { return };
    let version = Command::new(&bin).arg("--version").output().unwrap();
    let peer = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let mut server = Server::start(&["--ping-interval", "200ms", "--max-message-size", "1MiB"]);
    let url = if mode == "raw" { server.ws_url("?channel=interop") } else { server.ws_url("") };
    let spawn = || {
        let mut cmd = Command::new(&bin);
        // Text frames, one per line without its newline; a buffer that holds 200 KiB in one
        // line; pings every second with their round trips printed; the close data logged.
        cmd.args(["-t", "--linemode-strip-newlines", "-B", "1048576", "-vv"])
            .args(["--ping-interval", "1", "--print-ping-rtts"])
            .args(["--close-status-code", "4100", "--close-reason", "bye from peer ✓"]);
        if mode == "json" {
            cmd.args(["--protocol", "tether.v1.json"]);
        }
        let mut child = cmd
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = LineReader::new(child.stdout.take().unwrap());
        let err = LineReader::new(child.stderr.take().unwrap());
        (child, out, err)
    };
    let mut row = Row::new(&peer, "client of tether serve", mode, false);
    let (mut child, mut out, mut err) = spawn();
    let mut stdin = child.stdin.take().unwrap();
    let accepted = format!("tether_connections_accepted_total{{mode=\"{mode}\"}}");
    row.check("handshake", wait_until(T, || server.metric(&accepted) == 1.0));
    // One write per line: websocat's line mode sends what one read returns, so a line written
    // in two pieces ("ping", then "\n") could arrive as a message with its newline.
    let mut say = |line: &str| stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    // JSON mode: the data of the next publication; raw mode: the next line.
    let data_of = |line: &str, mode: &str| -> Option<String> {
        if mode == "raw" {
            return Some(line.to_owned());
        }
        let v = event(line);
        (v["type"] == "publication").then(|| v["data"].as_str().unwrap_or_default().to_owned())
    };
    if mode == "raw" {
        say("ping");
        row.check("text ping → pong", out.expect_line(T, "pong", |l| l == "pong") == "pong");
    } else {
        say(r#"{"id":1,"cmd":"ping"}"#);
        let reply = out.expect_line(T, "ping reply", |l| event(l)["id"] == 1);
        // A success: `result` (the first reply also tells the connection's client id).
        let reply = event(&reply);
        row.check("text ping → pong", reply["result"].is_object() && reply["error"].is_null());
        say(r#"{"id":2,"cmd":"subscribe","channel":"interop"}"#);
        out.expect_line(T, "subscribed", |l| event(l)["id"] == 2);
    }
    row.check(
        "protocol ping → pong",
        !err.expect_line(T, "an RTT", |l| l.starts_with("RTT ")).is_empty(),
    );
    for (kind, data) in
        [("1 byte", SMALL.to_owned()), ("200 KiB", big()), ("UTF-8", UTF8.to_owned())]
    {
        server.publish("interop", &data);
        let want: String = serde_json::from_str(&data).unwrap();
        let line = out.expect_line(T, kind, |l| data_of(l, mode).is_some());
        row.check(kind, data_of(&line, mode).as_deref() == Some(want.as_str()));
    }
    row.not_applicable("200 KiB in 4 fragments, inbound", "websocat sends a line as one frame");
    drop(stdin); // EOF: websocat closes with --close-status-code and --close-reason
    let logged = wait_until(T, || server.log().contains("code=4100 reason=bye from peer ✓"));
    row.check("close by peer (4100, reason)", logged);
    let _ = child.wait();

    let (mut second, _out, mut err) = spawn();
    assert!(wait_until(T, || server.metric(&accepted) == 2.0));
    server.terminate();
    let close = err.expect_line(T, "the close data", |l| l.contains("The close message is"));
    row.check(
        "close by Tether (1012, reason)",
        close.contains("status_code: 1012") && close.contains("reason: \"server shutting down\""),
    );
    let _ = second.kill();
    let _ = second.wait();
    row.finish();
}

#[test]
fn websocat_client_raw() {
    websocat_row("raw");
}

#[test]
fn websocat_client_json() {
    websocat_row("json");
}
