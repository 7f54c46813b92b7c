//! The diagnosis: what was measured, what could not be and why, and findings that each say
//! what to do. Printed as text, or as JSON (`--json`) for scripts and tests.

use super::measure::{Fallback, IdleProbe, Rtt};
use super::path::Opening;
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;
use tether_core::protocol::ServerInfo;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub url: String,
    /// The first connection's steps: DNS, TCP, TLS, upgrade.
    pub opening: Option<Opening>,
    /// `tether.v1.json` was accepted: a Tether server in JSON mode.
    pub tether: bool,
    pub server: Option<ServerInfo>,
    pub protocol_ping: Option<Rtt>,
    pub app_ping: Option<Rtt>,
    /// The server's clock minus ours, ms.
    pub clock_offset_ms: Option<f64>,
    pub idle_probe: Option<IdleProbe>,
    /// The idle cut: the shortest silence a connection survived not (absent: no cut seen).
    pub idle_cut_ms: Option<f64>,
    pub http_stream: Option<Fallback>,
    pub findings: Vec<Finding>,
    /// What was not measured, each with why.
    pub not_measured: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    /// `ok`, `info`, `warn` or `fail`.
    pub level: &'static str,
    pub what: String,
    /// What to do about it (empty when nothing).
    pub advice: String,
}

impl Report {
    pub fn note(
        &mut self,
        level: &'static str,
        what: impl Into<String>,
        advice: impl Into<String>,
    ) {
        self.findings.push(Finding { level, what: what.into(), advice: advice.into() });
    }

    pub fn unmeasured(&mut self, what: impl Into<String>) {
        self.not_measured.push(what.into());
    }

    /// Whether anything failed (the command's exit status).
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.level == "fail")
    }

    /// The product that stands on the path, as the upgrade's headers name it.
    fn intermediary(&self) -> Option<String> {
        let upgrade = &self.opening.as_ref()?.upgrade;
        upgrade.intermediaries.iter().find_map(|i| i.product.clone())
    }

    /// Findings about the idle cut, with a recommended `ping_interval`.
    pub fn judge_idle(&mut self) {
        let Some(probe) = &self.idle_probe else { return };
        let cut = probe.connections.iter().filter(|s| s.kind != "server_ended");
        let first = cut.min_by(|a, b| a.after_ms.total_cmp(&b.after_ms)).cloned();
        let granted = Duration::from_millis(probe.granted_ms);
        let ping = self.server.as_ref().map(|s| Duration::from_millis(s.ping_interval_ms));
        let Some(cut) = first else {
            let what = format!(
                "nothing cut a silent connection within {} (the longest quiet spell this server grants)",
                secs(granted)
            );
            let advice = match ping {
                Some(p) if p > granted => format!(
                    "ping_interval {} is longer than what was tested: an idle timeout between them would go unseen; probe with a longer idle_probe_max",
                    secs(p)
                ),
                _ => String::new(),
            };
            self.note("ok", what, advice);
            return;
        };
        let t = Duration::from_secs_f64(cut.after_ms / 1e3);
        self.idle_cut_ms = Some(cut.after_ms);
        let who = self.intermediary().unwrap_or_else(|| "something on the path".into());
        let what = format!("{who} cut a silent connection after {}: {}", secs(t), cut.how);
        let recommended = recommend(t);
        match ping {
            Some(p) if p.as_secs_f64() <= t.as_secs_f64() * 0.8 => {
                let advice = format!("Tether's ping_interval {} is below it: safe", secs(p));
                self.note("ok", what, advice);
            }
            Some(p) => {
                let advice = format!(
                    "Tether's ping_interval {} is not below it: set ping_interval to {} or less (half the cut), or raise the proxy's idle timeout (nginx: proxy_read_timeout)",
                    secs(p),
                    secs(recommended)
                );
                self.note("fail", what, advice);
            }
            None => {
                let advice = format!("keep heartbeats at {} or less", secs(recommended));
                self.note("warn", what, advice);
            }
        }
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "tether doctor — {}", self.url);
        if let Some(o) = &self.opening {
            let _ =
                writeln!(out, "  DNS            {:>9.1} ms  {}", o.dns_ms, o.addresses.join(", "));
            let _ = writeln!(out, "  TCP connect    {:>9.1} ms  {}", o.tcp_ms, o.peer);
            match &o.tls {
                Some(t) => _ = writeln!(out, "  TLS handshake  {:>9.1} ms  {}", t.ms, t.version),
                None => _ = writeln!(out, "  TLS            {:>12}  (ws://)", "none"),
            }
            let u = &o.upgrade;
            let kept =
                if u.upgrade_header { "Upgrade: websocket kept" } else { "no Upgrade header" };
            let _ = writeln!(out, "  Upgrade        {:>9.1} ms  {} ({kept})", u.ms, u.status);
            let sub = u.subprotocol.as_deref().unwrap_or("none (raw mode)");
            let _ = writeln!(out, "  Subprotocol    {:>12}  {sub}", "");
            let ext = u.extensions.as_deref().unwrap_or("none");
            let _ = writeln!(out, "  Extensions     {:>12}  {ext}", "");
            for i in &u.intermediaries {
                let _ = writeln!(out, "  Path           {:>12}  {}: {}", "", i.header, i.value);
            }
        }
        if let Some(s) = &self.server {
            let _ = writeln!(
                out,
                "  Server         {:>12}  Tether {}, ping_interval {}, pong_timeout {}",
                "",
                s.version,
                secs(Duration::from_millis(s.ping_interval_ms)),
                secs(Duration::from_millis(s.pong_timeout_ms))
            );
        }
        for (name, rtt) in [("Protocol ping", &self.protocol_ping), ("App ping", &self.app_ping)] {
            if let Some(r) = rtt {
                let _ = writeln!(
                    out,
                    "  {name:<14} {:>9.1} ms  p50 (min {:.1}, max {:.1}; {} samples)",
                    r.p50_ms, r.min_ms, r.max_ms, r.samples
                );
            }
        }
        if let Some(o) = self.clock_offset_ms {
            let _ = writeln!(out, "  Clock offset   {o:>9.1} ms  (server minus this machine)");
        }
        if let Some(f) = &self.http_stream {
            let took = f.ms.map_or(String::new(), |m| format!("{m:.1} ms"));
            let _ = writeln!(out, "  HTTP streaming {took:>12}  {}", f.detail);
        }
        if let Some(p) = &self.idle_probe {
            for (i, s) in p.connections.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  Idle probe #{:<2} {:>9.1} s   {}",
                    i + 1,
                    s.after_ms / 1e3,
                    s.how
                );
            }
        }
        let _ = writeln!(out, "\nFindings");
        for f in &self.findings {
            let mark = match f.level {
                "ok" => "ok  ",
                "info" => "info",
                "warn" => "WARN",
                _ => "FAIL",
            };
            let _ = writeln!(out, "  [{mark}] {}", f.what);
            if !f.advice.is_empty() {
                let _ = writeln!(out, "         → {}", f.advice);
            }
        }
        if !self.not_measured.is_empty() {
            let _ = writeln!(out, "\nNot measured");
            for n in &self.not_measured {
                let _ = writeln!(out, "  - {n}");
            }
        }
        out
    }
}

/// Half the cut (as measured, to the nearest 100 ms: a 3 s timeout measures 2.98 s or 3.02 s),
/// rounded down to 100 ms (to 1 s above 10 s): margin for the cut's own jitter and for a
/// heartbeat that is late.
pub fn recommend(cut: Duration) -> Duration {
    let cut = (cut.as_millis() as u64 + 50) / 100 * 100;
    let half = cut / 2;
    let step = if half >= 10_000 { 1000 } else { 100 };
    Duration::from_millis((half / step * step).max(100))
}

/// A duration in seconds, as people write them: `3.0 s`, `25 s`.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recommended_interval_is_half_the_cut_rounded_down() {
        assert_eq!(recommend(Duration::from_millis(3_020)), Duration::from_millis(1_500));
        assert_eq!(recommend(Duration::from_millis(2_980)), Duration::from_millis(1_500));
        assert_eq!(recommend(Duration::from_secs(60)), Duration::from_secs(30));
        assert_eq!(recommend(Duration::from_millis(150)), Duration::from_millis(100));
    }

    fn judged(ping_interval_ms: u64, cut_after_ms: f64) -> Finding {
        use super::super::measure::Silence;
        let server = ServerInfo { ping_interval_ms, ..ServerInfo::default() };
        let silence = Silence {
            after_ms: cut_after_ms,
            kind: "no_close_frame".into(),
            code: Some(1006),
            reason: None,
            how: "closed".into(),
        };
        let probe = IdleProbe { granted_ms: 600_000, connections: vec![silence] };
        let mut report =
            Report { server: Some(server), idle_probe: Some(probe), ..Report::default() };
        report.judge_idle();
        report.findings.pop().unwrap()
    }

    #[test]
    fn a_heartbeat_well_under_the_cut_is_safe_and_one_near_it_is_not() {
        let safe = judged(25_000, 60_000.0);
        assert_eq!(safe.level, "ok");
        assert!(safe.advice.contains("ping_interval 25 s is below it: safe"), "{safe:?}");
        let near = judged(25_000, 30_000.0);
        assert_eq!(near.level, "fail", "{near:?}");
        assert!(near.advice.contains("set ping_interval to 15 s or less"), "{near:?}");
    }
}
