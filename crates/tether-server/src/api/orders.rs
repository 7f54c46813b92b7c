//! The server API's methods that act on a user's connections, on every node: `subscribe`,
//! `unsubscribe`, `disconnect` (see `control`). The broker carries the order to every node;
//! each connection carries it out itself.

use super::methods::{bad, params, refused, Answer};
use crate::broker::Reach;
use crate::control::{Act, UserOrder};
use crate::node::Node;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tether_core::close_code::{CloseCode, RetryAdvice};

/// Longest user id accepted (a JWT `sub`).
const MAX_USER: usize = 256;

fn check_user(user: &str) -> Result<(), (StatusCode, String)> {
    if user.is_empty() || user.len() > MAX_USER {
        return Err(bad(format!("`user` must be 1 to {MAX_USER} bytes (a token's `sub`)")));
    }
    Ok(())
}

/// Send the order; answer how far it went.
async fn send(node: &Node, order: UserOrder) -> Answer {
    let reach = node.broker.order(order).await.map_err(refused)?;
    Ok(match reach {
        Reach::Connections(n) => json!({"connections": n}),
        Reach::Nodes(n) => json!({"nodes": n}),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChannel {
    user: String,
    channel: String,
}

/// `subscribe` / `unsubscribe` `{"user": U, "channel": C}`: every connection of U, on every
/// node, subscribes (server-side: no access check) or unsubscribes, and is told so.
pub(super) async fn subscription(node: &Node, bytes: &[u8], subscribe: bool) -> Answer {
    let p: UserChannel = params(bytes, r#"{"user": "...", "channel": "..."}"#)?;
    check_user(&p.user)?;
    tether_core::channel::validate(&p.channel, node.config().max_channel_name_len)
        .map_err(|e| bad(format!("bad channel: {e}")))?;
    let act = if subscribe {
        Act::Subscribe { channel: p.channel }
    } else {
        Act::Unsubscribe { channel: p.channel }
    };
    send(node, UserOrder { user: p.user, act }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectParams {
    user: String,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reconnect: Option<bool>,
}

/// `disconnect` `{"user": U, "code": 4xxx, "reason": "…", "reconnect": bool}`: every
/// connection of U closes with the code and reason. The code says whether its client comes
/// back (4001–4499 reconnect, 4500–4999 stop; 4000 is what a client reports for its own
/// heartbeat timeout, never sent); `reconnect` alone picks 4001 or 4500, and
/// with a code it must agree with it.
pub(super) async fn disconnect(node: &Node, bytes: &[u8]) -> Answer {
    let shape = r#"{"user": "...", "code": 4500, "reason": "...", "reconnect": false}"#;
    let p: DisconnectParams = params(bytes, shape)?;
    check_user(&p.user)?;
    let code = match (p.code, p.reconnect) {
        (Some(code), _) if !(4001..=4999).contains(&code) => {
            return Err(bad(
                "`code` must be 4001-4999 (4000 is a client's own heartbeat timeout): 4001-4499 reconnect, 4500-4999 stop",
            ))
        }
        (Some(code), Some(again))
            if (CloseCode(code).advice() != RetryAdvice::Stop) != again =>
        {
            return Err(bad(format!(
                "`code` {code} tells clients to {}, `reconnect` says {again}: use 4000-4499 to reconnect, 4500-4999 to stop",
                if again { "stop" } else { "reconnect" }
            )))
        }
        (Some(code), _) => code,
        (None, Some(true)) => 4001,
        (None, _) => 4500,
    };
    let reason = p.reason.unwrap_or_else(|| "disconnected by the server".into());
    if reason.len() > 123 {
        return Err(bad("`reason` must be at most 123 bytes (it goes in the close frame)"));
    }
    send(node, UserOrder { user: p.user, act: Act::Disconnect { code, reason } }).await
}
