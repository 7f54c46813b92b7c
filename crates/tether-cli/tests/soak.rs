//! A short soak in the test suite: clients come and go (half closing cleanly, half dropping the
//! socket) and the server's memory must come back: resident memory (sampled once it holds still)
//! and the live heap jemalloc reports. A leak of 1 KB per connection per cycle exceeds both.

mod common;
use common::*;
use std::process::Command;

fn soak(server: &Server, cycles: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(BIN)
        .args([
            "soak",
            "--server",
            &server.http(""),
            "--conns",
            "1000",
            "--cycles",
            cycles,
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("soak printed no JSON verdict:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code(), verdict)
}

#[test]
fn server_memory_comes_back_after_churn() {
    let server = Server::start(&[]);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-output");
    std::fs::create_dir_all(&dir).unwrap();
    let chart = dir.join("soak.svg");
    let (code, verdict) =
        soak(&server, "5", &["--threshold", "10", "--chart", chart.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{verdict}");
    assert_eq!(verdict["passed"], true, "{verdict}");
    assert_eq!(verdict["rss_after_cycle"].as_array().unwrap().len(), 5);
    assert_eq!(verdict["heap_after_cycle"].as_array().unwrap().len(), 5);
    // The live heap: within 10%, or 256 bytes per connection of a cycle (a small heap's
    // reading swings by ±150 KB; a leak of 1 KB per connection per cycle adds 4 MB here).
    let heap: Vec<f64> = verdict["heap_after_cycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let grew = heap[4] - heap[0];
    assert!(grew <= (heap[0] * 0.10).max(256.0 * 1000.0), "heap grew {grew} bytes: {verdict}");
    assert!(std::fs::read_to_string(&chart).unwrap().contains("<polyline"), "a chart was written");
    // Every connection of every cycle was served and let go.
    assert_eq!(server.metric("tether_connections_accepted_total"), 5000.0);
    assert_eq!(server.metric("tether_connections_open"), 0.0);
    assert!(
        server.metric("tether_connections_closed_total{code=\"1006\"}") >= 2000.0,
        "half dropped abruptly"
    );
}

#[test]
fn the_verdict_fails_when_memory_exceeds_the_threshold() {
    // A threshold no run can meet proves the failing path: exit code 4 and passed=false.
    let server = Server::start(&[]);
    let (code, verdict) = soak(&server, "2", &["--threshold=-100"]);
    assert_eq!(code, Some(4), "{verdict}");
    assert_eq!(verdict["passed"], false);
}
