//! Tether's Rust client as the client under test of the Autobahn|Testsuite (its *client mode*).
//!
//! Start a fuzzing server — Autobahn's own (`wstest -m fuzzingserver`) or kosoku
//! (`kosoku -m fuzzingserver 127.0.0.1:9001 -o reports`) — then walk its cases:
//!
//! ```sh
//! cargo run --release -p tether-client --example autobahn_client -- ws://127.0.0.1:9001
//! ```
//!
//! The walk follows the suite's protocol: `/getCaseCount` sends the number of cases; each
//! `/runCase?case=N&agent=A` is one connection on which every text and binary message is
//! echoed until the server closes; `/updateReports?agent=A` has the server write its report.
//! Every connection goes through the whole client — its supervisor task, the [`Client`]
//! handle, TCP, the inflating stream that reads permessage-deflate — with compression offered,
//! as an application would run it. `tests/autobahn.rs` runs this walk against kosoku.

use std::time::Duration;
use tether_client::{connect, Client, ClientConfig, CloseInfo, Event, Events};
use tokio::time::{timeout, timeout_at, Instant};

/// The most one case may take. The slowest (12.3.x: 1000 messages of up to 128 KiB, inflated
/// and echoed compressed) take 15 to 35 seconds on two busy cores.
pub const CASE_DEADLINE: Duration = Duration::from_secs(120);

/// How one connection of the walk went.
#[derive(Debug, Default)]
pub struct Connection {
    /// The first text message the server sent, when not echoing (the case count).
    pub first_text: Option<String>,
    /// Messages echoed back.
    pub echoed: u64,
    /// How the connection ended.
    pub closed: Option<CloseInfo>,
}

/// A case that did not run to its end within its deadline.
#[derive(Debug)]
pub struct Stuck {
    pub case: u32,
    pub why: String,
}

/// The client for one connection of the walk.
pub fn config(url: String) -> ClientConfig {
    ClientConfig::new(url)
        // No subprotocol: the fuzzing server speaks plain WebSocket.
        .raw()
        // Each connection is one case: reconnecting would run a case twice.
        .no_reconnect()
        // A ping of ours would be an event the case does not expect: none is due within a case.
        // (The server's pings are answered as always.)
        .heartbeat(CASE_DEADLINE, Duration::from_secs(10))
        // Echo compressed where the server agreed to permessage-deflate (12.x, 13.x). A plain
        // echo is just as valid (RFC 7692 lets the sender choose message by message), but
        // kosoku 0.1.0 hands plain messages to those cases as `str`, which they cannot hash:
        // the case ends in ERROR.
        .compress_sends(0)
}

/// Connect to `url` and run the connection until it ends or `deadline` passes, echoing every
/// text and binary message when `echo` is set.
pub async fn run(url: &str, deadline: Instant, echo: bool) -> Result<Connection, String> {
    let (client, mut events) = connect(config(url.to_owned()));
    let mut connection = Connection::default();
    match timeout_at(deadline, serve(&client, &mut events, echo, &mut connection)).await {
        Ok(()) => Ok(connection),
        Err(_) => {
            // Stop reading events first: the client never waits on a reader that has gone.
            drop(events);
            let _ = timeout(Duration::from_secs(10), client.close()).await;
            Err(format!(
                "{url}: not over by the deadline, {} messages echoed, closed: {:?}",
                connection.echoed, connection.closed
            ))
        }
    }
}

async fn serve(client: &Client, events: &mut Events, echo: bool, connection: &mut Connection) {
    while let Some(event) = events.next().await {
        // A send fails only once the connection is over: then the events say how it ended.
        let echoed = match event {
            Event::Message(text) if echo => client.send_text(text).await.is_ok(),
            Event::Message(text) => {
                connection.first_text.get_or_insert(text);
                false
            }
            Event::Binary(data) => echo && client.send_binary(data).await.is_ok(),
            Event::Closed(info) => {
                connection.closed = Some(info);
                false
            }
            Event::Stopped { .. } => return,
            _ => false,
        };
        connection.echoed += u64::from(echoed);
    }
}

/// Walk every case the server at `base` (`ws://host:port`) offers, as `agent`, then have it
/// write its report. Returns the number of cases and those that got stuck; an error when the
/// walk itself could not go on (no case count, or `deadline` passed).
pub async fn walk(base: &str, agent: &str, deadline: Instant) -> Result<(u32, Vec<Stuck>), String> {
    let counted = run(&format!("{base}/getCaseCount"), deadline, false).await?;
    let count = counted
        .first_text
        .as_deref()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .ok_or_else(|| format!("getCaseCount answered no number: {counted:?}"))?;
    let mut stuck = Vec::new();
    for case in 1..=count {
        if Instant::now() >= deadline {
            return Err(format!("the walk's deadline passed before case {case} of {count}"));
        }
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(why) = run(&url, deadline.min(Instant::now() + CASE_DEADLINE), true).await {
            stuck.push(Stuck { case, why });
        }
    }
    run(&format!("{base}/updateReports?agent={agent}"), deadline, false).await?;
    Ok((count, stuck))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = args.next().unwrap_or_else(|| "tether-client".into());
    let started = std::time::Instant::now();
    // Bounded like every wait here: a whole suite takes a few minutes.
    let deadline = Instant::now() + Duration::from_secs(3600);
    match walk(base.trim_end_matches('/'), &agent, deadline).await {
        Ok((count, stuck)) => {
            for s in &stuck {
                eprintln!("case {} stuck: {}", s.case, s.why);
            }
            println!(
                "walked {count} cases as {agent} in {:.1}s; the server's report has the verdicts",
                started.elapsed().as_secs_f64()
            );
            if stuck.is_empty() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(why) => {
            eprintln!("autobahn walk failed: {why}");
            std::process::ExitCode::FAILURE
        }
    }
}
