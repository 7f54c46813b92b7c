//! Two network namespaces joined by a veth pair, for partitions that loopback cannot fake: with
//! `iptables -j DROP` on both ends, packets vanish without a FIN or an RST (half-open TCP).
//!
//! Code runs "inside" a namespace on a thread that has joined it with `setns` (the network
//! namespace is per thread, and sockets and child processes created there belong to it), so a
//! test can start the server in one namespace and a Rust client in the other.

use super::{require, which};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The server side's address inside the pair.
pub const SERVER_IP: &str = "10.253.7.1";
const CLIENT_IP: &str = "10.253.7.2";

pub struct Pair {
    pub server_ns: String,
    pub client_ns: String,
    server_if: String,
    client_if: String,
    iptables: PathBuf,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

impl Pair {
    /// Create the pair, or explain why it cannot be: under `CI` that is a failure (the test must
    /// not pass vacuously), locally a loud skip (`None`).
    pub fn create() -> Option<Pair> {
        let iptables = which("iptables").or_else(|| {
            let sbin = PathBuf::from("/usr/sbin/iptables");
            sbin.exists().then_some(sbin)
        });
        let iptables = require("iptables (apt-get install iptables)", iptables)?;
        match Self::try_create(iptables) {
            Ok(pair) => Some(pair),
            Err(reason) if super::ci::under_ci() => {
                panic!("network namespaces are required (CI is set) but: {reason}")
            }
            Err(reason) => {
                eprintln!(
                    "\n!!!!!!!! SKIPPED: cannot create network namespaces: {reason} !!!!!!!!\n"
                );
                None
            }
        }
    }

    fn try_create(iptables: PathBuf) -> Result<Pair, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Names unique per process and pair; interface names must stay under 16 bytes.
        let id = format!("{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let pair = Pair {
            server_ns: format!("tether-{id}-s"),
            client_ns: format!("tether-{id}-c"),
            server_if: format!("tv{id}s"),
            client_if: format!("tv{id}c"),
            iptables,
        };
        let (s, c) = (&pair.server_ns, &pair.client_ns);
        ip(&["netns", "add", s])?;
        // From here on, Drop cleans up whatever was made.
        ip(&["netns", "add", c])?;
        ip(&["link", "add", &pair.server_if, "type", "veth", "peer", "name", &pair.client_if])?;
        ip(&["link", "set", &pair.server_if, "netns", s])?;
        ip(&["link", "set", &pair.client_if, "netns", c])?;
        ip(&["-n", s, "addr", "add", &format!("{SERVER_IP}/30"), "dev", &pair.server_if])?;
        ip(&["-n", c, "addr", "add", &format!("{CLIENT_IP}/30"), "dev", &pair.client_if])?;
        for (ns, dev) in [(s, &pair.server_if), (c, &pair.client_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }

    fn iptables(&self, ns: &str, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&self.iptables)
            .args(args)
            .output()
            .expect("run iptables");
        assert!(
            out.status.success(),
            "iptables {args:?} in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Drop every packet crossing the veth, both ways, silently (no RST, no ICMP).
    pub fn partition(&self) {
        for (ns, dev) in [(&self.server_ns, &self.server_if), (&self.client_ns, &self.client_if)] {
            self.iptables(ns, &["-A", "INPUT", "-i", dev, "-j", "DROP"]);
            self.iptables(ns, &["-A", "OUTPUT", "-o", dev, "-j", "DROP"]);
        }
    }

    pub fn heal(&self) {
        for (ns, dev) in [(&self.server_ns, &self.server_if), (&self.client_ns, &self.client_if)] {
            self.iptables(ns, &["-D", "INPUT", "-i", dev, "-j", "DROP"]);
            self.iptables(ns, &["-D", "OUTPUT", "-o", dev, "-j", "DROP"]);
        }
    }

    /// Run `f` on a thread that has joined namespace `ns`, and return its result.
    pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter(ns);
                    f()
                })
                .join()
                .expect("thread inside the namespace panicked")
        })
    }

    /// Start a thread that joins `ns` and runs a current-thread tokio runtime until the returned
    /// guard is dropped; `start` runs inside it first (e.g. to spawn a client whose sockets must
    /// belong to the namespace) and its result is handed back.
    pub fn runtime_in<T: Send + 'static>(
        ns: &str,
        start: impl FnOnce() -> T + Send + 'static,
    ) -> (T, RuntimeGuard) {
        let ns = ns.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let value = rt.block_on(async { start() });
            tx.send(value).ok();
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let value = rx.recv().expect("runtime thread inside the namespace failed to start");
        (value, RuntimeGuard { stop: Some(stop), thread: Some(thread) })
    }
}

/// Stops a [`Pair::runtime_in`] thread when dropped.
pub struct RuntimeGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open namespace {ns}: {e}"));
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("join namespace {ns}: {e}"));
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Processes inside must be stopped first (their owners drop before the pair); deleting a
        // namespace removes its end of the veth, which removes the other end too.
        let _ = ip(&["netns", "del", &self.server_ns]);
        let _ = ip(&["netns", "del", &self.client_ns]);
    }
}
