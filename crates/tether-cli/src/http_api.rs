//! One call to a gateway's server API (`POST /api/<method>`), shared by `tether publish`,
//! `tether api` and `tether presence`: the key as a bearer token, the answer as text, and the
//! refusals turned into messages that say what to do.

use anyhow::{bail, Context, Result};
use clap::Args;

/// Where the API is and how to get in.
#[derive(Args, Debug, Clone)]
pub struct ApiTarget {
    /// Base URL of the gateway's HTTP API
    #[arg(long, env = "TETHER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API key, for a server started with --api-key (sent as `Authorization: Bearer KEY`);
    /// prefer the environment variable, which other users cannot read in `ps`
    #[arg(long, env = "TETHER_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
}

/// POST `body` to `/api/{method}`: the answer's text when it is a success; otherwise an error
/// that says what went wrong and what to do.
pub fn call(target: &ApiTarget, method: &str, body: &str) -> Result<String> {
    let base = target.server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!(
            "--server must be an http:// URL such as http://127.0.0.1:8080 (got `{}`)",
            target.server
        );
    }
    let url = format!("{base}/api/{method}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.post(&url).header("content-type", "application/json");
    if let Some(key) = &target.api_key {
        request = request.header("authorization", format!("Bearer {}", key.trim()));
    }
    let mut resp = request
        .send(body)
        .with_context(|| format!("cannot reach {url}; is `tether serve` running there?"))?;
    let status = resp.status();
    // The API's key refusals carry `WWW-Authenticate`; a 403 without it is about the request.
    let key_refused = resp.headers().contains_key("www-authenticate");
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if status.is_success() {
        return Ok(text);
    }
    let said = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(text);
    match (status.as_u16(), target.api_key.is_some()) {
        (401, _) => bail!(
            "the server needs an API key (HTTP 401): pass --api-key KEY or set TETHER_API_KEY \
             to one of the keys it was started with (its --api-key / TETHER_API_KEYS)"
        ),
        (403, true) if key_refused => bail!(
            "the server did not accept this API key (HTTP 403): check --api-key / \
             TETHER_API_KEY against the keys it was started with (its --api-key / TETHER_API_KEYS)"
        ),
        _ => bail!("server answered {status}: {said}"),
    }
}
