//! Opening one WebSocket the way a diagnosis needs it: each step timed on its own (DNS, TCP,
//! TLS, the HTTP upgrade), and the upgrade's answer kept for what it says about the path.

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the diagnosis goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The WebSocket URL (`ws://` or `wss://`).
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// `ws://`, `wss://`, `http://` or `https://`; an empty path means Tether's `/ws`.
    pub fn parse(url: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let (secure, rest) = match url.split_once("://") {
            Some(("ws" | "http", rest)) => (false, rest),
            Some(("wss" | "https", rest)) => (true, rest),
            _ => bail!("`{url}` is not a ws://, wss://, http:// or https:// URL"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" { "/ws" } else { path };
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p.parse().with_context(|| format!("bad port in `{url}`"))?;
                (h, port)
            }
            _ => (authority, default_port),
        };
        if host.is_empty() {
            bail!("`{url}` names no host");
        }
        let scheme = if secure { "wss" } else { "ws" };
        Ok(Target {
            url: format!("{scheme}://{authority}{path}"),
            host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
            port,
            tls: secure.then_some(tls),
        })
    }
}

/// What opening a connection showed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Opening {
    pub dns_ms: f64,
    pub addresses: Vec<String>,
    pub tcp_ms: f64,
    pub peer: String,
    /// Absent for `ws://`.
    pub tls: Option<TlsFacts>,
    pub upgrade: Upgrade,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TlsFacts {
    pub ms: f64,
    pub version: String,
}

/// The HTTP upgrade's answer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Upgrade {
    pub ms: f64,
    pub status: u16,
    /// `Upgrade: websocket` came back (a proxy that drops hop-by-hop headers loses it).
    pub upgrade_header: bool,
    pub subprotocol: Option<String>,
    pub extensions: Option<String>,
    /// Headers that show what stands on the path.
    pub intermediaries: Vec<Intermediary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Intermediary {
    pub header: String,
    pub value: String,
    /// The product it names, when known (`nginx`, `cloudflare`, …).
    pub product: Option<String>,
}

/// What to offer in the handshake.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    /// `tether.v1.json` (else raw mode).
    pub json: bool,
    pub deflate: bool,
}

/// Why a connection did not open.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The server answered 101 without the subprotocol offered: it is not in Tether's JSON mode.
    #[error("the server did not accept the subprotocol tether.v1.json")]
    NoSubprotocol,
    /// The upgrade was answered with another status.
    #[error("the upgrade was answered {status}: {body}")]
    Refused { status: u16, body: String, intermediaries: Vec<Intermediary> },
    #[error("{0:#}")]
    Other(anyhow::Error),
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Open a WebSocket to `target`, timing each step; every step within `timeout`.
pub async fn open(
    target: &Target,
    offer: Offer,
    timeout: Duration,
) -> Result<(Ws, Opening), DialError> {
    let late = move |what: &str| {
        DialError::Other(anyhow!("{what} took longer than {}", humantime::format_duration(timeout)))
    };
    let within = move |what: &'static str| move |_: tokio::time::error::Elapsed| late(what);
    let mut opening = Opening::default();
    let started = Instant::now();
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let addresses: Vec<_> = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(within("DNS resolution"))?
        .map_err(|e| DialError::Other(anyhow!("cannot resolve `{}`: {e}", target.host)))?
        .collect();
    opening.dns_ms = ms(started.elapsed());
    opening.addresses = addresses.iter().map(|a| a.ip().to_string()).collect();
    let first = *addresses
        .first()
        .ok_or_else(|| DialError::Other(anyhow!("`{}` resolves to no address", target.host)))?;

    let started = Instant::now();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(first))
        .await
        .map_err(within("the TCP connect"))?
        .map_err(|e| DialError::Other(anyhow!("cannot connect to {first}: {e}")))?;
    opening.tcp_ms = ms(started.elapsed());
    opening.peer = first.to_string();
    let _ = tcp.set_nodelay(true);

    let stream = match &target.tls {
        None => MaybeTlsStream::Plain(tcp),
        Some(config) => {
            let started = Instant::now();
            let name =
                rustls_pki_types::ServerName::try_from(target.host.clone()).map_err(|e| {
                    DialError::Other(anyhow!("`{}` is not a TLS name: {e}", target.host))
                })?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
                .await
                .map_err(within("the TLS handshake"))?
                .map_err(|e| DialError::Other(anyhow!("TLS handshake failed: {e}")))?;
            let version = tls.get_ref().1.protocol_version().map(|v| format!("{v:?}"));
            opening.tls =
                Some(TlsFacts { ms: ms(started.elapsed()), version: version.unwrap_or_default() });
            MaybeTlsStream::Rustls(tls)
        }
    };

    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| DialError::Other(anyhow!("bad URL `{}`: {e}", target.url)))?;
    let headers = request.headers_mut();
    if offer.json {
        headers.insert("sec-websocket-protocol", "tether.v1.json".parse().expect("a header value"));
    }
    if offer.deflate {
        let value = "permessage-deflate; client_max_window_bits";
        headers.insert("sec-websocket-extensions", value.parse().expect("a header value"));
    }
    let started = Instant::now();
    let handshake = tokio_tungstenite::client_async_with_config(request, stream, None);
    let (ws, response) = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => return Err(late("the HTTP upgrade")),
        Ok(Ok(done)) => done,
        Ok(Err(WsError::Http(response))) => {
            let status = response.status().as_u16();
            let intermediaries = intermediaries(response.headers());
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).chars().take(300).collect())
                .unwrap_or_default();
            return Err(DialError::Refused { status, body, intermediaries });
        }
        Ok(Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        )))) => return Err(DialError::NoSubprotocol),
        Ok(Err(e)) => return Err(DialError::Other(anyhow!("the WebSocket upgrade failed: {e}"))),
    };
    let h = response.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    opening.upgrade = Upgrade {
        ms: ms(started.elapsed()),
        status: response.status().as_u16(),
        upgrade_header: text("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        subprotocol: text("sec-websocket-protocol"),
        extensions: text("sec-websocket-extensions"),
        intermediaries: intermediaries(h),
    };
    Ok((ws, opening))
}

/// Headers that reveal proxies, load balancers and CDNs, with the product each names.
pub fn intermediaries(headers: &HeaderMap) -> Vec<Intermediary> {
    const TELLING: &[(&str, Option<&str>)] = &[
        ("server", None),
        ("via", None),
        ("x-cache", None),
        ("x-served-by", Some("fastly")),
        ("cf-ray", Some("cloudflare")),
        ("x-amz-cf-id", Some("cloudfront")),
        ("x-amzn-trace-id", Some("aws elb")),
        ("x-azure-ref", Some("azure front door")),
        ("fly-request-id", Some("fly.io")),
        ("x-vercel-id", Some("vercel")),
        ("x-envoy-upstream-service-time", Some("envoy")),
        ("x-kong-proxy-latency", Some("kong")),
        ("x-haproxy-server-state", Some("haproxy")),
    ];
    let mut found = Vec::new();
    for (name, product) in TELLING {
        for value in headers.get_all(*name) {
            let value = value.to_str().unwrap_or("(not text)").to_owned();
            let product = product.map(str::to_owned).or_else(|| known_product(&value));
            found.push(Intermediary { header: (*name).to_owned(), value, product });
        }
    }
    found
}

fn known_product(value: &str) -> Option<String> {
    let v = value.to_ascii_lowercase();
    ["nginx", "envoy", "haproxy", "cloudflare", "apache", "caddy", "traefik", "varnish", "awselb"]
        .into_iter()
        .find(|p| v.contains(p))
        .map(str::to_owned)
}
