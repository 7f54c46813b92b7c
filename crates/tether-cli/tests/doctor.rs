//! `tether doctor`: through a real nginx with `proxy_read_timeout 3s` the idle probe finds the
//! cut at 3 s and says what to do; without a proxy nothing cuts a silent connection; against
//! another WebSocket server (Python `websockets`) it says what it could not measure.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

/// `tether doctor URL ARGS --json`: the report and whether it exited 0.
fn doctor(url: &str, args: &[&str]) -> (Value, bool) {
    let mut all = vec!["doctor", url, "--json", "--pings", "3", "--timeout", "5s"];
    all.extend_from_slice(args);
    let out = tether(&all, &[]);
    let (stdout, stderr) = text(&out);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}\nstderr: {stderr}"));
    (report, out.status.success())
}

fn findings(report: &Value) -> Vec<String> {
    let all = report["findings"].as_array().unwrap().iter();
    all.map(|f| format!("{} {} → {}", f["level"], f["what"], f["advice"])).collect()
}

fn unmeasured(report: &Value) -> String {
    report["not_measured"].as_array().unwrap().iter().map(|n| format!("{n}\n")).collect()
}

#[test]
fn through_nginx_the_idle_probe_finds_the_proxy_read_timeout_and_the_fix() {
    // Tether's default 25 s heartbeat behind a 3 s proxy timeout: the case it must catch.
    let server = Server::start(&[]);
    let Some(nginx) = Nginx::start(server.addr, "3s") else { return };
    let (report, ok) = doctor(&nginx.ws_url(), &["--idle-probe", "--idle-max", "20s"]);
    assert!(report["tether"].as_bool().unwrap(), "{report:#}");
    let via = report["opening"]["upgrade"]["intermediaries"].to_string();
    assert!(via.contains("nginx"), "the proxy is named: {via}");
    let probes = report["idle_probe"]["connections"].as_array().unwrap();
    assert_eq!(probes.len(), 2);
    for p in probes {
        let after = p["after_ms"].as_f64().unwrap();
        eprintln!("cut after {after} ms");
        assert!((2500.0..=3500.0).contains(&after), "cut after {after} ms, not 3 s ± 0.5: {p}");
        assert_eq!(p["kind"], "no_close_frame", "nginx ends the TCP connection: {p}");
    }
    let cut = findings(&report).into_iter().find(|f| f.contains("cut a silent connection"));
    let cut = cut.unwrap_or_else(|| panic!("no finding on the cut: {report:#}"));
    assert!(cut.starts_with("\"fail\" \"nginx cut a silent connection after 3."), "{cut}");
    assert!(cut.contains("ping_interval 25 s is not below it") && cut.contains("1.5 s"), "{cut}");
    assert!(!ok, "a path that cuts Tether's heartbeat fails the diagnosis");
    assert_eq!(report["http_stream"]["ok"], true, "the fallback passes nginx: {report:#}");
    assert!(report["protocol_ping"]["samples"].as_u64() == Some(3), "{report:#}");
    assert!(report["clock_offset_ms"].as_f64().unwrap().abs() < 1000.0);
}

#[test]
fn without_a_proxy_nothing_cuts_a_silent_connection_and_probes_are_bounded() {
    let server = Server::start(&[]);
    let url = server.ws_url("");
    let (report, ok) = doctor(&url, &["--idle-probe", "--idle-max", "2s"]);
    assert!(ok, "{:#?}", findings(&report));
    assert_eq!(report["idle_probe"]["granted_ms"], 2000);
    for p in report["idle_probe"]["connections"].as_array().unwrap() {
        assert_eq!(p["kind"], "server_ended", "{p}");
        let after = p["after_ms"].as_f64().unwrap();
        assert!((1900.0..=3000.0).contains(&after), "ended after {after} ms, granted 2 s: {p}");
    }
    assert!(report["idle_cut_ms"].is_null());
    let all = findings(&report).join("\n");
    assert!(all.contains("nothing cut a silent connection within 2.0 s"), "{all}");
    assert!(all.contains("\"ok\" \"a Tether server answered"), "{all}");
    assert!(all.contains("compression negotiated: permessage-deflate"), "{all}");
    assert!(wait_until(Duration::from_secs(5), || server.metric("tether_idle_probes") == 0.0));

    // The server grants a few at a time: one place, two asked for.
    let dir = std::env::temp_dir().join(format!("tether-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tether.toml");
    std::fs::write(&config, "idle_probes = 1\nidle_probe_max = \"1s\"\n").unwrap();
    let one = Server::start(&["--config", config.to_str().unwrap()]);
    let (report, _) = doctor(&one.ws_url(""), &["--idle-probe", "--idle-max", "1m"]);
    let missing = unmeasured(&report);
    assert!(missing.contains("all 1 idle probes (idle_probes) are running"), "{missing}");
    assert_eq!(report["server"]["idle_probe_max_ms"], 1000);
    assert!(wait_until(Duration::from_secs(5), || one.metric("tether_idle_probes") == 0.0));
    let (report, _) = doctor(&one.ws_url(""), &["--idle-probe", "--idle-connections", "1"]);
    assert_eq!(report["idle_probe"]["granted_ms"], 1000, "capped at idle_probe_max: {report:#}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn against_another_websocket_server_it_says_what_it_could_not_measure() {
    // An echo server: it answers the text `ping` with `ping`, not `pong`.
    let echo = "  async for m in ws:\n    await ws.send(m)";
    let Some(py) = py_server::PyServer::start(echo) else { return };
    let (report, ok) = doctor(&format!("ws://127.0.0.1:{}/", py.port), &["--idle-probe"]);
    assert!(ok, "nothing failed, some things unmeasured: {:#?}", findings(&report));
    assert_eq!(report["tether"], false);
    assert_eq!(report["protocol_ping"]["samples"], 3, "protocol pings work anywhere: {report:#}");
    let missing = unmeasured(&report);
    for what in [
        "application pings",
        "`ping` was answered",
        "the server's version, heartbeat and clock",
        "the HTTP-streaming fallback",
        "the idle cut: only a Tether server can be asked to stay silent",
    ] {
        assert!(missing.contains(what), "`{what}` not among the unmeasured:\n{missing}");
    }
    assert!(report["idle_probe"].is_null() && report["clock_offset_ms"].is_null());
}
