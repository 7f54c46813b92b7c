//! The HTTP → WebSocket upgrade: validate the handshake, pick the protocol mode from the offered
//! subprotocols, apply the connection limit, answer 101, and hand the upgraded socket to a
//! tracked connection task. Every refusal is an HTTP error with a JSON body that says what to do.
//!
//! We do the upgrade ourselves (hyper's `upgrade::on` plus tungstenite's accept-key function)
//! rather than through axum's `WebSocketUpgrade`, to set tungstenite's buffer sizes and to map its
//! typed errors (capacity, UTF-8, protocol) to the right close codes.

use crate::api::json_error;
use crate::connection::ConnectionTask;
use crate::metrics::ReasonLabels;
use crate::node::Node;
use crate::publication::Mode;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tether_core::channel;
use tether_core::defaults::SUBPROTOCOL_JSON;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The protocol mode chosen from `Sec-WebSocket-Protocol`, or the offered list when none fits.
fn select_mode(headers: &HeaderMap) -> Result<Mode, Vec<String>> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if offered.is_empty() {
        Ok(Mode::Raw)
    } else if offered.iter().any(|p| p == SUBPROTOCOL_JSON) {
        Ok(Mode::Json)
    } else {
        Err(offered)
    }
}

/// `?channel=NAME` (repeatable): channels to subscribe at connect, in order, without repeats.
/// Reading stops at the first channel past `max`.
fn channels_from_query(
    query: Option<&str>,
    max_len: usize,
    max: usize,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "channel" {
            channel::validate(&value, max_len).map_err(|e| format!("?channel={value}: {e}"))?;
            if seen.insert(value.clone()) {
                if out.len() == max {
                    return Err(format!(
                        "more than {max} channels requested (max_subscriptions is {max})"
                    ));
                }
                out.push(value.into_owned());
            }
        }
    }
    Ok(out)
}

/// A handshake we refuse: counted by `reason`, answered with `status` and a JSON body.
struct Refusal {
    reason: &'static str,
    status: StatusCode,
    body: serde_json::Value,
    header: Option<(header::HeaderName, &'static str)>,
}

impl Refusal {
    fn new(reason: &'static str, status: StatusCode, error: impl Into<String>) -> Self {
        Refusal { reason, status, body: serde_json::json!({ "error": error.into() }), header: None }
    }

    fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.header = Some((name, value));
        self
    }
}

/// What a valid handshake asks for.
struct Accepted {
    accept_key: String,
    mode: Mode,
    channels: Vec<String>,
    /// permessage-deflate, when agreed.
    deflate: Option<tether_core::permessage_deflate::Agreement>,
}

/// The permessage-deflate answer to the request's offers, when compression is on.
fn negotiate_deflate(
    headers: &HeaderMap,
    config: &crate::config::GatewayConfig,
) -> Option<tether_core::permessage_deflate::Agreement> {
    if !config.compression {
        return None;
    }
    let offers: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    tether_core::permessage_deflate::negotiate(&offers.join(","))
}

/// Validate an upgrade request: pure, no I/O.
fn check_handshake(
    headers: &HeaderMap,
    query: Option<&str>,
    config: &crate::config::GatewayConfig,
    origins: &[crate::origin::OriginPattern],
) -> Result<Accepted, Refusal> {
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Refusal::new(
            "not_websocket",
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        )
        .with_header(header::UPGRADE, "websocket"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return Err(Refusal::new(
            "bad_version",
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version; this server speaks version 13 (RFC 6455)",
        )
        .with_header(header::SEC_WEBSOCKET_VERSION, "13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Refusal::new(
            "bad_request",
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key header",
        ));
    };
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    crate::origin::check(text(header::ORIGIN), text(header::HOST), origins)
        .map_err(|e| Refusal::new("origin", StatusCode::FORBIDDEN, e))?;
    let mode = select_mode(headers).map_err(|offered| Refusal {
        body: serde_json::json!({
            "error": format!("none of the offered subprotocols ({}) is supported", offered.join(", ")),
            "supported": [SUBPROTOCOL_JSON],
            "hint": "offer `tether.v1.json`, or no subprotocol at all for raw mode",
        }),
        ..Refusal::new("unsupported_subprotocol", StatusCode::BAD_REQUEST, "")
    })?;
    let channels =
        channels_from_query(query, config.max_channel_name_len, config.max_subscriptions)
            .map_err(|e| Refusal::new("bad_request", StatusCode::BAD_REQUEST, e))?;
    let deflate = negotiate_deflate(headers, config);
    Ok(Accepted { accept_key: derive_accept_key(key.as_bytes()), mode, channels, deflate })
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
        let anonymous = &shared.config.anonymous_channels;
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

pub(crate) async fn ws_handler(State(node): State<Arc<Node>>, req: Request) -> Response {
    upgrade(node, req, false).await
}

/// `GET /echo` (with `conformance_echo` only): every message comes back, through the same
/// frame writers as publications. No subprotocol, no channels; every limit still applies.
pub(crate) async fn echo_handler(State(node): State<Arc<Node>>, req: Request) -> Response {
    upgrade(node, req, true).await
}

async fn upgrade(node: Arc<Node>, mut req: Request, echo: bool) -> Response {
    let shared = &node;
    // Held from before the shutdown check until the connection task ends, so that shutdown
    // waits for a handshake racing it instead of missing it.
    let tracked = shared.tracker.token();
    let refuse = |r: Refusal| {
        shared.metrics.handshakes_refused.get_or_create(&ReasonLabels { reason: r.reason }).inc();
        let mut resp = (r.status, axum::Json(r.body)).into_response();
        if let Some((name, value)) = r.header {
            resp.headers_mut().insert(name, HeaderValue::from_static(value));
        }
        resp
    };
    // Admission, cheapest and most specific first (decision 0009): the request's own shape,
    // then this client's limits, then the server-wide budget, and only then the token
    // (a signature check), so that neither a flood from one address nor forged tokens can
    // spend what everyone shares.
    let Accepted { accept_key: accept, mut mode, channels, deflate } =
        match check_handshake(req.headers(), req.uri().query(), &shared.config, &shared.origins) {
            Ok(a) => a,
            Err(r) => return refuse(r),
        };
    if echo {
        if mode != Mode::Raw || !channels.is_empty() {
            let why = "the echo endpoint takes no subprotocol and no channels";
            return refuse(Refusal::new("bad_request", StatusCode::BAD_REQUEST, why));
        }
        mode = Mode::Echo;
    }
    if shared.stopping() {
        return refuse(
            Refusal::new(
                "shutting_down",
                StatusCode::SERVICE_UNAVAILABLE,
                "server is shutting down; reconnect shortly",
            )
            .with_header(header::RETRY_AFTER, "1"),
        );
    }
    let peer = client_of(shared, &req);
    if let Some(peer) = peer {
        if let Err(r) = admit_client(shared, peer.ip()) {
            return refuse(r);
        }
    }
    // From here on, every way out gives the client's connection back.
    let release = || {
        if let Some(peer) = peer {
            shared.per_ip.release(peer.ip(), shared.now_ms());
        }
    };
    if !shared.admit_handshake() {
        release();
        return over_budget(&node, &mut req, &accept, mode, tracked, refuse);
    }
    let grant = match check_token(shared, req.uri().query(), &channels) {
        Ok(grant) => grant,
        Err(r) => {
            release();
            return refuse(r);
        }
    };
    let Ok(slot) = shared.connection_slots.clone().try_acquire_owned() else {
        release();
        return refuse(
            Refusal::new(
                "max_connections",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "connection limit reached ({} open); retry later",
                    shared.config.max_connections
                ),
            )
            .with_header(header::RETRY_AFTER, "5"),
        );
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        release();
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this HTTP connection cannot be upgraded (is the app served over HTTP/1.1 by hyper?)",
        );
    };
    // The slot is given back by the connection when it ends (see `Drop for Connection`).
    slot.forget();
    let task = ConnectionTask::new(
        node.clone(),
        on_upgrade,
        peer,
        mode,
        channels,
        grant,
        deflate.map(|a| a.window_bits()),
    );
    node.tracker.spawn(task);
    drop(tracked); // the spawned task is tracked from here on

    switching_protocols(&accept, mode, deflate)
}

/// A reconnect storm over the server's budget. The upgrade completes so that browsers, which
/// cannot read an HTTP refusal, see the close code and the hint. Each of those holds a socket
/// for up to `close_timeout`; beyond `max_pending_handshakes` of them at once (the same kind of
/// not-yet-a-connection socket), a plain 503, so that a storm cannot pile them up.
fn over_budget(
    node: &Arc<Node>,
    req: &mut Request,
    accept: &str,
    mode: Mode,
    tracked: tokio_util::task::task_tracker::TaskTrackerToken,
    refuse: impl Fn(Refusal) -> Response,
) -> Response {
    use std::sync::atomic::Ordering;
    let shared = node;
    let busy = || {
        Refusal::new(
            "max_handshake_rate",
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy (max_handshake_rate); retry later",
        )
        .with_header(header::RETRY_AFTER, "1")
    };
    let lingering = shared.lingering_refusals.fetch_add(1, Ordering::AcqRel);
    let linger = Lingering(node.clone());
    if lingering >= shared.config.max_pending_handshakes {
        return refuse(busy());
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(busy());
    };
    shared
        .metrics
        .handshakes_refused
        .get_or_create(&ReasonLabels { reason: "max_handshake_rate" })
        .inc();
    shared.metrics.storm_refusals_lingering.set((lingering + 1) as i64);
    let cfg = &shared.config;
    let (hint, timeout) = (cfg.storm_retry_hint, cfg.close_timeout);
    shared.tracker.spawn(async move {
        try_again_later(on_upgrade, mode, hint, timeout).await;
        drop(linger);
    });
    drop(tracked);
    // No extension: this answer is only a close frame.
    switching_protocols(accept, mode, None)
}

/// One counted 1013 refusal; uncounted when dropped.
struct Lingering(Arc<Node>);

impl Drop for Lingering {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let shared = &self.0;
        let left = shared.lingering_refusals.fetch_sub(1, Ordering::AcqRel) - 1;
        shared.metrics.storm_refusals_lingering.set(left as i64);
    }
}

fn switching_protocols(
    accept: &str,
    mode: Mode,
    deflate: Option<tether_core::permessage_deflate::Agreement>,
) -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(accept).expect("base64 is a valid header"),
    );
    if mode == Mode::Json {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL_JSON));
    }
    if let Some(agreement) = deflate {
        let answer = HeaderValue::from_str(&agreement.response()).expect("an ASCII answer");
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
    }
    resp
}

/// Close a just-upgraded socket at once with 1013 and a retry hint (a `disconnect` message
/// first in JSON mode), without a connection task: the cheapest answer the storm can get. Then
/// a lingering close: FIN after the close frame, and input discarded until the client closes
/// too, within `linger`.
async fn try_again_later(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mode: Mode,
    hint: std::time::Duration,
    linger: std::time::Duration,
) {
    use tether_core::close_code::CloseCode;
    use tether_core::protocol::{Disconnect, ServerMessage};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
    let Ok(upgraded) = on_upgrade.await else { return };
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    let code = CloseCode::TRY_AGAIN_LATER;
    let reason = format!("try again later: server busy, retry after {} ms", hint.as_millis());
    let mut wire = Vec::with_capacity(256);
    if mode == Mode::Json {
        let advice = ServerMessage::Disconnect(Disconnect {
            code,
            reason: reason.clone(),
            reconnect: true,
            retry_after_ms: Some(hint.as_millis() as u64),
        });
        wire.extend_from_slice(
            &crate::publication::text_frame(tether_core::codec::encode(&advice).as_bytes()).0,
        );
    }
    let close = Frame::close(Some(CloseFrame { code: code.0.into(), reason: reason.into() }));
    // Writing into a Vec cannot fail.
    let _ = close.format(&mut wire);
    let _ = tokio::time::timeout(linger, async {
        io.write_all(&wire).await?;
        io.shutdown().await?;
        let mut scratch = [0u8; 256];
        while io.read(&mut scratch).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_selection() {
        let mut h = HeaderMap::new();
        assert_eq!(select_mode(&h), Ok(Mode::Raw));
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt, tether.v1.json"));
        assert_eq!(select_mode(&h), Ok(Mode::Json));
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt, wamp"));
        assert_eq!(select_mode(&h), Err(vec!["mqtt".to_owned(), "wamp".to_owned()]));
    }

    fn upgrade_headers(protocols: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        if let Some(p) = protocols {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        h
    }

    #[test]
    fn handshake_checks() {
        let cfg = crate::config::GatewayConfig::default();
        let ok =
            check_handshake(&upgrade_headers(None), Some("channel=a"), &cfg, &[]).ok().unwrap();
        // The RFC 6455 §1.3 example key and answer.
        assert_eq!(ok.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!((ok.mode, ok.channels), (Mode::Raw, vec!["a".to_owned()]));
        let refused = |h: &HeaderMap, q| check_handshake(h, q, &cfg, &[]).err().unwrap();
        let r = refused(&upgrade_headers(Some("wamp")), None);
        assert_eq!((r.reason, r.status), ("unsupported_subprotocol", StatusCode::BAD_REQUEST));
        let mut h = upgrade_headers(None);
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(refused(&h, None).status, StatusCode::UPGRADE_REQUIRED);
        h.remove(header::UPGRADE);
        assert_eq!(refused(&h, None).reason, "not_websocket");
        let mut h = upgrade_headers(None);
        h.remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(refused(&h, None).reason, "bad_request");
        assert_eq!(refused(&upgrade_headers(None), Some("channel=a b")).reason, "bad_request");
    }

    #[test]
    fn query_channels() {
        assert_eq!(
            channels_from_query(Some("channel=a&x=1&channel=b&channel=a"), 10, 2).unwrap(),
            ["a", "b"]
        );
        assert!(channels_from_query(Some("channel=a%20b"), 10, 2).is_err());
        assert!(channels_from_query(None, 10, 2).unwrap().is_empty());
        let e = channels_from_query(Some("channel=a&channel=b&channel=a&channel=c"), 10, 2);
        assert!(e.unwrap_err().contains("more than 2 channels"));
    }
}
