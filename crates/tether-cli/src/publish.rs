//! `tether publish`: one POST to `/api/publish`, with the server's JSON answer printed as is.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Base URL of the gateway's HTTP API
    #[arg(long, env = "TETHER_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
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

fn publish_blocking(args: &PublishArgs) -> Result<ExitCode> {
    let base = args.server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!(
            "--server must be an http:// URL such as http://127.0.0.1:8080 (got `{}`)",
            args.server
        );
    }
    let url = format!("{base}/api/publish");
    let data = tether_core::codec::data_from_user_text(&args.data);
    let body = format!(
        r#"{{"channel":{},"data":{}}}"#,
        serde_json::Value::String(args.channel.clone()),
        data.get()
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .post(&url)
        .header("content-type", "application/json")
        .send(&body)
        .with_context(|| format!("cannot reach {url}; is `tether serve` running there?"))?;
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if status.is_success() {
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("server answered {status}: {text}")
    }
}
