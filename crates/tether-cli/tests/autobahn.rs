//! The server against the field's conformance suite: Autobahn|Testsuite's cases (through the
//! PyPI package `kosoku`, a runner of Autobahn's own case files) drive `tether serve
//! --conformance-echo`, every case of sections 1-13, 12 and 13 with permessage-deflate.
//! Limits that a case would otherwise hit on purpose are raised for the run, not the case
//! excluded: 16 MiB messages (9.x), no inbound rate limit (9.7/9.8 send thousands of messages);
//! and every message is compressed on a compressed connection, which kosoku needs.
//! The report lands in `target/autobahn/server` (Autobahn's `index.json` and HTML).

mod common;

use common::{release, require, Server};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The whole suite, bounded: it takes a few minutes on two cores.
const TIME_LIMIT: Duration = Duration::from_secs(20 * 60);

fn kosoku() -> Option<PathBuf> {
    let found = std::env::var_os("TETHER_KOSOKU").map(PathBuf::from).or_else(|| {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/kosoku");
        Some(venv)
    });
    require("kosoku (pip install kosoku==0.1.0)", found.filter(|p| p.exists()))
}

/// The optimised binary when the test command built it (faster through 16 MiB messages) and it
/// is up to date with the sources, else the one under test.
fn server_bin() -> Option<String> {
    std::env::var_os("TETHER_RELEASE_BIN")?;
    match release::release_bin() {
        Ok(bin) => Some(bin.to_string_lossy().into_owned()),
        Err(why) => {
            eprintln!("autobahn: the debug build instead of the release build: {why}");
            None
        }
    }
}

#[test]
fn the_server_passes_autobahn() {
    let Some(kosoku) = kosoku() else { return };
    let args = [
        "--conformance-echo",
        "--max-message-size",
        "20MiB",
        "--outbound-queue-bytes",
        "63MiB",
        "--max-inbound-rate",
        "0",
        // kosoku 0.1.0 raises on an uncompressed message in a compressed session (RFC 7692
        // allows it; docs/interop.md): compress every message, as this setting says.
        "--compression-min-size",
        "0",
        // No heartbeat inside a case: the compression cases take 15-25 s each in a debug build
        // on a busy machine, and a server ping at the default 25 s is a frame kosoku does not
        // expect (a CI run failed 12.3.16-18 with "did not finish", having received a ping).
        // Heartbeats are tested elsewhere (tests/heartbeat.rs).
        "--ping-interval",
        "10m",
    ];
    let server = match server_bin() {
        Some(bin) => Server::start_with(&bin, "127.0.0.1:0", &args),
        None => Server::start(&args),
    };
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/autobahn/server");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let started = Instant::now();
    let mut child = std::process::Command::new(&kosoku)
        .arg(format!("ws://{}/echo", server.addr))
        .args(["-o".as_ref(), out.as_os_str(), "-p".as_ref(), "2".as_ref()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start kosoku");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Autobahn run did not finish within {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let summary = common::autobahn::Summary::read(&out.join("index.json"));
    // Straight to stderr, past the test harness's capture: the summary shows in every run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "autobahn server (tether serve /echo): {} in {:.0?} (kosoku exit: {status})",
        summary.line(),
        started.elapsed()
    );
    summary.assert_passed();
    assert!(summary.total >= 500, "only {} cases ran", summary.total);
    assert!(
        summary.cases.keys().any(|c| c.starts_with("12."))
            && summary.cases.keys().any(|c| c.starts_with("13.")),
        "the compression cases did not run"
    );
}
