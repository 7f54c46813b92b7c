//! Shared test harness: start the real `tether` binary on a free port, read its address from
//! stdout, capture its log, signal it by PID, query its HTTP API. Every wait has a deadline.
#![allow(dead_code)]

pub mod autobahn;
pub mod ci;
pub mod cluster;
pub mod interop;
pub mod json_ws;
pub mod metrics;
pub mod netns;
pub mod py_server;
pub mod release;
pub mod sentinel;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// Poll `cond` until it holds or `timeout` passes. Returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `tether serve` child process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
    args: Vec<String>,
}

impl Server {
    /// Start on a free port with `args` added (e.g. `--ping-interval 100ms`).
    pub fn start(args: &[&str]) -> Server {
        Self::start_on("127.0.0.1:0", args)
    }

    pub fn start_on(listen: &str, args: &[&str]) -> Server {
        Self::start_with(BIN, listen, args)
    }

    /// As [`Server::start_on`], with another `tether` binary (the optimised build).
    pub fn start_with(bin: &str, listen: &str, args: &[&str]) -> Server {
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--listen").arg(listen).args(args);
        cmd.env("TETHER_LOG", "info").env("NO_COLOR", "1");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn tether serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let rest = line
                    .strip_prefix("tether listening on http://")
                    .or_else(|| line.strip_prefix("tether listening on https://"));
                if let Some(rest) = rest {
                    let addr = rest.split_whitespace().next().unwrap().to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("tether serve did not report its address; log:\n{}", log.lock().unwrap());
            }
        };
        Server { child, addr, log, args: args.iter().map(|s| s.to_string()).collect() }
    }

    /// Start a new server on the same port with the same arguments (after this one died).
    pub fn restart(&self) -> Server {
        let args: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        Server::start_on(&self.addr.to_string(), &args)
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal the server");
    }

    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status (with a deadline).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{}", self.addr, query)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POST a raw body to the publish API; returns (status, body).
    pub fn post_publish(&self, body: &str) -> (u16, serde_json::Value) {
        http_request("POST", &self.http("/api/publish"), Some(body))
    }

    /// Publish `data` (JSON text) to `channel`; panics unless 200. Returns the reply.
    pub fn publish(&self, channel: &str, data: &str) -> serde_json::Value {
        let (status, body) = self.post_publish(&format!(
            r#"{{"channel":{},"data":{data}}}"#,
            serde_json::json!(channel)
        ));
        assert_eq!(status, 200, "publish failed: {body}");
        body
    }

    pub fn metrics(&self) -> String {
        let agent = agent();
        let mut resp = agent.get(&self.http("/metrics")).call().expect("GET /metrics");
        resp.body_mut().read_to_string().unwrap()
    }

    /// Connections closed with `code` by `initiator` so far.
    pub fn closed(&self, code: &str, initiator: &str) -> f64 {
        closed_total(&self.metrics(), code, initiator)
    }

    /// The sum of the samples `selector` names (see [`metric_sum`]).
    pub fn metric(&self, selector: &str) -> f64 {
        metric_sum(&self.metrics(), selector)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connections closed with `code` by `initiator`, from a /metrics text.
pub fn closed_total(text: &str, code: &str, initiator: &str) -> f64 {
    metric_sum(
        text,
        &format!("tether_connections_closed_total{{code=\"{code}\",initiator=\"{initiator}\"}}"),
    )
}

/// The sum of the samples `selector` names in a /metrics text: the exact sample name, and
/// optionally label values (`name{code="1006"}` sums over the labels not given); see
/// [`metrics::sum`]. A name that is no metric's sample panics.
pub fn metric_sum(text: &str, selector: &str) -> f64 {
    metrics::sum(text, selector)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Run `tether ARGS` to completion with `env` added and `TETHER_API_KEY` removed (so that the
/// environment of whoever runs the tests cannot leak a key in).
pub fn tether(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).env_remove("TETHER_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A finished command's stdout and stderr, as text.
pub fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `POST /api/{method}` with a JSON body and, if given, an API key; (status, JSON body or Null).
pub fn api_call(
    server: &Server,
    key: Option<&str>,
    method: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = agent()
        .post(&server.http(&format!("/api/{method}")))
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("authorization", &format!("Bearer {key}"));
    }
    let mut resp = req.send(body).expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// A plain HTTP request; returns (status, JSON body or Null).
pub fn http_request(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let agent = agent();
    let mut resp = match (method, body) {
        ("POST", Some(b)) => agent.post(url).header("content-type", "application/json").send(b),
        ("POST", None) => agent.post(url).send_empty(),
        ("GET", _) => agent.get(url).call(),
        ("PUT", b) => agent.put(url).send(b.unwrap_or("")),
        _ => panic!("unsupported method {method}"),
    }
    .expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// An external program a test needs. Missing under `CI` → the test fails; missing locally →
/// the test is reported as skipped, loudly, and returns early.
pub fn require(what: &str, found: Option<PathBuf>) -> Option<PathBuf> {
    match found {
        Some(p) => Some(p),
        None => unavailable(&format!("{what} not found; run scripts/test to install it")),
    }
}

/// Something a test needs cannot be had, for the reason `why` (which says what to do): under
/// `CI` the test fails; locally it is reported as skipped, loudly, and gets `None`.
pub fn unavailable<T>(why: &str) -> Option<T> {
    if ci::under_ci() {
        panic!("required (CI is set): {why}");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    None
}

/// The Python interpreter with the `websockets` package: $TETHER_PYTHON or ./.venv/bin/python.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TETHER_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
    });
    let ok = Command::new(&candidate)
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    require("Python with the `websockets` package", ok.then_some(candidate))
}

/// Path of a helper script in tests/python.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python").join(name)
}

/// Reads a child's stdout lines on a thread; `expect_line` waits for a matching line.
pub struct LineReader {
    rx: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl LineReader {
    pub fn new(out: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader { rx, seen: Vec::new() }
    }

    /// Wait for a line for which `pred` holds; panics with everything seen on timeout.
    pub fn expect_line(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    panic!("timed out waiting for {what}; lines so far:\n{}", self.seen.join("\n"))
                }
            }
        }
    }
}

/// Wait for the first client event for which `pred` holds; panics on timeout or stream end.
pub async fn next_event(
    events: &mut tether_client::Events,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&tether_client::Event) -> bool,
) -> tether_client::Event {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// A client config with test-scale heartbeat and backoff.
pub fn fast_client(url: String) -> tether_client::ClientConfig {
    tether_client::ClientConfig::new(url)
        .heartbeat(Duration::from_millis(100), Duration::from_millis(200))
        .reconnect(tether_client::ReconnectPolicy {
            backoff: tether_core::backoff::Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(500),
                factor: 2.0,
            },
            ..Default::default()
        })
}

/// A TCP relay between a client and the server, to cut the client's connection while the server
/// (and its history) keeps running: a network drop without a restart. While blocked, new
/// connections are refused (closed at once).
pub struct Relay {
    pub addr: SocketAddr,
    blocked: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    target: Arc<Mutex<SocketAddr>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let target = Arc::new(Mutex::new(target));
        let (b, c, t) = (blocked.clone(), cut.clone(), target.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if b.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let mut cuts = c.subscribe();
                let target = *t.lock().unwrap();
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Relay { addr, blocked, cut, target }
    }

    /// Send new connections to another server (a load balancer moving a client to another node).
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Drop every relayed connection and refuse new ones until `unblock`.
    pub fn cut(&self) {
        self.blocked.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn unblock(&self) {
        self.blocked.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A real `redis-server` on a free loopback port, no persistence, in a temp dir; stopped by PID.
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        Self::start_with(&[])
    }

    /// As [`Redis::start`], with more configuration (`--user b on >pw ~* &* +@all`).
    pub fn start_with(extra: &[&str]) -> Option<Redis> {
        let bin = which("redis-server");
        let bin = require("redis-server (apt-get install redis-server)", bin)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("tether-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Some(Self::spawn(&bin, port, dir, extra))
    }

    fn spawn(bin: &std::path::Path, port: u16, dir: PathBuf, extra: &[&str]) -> Redis {
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = Redis { child, port, dir };
        assert!(
            wait_until(Duration::from_secs(10), || r.ping()),
            "redis-server did not answer PING"
        );
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The URL for ACL user `user` with password `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Run one command as the default user; its reply, as RESP text.
    pub fn command(&self, args: &[&str]) -> String {
        redis_command(self.port, args)
    }

    /// Send `sig` to the redis-server process (SIGSTOP/SIGCONT: a stall, as during a fork).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal redis-server");
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        std::io::Write::write_all(&mut s, b"PING\r\n").is_ok()
            && std::io::Read::read_exact(&mut s, &mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// Commands Redis has processed since it started (`INFO stats`), for traffic measurements.
    pub fn commands_processed(&self) -> u64 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut s, b"INFO stats\r\n").unwrap();
        let (mut text, mut buf) = (String::new(), [0u8; 4096]);
        loop {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            assert!(n > 0, "Redis closed the INFO connection");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(v) = text.split("total_commands_processed:").nth(1) {
                if let Some(line) = v.split("\r\n").next().filter(|_| v.contains("\r\n")) {
                    return line.trim().parse().unwrap();
                }
            }
        }
    }

    /// kill -9: Redis loses everything (no persistence).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty Redis on the same port.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// As [`Redis::restart`], with more configuration.
    pub fn restart_with(&mut self, extra: &[&str]) {
        let bin = which("redis-server").unwrap();
        let fresh = Self::spawn(&bin, self.port, self.dir.clone(), extra);
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old); // its process is already gone; keep the dir for the new one
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run one command on the Redis (or Sentinel) at `port`; its reply, as RESP text (what one
/// read returns: enough for short replies).
pub fn redis_command(port: u16, args: &[&str]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

/// Collect publications until `count` have arrived; returns their (offset, data) pairs.
pub async fn publications(events: &mut tether_client::Events, count: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < count {
        if let tether_client::Event::Publication { offset, data, .. } =
            next_event(events, Duration::from_secs(10), "publication", |e| {
                matches!(e, tether_client::Event::Publication { .. })
            })
            .await
        {
            got.push((offset, data.get().to_owned()));
        }
    }
    got
}

/// A real `nginx` in the foreground (`daemon off`), its own config and temp dir, a free port,
/// proxying `/ws` (and everything else) to an upstream group (round robin) with
/// `proxy_read_timeout`; stopped by PID.
///
/// A node that refuses the connection (stopped) or answers 503 (draining) is skipped for the
/// next one (`proxy_next_upstream`), and never marked down (`max_fails=0`), so that a node
/// restarted on the same port is used again at once.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(upstream: SocketAddr, read_timeout: &str) -> Option<Nginx> {
        Self::start_group(&[upstream], read_timeout)
    }

    pub fn start_group(upstreams: &[SocketAddr], read_timeout: &str) -> Option<Nginx> {
        Self::start_with(upstreams, read_timeout, false)
    }

    /// `refuse_upgrades`: answer every WebSocket upgrade with 403, as some corporate proxies
    /// and balancers do; plain HTTP still passes.
    pub fn start_with(
        upstreams: &[SocketAddr],
        read_timeout: &str,
        refuse_upgrades: bool,
    ) -> Option<Nginx> {
        let bin = which("nginx").or_else(|| {
            let sbin = PathBuf::from("/usr/sbin/nginx");
            sbin.exists().then_some(sbin)
        });
        let bin = require("nginx (apt-get install nginx)", bin)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("tether-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let refuse =
            if refuse_upgrades { "if ($http_upgrade != \"\") { return 403; }\n" } else { "" };
        let servers: String =
            upstreams.iter().map(|a| format!("server {a} max_fails=0;\n")).collect();
        let conf = format!(
            "daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{}}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             upstream tether {{\n{servers}}}\n\
             server {{\nlisten 127.0.0.1:{port};\nlocation / {{\n{refuse}proxy_pass http://tether;\n\
             proxy_http_version 1.1;\nproxy_set_header Host $host;\nproxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection $connection_upgrade;\nproxy_read_timeout {read_timeout};\n\
             proxy_next_upstream error timeout http_503;\n}}\n}}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let n = Nginx { child, port, dir };
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nginx did not start listening: {}",
            std::fs::read_to_string(n.dir.join("error.log")).unwrap_or_default()
        );
        Some(n)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: nginx's graceful stop.
        stop_child(&mut self.child, nix::sys::signal::Signal::SIGQUIT, Duration::from_secs(3));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stop a program a test started: `signal` (its graceful stop), then SIGKILL if it has not
/// exited within `grace`; reaped either way.
pub fn stop_child(child: &mut Child, signal: nix::sys::signal::Signal, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, signal);
    if !wait_until(grace, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// How to open a hand-made WebSocket (see [`raw_ws`]).
#[derive(Default, Clone, Copy)]
pub struct RawWs<'a> {
    /// A small receive buffer, set before connecting: a client that reads slowly.
    pub recv_buf: Option<usize>,
    /// A small MSS (TCP_MAXSEG), set before connecting: the server sends in small segments.
    pub mss: Option<u32>,
    /// Connect from this local address (127.0.0.x), to test per-address limits.
    pub source: Option<&'a str>,
    /// More request header lines, each ending in `\r\n` (e.g. an extension offer).
    pub headers: &'a str,
}

/// A WebSocket handshake written by hand on a plain TCP socket (`GET /ws{query}`), reading
/// the response head byte by byte so that nothing after it is consumed. Returns the status
/// code and the socket, whatever the status.
pub fn raw_ws(server: SocketAddr, query: &str, opts: RawWs) -> (u16, std::net::TcpStream) {
    let (head, s) = raw_ws_head(server, query, opts);
    (head[9..12].parse().unwrap(), s)
}

/// [`raw_ws`], returning the whole response head instead of the status alone.
pub fn raw_ws_head(server: SocketAddr, query: &str, opts: RawWs) -> (String, std::net::TcpStream) {
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    if let Some(size) = opts.recv_buf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    if let Some(mss) = opts.mss {
        socket.set_tcp_mss(mss).unwrap();
    }
    if let Some(source) = opts.source {
        let source: SocketAddr = format!("{source}:0").parse().unwrap();
        socket.bind(&source.into()).unwrap();
    }
    socket.connect(&server.into()).unwrap();
    let mut s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /ws{query} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        opts.headers
    )
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    (String::from_utf8(head).unwrap(), s)
}
