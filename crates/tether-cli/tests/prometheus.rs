//! The operator kit in deploy/, for real: Debian's `prometheus` scrapes a running `tether serve`
//! with deploy/prometheus/tether-rules.yml loaded. The target is up, a Tether metric is
//! queryable, every rule evaluates with health "ok", and every query of the Grafana dashboard
//! (deploy/grafana/tether-dashboard.json) parses and runs. The metric names in those queries and
//! rules must be samples the server exposes (or the rules record), so that a typo cannot pass as
//! an empty graph or an alert that never fires.
//! (`promtool check rules` and `promtool test rules` run in scripts/test.)

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Prometheus finds a static target within its 5 s discovery update; rules run every 200 ms.
const T: Duration = Duration::from_secs(30);

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(path)
}

/// A real `prometheus` on a free port with its own config and TSDB in a temp dir, scraping
/// one target every 200 ms; stopped by PID.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
    agent: ureq::Agent,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Option<Prometheus> {
        let bin = require("prometheus (apt-get install prometheus)", which("prometheus"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir =
            std::env::temp_dir().join(format!("tether-prometheus-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = deploy("prometheus/tether-rules.yml").canonicalize().unwrap();
        // The job is named as in deploy/prometheus/prometheus.yml, which TetherDown expects.
        let config = format!(
            "global:\n  scrape_interval: 200ms\n  evaluation_interval: 200ms\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: tether\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let p = Prometheus { child, port, dir, agent };
        let ready = wait_until(T, || p.get("/-/ready", &[]).is_some());
        assert!(ready, "prometheus did not get ready; its log:\n{}", p.log());
        Some(p)
    }

    /// GET an API path with query parameters; the JSON body (also for 4xx: Prometheus answers
    /// a bad query with 400 and `status: "error"`), or `None` when nothing answers yet.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Option<Value> {
        let mut req = self.agent.get(&format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in params {
            req = req.query(*k, *v);
        }
        let text = req.call().ok()?.body_mut().read_to_string().ok()?;
        Some(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// An instant query's answer, whatever its status.
    fn query(&self, expr: &str) -> Value {
        self.get("/api/v1/query", &[("query", expr)]).expect("prometheus answers")
    }

    /// Poll until `expr` returns at least one series; that result.
    fn query_until_some(&self, expr: &str) -> Vec<Value> {
        let mut last = Value::Null;
        let found = wait_until(T, || {
            last = self.query(expr);
            last["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
        });
        assert!(found, "{expr} returned no series within {T:?}: {last}\nlog:\n{}", self.log());
        last["data"]["result"].as_array().unwrap().clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_child(&mut self.child, nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The metric names in a PromQL expression: identifiers outside quotes that are Tether's or
/// the process's (`tether_…`, `process_…`) or recorded (`level:metric:operations`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let (mut word, mut quoted) = (String::new(), false);
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("tether_") || word.starts_with("process_") || word.contains(':') {
            names.insert(word.clone());
        }
        word.clear();
    }
    names
}

/// A dashboard query as Grafana sends it: its variables replaced.
fn substitute(expr: &str, server: SocketAddr) -> String {
    let instance = server.to_string();
    let mut out = expr.to_owned();
    for (var, value) in [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "1h"),
        ("job", "tether"),
        ("instance", instance.as_str()),
    ] {
        out = out.replace(&format!("${{{var}}}"), value).replace(&format!("${var}"), value);
    }
    assert!(!out.contains('$'), "a dashboard variable this test does not know: {expr}");
    out
}

#[test]
fn prometheus_scrapes_tether_runs_the_rules_and_every_dashboard_query() {
    let server = Server::start(&[]);
    // One connection held open: the labelled counters get a series and the per-connection
    // recording rules a value.
    let (status, _ws) = raw_ws(server.addr, "", RawWs::default());
    assert_eq!(status, 101);
    let Some(prometheus) = Prometheus::start(server.addr) else { return };

    // The target is up.
    let mut targets = Value::Null;
    let up = wait_until(T, || {
        targets = prometheus.get("/api/v1/targets", &[]).unwrap_or_default();
        targets["data"]["activeTargets"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["labels"]["instance"] == server.addr.to_string() && t["health"] == "up")
        })
    });
    assert!(up, "the tether target is not up within {T:?}: {targets}\nlog:\n{}", prometheus.log());

    // Tether's metrics come through Prometheus, counters with their OpenMetrics `_total`.
    let open = prometheus
        .query_until_some(&format!("tether_connections_open{{instance=\"{}\"}}", server.addr));
    assert_eq!(open[0]["value"][1], "1", "one connection is open: {open:?}");
    prometheus.query_until_some("tether_connections_accepted_total");

    // Every rule of the file is loaded and evaluates cleanly; recording rules produce data.
    let file = std::fs::read_to_string(deploy("prometheus/tether-rules.yml")).unwrap();
    let recorded: BTreeSet<String> = file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_owned())
        .collect();
    let alerts = file.lines().filter(|l| l.trim().starts_with("- alert:")).count();
    assert!(recorded.len() >= 10 && alerts >= 6, "{recorded:?}, {alerts} alerts");
    let mut rules = Vec::new();
    let healthy = wait_until(T, || {
        let answer = prometheus.get("/api/v1/rules", &[]).unwrap_or_default();
        rules = answer["data"]["groups"]
            .as_array()
            .map(|g| g.iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect())
            .unwrap_or_default();
        rules.len() == recorded.len() + alerts && rules.iter().all(|r| r["health"] == "ok")
    });
    let broken: Vec<String> = rules
        .iter()
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
        .collect();
    assert!(
        healthy,
        "rules not all loaded and ok: {} of {}; not ok: {broken:?}",
        rules.len(),
        recorded.len() + alerts
    );
    for name in &recorded {
        assert!(
            rules.iter().any(|r| r["type"] == "recording" && r["name"] == *name),
            "{name} not loaded"
        );
    }
    let per_conn = prometheus
        .query_until_some("instance:tether_allocator_allocated_bytes_per_connection:ratio");
    let bytes: f64 = per_conn[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(bytes > 0.0, "heap per connection with one connection open: {per_conn:?}");

    // Every dashboard query runs, and names only metrics that exist.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/tether-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let metrics_text = server.metrics();
    let mut unknown = BTreeSet::new();
    let mut check_names = |expr: &str, whose: &str| {
        for name in metric_names(expr) {
            let known = match name.contains(':') {
                true => recorded.contains(&name),
                // Panics (reported, then collected) unless `name` is a sample name the server
                // exposes, or of a family it registers (the Redis broker's, here absent).
                false => std::panic::catch_unwind(|| metric_sum(&metrics_text, &name)).is_ok(),
            };
            if !known {
                unknown.insert(format!("{whose}: {name}"));
            }
        }
    };
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr =
                target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            let sent = substitute(expr, server.addr);
            let answer = prometheus.query(&sent);
            assert_eq!(answer["status"], "success", "panel {title:?}: {sent}\n{answer}");
            check_names(expr, &format!("panel {title:?}"));
            queries += 1;
        }
    }
    assert!(queries >= 15, "only {queries} dashboard queries");
    for rule in &rules {
        check_names(rule["query"].as_str().unwrap(), &format!("rule {}", rule["name"]));
    }
    assert!(unknown.is_empty(), "names that are no metric: {unknown:?}");

    // The dashboard's variables select this server: its "Open connections" stat reads 1.
    let stat = panels
        .iter()
        .find(|p| p["title"] == "Open connections")
        .expect("an Open connections panel");
    let answer =
        prometheus.query(&substitute(stat["targets"][0]["expr"].as_str().unwrap(), server.addr));
    assert_eq!(answer["data"]["result"][0]["value"][1], "1", "{answer}");
}
