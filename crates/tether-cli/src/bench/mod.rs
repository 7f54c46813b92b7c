//! `tether bench`: load generators that measure the gateway from the outside, over real sockets.
//!
//! `bench fanout`: N raw-mode subscribers on one channel, a publisher at a fixed rate through the
//! HTTP API (possibly of another node), each message carrying a sequence number and a send
//! timestamp. It reports deliveries per second, delivery latency percentiles, lost and
//! duplicated messages per subscriber, the publish API's answer times and (with `--server-pid`)
//! the server's memory while the subscribers receive — so that one run compares two setups as a
//! ratio.

mod fanout;
mod idle;
mod pingpong;
mod rss;

use crate::lean_ws::{self, LeanWs};
use crate::probe::ServerProbe;
use crate::progress::progress;
use crate::units;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
pub use fanout::FanoutArgs;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
pub use idle::IdleArgs;
pub use pingpong::PingpongArgs;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Fan-out: N subscribers, one publisher at a fixed rate; deliveries/s, latency, loss,
    /// publish answer times, server memory while receiving.
    Fanout(FanoutArgs),
    /// Ping-pong: C connections each sending "ping" and awaiting "pong"; round trips/s, latency.
    Pingpong(PingpongArgs),
    /// Idle: hold N connections (heartbeats answered); connect rate, drops, server memory per connection.
    Idle(IdleArgs),
    /// Reconnect storm: N reconnecting clients, the server killed and restarted; time until 99% / 100% are back.
    Storm(crate::storm::StormArgs),
}

/// CPU use of the server and of this load generator over a phase, as % of one core.
struct CpuMeter {
    wall: Instant,
    me: Option<f64>,
    server: Option<f64>,
}

impl CpuMeter {
    fn start(probe: &ServerProbe) -> Self {
        CpuMeter {
            wall: Instant::now(),
            me: tether_server::metrics::cpu_seconds("self"),
            server: probe.cpu(),
        }
    }

    /// (server %, generator %) of one core since `start`.
    fn finish(&self, probe: &ServerProbe) -> (Option<f64>, Option<f64>) {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-6);
        let pct = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / wall * 100.0);
        (pct(self.server, probe.cpu()), pct(self.me, tether_server::metrics::cpu_seconds("self")))
    }
}

fn cpu_line(server: Option<f64>, me: Option<f64>) -> String {
    let f = |v: Option<f64>| {
        v.map(|v| format!("{v:.0}%"))
            .unwrap_or_else(|| "unknown (pass --server-pid or --metrics-url)".into())
    };
    format!("CPU of one core: server {}, load generator {}", f(server), f(me))
}

pub async fn run(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Fanout(args) => fanout::fanout(args).await,
        BenchCommand::Pingpong(args) => pingpong::pingpong(args).await,
        BenchCommand::Idle(args) => idle::idle(args).await,
        BenchCommand::Storm(args) => crate::storm::storm(args).await,
    }
}
