//! The Autobahn|Testsuite in client mode: kosoku's fuzzing server runs every case against
//! Tether's Rust client, walked by `examples/autobahn_client.rs`, and no case may fail or come
//! out unimplemented. The report stays in `target/autobahn/client-rust/` (`index.html` to
//! browse it).
//!
//! kosoku (PyPI) is found through `$TETHER_KOSOKU`, else `<workspace>/.venv/bin/kosoku`;
//! `scripts/test` installs it. Without it the test is skipped, loudly, or fails under `CI`.

#[path = "../../tether-cli/tests/common/ci.rs"]
mod ci;

#[path = "../examples/autobahn_client.rs"]
#[allow(dead_code)] // its `main` is for running the walk by hand
mod autobahn_client;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const AGENT: &str = "tether-client";
/// The whole walk, every case included: about 7 minutes on two busy cores, nearly all of it in
/// 12.x and 13.x (about 11 GB inflated, echoed compressed). That needs DEFLATE optimised: with
/// miniz_oxide unoptimised (a plain dev profile) those cases take half an hour and more.
const WALK_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// For kosoku to bind, and to write its report after the walk.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const REPORT_DEADLINE: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace.canonicalize().unwrap_or(workspace)
}

/// kosoku, or `None` (reported as SKIPPED) when missing outside CI; a missing kosoku fails
/// the test when `CI` is set, as every external program of the suite does.
fn kosoku() -> Option<PathBuf> {
    let candidate = std::env::var_os("TETHER_KOSOKU")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/kosoku"));
    if candidate.is_file() {
        return Some(candidate);
    }
    if ci::under_ci() {
        panic!("kosoku is required (CI is set) but was not found; run scripts/test to install it");
    }
    eprintln!("\n!!!!!!!! SKIPPED: kosoku not found; run scripts/test to install it !!!!!!!!\n");
    None
}

/// A running `kosoku -m fuzzingserver`, stopped by its PID when dropped.
struct FuzzingServer {
    child: Child,
    port: u16,
    /// Its stdout and stderr, for diagnostics.
    log: Arc<Mutex<String>>,
}

impl FuzzingServer {
    /// Start on a port the system picks; kosoku announces it once it listens.
    fn start(kosoku: &Path, outdir: &Path) -> FuzzingServer {
        let mut child = Command::new(kosoku)
            .args(["-m", "fuzzingserver", "127.0.0.1:0", "-o"])
            .arg(outdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", kosoku.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        for (pipe, port_tx) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, None),
            (Box::new(stderr), Some(port_tx)),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let port = line
                        .strip_prefix("fuzzingserver listening on ws://")
                        .and_then(|address| address.rsplit(':').next()?.trim().parse::<u16>().ok());
                    if let (Some(port), Some(tx)) = (port, &port_tx) {
                        let _ = tx.send(port);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut server = FuzzingServer { child, port: 0, log };
        match port_rx.recv_timeout(STARTUP_DEADLINE) {
            Ok(port) => server.port = port,
            Err(_) => panic!(
                "kosoku did not announce its port within {STARTUP_DEADLINE:?}; its output:\n{}",
                server.log.lock().unwrap()
            ),
        }
        server
    }

    /// Wait, with a deadline, for kosoku to exit: it writes its report once the walk ends.
    fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("kosoku's status") {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FuzzingServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One case's outcome in the summary: its behavior, or FAILED when either verdict fails.
/// `behaviorClose` fails with anything but OK or INFORMATIONAL (FAILED, WRONG CODE, UNCLEAN,
/// FAILED BY CLIENT); `behavior` ERROR means the case could not run at all.
fn verdict(behavior: &str, behavior_close: &str) -> &'static str {
    let close_ok = matches!(behavior_close, "OK" | "INFORMATIONAL");
    match behavior {
        "OK" if close_ok => "OK",
        "NON-STRICT" if close_ok => "NON-STRICT",
        "INFORMATIONAL" if close_ok => "INFORMATIONAL",
        "UNIMPLEMENTED" if close_ok => "UNIMPLEMENTED",
        _ => "FAILED",
    }
}

/// Case ids in the suite's order (1.2.10 after 1.2.9).
fn case_order(id: &str) -> Vec<u32> {
    id.split('.').map(|part| part.parse().unwrap_or(u32::MAX)).collect()
}

#[test]
fn every_autobahn_case_passes_in_client_mode() {
    let Some(kosoku) = kosoku() else { return };
    let outdir = workspace().join("target/autobahn/client-rust");
    if outdir.exists() {
        std::fs::remove_dir_all(&outdir).expect("clear the previous report");
    }
    std::fs::create_dir_all(&outdir).expect("create the report directory");
    let mut server = FuzzingServer::start(&kosoku, &outdir);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let base = format!("ws://127.0.0.1:{}", server.port);
    let deadline = tokio::time::Instant::now() + WALK_DEADLINE;
    let walked = runtime.block_on(autobahn_client::walk(&base, AGENT, deadline));
    let (count, stuck) = walked.unwrap_or_else(|why| {
        panic!(
            "the walk did not finish: {why} (an unoptimised miniz_oxide makes 12.x and 13.x \
             take half an hour: see WALK_DEADLINE)\nkosoku's output:\n{}",
            server.log.lock().unwrap()
        )
    });
    let Some(status) = server.wait_exit(REPORT_DEADLINE) else {
        panic!(
            "kosoku did not write its report within {REPORT_DEADLINE:?} of the walk's end; its \
             output:\n{}",
            server.log.lock().unwrap()
        );
    };

    let index_path = outdir.join("index.json");
    let index: Value = std::fs::read_to_string(&index_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| {
            panic!(
                "no readable {} (kosoku exited with {status}); its output:\n{}",
                index_path.display(),
                server.log.lock().unwrap()
            )
        });
    let cases = index[AGENT].as_object().unwrap_or_else(|| panic!("no agent {AGENT} in {index}"));
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for (id, case) in cases {
        let behavior = case["behavior"].as_str().unwrap_or("?");
        let behavior_close = case["behaviorClose"].as_str().unwrap_or("?");
        let verdict = verdict(behavior, behavior_close);
        *tally.entry(verdict).or_default() += 1;
        if matches!(verdict, "FAILED" | "UNIMPLEMENTED") {
            let report: Value = case["reportfile"]
                .as_str()
                .and_then(|file| std::fs::read_to_string(outdir.join(file)).ok())
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or(Value::Null);
            bad.push((
                case_order(id),
                format!(
                    "case {id}: behavior {behavior} ({}), behaviorClose {behavior_close} ({}); \
                     expected: {}",
                    report["result"].as_str().unwrap_or("no report"),
                    report["resultClose"].as_str().unwrap_or("no report"),
                    report["expectation"].as_str().unwrap_or("?"),
                ),
            ));
        }
    }
    let summary = format!(
        "autobahn client {AGENT} (Rust): {} cases: OK {}, NON-STRICT {}, INFORMATIONAL {}, \
         UNIMPLEMENTED {}, FAILED {}",
        cases.len(),
        tally.get("OK").unwrap_or(&0),
        tally.get("NON-STRICT").unwrap_or(&0),
        tally.get("INFORMATIONAL").unwrap_or(&0),
        tally.get("UNIMPLEMENTED").unwrap_or(&0),
        tally.get("FAILED").unwrap_or(&0),
    );
    // Straight to stderr, past the test harness's capture: the line belongs in every log.
    let _ = writeln!(std::io::stderr(), "{summary}");

    bad.sort();
    let mut problems: Vec<String> = bad.into_iter().map(|(_, line)| line).collect();
    problems.extend(stuck.iter().map(|s| format!("case #{} did not end: {}", s.case, s.why)));
    if cases.len() != count as usize {
        problems.push(format!("the server offered {count} cases, its report has {}", cases.len()));
    }
    assert!(
        problems.is_empty(),
        "{summary}\n{}\nreport: {}",
        problems.join("\n"),
        outdir.join("index.html").display()
    );
}
