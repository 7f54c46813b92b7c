//! The server API: `POST /api/<method>` with a JSON body of parameters, behind the API keys.
//! Methods: `publish`, `broadcast`, `subscribe`, `unsubscribe`, `disconnect` (in `orders`),
//! `presence`, `presence_stats`, `history`, `history_remove`, `channels`, `info`, `batch`
//! (docs/protocol.md has an example of each). An unknown method is a 404, parameters that do
//! not fit a 400 that names the field, and every error a JSON body `{"error": "..."}`.

use super::{authorize, is_json, json_error};
use crate::control::Question;
use crate::hub::MAX_CHANNELS_LISTED;
use crate::metrics::ReasonLabels;
use crate::node::{Node, PublishError, MAX_HISTORY};
use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tether_core::protocol::StreamPosition;

/// The methods, as the 404 lists them.
const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "batch",
];

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Channels one `broadcast` may name, and commands one `batch` may hold.
const MAX_FAN: usize = 1000;

/// What a method answers: a JSON body, or a status and what went wrong.
pub(super) type Answer = Result<Value, (StatusCode, String)>;

pub(super) fn bad(why: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, why.into())
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
    if !METHODS.contains(&method.as_str()) {
        return json_error(StatusCode::NOT_FOUND, unknown(&method));
    }
    let bytes = match body(&node, req).await {
        Ok(bytes) => bytes,
        Err(refused) => return *refused,
    };
    match dispatch(&node, &method, &bytes).await {
        Ok(body) => axum::Json(body).into_response(),
        Err((status, why)) if status == StatusCode::SERVICE_UNAVAILABLE => {
            let mut resp = json_error(status, why);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        Err((status, why)) => json_error(status, why),
    }
}

fn unknown(method: &str) -> String {
    format!("no API method `{method}`; the methods are: {}", METHODS.join(", "))
}

/// One method with its parameters (boxed: `batch` calls back into it).
fn dispatch<'a>(node: &'a Node, method: &'a str, params: &'a [u8]) -> BoxFuture<'a, Answer> {
    Box::pin(async move {
        match method {
            "publish" => publish(node, params).await,
            "broadcast" => broadcast(node, params).await,
            "subscribe" => super::orders::subscription(node, params, true).await,
            "unsubscribe" => super::orders::subscription(node, params, false).await,
            "disconnect" => super::orders::disconnect(node, params).await,
            "history_remove" => history_remove(node, params).await,
            "presence" => presence(node, params, false).await,
            "presence_stats" => presence(node, params, true).await,
            "history" => history(node, params).await,
            "channels" => channels(node, params).await,
            "info" => info(node).await,
            "batch" => batch(node, params).await,
            other => Err((StatusCode::NOT_FOUND, unknown(other))),
        }
    })
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
pub(super) fn params<T: DeserializeOwned>(
    bytes: &[u8],
    shape: &str,
) -> Result<T, (StatusCode, String)> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("body must be {shape}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams {
    channel: String,
    data: Box<RawValue>,
    /// Makes retries safe: the same key within `idempotency_window` publishes once.
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn check_key(key: Option<&str>) -> Result<(), (StatusCode, String)> {
    let Some(key) = key else { return Ok(()) };
    let printable = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !printable {
        return Err(bad(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// One publication's receipt, as `publish` answers it.
async fn publish_one(node: &Node, channel: &str, data: &RawValue, key: Option<&str>) -> Answer {
    match node.publish_once(channel, data, key).await {
        Ok(receipt) => {
            let mut reply = json!({
                "channel": channel,
                "epoch": &*receipt.epoch,
                "offset": receipt.offset,
                "delivered": receipt.delivered,
            });
            if receipt.duplicate {
                reply["duplicate"] = Value::Bool(true);
            }
            Ok(reply)
        }
        Err(PublishError::BadChannel(e)) => Err(bad(format!("bad channel: {e}"))),
        Err(e @ PublishError::Reserved) => Err((StatusCode::FORBIDDEN, e.to_string())),
        Err(PublishError::Broker(e)) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// `publish` `{"channel": "...", "data": <any JSON>, "idempotency_key": "optional"}`.
async fn publish(node: &Node, bytes: &[u8]) -> Answer {
    let shape = r#"{"channel": "...", "data": <any JSON>, "idempotency_key": "optional"}"#;
    let p: PublishParams = params(bytes, shape)?;
    check_key(p.idempotency_key.as_deref())?;
    publish_one(node, &p.channel, &p.data, p.idempotency_key.as_deref()).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastParams {
    channels: Vec<String>,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `broadcast` `{"channels": [...], "data": …}`: one answer per channel, in order; a channel
/// that fails says why and does not stop the others.
async fn broadcast(node: &Node, bytes: &[u8]) -> Answer {
    let shape = r#"{"channels": ["...", ...], "data": <any JSON>, "idempotency_key": "optional"}"#;
    let p: BroadcastParams = params(bytes, shape)?;
    check_key(p.idempotency_key.as_deref())?;
    if p.channels.is_empty() || p.channels.len() > MAX_FAN {
        return Err(bad(format!("`channels` must name 1 to {MAX_FAN} channels")));
    }
    let mut responses = Vec::with_capacity(p.channels.len());
    for channel in &p.channels {
        responses.push(
            match publish_one(node, channel, &p.data, p.idempotency_key.as_deref()).await {
                Ok(receipt) => receipt,
                Err((status, why)) => {
                    json!({"channel": channel, "status": status.as_u16(), "error": why})
                }
            },
        );
    }
    Ok(json!({ "responses": responses }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelParams {
    channel: String,
}

/// `presence` / `presence_stats` `{"channel": "..."}`.
async fn presence(node: &Node, bytes: &[u8], stats: bool) -> Answer {
    let p: ChannelParams = params(bytes, r#"{"channel": "..."}"#)?;
    let channel = &p.channel;
    tether_core::channel::validate(channel, node.config().max_channel_name_len)
        .map_err(|e| bad(format!("bad channel: {e}")))?;
    if !node.presence_on(channel) {
        return Err(bad(format!(
            "`{channel}` keeps no presence; set `presence = true` in a [[channel]] block that matches it"
        )));
    }
    let members = node.broker.presence(channel).await.map_err(refused)?;
    Ok(if stats {
        let (clients, users) = crate::presence::stats(&members);
        json!({"num_clients": clients, "num_users": users})
    } else {
        let clients: serde_json::Map<String, Value> = members
            .iter()
            .map(|m| (m.client.to_string(), serde_json::to_value(m.to_info()).unwrap_or_default()))
            .collect();
        json!({ "clients": clients })
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    channel: String,
    #[serde(default = "default_limit")]
    limit: u64,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

fn default_limit() -> u64 {
    100
}

/// `history` `{"channel": C, "limit": N, "since": {"epoch": E, "offset": O}, "reverse": bool}`:
/// with `since`, the first `limit` publications after it; without, the latest `limit`
/// (`limit` 0: only where the channel stands). Oldest first unless `reverse`.
async fn history(node: &Node, bytes: &[u8]) -> Answer {
    let shape = r#"{"channel": "...", "limit": 100, "since": {"epoch": "...", "offset": 0}, "reverse": false}"#;
    let p: HistoryParams = params(bytes, shape)?;
    tether_core::channel::validate(&p.channel, node.config().max_channel_name_len)
        .map_err(|e| bad(format!("bad channel: {e}")))?;
    if p.limit > MAX_HISTORY {
        return Err(bad(format!("`limit` must be at most {MAX_HISTORY}")));
    }
    let page = node
        .history_page(&p.channel, p.limit, p.since.as_ref(), p.reverse)
        .await
        .map_err(refused)?;
    let mut answer = json!({
        "epoch": page.epoch,
        "offset": page.top,
        "publications": crate::session::history_entries(&page.publications),
    });
    if let Some(why) = page.incomplete {
        answer["complete"] = Value::Bool(false);
        answer["reason"] = Value::String(why);
    }
    Ok(answer)
}

/// `history_remove` `{"channel": C}`: forget C's history (its position stays).
pub(super) async fn history_remove(node: &Node, bytes: &[u8]) -> Answer {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ChannelOnly {
        channel: String,
    }
    let p: ChannelOnly = params(bytes, r#"{"channel": "..."}"#)?;
    tether_core::channel::validate(&p.channel, node.config().max_channel_name_len)
        .map_err(|e| bad(format!("bad channel: {e}")))?;
    node.broker.history_remove(&p.channel).await.map_err(refused)?;
    Ok(Value::Object(Default::default()))
}

/// `channels` `{"pattern": "chat:*"}`: the channels with subscribers on any node (matching the
/// pattern, if given), with their subscriber counts summed over the nodes: the 10,000 most
/// subscribed, listed by name (a JSON object); `missing_nodes` when some node did not answer
/// in time.
async fn channels(node: &Node, bytes: &[u8]) -> Answer {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ChannelsParams {
        #[serde(default)]
        pattern: Option<String>,
    }
    let p: ChannelsParams = params(bytes, r#"{"pattern": "chat:*"} (or {})"#)?;
    let got =
        node.broker.survey(Question::Channels { pattern: p.pattern }).await.map_err(refused)?;
    let mut counts: HashMap<String, u64> = HashMap::new();
    for answer in &got.answers {
        for (name, n) in answer["channels"].as_object().into_iter().flatten() {
            *counts.entry(name.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    let mut listed: Vec<(String, u64)> = counts.into_iter().collect();
    listed.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    listed.truncate(MAX_CHANNELS_LISTED);
    let channels: serde_json::Map<String, Value> =
        listed.into_iter().map(|(name, n)| (name, json!({"num_clients": n}))).collect();
    let mut out = json!({ "channels": channels });
    if got.missing > 0 {
        out["missing_nodes"] = json!(got.missing);
    }
    Ok(out)
}

/// `info` `{}`: every node — its name (the prefix of its client ids), version, uptime,
/// connections and subscriptions; `missing_nodes` when some node did not answer in time.
async fn info(node: &Node) -> Answer {
    let got = node.broker.survey(Question::Info).await.map_err(refused)?;
    let mut nodes = got.answers;
    for n in &mut nodes {
        n["broker"] = json!(node.broker_name());
    }
    nodes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut out = json!({ "nodes": nodes });
    if got.missing > 0 {
        out["missing_nodes"] = json!(got.missing);
    }
    Ok(out)
}

/// A broker error as the API's read and order methods answer it: a limit is 429 (try
/// later), the rest 503. (`publish` answers both with 503, as documented.)
pub(super) fn refused(e: crate::broker::BrokerError) -> (StatusCode, String) {
    match e {
        crate::broker::BrokerError::Limit(_) => (StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        _ => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    method: String,
    #[serde(default)]
    params: Option<Box<RawValue>>,
}

/// `batch` `{"commands": [{"method": …, "params": …}, …]}`: each in order; one answer each,
/// `{"status": 200, "result": …}` or `{"status": 4xx/5xx, "error": "…"}`. No batch inside a batch.
async fn batch(node: &Node, bytes: &[u8]) -> Answer {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct BatchParams {
        commands: Vec<Command>,
    }
    let p: BatchParams =
        params(bytes, r#"{"commands": [{"method": "...", "params": {...}}, ...]}"#)?;
    if p.commands.len() > MAX_FAN {
        return Err(bad(format!("`commands` may hold at most {MAX_FAN}")));
    }
    let mut replies = Vec::with_capacity(p.commands.len());
    for c in &p.commands {
        let answer = match c.method.as_str() {
            "batch" => Err(bad("a batch cannot hold a batch")),
            m if !METHODS.contains(&m) => Err((StatusCode::NOT_FOUND, unknown(m))),
            m => {
                let params = c.params.as_ref().map_or("{}", |p| p.get());
                dispatch(node, m, params.as_bytes()).await
            }
        };
        replies.push(match answer {
            Ok(result) => json!({"status": 200, "result": result}),
            Err((status, why)) => json!({"status": status.as_u16(), "error": why}),
        });
    }
    Ok(json!({ "replies": replies }))
}
