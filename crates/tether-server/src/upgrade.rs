//! The HTTP → WebSocket upgrade: validate the handshake, pick the protocol mode from the offered
//! subprotocols, apply the connection limit, answer 101, and hand the upgraded socket to a
//! tracked connection task. Every refusal is an HTTP error with a JSON body that says what to do.
//!
//! We do the upgrade ourselves (hyper's `upgrade::on` plus tungstenite's accept-key function)
//! rather than through axum's `WebSocketUpgrade`, to set tungstenite's buffer sizes and to map its
//! typed errors (capacity, UTF-8, protocol) to the right close codes.

use crate::api::json_error;
use crate::config::channel_option;
use crate::connection::ConnectionTask;
use crate::handshake::{check_handshake, switching_protocols, Accepted, Refusal};
use crate::metrics::ReasonLabels;
use crate::node::Node;
use crate::publication::Mode;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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
