//! The server API: `POST /api/<method>` with a JSON body of parameters, behind the API keys.
//! Methods: `publish`, `presence`, `presence_stats` (docs/protocol.md has an example of each).
//! An unknown method is a 404, parameters that do not fit a 400 that names the field, and
//! every error a JSON body `{"error": "..."}`.

use super::{authorize, is_json, json_error};
use crate::metrics::ReasonLabels;
use crate::node::{Node, PublishError};
use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The methods, as the 404 lists them.
const METHODS: &str = "publish, presence, presence_stats";

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams {
    channel: String,
    data: Box<RawValue>,
    /// Makes retries safe: the same key within `idempotency_window` publishes once.
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelParams {
    channel: String,
}

/// `POST /api/{method}`.
pub(crate) async fn call(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    req: Request<Body>,
) -> Response {
    if let Err(refused) = authorize(&node, req.headers()) {
        return *refused;
    }
    if !matches!(method.as_str(), "publish" | "presence" | "presence_stats") {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("no API method `{method}`; the methods are: {METHODS}"),
        );
    }
    let bytes = match body(&node, req).await {
        Ok(bytes) => bytes,
        Err(refused) => return *refused,
    };
    match method.as_str() {
        "publish" => publish(&node, &bytes).await,
        "presence" => presence(&node, &bytes, false).await,
        _ => presence(&node, &bytes, true).await,
    }
}

/// The request's JSON body, checked: content type, size, nesting.
async fn body(node: &Node, req: Request<Body>) -> Result<axum::body::Bytes, Box<Response>> {
    if !is_json(req.headers()) {
        node.metrics.api_refused.get_or_create(&ReasonLabels { reason: "content_type" }).inc();
        return Err(Box::new(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `Content-Type: application/json`",
        )));
    }
    // The body limit is the largest message a client could receive, plus the envelope.
    let limit = node.config().max_message_size.as_u64() as usize + 1024;
    let Ok(bytes) = to_bytes(req.into_body(), limit).await else {
        return Err(Box::new(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes (max_message_size plus envelope)"),
        )));
    };
    if bytes.is_empty() {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "empty body; send the method's parameters as a JSON object",
        )));
    }
    let max_depth = node.config().max_json_depth;
    let too_deep = std::str::from_utf8(&bytes)
        .is_ok_and(|text| tether_core::codec::json_depth(text, max_depth).is_err());
    if too_deep {
        node.metrics.json_too_deep.inc();
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            format!("JSON nested deeper than {max_depth} levels (max_json_depth)"),
        )));
    }
    Ok(bytes)
}

/// The parameters, or a 400 that shows their shape and names what is wrong (serde names the
/// missing, unknown or mistyped field).
fn params<T: DeserializeOwned>(bytes: &[u8], shape: &str) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(json_error(StatusCode::BAD_REQUEST, format!("body must be {shape}: {e}")))
    })
}

/// `publish` `{"channel": "...", "data": <any JSON>, "idempotency_key": "optional"}`.
async fn publish(node: &Node, bytes: &[u8]) -> Response {
    let shape = r#"{"channel": "...", "data": <any JSON>, "idempotency_key": "optional"}"#;
    let body: PublishParams = match params(bytes, shape) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    if let Some(key) = &body.idempotency_key {
        let printable = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !printable {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces"
                ),
            );
        }
    }
    let key = body.idempotency_key.as_deref();
    match node.publish_once(&body.channel, &body.data, key).await {
        Ok(receipt) => {
            let mut reply = serde_json::json!({
                "channel": body.channel,
                "epoch": &*receipt.epoch,
                "offset": receipt.offset,
                "delivered": receipt.delivered,
            });
            if receipt.duplicate {
                reply["duplicate"] = serde_json::Value::Bool(true);
            }
            axum::Json(reply).into_response()
        }
        Err(PublishError::BadChannel(e)) => {
            json_error(StatusCode::BAD_REQUEST, format!("bad channel: {e}"))
        }
        Err(e @ PublishError::Reserved) => json_error(StatusCode::FORBIDDEN, e.to_string()),
        Err(PublishError::Broker(e)) => unavailable(e),
    }
}

/// `presence` / `presence_stats` `{"channel": "..."}`.
async fn presence(node: &Node, bytes: &[u8], stats: bool) -> Response {
    let body: ChannelParams = match params(bytes, r#"{"channel": "..."}"#) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let channel = &body.channel;
    if let Err(e) = tether_core::channel::validate(channel, node.config().max_channel_name_len) {
        return json_error(StatusCode::BAD_REQUEST, format!("bad channel: {e}"));
    }
    if !node.presence_on(channel) {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("`{channel}` keeps no presence; set `presence = true` in a [[channel]] block that matches it"),
        );
    }
    let members = match node.broker.presence(channel).await {
        Ok(members) => members,
        Err(e) => return unavailable(e),
    };
    let reply = if stats {
        let (clients, users) = crate::presence::stats(&members);
        serde_json::json!({"num_clients": clients, "num_users": users})
    } else {
        let clients: serde_json::Map<String, serde_json::Value> = members
            .iter()
            .map(|m| (m.client.to_string(), serde_json::to_value(m.to_info()).unwrap_or_default()))
            .collect();
        serde_json::json!({ "clients": clients })
    };
    axum::Json(reply).into_response()
}

/// The broker cannot answer now: 503, retry in a second.
fn unavailable(e: impl std::fmt::Display) -> Response {
    let mut resp = json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}
