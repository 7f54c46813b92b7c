//! `tether publish`: one POST to `/api/publish`, with the server's JSON answer printed as is.
//! On a server with `api_keys` it sends `--api-key` (or `TETHER_API_KEY`) as a bearer token;
//! `--idempotency-key` makes a retry safe (the server publishes once and answers the retry with
//! the first receipt and `"duplicate": true`).

use anyhow::{bail, Context, Result};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Base URL of the gateway's HTTP API
    #[arg(long, env = "TETHER_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API key, for a server started with --api-key (sent as `Authorization: Bearer KEY`);
    /// prefer the environment variable, which other users cannot read in `ps`
    #[arg(long, env = "TETHER_API_KEY", hide_env_values = true, value_name = "KEY")]
    api_key: Option<String>,
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
    let base = args.server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!(
            "--server must be an http:// URL such as http://127.0.0.1:8080 (got `{}`)",
            args.server
        );
    }
    let url = format!("{base}/api/publish");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.post(&url).header("content-type", "application/json");
    if let Some(key) = &args.api_key {
        request = request.header("authorization", format!("Bearer {}", key.trim()));
    }
    let mut resp = request
        .send(&body(args))
        .with_context(|| format!("cannot reach {url}; is `tether serve` running there?"))?;
    let status = resp.status();
    // The API's key refusals carry `WWW-Authenticate`; a 403 without it is about the channel.
    let key_refused = resp.headers().contains_key("www-authenticate");
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if status.is_success() {
        println!("{text}");
        let duplicate = serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|receipt| receipt["duplicate"] == true);
        if let (true, Some(key)) = (duplicate, &args.idempotency_key) {
            eprintln!(
                "duplicate: the server already published with idempotency key `{key}` within its \
                 idempotency_window; nothing was published again (the receipt is the first one)"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    match (status.as_u16(), args.api_key.is_some()) {
        (401, _) => bail!(
            "the server needs an API key (HTTP 401): pass --api-key KEY or set TETHER_API_KEY \
             to one of the keys it was started with (its --api-key / TETHER_API_KEYS)"
        ),
        (403, true) if key_refused => bail!(
            "the server did not accept this API key (HTTP 403): check --api-key / \
             TETHER_API_KEY against the keys it was started with (its --api-key / TETHER_API_KEYS)"
        ),
        _ => bail!("server answered {status}: {text}"),
    }
}
