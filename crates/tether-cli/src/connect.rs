//! `tether connect`: like wscat/websocat, but it explains every close (code, reason, wasClean,
//! initiator) and shows the reconnect schedule. Lines typed on stdin are sent as text frames.
//! Output is line-oriented on stdout: `*` for connection events, `<` for what arrives, `!` for
//! errors reported by the server.
//!
//! On a server with JWT auth it authenticates with `--token`, or with the token that
//! `--token-command` prints; that command runs again before every reconnect, so a long session
//! never reconnects with an expired token.

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
    /// JWT for a server with --jwt-secret or --jwt-public-key, sent with the `connect` command
    /// (in raw mode added to the URL as ?token=); `tether token` makes one for development
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true, value_name = "JWT")]
    token: Option<String>,
    /// Shell command (run with `sh -c`) whose output is the JWT, e.g. your login tool; run
    /// before the first connection and again before every reconnect, so that each connection
    /// has a fresh token. A command that fails or prints nothing stops the client and says why
    #[arg(long, value_name = "CMD", conflicts_with_all = ["token", "raw"])]
    token_command: Option<String>,
    /// How to reach the server: websocket; http-stream (a session over plain HTTP, for
    /// networks that let no WebSocket through); or auto (WebSocket, falling back to
    /// HTTP-streaming when it cannot get through)
    #[arg(long, value_enum, default_value_t = TransportArg::Websocket, conflicts_with = "raw")]
    transport: TransportArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TransportArg {
    Websocket,
    HttpStream,
    Auto,
}

/// How long `--token-command` may take (as long as a connect attempt may).
const TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Run `--token-command` with `sh -c`: its trimmed stdout is the token. The command itself is
/// not repeated in errors: it may hold a secret.
async fn run_token_command(command: &str) -> Result<String, String> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(TOKEN_COMMAND_TIMEOUT, output).await {
        Err(_) => {
            return Err(format!("--token-command took longer than {TOKEN_COMMAND_TIMEOUT:?}"))
        }
        Ok(Err(e)) => return Err(format!("cannot run --token-command with sh -c: {e}")),
        Ok(Ok(output)) => output,
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    if !output.status.success() {
        let said = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
        return Err(format!("--token-command failed ({}){said}", output.status));
    }
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if token.is_empty() {
        return Err(
            "--token-command printed no token on stdout (it should print the JWT alone)".into()
        );
    }
    if token.contains(char::is_whitespace) {
        return Err("--token-command printed more than one word; it should print the JWT alone \
                    (send anything else to stderr)"
            .into());
    }
    Ok(token)
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
    let mut add_query = |name: &str, value: &str| {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(name);
        url.push('=');
        url.extend(form_urlencoded::byte_serialize(value.as_bytes()));
    };
    if args.raw {
        cfg = cfg.raw();
        for channel in &args.channels {
            add_query("channel", channel);
        }
        if let Some(token) = &args.token {
            add_query("token", token.trim());
        }
    } else if let Some(token) = &args.token {
        cfg = cfg.token(token.trim());
    }
    if let Some(command) = &args.token_command {
        let command = command.clone();
        cfg = cfg
            .token_refresh(move || {
                let command = command.clone();
                async move { run_token_command(&command).await }
            })
            .token_refresh_on_reconnect(true);
    }
    cfg.url = url;
    cfg = match args.transport {
        TransportArg::Websocket => cfg,
        TransportArg::HttpStream => cfg.transports(vec![tether_client::Transport::HttpStream]),
        TransportArg::Auto => cfg.with_fallback(),
    };
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
    let mut cfg = build_config(&args)?;
    if let Some(command) = &args.token_command {
        // The first token before any connection: a command that fails stops here, with its reason.
        cfg.token = Some(run_token_command(command).await.map_err(anyhow::Error::msg)?);
    }
    let raw = args.raw;
    if !say(&format!(
        "* connecting to {} ({} mode)",
        cfg.url,
        if raw { "raw" } else { "tether.v1.json" }
    )) {
        return Ok(ExitCode::SUCCESS);
    }
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
                say(&format!("! not sent: {e}"));
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
        let (line, stop) = describe(event);
        // stdout closed (piped into `head`, say): nobody is reading, so stop quietly.
        if line.is_some_and(|line| !say(&line)) {
            client.close().await;
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(reason) = stop {
            return Ok(match reason {
                StopReason::RequestedByUser => ExitCode::SUCCESS,
                _ => ExitCode::from(2),
            });
        }
    }
}

/// One line on stdout; false when stdout is gone (a closed pipe), instead of `println!`'s panic.
fn say(line: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// The line an event prints (if any), and the stop reason when it ends the client.
fn describe(event: Event) -> (Option<String>, Option<StopReason>) {
    let line = match event {
        Event::Connecting { attempt: 0 } => return (None, None),
        Event::Connecting { attempt } => format!("* reconnecting (attempt {attempt})"),
        Event::Open { reconnected } => {
            format!("* {}", if reconnected { "reconnected" } else { "open" })
        }
        Event::Subscribed { channel, resubscribe, recovered, reason } => {
            let verb = if resubscribe { "resubscribed to" } else { "subscribed to" };
            match recovered {
                Some(true) => format!("* {verb} {channel} (recovered every missed publication)"),
                Some(false) => format!(
                    "* {verb} {channel} (NOT recovered: {})",
                    reason.as_deref().unwrap_or("history does not cover the gap")
                ),
                None => format!("* {verb} {channel}"),
            }
        }
        Event::Publication { channel, offset, data, .. } => {
            format!("< [{channel} #{offset}] {}", data.get())
        }
        Event::Unsubscribed { channel } => format!("* unsubscribed from {channel} by the server"),
        Event::Presence { channel, change, info } => {
            let who = match &info.user {
                Some(user) => format!("{} ({user})", info.client),
                None => info.client.clone(),
            };
            format!("* [{channel}] {} {who}", change.as_str())
        }
        Event::Message(text) => format!("< {text}"),
        Event::Binary(bytes) => format!("< ({} bytes of binary)", bytes.len()),
        Event::CommandError { id, error } => match id {
            Some(id) => format!("! error (command {id}): {} {}", error.code, error.message),
            None => format!("! error: {} {}", error.code, error.message),
        },
        Event::Closed(info) => format!("* closed: {info}"),
        Event::Stopped { reason } => return (Some(format!("* stopped: {reason}")), Some(reason)),
    };
    (Some(line), None)
}
