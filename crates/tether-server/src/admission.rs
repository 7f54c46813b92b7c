//! What every connection must pass before it exists, WebSocket or SSE (decision 0009): this
//! client's limits, the token and what it covers, a connection slot. Answers are `Refusal`s:
//! an HTTP status with a JSON body that says what to do — or, for an `EventSource`, which gives
//! up for good on anything but 200, a stream of one `disconnect` event (`come_back_later`).

use crate::config::channel_option;
use crate::handshake::Refusal;
use crate::metrics::ReasonLabels;
use crate::node::Node;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tether_core::close_code::CloseCode;

/// What admission gives a connection about to be made.
pub(crate) struct Admitted {
    /// Its client, counted against the per-address limits until released.
    pub peer: Option<SocketAddr>,
    /// What its `?token=` allows, if it gave one.
    pub grant: Option<Arc<crate::auth::Grant>>,
    /// Its connection slot: forgotten once the connection exists, which gives it back when
    /// it ends.
    pub slot: tokio::sync::OwnedSemaphorePermit,
}

/// Why a connection is not made.
pub(crate) enum Denied {
    Refused(Refusal),
    /// Over `max_handshake_rate`: a WebSocket answers with a 1013 close, others with 503.
    OverBudget,
}

/// Admission, cheapest and most specific first (decision 0009): shutdown, then this client's
/// limits, then the server-wide budget, and only then the token (a signature check) and a
/// slot, so that neither a flood from one address nor forged tokens can spend what everyone
/// shares. Whatever fails gives back what was taken before it.
pub(crate) fn admit(shared: &Node, req: &Request, channels: &[String]) -> Result<Admitted, Denied> {
    if shared.stopping() {
        return Err(Denied::Refused(shutting_down()));
    }
    let peer = client_of(shared, req);
    if let Some(peer) = peer {
        admit_client(shared, peer.ip()).map_err(Denied::Refused)?;
    }
    let release = || release_client(shared, peer);
    if !shared.admit_handshake() {
        release();
        return Err(Denied::OverBudget);
    }
    let grant = check_token(shared, req.uri().query(), channels).map_err(|r| {
        release();
        Denied::Refused(r)
    })?;
    let Ok(slot) = shared.connection_slots.clone().try_acquire_owned() else {
        release();
        return Err(Denied::Refused(no_slot(shared)));
    };
    Ok(Admitted { peer, grant, slot })
}

/// Give back what `admit_client` counted.
pub(crate) fn release_client(shared: &Node, peer: Option<SocketAddr>) {
    if let Some(peer) = peer {
        shared.per_ip.release(peer.ip(), shared.now_ms());
    }
}

/// A refusal as the client gets it: counted by reason, its status, JSON body and header.
pub(crate) fn refused(shared: &Node, r: Refusal) -> Response {
    shared.metrics.handshakes_refused.get_or_create(&ReasonLabels { reason: r.reason }).inc();
    let mut resp = (r.status, axum::Json(r.body)).into_response();
    if let Some((name, value)) = r.header {
        resp.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// `?token=` (raw mode, or any client that cannot send `connect`), checked before the upgrade,
/// and the `?channel=`s it must cover. Browsers cannot read an HTTP refusal, so they should
/// authenticate with the `connect` command instead, which answers with a close code.
fn check_token(
    shared: &crate::node::Node,
    query: Option<&str>,
    channels: &[String],
) -> Result<Option<std::sync::Arc<crate::auth::Grant>>, Refusal> {
    use crate::auth::{Access, TokenError};
    let Some(verifier) = shared.auth.as_ref() else { return Ok(None) };
    let token = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let grant = match token.map(|t| verifier.verify(&t)) {
        None => None,
        Some(Ok(grant)) => Some(std::sync::Arc::new(grant)),
        Some(Err(TokenError::Expired)) => return Err(token_expired()),
        Some(Err(TokenError::Invalid(why))) => {
            return Err(Refusal::new(
                "token_invalid",
                StatusCode::UNAUTHORIZED,
                format!("token not accepted: {why}"),
            ))
        }
    };
    for channel in channels {
        let anonymous = channel_option(&shared.config.channel, channel, |r| r.anonymous);
        let anonymous = anonymous.unwrap_or(false);
        match crate::auth::access(Some(verifier), anonymous, grant.as_deref(), channel, false) {
            Access::Allowed => {}
            Access::Forbidden => {
                return Err(Refusal::new(
                    "forbidden",
                    StatusCode::FORBIDDEN,
                    format!("the token does not allow subscribing to `{channel}`"),
                ))
            }
            Access::TokenExpired => return Err(token_expired()),
            Access::TokenRequired => {
                return Err(Refusal::new(
                    "token_required",
                    StatusCode::UNAUTHORIZED,
                    format!("`{channel}` needs a token: add ?token=JWT to the URL"),
                ))
            }
        }
    }
    Ok(grant)
}

fn token_expired() -> Refusal {
    Refusal::new(
        "token_expired",
        StatusCode::UNAUTHORIZED,
        "token expired: fetch a fresh one and reconnect",
    )
}

/// The per-address limits, for the client this request comes from: 429 when over them.
/// `Ok`: one connection is counted for `client` until released.
fn admit_client(shared: &crate::node::Node, client: IpAddr) -> Result<(), Refusal> {
    use crate::per_ip::Refused;
    match shared.per_ip.admit(client, shared.now_ms()) {
        Ok(()) => Ok(()),
        Err(Refused::Rate) => Err(Refusal::new(
            "handshake_rate",
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "more than {} handshakes per second from {client}; slow down",
                shared.config.handshake_rate_per_ip
            ),
        )
        .with_header(header::RETRY_AFTER, "1")),
        Err(Refused::Connections) => Err(Refusal::new(
            "per_ip_connections",
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} connections already open from {client} (max_connections_per_ip)",
                shared.config.max_connections_per_ip
            ),
        )
        .with_header(header::RETRY_AFTER, "5")),
    }
}

/// Who the request comes from: the peer, or the client a trusted proxy names. `None` when
/// the host application serves the router without peer addresses (then there are no
/// per-address limits, which is said once in the log).
fn client_of(shared: &crate::node::Node, req: &Request) -> Option<SocketAddr> {
    let Some(peer) = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0) else {
        use std::sync::atomic::Ordering;
        if !shared.warned_no_peer.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the HTTP server gives no peer addresses (serve the router with \
                 into_make_service_with_connect_info::<SocketAddr>()): per-address limits are off"
            );
        }
        return None;
    };
    let trusted = &shared.config.trusted_proxies;
    let client = crate::forwarded::client_address(peer.ip(), req.headers(), trusted);
    Some(if client == peer.ip() { peer } else { SocketAddr::new(client, 0) })
}

/// Graceful shutdown has begun: come back shortly (to another node, or this one restarted).
fn shutting_down() -> Refusal {
    Refusal::new(
        "shutting_down",
        StatusCode::SERVICE_UNAVAILABLE,
        "server is shutting down; reconnect shortly",
    )
    .with_header(header::RETRY_AFTER, "1")
}

/// `max_connections` are open.
fn no_slot(shared: &crate::node::Node) -> Refusal {
    Refusal::new(
        "max_connections",
        StatusCode::SERVICE_UNAVAILABLE,
        format!("connection limit reached ({} open); retry later", shared.config.max_connections),
    )
    .with_header(header::RETRY_AFTER, "5")
}

/// A `200 text/event-stream` answer with `body`.
pub(crate) fn event_stream(body: Body, origin: Option<HeaderValue>) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

/// A refusal that retrying can cure (shutting down, over a limit), for a reader that would
/// give up for good on any answer but 200: an `EventSource`. Told as a stream of one
/// `disconnect` event instead, with `retry:` set to the hint (jittered), the SSE form of a
/// WebSocket's 101-then-1013.
pub(crate) fn come_back_later(node: &Node, r: Refusal, origin: Option<HeaderValue>) -> Response {
    node.metrics.handshakes_refused.get_or_create(&ReasonLabels { reason: r.reason }).inc();
    let code = match r.reason {
        "shutting_down" => CloseCode::SERVICE_RESTART,
        _ => CloseCode::TRY_AGAIN_LATER,
    };
    let secs = r.header.and_then(|(_, v)| v.parse::<u64>().ok()).unwrap_or(1);
    let hint = Duration::from_secs(secs);
    let reason = r.body["error"].as_str().unwrap_or("try again later");
    let advice = serde_json::json!({"code": code.0, "reason": reason, "reconnect": true, "retry_after_ms": hint.as_millis() as u64});
    let retry = jittered(hint).as_millis();
    let text = format!("retry: {retry}\nevent: disconnect\ndata: {advice}\n\n");
    event_stream(Body::from(text), origin)
}

/// Between `d` and twice `d` (at least 1 ms), at random.
pub(crate) fn jittered(d: Duration) -> Duration {
    let d = d.max(Duration::from_millis(1));
    d + d.mul_f64(rand::random::<f64>())
}
