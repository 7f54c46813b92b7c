//! `tether publish`: one POST to `/api/publish`, with the server's JSON answer printed as is.
//! On a server with `api_keys` it sends `--api-key` (or `TETHER_API_KEY`) as a bearer token;
//! `--idempotency-key` makes a retry safe (the server publishes once and answers the retry with
//! the first receipt and `"duplicate": true`).

use anyhow::{Context, Result};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    target: crate::http_api::ApiTarget,
    /// Makes a retry safe: within the server's idempotency_window, publishing again with the
    /// same key publishes nothing and prints the first receipt with "duplicate": true
    /// (1-128 printable ASCII characters, no spaces)
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Channel to publish to
    channel: String,
    /// Data: JSON if it parses as JSON, otherwise sent as a JSON string
    data: String,
}

pub async fn run(args: PublishArgs) -> Result<ExitCode> {
    tokio::task::spawn_blocking(move || publish_blocking(&args))
        .await
        .context("publish task failed")?
}

/// The request body: `{"channel": …, "data": …, "idempotency_key": …}`.
fn body(args: &PublishArgs) -> String {
    let data = tether_core::codec::data_from_user_text(&args.data);
    let mut body = format!(
        r#"{{"channel":{},"data":{}"#,
        serde_json::Value::String(args.channel.clone()),
        data.get()
    );
    if let Some(key) = &args.idempotency_key {
        body.push_str(&format!(r#","idempotency_key":{}"#, serde_json::Value::String(key.clone())));
    }
    body.push('}');
    body
}

fn publish_blocking(args: &PublishArgs) -> Result<ExitCode> {
    let text = crate::http_api::call(&args.target, "publish", &body(args))?;
    println!("{text}");
    let duplicate = serde_json::from_str::<serde_json::Value>(&text)
        .is_ok_and(|receipt| receipt["duplicate"] == true);
    if let (true, Some(key)) = (duplicate, &args.idempotency_key) {
        eprintln!(
            "duplicate: the server already published with idempotency key `{key}` within its \
             idempotency_window; nothing was published again (the receipt is the first one)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
