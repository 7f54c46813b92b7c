//! Opening a connection: TCP (or TLS), the WebSocket handshake with its headers and token,
//! and what a failure means (its close code, its words).

use super::*;

impl Supervisor {
    pub(super) async fn connect(&mut self) -> Result<Ws, SessionEnd> {
        let mut request = self
            .config
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| SessionEnd::fatal(format!("bad URL {}: {e}", self.config.url)))?;
        if self.config.mode == Mode::Json {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL_JSON));
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .max_message_size(Some(self.config.max_message_size))
            .max_frame_size(Some(self.config.max_message_size));
        let offered = self.config.compression;
        if offered {
            request.headers_mut().insert(
                "sec-websocket-extensions",
                HeaderValue::from_static(tether_core::permessage_deflate::CLIENT_OFFER),
            );
        }
        let tls = match self.config.url.starts_with("wss://") {
            true => Some(tls_config(&self.config.tls_roots).map_err(SessionEnd::fatal)?),
            false => None,
        };
        let max_message = self.config.max_message_size;
        let local = self.config.local_address;
        // TCP and TLS here rather than in tokio-tungstenite, so that the permessage-deflate
        // stream sits above TLS and below the WebSocket layer (see `inflating_stream`).
        let attempt = async {
            let tcp = connect_tcp(local, request.uri()).await.map_err(WsError::Io)?;
            let stream = match tls {
                None => MaybeTlsStream::Plain(tcp),
                Some(config) => {
                    let host = request.uri().host().unwrap_or_default();
                    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                    let name = rustls_pki_types::ServerName::try_from(host).map_err(|e| {
                        WsError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    })?;
                    let connector = tokio_rustls::TlsConnector::from(config);
                    MaybeTlsStream::Rustls(connector.connect(name, tcp).await.map_err(WsError::Io)?)
                }
            };
            let stream = InflatingStream::new(stream, offered, max_message);
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await
        };
        let (ws, response) = match tokio::time::timeout(self.config.connect_timeout, attempt).await
        {
            Err(_) => {
                return Err(SessionEnd::network(format!(
                    "connect timed out after {:?}",
                    self.config.connect_timeout
                )))
            }
            Ok(Err(WsError::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let status = resp.status();
                let reason = format!("handshake refused: HTTP {} {}", status, body.trim());
                return Err(refused(status, resp.headers(), reason));
            }
            Ok(Err(e)) if untrusted_certificate(&e) => {
                // Retrying cannot help until the configuration changes.
                return Err(SessionEnd::fatal(format!(
                    "TLS: the server's certificate is not trusted ({e}); if it comes from a \
                     private CA, trust it with ClientConfig::with_ca_file (tether connect --ca-cert)"
                )));
            }
            Ok(Err(e)) => return Err(SessionEnd::network(format!("connect failed: {e}"))),
            Ok(Ok(pair)) => pair,
        };
        if self.config.mode == Mode::Json
            && response.headers().get("sec-websocket-protocol").map(|v| v.as_bytes())
                != Some(SUBPROTOCOL_JSON.as_bytes())
        {
            return Err(SessionEnd::fatal(
                "the server did not accept subprotocol tether.v1.json; use raw mode for plain WebSocket servers".into(),
            ));
        }
        // An extension we did not offer, or deflate on terms we did not ask for: RFC 7692 §5
        // says fail the connection (it would be unreadable).
        let agreed = response
            .headers()
            .get("sec-websocket-extensions")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let deflate = match (offered, agreed.as_deref()) {
            (false, Some(other)) => {
                Err(format!("the server answered an extension that was not offered: {other}"))
            }
            (_, agreed) => tether_core::permessage_deflate::client_accepts(agreed),
        };
        self.send_window = match (deflate, &agreed, self.config.compress_sends) {
            (Err(why), ..) => return Err(SessionEnd::fatal(why)),
            (Ok(true), Some(agreed), Some(_)) => {
                Some(tether_core::permessage_deflate::client_window_bits(agreed))
            }
            _ => None,
        };
        *self.stats.extensions.lock().unwrap_or_else(|p| p.into_inner()) =
            agreed.unwrap_or_default();
        Ok(ws)
    }
}

/// An HTTP answer other than the one asked for (a refused upgrade or stream): 4xx (but 408 and
/// 429) will be refused again, so retrying cannot help; 5xx and those two are transient, and
/// a `Retry-After` says when to come back.
pub(super) fn refused(
    status: tokio_tungstenite::tungstenite::http::StatusCode,
    headers: &tokio_tungstenite::tungstenite::http::HeaderMap,
    reason: String,
) -> SessionEnd {
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        return SessionEnd::fatal(reason);
    }
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    SessionEnd { advice_retry_after: retry_after, ..SessionEnd::network(reason) }
}

/// The close code (and the short reason put on the wire) for a read error caused by what the
/// server sent; `None` for transport errors.
pub(super) fn failure_code(e: &WsError) -> Option<(CloseCode, &'static str)> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) | WsError::AttackAttempt => {
            Some((CloseCode::PROTOCOL_ERROR, "protocol error"))
        }
        WsError::Utf8(_) => Some((CloseCode::INVALID_PAYLOAD, "invalid UTF-8")),
        WsError::Capacity(_) => Some((CloseCode::MESSAGE_TOO_BIG, "message too big")),
        _ => None,
    }
}

pub(super) fn describe(e: &WsError) -> String {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "connection reset without a closing handshake".into()
        }
        WsError::Io(io) => format!("transport error: {io}"),
        other => format!("{other}"),
    }
}

/// rustls (ring provider) trusting the public webpki roots plus `extra`.
pub fn tls_config(
    extra: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a configured CA certificate is invalid: {e}"))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Whether a connect error is the server's certificate failing verification.
pub(super) fn untrusted_certificate(e: &WsError) -> bool {
    use tokio_tungstenite::tungstenite::error::TlsError;
    let io = match e {
        WsError::Io(io) => io,
        WsError::Tls(TlsError::Rustls(r)) => {
            return matches!(**r, rustls::Error::InvalidCertificate(_))
        }
        _ => return false,
    };
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

/// TCP connect to the URI's host (from `local` when given, bound before connecting), with
/// Nagle off as `connect_async` does.
pub(super) async fn connect_tcp(
    local: Option<std::net::IpAddr>,
    uri: &tokio_tungstenite::tungstenite::http::Uri,
) -> std::io::Result<TcpStream> {
    use std::io::{Error, ErrorKind};
    let host = uri.host().ok_or_else(|| Error::new(ErrorKind::InvalidInput, "no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
    let stream = match local {
        None => TcpStream::connect((host, port)).await?,
        Some(local) => {
            let target = tokio::net::lookup_host((host, port))
                .await?
                .find(|a| a.is_ipv4() == local.is_ipv4())
                .ok_or_else(|| {
                    Error::new(ErrorKind::AddrNotAvailable, "no address of the local family")
                })?;
            let socket = if local.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind((local, 0).into())?;
            socket.connect(target).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}
