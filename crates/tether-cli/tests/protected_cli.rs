//! The CLI against a protected server: `tether publish` with an API key (flag or
//! `TETHER_API_KEY`) and an idempotency key, and `tether connect` with a JWT (`--token`) or a
//! command that prints one (`--token-command`, run again for every reconnect).

mod common;
use common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const KEY: &str = "k3y-for-tests-0123456789";
const SECRET: &str = "test-secret-0123456789";
const T: Duration = Duration::from_secs(10);

/// The JSON receipt a successful `tether publish` prints.
fn receipt(out: &Output) -> serde_json::Value {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "publish failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn publish_without_a_key_says_how_to_give_one() {
    let server = Server::start(&["--api-key", KEY]);
    let out = tether(&["publish", "--server", &server.http(""), "news", "hello"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("needs an API key")
            && stderr.contains("--api-key")
            && stderr.contains("TETHER_API_KEY"),
        "{stderr}"
    );
    let out = tether(
        &["publish", "--server", &server.http(""), "--api-key", "not-the-key-at-all", "news", "x"],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not accept this API key") && stderr.contains("TETHER_API_KEY"),
        "a wrong key is told apart from a missing one: {stderr}"
    );
    assert!(!stderr.contains("not-the-key-at-all"), "the key is not echoed: {stderr}");
    assert_eq!(server.metric("tether_publications_total"), 0.0);
}

#[test]
fn publish_with_the_key_from_the_flag_or_the_environment() {
    let server = Server::start(&["--api-key", KEY]);
    let mut client = std::process::Command::new(BIN)
        .args(["connect", &server.ws_url(""), "--channel", "news"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = LineReader::new(client.stdout.take().unwrap());
    lines.expect_line(T, "subscribed", |l| l == "* subscribed to news");

    let out =
        tether(&["publish", "--server", &server.http(""), "--api-key", KEY, "news", "1"], &[]);
    assert_eq!(receipt(&out)["delivered"], 1);
    lines.expect_line(T, "the first publication", |l| l == "< [news #1] 1");

    let out = tether(
        &["publish", "news", "2"],
        &[("TETHER_API_KEY", KEY), ("TETHER_SERVER", &server.http(""))],
    );
    assert_eq!(receipt(&out)["delivered"], 1);
    lines.expect_line(T, "the second publication", |l| l == "< [news #2] 2");
    // The environment's value stays out of the help text.
    let (help, _) = text(&tether(&["publish", "--help"], &[("TETHER_API_KEY", KEY)]));
    assert!(help.contains("TETHER_API_KEY") && !help.contains(KEY), "{help}");
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn an_idempotency_key_publishes_once_and_the_retry_says_duplicate() {
    let server = Server::start(&["--api-key", KEY]);
    let publish = || {
        tether(
            &[
                "publish",
                "--server",
                &server.http(""),
                "--idempotency-key",
                "order-42",
                "news",
                "x",
            ],
            &[("TETHER_API_KEY", KEY)],
        )
    };
    let first = publish();
    let first_receipt = receipt(&first);
    assert_eq!(first_receipt.get("duplicate"), None, "{first_receipt}");
    let second = publish();
    let second_receipt = receipt(&second);
    assert_eq!(second_receipt["duplicate"], true, "{second_receipt}");
    assert_eq!(second_receipt["offset"], first_receipt["offset"], "the first receipt again");
    let (_, stderr) = text(&second);
    assert!(stderr.contains("duplicate") && stderr.contains("order-42"), "{stderr}");
    assert_eq!(server.metric("tether_publications_total"), 1.0);
    assert_eq!(server.metric("tether_publications_deduplicated_total"), 1.0);
}

/// `tether connect ARGS`, its stdout read line by line.
fn connect(args: &[&str]) -> (std::process::Child, LineReader) {
    let mut child = Command::new(BIN)
        .arg("connect")
        .args(args)
        .args(["--backoff-initial", "100ms", "--backoff-max", "500ms"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = LineReader::new(child.stdout.take().unwrap());
    (child, lines)
}

/// A shell command line that runs this test's `tether token` for a reader of `news:*`.
fn token_command() -> String {
    format!("'{BIN}' token --secret {SECRET} --sub ada --subscribe 'news:*' --ttl 1h")
}

#[test]
fn connect_with_a_token_receives_a_protected_channel() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let token = Command::new("sh").args(["-c", &token_command()]).output().unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let (mut child, mut lines) =
        connect(&[&server.ws_url(""), "--channel", "news:1", "--token", token.trim()]);
    lines.expect_line(T, "subscribed", |l| l == "* subscribed to news:1");
    server.publish("news:1", r#""for ada""#);
    lines.expect_line(T, "the publication", |l| l == r#"< [news:1 #1] "for ada""#);
    let _ = child.kill();
    let _ = child.wait();

    // Raw mode carries it in the URL (`?token=`), checked at the handshake.
    let (mut child, mut lines) =
        connect(&[&server.ws_url(""), "--raw", "--channel", "news:2", "--token", token.trim()]);
    lines.expect_line(T, "open", |l| l == "* open");
    assert!(wait_until(T, || server.metric("tether_subscriptions") == 1.0));
    server.publish("news:2", r#""raw for ada""#);
    lines.expect_line(T, "the raw publication", |l| l == "< raw for ada");
    let _ = child.kill();
    let _ = child.wait();

    // Without a token the same channel is refused, and the CLI says so.
    let (mut child, mut lines) = connect(&[&server.ws_url(""), "--channel", "news:1"]);
    lines.expect_line(T, "the refusal", |l| l.starts_with("* closed:") && l.contains("4501"));
    assert_eq!(child.wait().unwrap().code(), Some(2), "4501 says do not retry");
}

#[test]
fn a_token_command_runs_again_for_every_reconnect() {
    let mut server = Server::start(&["--jwt-secret", SECRET]);
    let dir = std::env::temp_dir().join(format!("tether-token-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runs = dir.join("runs");
    // Each run is counted in a file, then prints a fresh token on stdout.
    let command = format!("echo run >> '{}'; {}", runs.display(), token_command());
    let count = || std::fs::read_to_string(&runs).map(|s| s.lines().count()).unwrap_or(0);
    let (mut child, mut lines) =
        connect(&[&server.ws_url(""), "--channel", "news:1", "--token-command", &command]);
    lines.expect_line(T, "subscribed", |l| l == "* subscribed to news:1");
    assert_eq!(count(), 1);
    server.publish("news:1", "1");
    lines.expect_line(T, "the first publication", |l| l == "< [news:1 #1] 1");

    server.kill9();
    let restarted = server.restart();
    lines.expect_line(T, "resubscribed", |l| l.starts_with("* resubscribed to news:1"));
    assert!(count() >= 2, "the command ran again before the reconnect: {} runs", count());
    restarted.publish("news:1", "2");
    lines.expect_line(T, "a publication after the reconnect", |l| l == "< [news:1 #1] 2");
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failing_token_command_is_a_clear_error() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    // At start: the command's exit status and its stderr, and no connection attempt.
    let out = tether(
        &["connect", &server.ws_url(""), "--token-command", "echo 'login expired' >&2; exit 3"],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("--token-command")
            && stderr.contains("exit status: 3")
            && stderr.contains("login expired"),
        "{stderr}"
    );
    assert!(!stdout.contains("* open"), "{stdout}");
    // A command that prints nothing.
    let out = tether(&["connect", &server.ws_url(""), "--token-command", "true"], &[]);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("--token-command") && stderr.contains("no token"), "{stderr}");

    // On a reconnect: the client stops and says why (exit 2), instead of retrying forever.
    let mut server = server;
    let dir = std::env::temp_dir().join(format!("tether-token-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let once = dir.join("once");
    let command = format!(
        "if [ -e '{0}' ]; then echo 'no more tokens' >&2; exit 1; fi; touch '{0}'; {1}",
        once.display(),
        token_command()
    );
    let (mut child, mut lines) =
        connect(&[&server.ws_url(""), "--channel", "news:1", "--token-command", &command]);
    lines.expect_line(T, "subscribed", |l| l == "* subscribed to news:1");
    server.kill9();
    let stopped = lines.expect_line(T, "stopped", |l| l.starts_with("* stopped:"));
    assert!(stopped.contains("no more tokens"), "{stopped}");
    assert_eq!(child.wait().unwrap().code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
