//! The HTTP API beside the WebSocket endpoint: the server API's methods (`methods`), health,
//! metrics and heap profiles. Every error is a JSON body `{"error": "..."}` that names the
//! problem.

mod methods;
mod orders;
pub(crate) use methods::call;

use crate::metrics::ReasonLabels;
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub(crate) fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The API key a request carries: `Authorization: Bearer KEY` or `X-API-Key: KEY`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(auth) = text(header::AUTHORIZATION.as_str()) {
        let (scheme, key) = auth.split_once(' ').unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(key.trim());
        }
    }
    text("x-api-key")
}

/// Refuse a request to the HTTP API unless it carries one of the configured keys (when any
/// is configured): 401 without a key, 403 with a wrong one. Compared in constant time.
pub(crate) fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let keys = &node.config().api_keys;
    if keys.is_empty() {
        return Ok(());
    }
    let refuse = |status, reason: &'static str, message: &str| {
        node.metrics.api_refused.get_or_create(&ReasonLabels { reason }).inc();
        let mut resp = json_error(status, message);
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Box::new(resp)
    };
    let Some(key) = presented_key(headers).filter(|k| !k.is_empty()) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "missing_key",
            "this API needs a key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
        ));
    };
    // Every key is compared, whatever matched, so the time taken says nothing about the keys.
    let matched = keys.iter().fold(subtle::Choice::from(0), |found, k| {
        found | subtle::ConstantTimeEq::ct_eq(k.as_bytes(), key.as_bytes())
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(refuse(StatusCode::FORBIDDEN, "wrong_key", "the API key is not accepted"))
    }
}

/// `Content-Type: application/json` (any parameters). Required: a web page can send a
/// cross-site `no-cors` POST only as a "simple" type (text/plain, forms), never as JSON, so
/// this keeps any page a visitor opens from publishing through a server they can reach.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The heap-profile endpoints reveal the program's memory and cost CPU: served only when the
/// API has keys (and then only with one), even on loopback.
fn authorize_profiling(node: &Node, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if node.config().api_keys.is_empty() {
        node.metrics.api_refused.get_or_create(&ReasonLabels { reason: "no_keys" }).inc();
        return Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "heap profiling is served only with an API key: start the server with --api-key \
             (TETHER_API_KEYS) and send it",
        )));
    }
    authorize(node, headers)
}

pub(crate) async fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST with a JSON body")
}

pub(crate) async fn not_found(req: Request<Body>) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {}; try /, /ws, /api/publish (and the other /api/ methods), /healthz, /metrics or /tether.js",
            req.uri().path()
        ),
    )
}

/// `GET /healthz`: 200 while serving, 503 once shutdown has begun.
/// `GET /debug/pprof/heap`: the live heap sampled since profiling was activated, as a gzipped
/// pprof protobuf (read it with `go tool pprof` or `pprof`). `POST .../activate` and
/// `.../deactivate` start and stop sampling. All three need an API key to be configured and sent.
pub(crate) async fn heap_profile(State(node): State<Arc<Node>>, req: Request<Body>) -> Response {
    if let Err(refused) = authorize_profiling(&node, req.headers()) {
        return *refused;
    }
    let Some(profiler) = crate::metrics::heap_profiler() else {
        return json_error(
            StatusCode::NOT_IMPLEMENTED,
            "this build has no heap profiler (the tether binary has one: jemalloc with profiling)",
        );
    };
    let dumped = tokio::task::spawn_blocking(move || match profiler.is_active() {
        true => profiler.dump_pprof().map(Some),
        false => Ok(None),
    })
    .await;
    match dumped {
        Ok(Ok(None)) => json_error(
            StatusCode::CONFLICT,
            "heap profiling is not active: POST /debug/pprof/heap/activate (or start with \
             --heap-profiling), let the program run, then ask again",
        ),
        Ok(Ok(Some(pprof))) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"heap.pb.gz\""),
            ],
            pprof,
        )
            .into_response(),
        Ok(Err(e)) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("heap profile failed: {e}"))
        }
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "heap profile failed"),
    }
}

/// `POST /debug/pprof/heap/activate` and `/deactivate`.
pub(crate) async fn heap_profiling(
    State(node): State<Arc<Node>>,
    axum::extract::Path(action): axum::extract::Path<String>,
    req: Request<Body>,
) -> Response {
    if let Err(refused) = authorize_profiling(&node, req.headers()) {
        return *refused;
    }
    let Some(profiler) = crate::metrics::heap_profiler() else {
        return json_error(StatusCode::NOT_IMPLEMENTED, "this build has no heap profiler");
    };
    let on = match action.as_str() {
        "activate" => true,
        "deactivate" => false,
        _ => {
            return json_error(
                StatusCode::NOT_FOUND,
                "use /debug/pprof/heap/activate or /deactivate",
            )
        }
    };
    match tokio::task::spawn_blocking(move || {
        profiler.set_active(on).map(|()| profiler.is_active())
    })
    .await
    {
        Ok(Ok(active)) => axum::Json(serde_json::json!({ "active": active })).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "heap profiling failed"),
    }
}

pub(crate) async fn healthz(State(node): State<Arc<Node>>) -> Response {
    if node.stopping() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({
        "status": "ok",
        "connections": node.open_connections(),
        "broker": node.broker_name(),
    }))
    .into_response()
}

/// `GET /readyz`: 200 while publications can be accepted (the broker is reachable), else 503
/// with the reason. Load balancers should route on this, liveness probes on `/healthz`.
pub(crate) async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not_ready", "reason": reason})),
        )
            .into_response()
    };
    if node.stopping() {
        return not_ready("shutting down".into());
    }
    match node.broker_readiness() {
        Ok(()) => axum::Json(serde_json::json!({"status": "ready", "broker": node.broker_name()}))
            .into_response(),
        Err(reason) => not_ready(reason),
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub(crate) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        node.metrics.render(),
    )
        .into_response()
}
