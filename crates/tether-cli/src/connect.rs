//! `tether connect`: like wscat/websocat, but it explains every close (code, reason, wasClean,
//! initiator) and shows the reconnect schedule. Lines typed on stdin are sent as text frames.
//! Output is line-oriented on stdout: `*` for connection events, `<` for what arrives, `!` for
//! errors reported by the server.

use crate::units;
use anyhow::{bail, Result};
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use tether_client::{ClientConfig, Event, ReconnectPolicy, StopReason};
use tether_core::backoff::Backoff;
use tokio::io::AsyncBufReadExt;

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// WebSocket URL
    #[arg(default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Channel to subscribe to (repeatable). In raw mode it is added to the URL as ?channel=
    #[arg(long = "channel", short = 'c')]
    channels: Vec<String>,
    /// Raw mode: no subprotocol; text in, text out (for any WebSocket server)
    #[arg(long)]
    raw: bool,
    /// Client ping cadence [default: 25s]
    #[arg(long, value_parser = units::duration)]
    ping_interval: Option<Duration>,
    /// Silence tolerated after ping_interval before the server counts as dead [default: 10s]
    #[arg(long, value_parser = units::duration)]
    pong_timeout: Option<Duration>,
    /// First reconnect delay ceiling (full jitter below it) [default: 1s]
    #[arg(long, value_parser = units::duration)]
    backoff_initial: Option<Duration>,
    /// Largest reconnect delay [default: 30s]
    #[arg(long, value_parser = units::duration)]
    backoff_max: Option<Duration>,
    /// Give up after this many consecutive failed attempts [default: never]
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Also trust the CA certificate(s) in this PEM file for wss:// (private CA, test setups)
    #[arg(long)]
    ca_cert: Option<std::path::PathBuf>,
}

fn build_config(args: &ConnectArgs) -> Result<ClientConfig> {
    if !(args.url.starts_with("ws://") || args.url.starts_with("wss://")) {
        bail!(
            "URL must start with ws:// or wss:// (got `{}`); e.g. ws://127.0.0.1:8080/ws",
            args.url
        );
    }
    let mut url = args.url.clone();
    let mut cfg = ClientConfig::new("");
    if args.raw {
        cfg = cfg.raw();
        for channel in &args.channels {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("channel=");
            url.extend(form_urlencoded::byte_serialize(channel.as_bytes()));
        }
    }
    cfg.url = url;
    if let Some(path) = &args.ca_cert {
        cfg = cfg.with_ca_file(path).map_err(|e| anyhow::anyhow!("--ca-cert: {e}"))?;
    }
    if let Some(i) = args.ping_interval {
        cfg.ping_interval = i;
    }
    if let Some(t) = args.pong_timeout {
        cfg.pong_timeout = t;
    }
    let defaults = Backoff::default();
    cfg.reconnect = ReconnectPolicy {
        backoff: Backoff {
            initial: args.backoff_initial.unwrap_or(defaults.initial),
            max: args.backoff_max.unwrap_or(defaults.max),
            factor: defaults.factor,
        },
        max_attempts: args.max_attempts,
        ..ReconnectPolicy::default()
    };
    Ok(cfg)
}

pub async fn run(args: ConnectArgs) -> Result<ExitCode> {
    let cfg = build_config(&args)?;
    let raw = args.raw;
    println!("* connecting to {} ({} mode)", cfg.url, if raw { "raw" } else { "tether.v1.json" });
    let (client, mut events) = tether_client::connect(cfg);
    if !raw {
        for channel in &args.channels {
            client.subscribe(channel).await?;
        }
    }

    // Lines from stdin are sent as text; EOF on stdin leaves the connection running.
    let sender = client.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Err(e) = sender.send_text(line).await {
                println!("! not sent: {e}");
            }
        }
    });

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut closing = false;
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c, if !closing => {
                closing = true;
                client.close().await;
                continue;
            }
            e = events.next() => e,
        };
        let Some(event) = event else { return Ok(ExitCode::SUCCESS) };
        match event {
            Event::Connecting { attempt: 0 } => {}
            Event::Connecting { attempt } => println!("* reconnecting (attempt {attempt})"),
            Event::Open { reconnected } => {
                println!("* {}", if reconnected { "reconnected" } else { "open" })
            }
            Event::Subscribed { channel, resubscribe, recovered, reason } => {
                let verb = if resubscribe { "resubscribed to" } else { "subscribed to" };
                match recovered {
                    Some(true) => {
                        println!("* {verb} {channel} (recovered every missed publication)")
                    }
                    Some(false) => println!(
                        "* {verb} {channel} (NOT recovered: {})",
                        reason.as_deref().unwrap_or("history does not cover the gap")
                    ),
                    None => println!("* {verb} {channel}"),
                }
            }
            Event::Publication { channel, offset, data, .. } => {
                println!("< [{channel} #{offset}] {}", data.get())
            }
            Event::Message(text) => println!("< {text}"),
            Event::Binary(bytes) => println!("< ({} bytes of binary)", bytes.len()),
            Event::CommandError { id, error } => match id {
                Some(id) => println!("! error (command {id}): {} {}", error.code, error.message),
                None => println!("! error: {} {}", error.code, error.message),
            },
            Event::Closed(info) => println!("* closed: {info}"),
            Event::Stopped { reason } => {
                println!("* stopped: {reason}");
                return Ok(match reason {
                    StopReason::RequestedByUser => ExitCode::SUCCESS,
                    _ => ExitCode::from(2),
                });
            }
        }
    }
}
