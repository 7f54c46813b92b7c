//! The measuring tools work end to end against a real server (small runs: this checks the
//! tools, not the server's speed — speed lives in docs/performance.md).

mod common;
use common::*;
use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN).arg("bench").args(args).arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn fanout_pingpong_and_idle_report_sane_figures() {
    // Ping-pong sends thousands of messages per second per connection: lift the inbound limit.
    let server = Server::start(&["--max-inbound-rate", "0"]);
    let metrics = server.http("/metrics");
    let pid = server.child.id().to_string();

    let f = bench(&[
        "fanout",
        "--sub-url",
        &server.ws_url(""),
        "--publish-url",
        &server.http(""),
        "--subs",
        "5",
        "--rate",
        "40",
        "--duration",
        "500ms",
        "--metrics-url",
        &metrics,
    ]);
    assert_eq!((f["published"].as_u64(), f["deliveries"].as_u64()), (Some(20), Some(100)), "{f}");
    assert_eq!((f["lost"].as_u64(), f["duplicated"].as_u64()), (Some(0), Some(0)), "{f}");
    assert!(f["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{f}");
    assert!(f["server_cpu_percent"].as_f64().is_some(), "server CPU read from /metrics: {f}");

    let p = bench(&[
        "pingpong",
        "--url",
        &server.ws_url(""),
        "--conns",
        "2",
        "--duration",
        "300ms",
        "--server-pid",
        &pid,
    ]);
    assert!(p["round_trips"].as_u64().unwrap() > 10, "{p}");
    assert!(p["server_cpu_percent"].as_f64().is_some(), "server CPU read from /proc: {p}");

    let i = bench(&[
        "idle",
        "--url",
        &server.ws_url("?channel=idle"),
        "--conns",
        "200",
        "--hold",
        "200ms",
        "--metrics-url",
        &metrics,
    ]);
    assert_eq!((i["connected"].as_u64(), i["drops"].as_u64()), (Some(200), Some(0)), "{i}");
    assert!(i["server_rss_bytes_per_conn"].as_f64().is_some(), "{i}");
    assert_eq!(server.metric("tether_connections_accepted_total{mode=\"raw\"}"), 5.0 + 2.0 + 200.0);
}

#[test]
fn storm_restarts_its_own_server_and_counts_everyone_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = bench(&[
        "storm",
        "--conns",
        "50",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--backoff-initial",
        "200ms",
        "--timeout",
        "20s",
    ]);
    assert_eq!(s["back"].as_u64(), Some(50), "{s}");
    let all = s["seconds_to_100_percent"].as_f64().unwrap();
    assert!(s["seconds_to_99_percent"].as_f64().unwrap() <= all && all < 20.0, "{s}");
    assert!(s["peak_reconnects_per_sec"].as_u64().unwrap() > 0, "{s}");
}
