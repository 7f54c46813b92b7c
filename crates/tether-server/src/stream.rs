//! Streaming sessions over plain HTTP, for clients whose network lets no WebSocket through
//! (issue 21, point 1); the session itself is `connection::streaming`.
//!
//! - `POST /stream` opens an HTTP-streaming session: the request body holds its first commands
//!   (newline-delimited JSON, may be empty), and the response body streams what the server
//!   sends, one JSON message per line, starting with `{"type":"session","session":ID,…}`.
//! - `GET /stream/sse?commands=…` opens the same session as Server-Sent Events: its first
//!   commands are in the URL (an `EventSource` sends no body), every message is one event, and
//!   a browser that reconnects by itself recovers from `Last-Event-ID`.
//! - `POST /stream/send?session=ID` carries further commands (newline-delimited JSON) to a
//!   session. Any node may take it: a session held elsewhere is reached through the broker
//!   (Redis: that node's own channel), so a round-robin balancer needs no stickiness. Answers:
//!   202 handed over, 404 no such session (open a new one), 429 its inbox is full, 503 the
//!   broker is unreachable.
//!
//! Opening is admitted exactly like a WebSocket handshake (origin, per-address limits, the
//! handshake budget, `?token=`, a connection slot): a session is a connection.

use crate::admission::{admit, come_back_later, event_stream, refused, Admitted, Denied};
use crate::connection::{
    parse_event_id, Connection, Format, Opening, Registered, Streaming, BODY_CHUNKS,
};
use crate::control::{Handed, SessionId};
use crate::handshake::Refusal;
use crate::metrics::ReasonLabels;
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// `POST /stream`: an HTTP-streaming session.
pub(crate) async fn open_lines(State(node): State<Arc<Node>>, req: Request) -> Response {
    open(node, req, Format::Lines).await
}

/// `GET /stream/sse`: a session as Server-Sent Events.
pub(crate) async fn open_events(State(node): State<Arc<Node>>, req: Request) -> Response {
    open(node, req, Format::Events).await
}

async fn open(node: Arc<Node>, req: Request, format: Format) -> Response {
    let tracked = node.tracker.token();
    let origin = match allowed_origin(&node, &req) {
        Ok(origin) => origin,
        Err(refusal) => return *refusal,
    };
    let last_event_id = req
        .headers()
        .get(header::HeaderName::from_static("last-event-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Admitted { peer, grant, slot } = match admit(&node, &req, &[]) {
        Ok(a) => a,
        Err(denied) => {
            let r = match denied {
                Denied::Refused(r) => r,
                Denied::OverBudget => Refusal::new(
                    "max_handshake_rate",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server busy (max_handshake_rate); retry later",
                )
                .with_header(header::RETRY_AFTER, "1"),
            };
            // An `EventSource` gives up for good on anything but 200.
            if format == Format::Events && matches!(r.status.as_u16(), 429 | 503) {
                return come_back_later(&node, r, origin);
            }
            return with_origin(refused(&node, r), origin);
        }
    };
    let query = req.uri().query().unwrap_or("").to_owned();
    let place = req.extensions().get::<crate::pending::Held>().cloned();
    let fd = req.extensions().get::<crate::sys::SocketFd>().copied();
    // The first commands: the body (HTTP-streaming) or `?commands=` (SSE), within one
    // message's size and the handshake's time.
    let limit = node.config.max_message_size.as_u64() as usize;
    let first = match format {
        Format::Lines => {
            let read = axum::body::to_bytes(req.into_body(), limit);
            match tokio::time::timeout(node.config.handshake_timeout, read).await {
                Ok(Ok(body)) => body,
                _ => {
                    crate::admission::release_client(&node, peer);
                    let why = format!("the first commands must be at most {limit} bytes (max_message_size), sent within handshake_timeout");
                    return with_origin(
                        refused(
                            &node,
                            Refusal::new("bad_request", StatusCode::PAYLOAD_TOO_LARGE, why),
                        ),
                        origin,
                    );
                }
            }
        }
        Format::Events => {
            let commands = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "commands")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if commands.len() > limit {
                crate::admission::release_client(&node, peer);
                let why = format!("?commands= must be at most {limit} bytes (max_message_size)");
                return with_origin(
                    refused(&node, Refusal::new("bad_request", StatusCode::BAD_REQUEST, why)),
                    origin,
                );
            }
            Bytes::from(commands)
        }
    };
    slot.forget(); // given back by `Drop for Connection`
    if let Some(place) = place {
        place.settle(); // established: not an unfinished handshake (see `pending::Held`)
    }
    // The reader can vanish without a FIN while the server only writes: the kernel gives the
    // connection up after the heartbeat's bound of unacknowledged writes.
    if let Some(fd) = fd {
        let bound = node.config.ping_interval + node.config.pong_timeout;
        if let Err(e) = crate::sys::set_user_timeout(fd, bound) {
            tracing::debug!(error = %e, "no TCP_USER_TIMEOUT on a streaming session");
        }
    }
    let conn = Connection::open_streaming(node.clone(), peer, grant, format.transport());
    let secret = rand::random::<u64>();
    let session = SessionId::format(&node.client_id(conn.conn_id()), secret);
    let inbox = node.hub.sessions.add(conn.conn_id(), secret);
    let registered = Some(Registered(node.clone(), conn.conn_id()));
    let resume = match (format, last_event_id) {
        (Format::Events, Some(id)) => parse_event_id(&id),
        _ => BTreeMap::new(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let wire = Streaming::new(tx, format, node.config.write_timeout);
    let opening = Opening { wire, inbox, session, first, resume, registered };
    node.tracker.spawn(async move {
        conn.serve_streaming(opening).await;
        drop(tracked);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    let body = Body::from_stream(body);
    match format {
        Format::Events => event_stream(body, origin),
        Format::Lines => {
            let mut resp = event_stream(body, origin);
            let ndjson = HeaderValue::from_static("application/x-ndjson");
            resp.headers_mut().insert(header::CONTENT_TYPE, ndjson);
            resp
        }
    }
}

/// `POST /stream/send?session=ID`: commands for a session, wherever it is held.
pub(crate) async fn send(State(node): State<Arc<Node>>, req: Request) -> Response {
    let origin = match allowed_origin(&node, &req) {
        Ok(origin) => origin,
        Err(refusal) => return *refusal,
    };
    let outcome = handing(&node, req).await;
    let (status, reason, body) = match outcome {
        Ok(Handed::Delivered) => {
            (StatusCode::ACCEPTED, "delivered", serde_json::json!({"handed": true}))
        }
        Ok(Handed::Unknown) => (
            StatusCode::NOT_FOUND,
            "unknown",
            serde_json::json!({
                "error": "session_unknown",
                "message": "no such session: it ended, or its node is gone; open a new session (POST /stream or GET /stream/sse) and recover",
            }),
        ),
        Ok(Handed::Full) => (
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            serde_json::json!({
                "error": "session_busy",
                "message": "the session has too many command batches waiting; send one batch at a time, after the previous one's answer",
            }),
        ),
        Err((status, reason, message)) => {
            (status, reason, serde_json::json!({"error": reason, "message": message}))
        }
    };
    node.metrics.stream_batches.get_or_create(&ReasonLabels { reason }).inc();
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    with_origin(resp, origin)
}

type Failed = (StatusCode, &'static str, String);

async fn handing(node: &Node, req: Request) -> Result<Handed, Failed> {
    let query = req.uri().query().unwrap_or("");
    let session = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "session")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Some(id) = SessionId::parse(&session) else {
        let why = "name the session: /stream/send?session=ID, the id of the stream's first message";
        return Err((StatusCode::BAD_REQUEST, "bad_request", why.into()));
    };
    let limit = node.config.max_message_size.as_u64() as usize;
    let read = axum::body::to_bytes(req.into_body(), limit);
    let batch = match tokio::time::timeout(node.config.handshake_timeout, read).await {
        Ok(Ok(batch)) => batch,
        _ => {
            let why = format!("a batch of commands must be at most {limit} bytes (max_message_size), sent within handshake_timeout");
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "bad_request", why));
        }
    };
    // With a backplane, every batch goes through it, the session's own node's too: Redis then
    // orders them (a client sends the next after this one's answer, so PUBLISH 2 runs after
    // PUBLISH 1), where handing one straight to the inbox could overtake one still on the
    // holder's pub/sub link.
    if id.node == node.client_prefix && node.broker.name() == "memory" {
        return Ok(node.hub.sessions.hand(&id, batch));
    }
    node.broker.hand(id.node, &session, batch).await.map_err(|e| {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e}; retry shortly"))
    })
}

/// Let a page of an allowed origin read the answer (the origin was checked).
fn with_origin(mut resp: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        resp.headers_mut().insert(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

/// The request's `Origin` when it may open or use a session (browsers' cross-origin rules,
/// as for a WebSocket; see `origin`); otherwise the 403 to answer with.
fn allowed_origin(node: &Node, req: &Request) -> Result<Option<HeaderValue>, Box<Response>> {
    let text = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Err(e) = crate::origin::check(text(header::ORIGIN), text(header::HOST), &node.origins) {
        return Err(Box::new(refused(node, Refusal::new("origin", StatusCode::FORBIDDEN, e))));
    }
    Ok(text(header::ORIGIN).and_then(|o| HeaderValue::from_str(o).ok()))
}
