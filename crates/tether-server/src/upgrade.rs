//! The HTTP → WebSocket upgrade: validate the handshake, pick the protocol mode from the offered
//! subprotocols, apply the connection limit, answer 101, and hand the upgraded socket to a
//! tracked connection task. Every refusal is an HTTP error with a JSON body that says what to do.
//!
//! We do the upgrade ourselves (hyper's `upgrade::on` plus tungstenite's accept-key function)
//! rather than through axum's `WebSocketUpgrade`, to set tungstenite's buffer sizes and to map its
//! typed errors (capacity, UTF-8, protocol) to the right close codes.

use crate::admission::{admit, refused, release_client, Admitted, Denied};
use crate::api::json_error;
use crate::connection::ConnectionTask;
use crate::handshake::{check_handshake, switching_protocols, Accepted, Refusal};
use crate::metrics::ReasonLabels;
use crate::node::Node;
use crate::publication::Mode;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use std::sync::Arc;

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
    let refuse = |r: Refusal| refused(shared, r);
    // The request's own shape first, then admission (see `admission::admit`).
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
    let Admitted { peer, grant, slot } = match admit(shared, &req, &channels) {
        Ok(a) => a,
        Err(Denied::Refused(r)) => return refuse(r),
        Err(Denied::OverBudget) => {
            return over_budget(&node, &mut req, &accept, mode, tracked, refuse);
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        release_client(shared, peer);
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
