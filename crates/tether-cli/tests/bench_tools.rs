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

    // Working connections: each pings; they stay open and are counted the same way.
    let url = server.ws_url("?channel=idle");
    let w =
        bench(&["idle", "--url", &url, "--conns", "20", "--hold", "300ms", "--ping-every", "50ms"]);
    assert_eq!((w["connected"].as_u64(), w["drops"].as_u64()), (Some(20), Some(0)), "{w}");
    assert_eq!(w["ping_every_ms"].as_u64(), Some(50), "{w}");

    // SSE streams instead of WebSockets (an http:// URL): held and counted the same way.
    let sse = server.http("/sse?channel=idle");
    let e = bench(&["idle", "--url", &sse, "--conns", "20", "--hold", "300ms"]);
    assert_eq!((e["connected"].as_u64(), e["drops"].as_u64()), (Some(20), Some(0)), "{e}");
    assert_eq!(server.metric("tether_connections_accepted_total{mode=\"sse\"}"), 20.0);

    // A period under a millisecond is refused with a clear error, not a panic in the timer.
    for bad in ["0s", "500us"] {
        let out = Command::new(BIN)
            .args(["bench", "idle", "--url", &url, "--conns", "1", "--ping-every", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--ping-every {bad}: {stderr}");
        assert!(stderr.contains("at least 1ms"), "--ping-every {bad}: {stderr}");
    }
}

#[test]
fn fanout_reports_publish_answer_times_and_server_memory_while_receiving() {
    let server = Server::start(&[]);
    let (pid, ws, http) = (server.child.id().to_string(), server.ws_url(""), server.http(""));
    let args: [&str; 11] = [
        "fanout",
        "--sub-url",
        &ws,
        "--publish-url",
        &http,
        "--subs",
        "20",
        "--rate",
        "20",
        "--duration",
        "300ms",
    ];
    let f = bench(&[&args[..], &["--server-pid", pid.as_str()][..]].concat());
    assert_eq!((f["published"].as_u64(), f["lost"].as_u64()), (Some(6), Some(0)), "{f}");
    // The older key stays for the scripts that read it; the new block says the same p99.
    assert_eq!(f["publish_answer_ms"]["p99"], f["publisher_ms"]["http_answer_p99"], "{f}");
    let (p50, p99) = (
        f["publish_answer_ms"]["p50"].as_f64().unwrap(),
        f["publish_answer_ms"]["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{f}");

    let rss = &f["server_rss_bytes"];
    assert!(rss["samples"].as_u64().unwrap() >= 2, "a sample at the start and one at the end: {f}");
    let (base, median, peak) = (
        rss["baseline"].as_f64().unwrap(),
        rss["median"].as_f64().unwrap(),
        rss["peak"].as_f64().unwrap(),
    );
    assert!(base > 1e6 && median > 1e6 && median <= peak, "{f}");
    let per_sub = f["server_rss_bytes_per_sub_above_baseline"].as_f64().unwrap();
    assert_eq!(per_sub, ((peak - base) / 20.0).round(), "{f}");
    let per_sub = f["server_rss_bytes_per_sub_median_above_baseline"].as_f64().unwrap();
    assert_eq!(per_sub, ((median - base) / 20.0).round(), "{f}");

    // Without a pid there is nothing to sample: the keys are there, empty.
    let f = bench(&args);
    assert_eq!(f["server_rss_bytes"]["samples"].as_u64(), Some(0), "{f}");
    assert!(
        f["server_rss_bytes"]["peak"].is_null()
            && f["server_rss_bytes_per_sub_above_baseline"].is_null()
            && f["server_rss_bytes_per_sub_median_above_baseline"].is_null(),
        "{f}"
    );
    assert!(f["publish_answer_ms"]["p50"].as_f64().unwrap() > 0.0, "{f}");
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
