//! Reading a server's CPU and memory from the outside: from `/proc/PID` (any server) or from its
//! Prometheus endpoint (Tether's `process_cpu_seconds`, `process_resident_memory_bytes`).

use clap::Args;
use std::time::Duration;

/// Where to read the server's CPU and memory: its pid, or its /metrics.
#[derive(Args, Debug, Clone)]
pub struct ServerProbe {
    /// The server's pid, to read CPU and memory from /proc (works for any server)
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server's Prometheus endpoint (Tether's process_cpu_seconds / process_resident_memory_bytes)
    #[arg(long)]
    pub metrics_url: Option<String>,
}

impl ServerProbe {
    pub fn metric(&self, name: &str) -> Option<f64> {
        let url = self.metrics_url.as_ref()?;
        let text = agent().get(url).call().ok()?.body_mut().read_to_string().ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }

    /// Server CPU seconds so far.
    pub fn cpu(&self) -> Option<f64> {
        match self.server_pid {
            Some(pid) => tether_server::metrics::cpu_seconds(&pid.to_string()),
            None => self.metric("process_cpu_seconds"),
        }
    }

    /// Server resident memory in bytes.
    pub fn rss(&self) -> Option<f64> {
        match self.server_pid {
            Some(pid) => {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let kb: f64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(kb * 1024.0)
            }
            None => self.metric("process_resident_memory_bytes"),
        }
    }
}

/// One HTTP agent for every probe (keep-alive: soak polls /metrics many times a second).
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into()
    })
}
