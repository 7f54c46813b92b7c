//! The WebSocket handshake as data: validate an upgrade request (version, key, `Origin`,
//! subprotocol → mode, `?channel=`s, permessage-deflate), and the answers — a [`Refusal`]
//! with its JSON body, or the 101. Pure: no I/O, no shared state; `upgrade.rs` applies the
//! limits and hands the socket over.

use crate::publication::Mode;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use tether_core::channel;
use tether_core::defaults::SUBPROTOCOL_JSON;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub(crate) fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The protocol mode chosen from `Sec-WebSocket-Protocol`, or the offered list when none fits.
pub(crate) fn select_mode(headers: &HeaderMap) -> Result<Mode, Vec<String>> {
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
pub(crate) fn channels_from_query(
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
pub(crate) struct Refusal {
    pub(crate) reason: &'static str,
    pub(crate) status: StatusCode,
    pub(crate) body: serde_json::Value,
    pub(crate) header: Option<(header::HeaderName, &'static str)>,
}

impl Refusal {
    pub(crate) fn new(reason: &'static str, status: StatusCode, error: impl Into<String>) -> Self {
        Refusal { reason, status, body: serde_json::json!({ "error": error.into() }), header: None }
    }

    pub(crate) fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.header = Some((name, value));
        self
    }
}

/// What a valid handshake asks for.
pub(crate) struct Accepted {
    pub(crate) accept_key: String,
    pub(crate) mode: Mode,
    pub(crate) channels: Vec<String>,
    /// permessage-deflate, when agreed.
    pub(crate) deflate: Option<tether_core::permessage_deflate::Agreement>,
}

/// The permessage-deflate answer to the request's offers, when compression is on.
pub(crate) fn negotiate_deflate(
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
pub(crate) fn check_handshake(
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

pub(crate) fn switching_protocols(
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
