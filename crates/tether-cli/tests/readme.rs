//! The README as a newcomer reads it: its tour's commands, run as written (plain and on a
//! server with an API key), print what it says they print; and its reference tables name every
//! command, flag, environment variable and metric that the code has.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
/// How the README starts each command; the test runs the `tether` binary under test instead.
const PREFIX: &str = "cargo run --release -- ";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn readme() -> String {
    std::fs::read_to_string(workspace().join("README.md")).unwrap()
}

/// The text between `start` and the next `## ` heading.
fn section<'a>(text: &'a str, start: &str) -> &'a str {
    let from = text.find(start).unwrap_or_else(|| panic!("README has no {start:?}"));
    let rest = &text[from + start.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The ```sh blocks of a text, each as its command lines (comments and blank lines left out).
fn sh_blocks(text: &str) -> Vec<Vec<String>> {
    text.split("```sh\n")
        .skip(1)
        .map(|block| {
            block[..block.find("```").expect("a closed code block")]
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The text between the backticks that follow `after`.
fn quoted_after<'a>(text: &'a str, after: &str) -> &'a str {
    let rest = &text[text.find(after).unwrap_or_else(|| panic!("README has no {after:?}"))..];
    let rest = &rest[rest.find('`').unwrap() + 1..];
    &rest[..rest.find('`').unwrap()]
}

/// A README command line as a shell command running the binary under test (`exec`, so that
/// the child's PID is tether's own and dropping it stops tether).
fn shell(line: &str, addr: Option<&str>) -> Command {
    let args = line.strip_prefix(PREFIX).unwrap_or_else(|| panic!("{line:?} is not `{PREFIX}…`"));
    let args = match addr {
        Some(addr) => args.replace("127.0.0.1:8080", addr),
        None => args.to_owned(),
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("exec '{BIN}' {args}"));
    // Nothing from the environment of whoever runs the tests: only what the README says.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TETHER_") {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run one terminal-per-line block of the tour: the server, the client, then the publish, and
/// wait for `expected` on the client's stdout.
fn run_tour(block: &[String], expected: &str, without_key_error: &str) {
    let [serve, connect, publish] = block else {
        panic!("the tour has a server, a client and a publish: {block:?}")
    };
    assert!(serve.starts_with(&format!("{PREFIX}serve")), "{serve}");
    assert!(connect.starts_with(&format!("{PREFIX}connect")), "{connect}");
    assert!(publish.starts_with(&format!("{PREFIX}publish")), "{publish}");

    // The README's server listens on 8080; here on a free port (TETHER_LISTEN, which flags
    // would beat: the README's line has none), and the other commands are pointed at it.
    let mut cmd = shell(serve, None);
    cmd.env("TETHER_LISTEN", "127.0.0.1:0").stdout(Stdio::piped()).stderr(Stdio::null());
    let mut server = Running(cmd.spawn().unwrap());
    let mut out = LineReader::new(server.0.stdout.take().unwrap());
    let line = out.expect_line(T, "the server's address", |l| l.starts_with("tether listening"));
    let addr = line.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();

    let mut cmd = shell(connect, Some(&addr));
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut client = Running(cmd.spawn().unwrap());
    let mut lines = LineReader::new(client.0.stdout.take().unwrap());
    lines.expect_line(T, "the subscription", |l| l.starts_with("* subscribed to"));

    let run_publish = |line: &str| -> Output {
        let mut cmd = shell(line, Some(&addr));
        cmd.env("TETHER_SERVER", format!("http://{addr}"));
        cmd.output().unwrap()
    };
    if serve.contains("--api-key") {
        // What the README says happens without the key.
        let words: Vec<&str> = publish.split(' ').collect();
        let at = words.iter().position(|w| *w == "--api-key").expect("publish passes the key");
        let without: Vec<&str> = words[..at].iter().chain(&words[at + 2..]).copied().collect();
        let out = run_publish(&without.join(" "));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(without_key_error), "README says {without_key_error:?}: {stderr}");
    }
    let out = run_publish(publish);
    assert!(out.status.success(), "{publish}: {}", String::from_utf8_lossy(&out.stderr));
    lines.expect_line(T, "what the README says terminal 2 prints", |l| l == expected);
}

#[test]
fn the_tour_works_as_written_also_on_a_server_with_an_api_key() {
    let text = readme();
    let tour = section(&text, "## A one-minute tour");
    let blocks = sh_blocks(tour);
    assert_eq!(blocks.len(), 2, "the plain tour and the one with an API key: {blocks:?}");
    assert!(blocks[1][0].contains("--api-key"), "{:?}", blocks[1]);
    // Prose with its line breaks as spaces, as it reads.
    let prose = tour.split_whitespace().collect::<Vec<_>>().join(" ");
    let expected = quoted_after(&prose, "Terminal 2 prints");
    let without_key = quoted_after(&prose, "says what to do:");
    for block in &blocks {
        run_tour(block, expected, without_key);
    }
}

/// Words made of `[a-z0-9_]`, as the README's metric names are written.
fn words(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).collect()
}

#[test]
fn the_readme_names_every_metric_the_server_registers() {
    let metrics = common::metrics::registered();
    assert!(metrics.len() > 30 && metrics.contains("tether_connections_open"), "{metrics:?}");
    let text = readme();
    let named = words(&text);
    // A counter `x` is exposed as `x_total`; either spelling counts.
    let missing: Vec<&String> = metrics
        .iter()
        .filter(|m| !named.contains(m.as_str()) && !named.contains(format!("{m}_total").as_str()))
        .collect();
    assert!(missing.is_empty(), "metrics the README does not name: {missing:?}");
}

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_readme_names_every_command_flag_and_environment_variable() {
    let text = readme();
    let top = help(&[]);
    let commands: Vec<&str> = top
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("  "))
        // A command's line is indented by two; a wrapped description's by more.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.contains(&"token"), "{commands:?}");
    let mut missing = Vec::new();
    for command in &commands {
        if !text.contains(&format!("`tether {command}")) {
            missing.push(format!("`tether {command}`"));
        }
    }
    // The commands whose flags the README's tables cover, every flag and variable of them.
    for command in ["serve", "connect", "publish"] {
        let help = help(&[command]);
        // Option lines: `-c, --channel <CHANNELS>  Help…`.
        for line in help.lines().map(str::trim_start).filter(|l| l.starts_with('-')) {
            let head = line.split("  ").next().unwrap();
            let flags = head.split([' ', ',']).filter(|w| w.starts_with("--"));
            for flag in flags.filter(|f| *f != "--help" && *f != "--version") {
                if !text.contains(&format!("`{flag}")) {
                    missing.push(format!("{command} {flag}"));
                }
            }
        }
        for env in help.split("[env: ").skip(1) {
            let name = env.split(['=', ']']).next().unwrap();
            if !text.contains(name) {
                missing.push(format!("{command} {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "the README does not name: {missing:?}");
}
