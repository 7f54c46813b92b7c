//! Interoperability with a real third-party implementation, in both directions:
//! Python `websockets` as a client of `tether serve`, and `tether connect` against a Python
//! `websockets` server.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn event(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

#[test]
fn python_websockets_client_in_raw_mode() {
    let Some(python) = python() else { return };
    let server = Server::start(&["--ping-interval", "100ms", "--pong-timeout", "500ms"]);
    let mut child = Command::new(python)
        .arg(script("raw_client.py"))
        .arg(server.ws_url("?channel=news"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = LineReader::new(child.stdout.take().unwrap());
    let t = Duration::from_secs(10);

    let open = event(&out.expect_line(t, "open", |l| event(l)["event"] == "open"));
    assert_eq!(open["subprotocol"], serde_json::Value::Null, "raw mode selects no subprotocol");
    let pong = event(&out.expect_line(t, "pong", |l| event(l)["event"] == "pong"));
    assert_eq!(pong["text"], "pong");
    // websockets resolves a ping only on the pong with the same payload, and reports the round
    // trip: positive, and well inside the client's 1 s ping_timeout when the server answers at
    // once (a pong held back, say until the next heartbeat wake-up, would show here).
    for _ in 0..5 {
        let p =
            event(&out.expect_line(t, "protocol pong", |l| event(l)["event"] == "protocol_pong"));
        let latency = p["latency"].as_f64().unwrap_or_else(|| panic!("no latency in {p}"));
        assert!(latency > 0.0 && latency < 0.5, "ping answered in {latency} s");
    }
    out.expect_line(t, "ready", |l| event(l)["event"] == "ready");
    let reply = server.publish("news", r#""hello from the HTTP API""#);
    assert_eq!(reply["delivered"], 1, "{reply}");
    let msg = event(&out.expect_line(t, "publication", |l| event(l)["event"] == "message"));
    assert_eq!(msg["text"], "hello from the HTTP API", "a JSON string arrives as its plain text");
    let closed = event(&out.expect_line(t, "closed", |l| event(l)["event"] == "closed"));
    assert_eq!(closed["code"], 1000);
    assert!(child.wait().unwrap().success());

    // The server logged the client's close with its code, and counted it.
    assert!(wait_until(t, || server.closed("1000", "client") == 1.0));
    let log = server.log();
    assert!(log.contains("code=1000") && log.contains("initiator=\"client\""), "{log}");
}

#[test]
fn tether_connect_talks_to_a_python_websockets_server() {
    let Some(python) = python() else { return };
    let mut py = Command::new(python)
        .arg(script("echo_server.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut py_out = LineReader::new(py.stdout.take().unwrap());
    let port_line =
        py_out.expect_line(Duration::from_secs(10), "python server port", |l| l.contains("port"));
    let port = event(&port_line)["port"].as_u64().unwrap();

    let mut connect = Command::new(BIN)
        .args([
            "connect",
            "--raw",
            "--ping-interval",
            "100ms",
            "--pong-timeout",
            "500ms",
            "--max-attempts",
            "1",
        ])
        .arg(format!("ws://127.0.0.1:{port}/"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = connect.stdin.take().unwrap();
    let mut out = LineReader::new(connect.stdout.take().unwrap());
    let t = Duration::from_secs(10);
    out.expect_line(t, "open", |l| l == "* open");
    out.expect_line(t, "greeting", |l| l == "< hello from python");
    use std::io::Write;
    writeln!(stdin, "héllo wörld").unwrap();
    out.expect_line(t, "echo", |l| l == "< echo: héllo wörld");
    // Let the Python server's 100 ms pings run for several rounds: tether must answer them.
    writeln!(stdin, "still here").unwrap();
    out.expect_line(t, "second echo", |l| l == "< echo: still here");
    writeln!(stdin, "bye").unwrap();
    let closed = out.expect_line(t, "close", |l| l.starts_with("* closed:"));
    assert!(closed.contains("code=1001"), "{closed}");
    assert!(closed.contains("reason=\"python going away\""), "{closed}");
    assert!(closed.contains("was_clean=true"), "{closed}");
    assert!(closed.contains("initiator=server"), "{closed}");
    assert!(closed.contains("reconnecting in"), "1001 reconnects: {closed}");
    let _ = connect.kill();
    let _ = connect.wait();
    let _ = py.kill();
    let _ = py.wait();
}
