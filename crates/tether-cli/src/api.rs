//! `tether api METHOD [PARAMS]` and `tether presence CHANNEL`: the server API from the shell.
//! The answer is printed as the server sent it (JSON); refusals exit non-zero with the
//! server's reason.

use crate::http_api::{call, ApiTarget};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    target: ApiTarget,
    /// The method: publish, broadcast, presence, presence_stats, history, channels, info,
    /// batch (the server's 404 lists what it has)
    method: String,
    /// Its parameters, a JSON object, e.g. '{"channel": "room:1"}'
    #[arg(default_value = "{}")]
    params: String,
}

#[derive(Args, Debug)]
pub struct PresenceArgs {
    #[command(flatten)]
    target: ApiTarget,
    /// Counts only: clients and distinct users
    #[arg(long)]
    stats: bool,
    /// A channel whose [[channel]] block sets presence = true
    channel: String,
}

pub async fn run_api(args: ApiArgs) -> Result<ExitCode> {
    let params: serde_json::Value = serde_json::from_str(&args.params).with_context(|| {
        format!(
            "PARAMS must be a JSON object such as '{{\"channel\": \"room:1\"}}' (got `{}`)",
            args.params
        )
    })?;
    if !params.is_object() {
        bail!(
            "PARAMS must be a JSON object such as '{{\"channel\": \"room:1\"}}' (got `{}`)",
            args.params
        );
    }
    let (target, method) = (args.target, args.method);
    let text = tokio::task::spawn_blocking(move || call(&target, &method, &params.to_string()))
        .await
        .context("the API call's task failed")??;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

pub async fn run_presence(args: PresenceArgs) -> Result<ExitCode> {
    let method = if args.stats { "presence_stats" } else { "presence" };
    let body = serde_json::json!({ "channel": args.channel }).to_string();
    let target = args.target;
    let text = tokio::task::spawn_blocking(move || call(&target, method, &body))
        .await
        .context("the API call's task failed")??;
    if args.stats {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    // One line per client: id, user, info — readable, and still one JSON value per field.
    let answer: serde_json::Value =
        serde_json::from_str(&text).context("the server's answer is not JSON")?;
    let clients = answer["clients"].as_object().cloned().unwrap_or_default();
    for (id, entry) in &clients {
        let user = entry["user"].as_str().unwrap_or("-");
        match entry.get("info") {
            Some(info) => println!("{id}\t{user}\t{info}"),
            None => println!("{id}\t{user}"),
        }
    }
    eprintln!("{} client(s) in `{}`", clients.len(), args.channel);
    Ok(ExitCode::SUCCESS)
}
