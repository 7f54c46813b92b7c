//! The command line: help on every command, layered configuration, and errors that say what
//! is wrong and what to do — never a panic.

mod common;
use common::*;
use std::process::{Command, Stdio};

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["connect", "--help"],
        &["publish", "--help"],
        &["token", "--help"],
        &["soak", "--help"],
        &["bench", "--help"],
        &["api", "--help"],
        &["presence", "--help"],
        &["doctor", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        let out = tether(args, &[]);
        let (stdout, _) = text(&out);
        assert!(out.status.success(), "{args:?}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    let (stdout, _) = text(&tether(&["serve", "--help"], &[]));
    for flag in [
        "--listen",
        "--ping-interval",
        "--pong-timeout",
        "--max-message-size",
        "--config",
        "--print-config",
    ] {
        assert!(stdout.contains(flag), "serve --help lists {flag}");
    }
}

#[test]
fn configuration_layers_file_then_env_then_flags() {
    let dir = std::env::temp_dir().join(format!("tether-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.toml");
    std::fs::write(&file, "ping_interval = \"5s\"\npong_timeout = \"3s\"\nmax_message_size = \"8KiB\"\nclient_publish = [\"chat:*\"]\n").unwrap();
    let path = file.to_str().unwrap();

    // Defaults with no configuration at all.
    let (stdout, _) = text(&tether(&["serve", "--print-config"], &[]));
    let cfg: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(cfg["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(cfg["ping_interval"].as_str(), Some("25s"));

    // File < environment < flags.
    let out = tether(
        &["serve", "--config", path, "--print-config", "--pong-timeout", "250ms"],
        &[
            ("TETHER_PING_INTERVAL", "100ms"),
            ("TETHER_PONG_TIMEOUT", "9s"),
            ("TETHER_LISTEN", "127.0.0.1:9999"),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let cfg: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(cfg["ping_interval"].as_str(), Some("100ms"), "env beats file");
    assert_eq!(cfg["pong_timeout"].as_str(), Some("250ms"), "flag beats env");
    assert_eq!(cfg["listen"].as_str(), Some("127.0.0.1:9999"));
    // The flat `client_publish` list is shown as a `[[channel]]` block.
    assert_eq!(cfg["channel"][0]["pattern"].as_str(), Some("chat:*"), "file beats default");
    assert_eq!(cfg["channel"][0]["client_publish"].as_bool(), Some(true));
    let size = cfg["max_message_size"].as_str().unwrap();
    assert!(size.starts_with("8"), "{size}");

    // What --print-config prints is a valid config file.
    std::fs::write(&file, &stdout).unwrap();
    let again = tether(&["serve", "--config", path, "--print-config"], &[]);
    assert_eq!(text(&again).0, stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_say_what_is_wrong_without_a_panic() {
    let check = |args: &[&str], needle: &str| {
        let out = tether(args, &[]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    };
    check(&["serve", "--config", "/nonexistent/tether.toml"], "cannot read config file");
    check(&["serve", "--ping-interval", "soon"], "not a duration");
    check(&["serve", "--max-message-size", "huge"], "not a size");
    check(&["serve", "--ping-interval", "1ms"], "ping_interval");
    check(&["serve", "--listen", "not-an-address"], "invalid");
    check(&["connect", "http://127.0.0.1:1/ws"], "must start with ws://");
    check(&["publish", "--server", "http://127.0.0.1:1", "news", "x"], "cannot reach");
    check(&["publish", "--server", "127.0.0.1:1", "news", "x"], "http://");

    let dir = std::env::temp_dir().join(format!("tether-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "ping_intervl = \"1s\"\n").unwrap();
    check(&["serve", "--config", file.to_str().unwrap()], "ping_intervl");
    std::fs::remove_dir_all(&dir).unwrap();

    // Port in use: a running server holds it.
    let server = Server::start(&[]);
    check(&["serve", "--listen", &server.addr.to_string()], "cannot listen on");
}

#[test]
fn publish_command_reaches_subscribers() {
    let server = Server::start(&[]);
    let out = tether(&["publish", "--server", &server.http(""), "news", r#"{"a":1}"#], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(reply["delivered"], 0);
    let out = tether(&["publish", "--server", &server.http(""), "bad name", "x"], &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("400") && stderr.contains("bad channel"), "{stderr}");
}

#[test]
fn connect_prints_publications_closes_and_the_reconnect_schedule() {
    let mut server = Server::start(&[]);
    let mut child = Command::new(BIN)
        .args(["connect", &server.ws_url(""), "--channel", "news", "--backoff-initial", "100ms"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = LineReader::new(child.stdout.take().unwrap());
    let t = std::time::Duration::from_secs(10);
    out.expect_line(t, "subscribed", |l| l == "* subscribed to news");
    server.publish("news", r#"{"hello":"world"}"#);
    out.expect_line(t, "publication", |l| l == r#"< [news #1] {"hello":"world"}"#);
    server.kill9();
    let closed = out.expect_line(t, "close", |l| l.starts_with("* closed:"));
    assert!(closed.contains("code=1006") && closed.contains("was_clean=false"), "{closed}");
    assert!(closed.contains("reconnecting in") && closed.contains("attempt 1"), "{closed}");
    let _server = server.restart();
    out.expect_line(t, "reconnected", |l| l == "* reconnected");
    let line = out.expect_line(t, "resubscribed", |l| l.starts_with("* resubscribed to news"));
    assert!(line.contains("NOT recovered"), "a restarted memory broker has a new epoch: {line}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn connect_whose_output_is_closed_ends_quietly() {
    // `tether connect … | head -3`: once the reader is gone, the next line must end the
    // client quietly, not with println!'s "failed printing to stdout" panic.
    use std::io::BufRead;
    let server = Server::start(&[]);
    let mut child = Command::new(BIN)
        .args(["connect", &server.ws_url(""), "--channel", "news"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("* subscribed to news") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "connect ended before subscribing");
    }
    drop(out); // the pipe's only reader
    server.publish("news", r#""after the reader left""#);
    let ended =
        wait_until(std::time::Duration::from_secs(10), || child.try_wait().unwrap().is_some());
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tether connect kept running with nobody reading its output");
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn serves_its_browser_assets_and_reserves_its_channels() {
    let server = Server::start(&[]);
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for (path, content_type, needle) in [
        ("/tether.js", "text/javascript", "export class TetherClient"),
        // tether.js imports it (`./tether-fallback.js`): the transports over plain HTTP.
        ("/tether-fallback.js", "text/javascript", "export class HttpStreamSocket"),
        ("/", "text/html", "<title>Tether"),
        ("/dashboard.js", "text/javascript", "_tether:dashboard"),
        ("/dashboard.css", "text/css", "svg.chart"),
        ("/examples/plain.html", "text/html", "new WebSocket"),
    ] {
        let mut resp = agent.get(&server.http(path)).call().unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(content_type), "{path}: {ct}");
        assert!(resp.body_mut().read_to_string().unwrap().contains(needle), "{path}");
    }
    // Channels under `_tether:` belong to the server.
    let (status, body) = server.post_publish(r#"{"channel":"_tether:dashboard","data":1}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("reserved"));
}

#[test]
fn health_endpoints_can_have_a_listener_of_their_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Server::start(&["--health-listen", &format!("127.0.0.1:{port}")]);
    let health = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let (status, body) = http_request("GET", &health("/healthz"), None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");
    assert_eq!(http_request("GET", &health("/readyz"), None).0, 200);
    assert_eq!(http_request("GET", &health("/metrics"), None).0, 200);
    // Only those: no WebSocket, no publishing there.
    assert_eq!(http_request("GET", &health("/ws"), None).0, 404);
    assert_eq!(http_request("POST", &health("/api/publish"), Some("{}")).0, 404);
    // The main port still answers health checks too.
    assert_eq!(http_request("GET", &server.http("/healthz"), None).0, 200);
    // A taken address is a clear start-up error.
    let out = tether(
        &["serve", "--listen", "127.0.0.1:0", "--health-listen", &format!("127.0.0.1:{port}")],
        &[],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("--health-listen"), "{stderr}");
}

/// Installs like a tool (issue 23, point 4): completion scripts a shell accepts, a manual
/// page, and a configuration check that exits without serving.
#[test]
fn completions_manual_page_and_a_configuration_check() {
    let dir = std::env::temp_dir().join(format!("tether-cli-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = tether(&["completions", "bash"], &[]);
    assert!(out.status.success());
    let script = dir.join("tether.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&script).output().expect("run bash -n");
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    let (bash, _) = text(&out);
    assert!(bash.contains("serve") && bash.contains("--ping-interval"), "{bash}");
    for (shell, marker) in [("zsh", "#compdef tether"), ("fish", "complete -c tether")] {
        let out = tether(&["completions", shell], &[]);
        let (script, _) = text(&out);
        assert!(out.status.success() && script.contains(marker), "{shell}: {script}");
    }
    let out = tether(&["completions", "tcsh"], &[]);
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("bash"), "{err}");

    let out = tether(&["man"], &[]);
    let (page, _) = text(&out);
    assert!(out.status.success() && page.contains(".TH tether 1"), "{page}");
    assert!(page.contains("serve") && page.contains("completions"), "{page}");

    let good = dir.join("good.toml");
    std::fs::write(&good, "ping_interval = \"10s\"\n").unwrap();
    let good = good.to_str().unwrap();
    let out = tether(&["serve", "--config", good, "--check-config"], &[]);
    let (said, _) = text(&out);
    assert!(out.status.success() && said.contains("configuration OK"), "{said}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "presence_ttl = \"1ms\"\n").unwrap();
    let out = tether(&["serve", "--config", bad.to_str().unwrap(), "--check-config"], &[]);
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("presence_ttl"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Checked without serving: a port in use does not matter.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = busy.local_addr().unwrap().to_string();
    let out = tether(&["serve", "--listen", &at, "--check-config"], &[]);
    assert!(out.status.success(), "{:?}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
