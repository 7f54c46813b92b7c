//! DNS rebinding: a page on `evil.example` whose name the attacker re-points at 127.0.0.1 can
//! reach a server on loopback as if it were its own site — read `/metrics`, publish, open a
//! WebSocket whose `Origin` matches its `Host`. The browser still sends the attacker's name in
//! `Host`, so a server that listens only on loopback accepts only loopback names there (and
//! IP literals, which no rebinding can produce), plus whatever `allowed_hosts` lists.

use crate::metrics::ReasonLabels;
use crate::node::Node;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::net::IpAddr;
use std::sync::Arc;

/// Whether `host` (a `Host` header: name or IP literal, maybe a port) may be served. `enforce`
/// is true on a loopback-only listener; elsewhere only a non-empty `allowed` list restricts.
pub fn check(host: Option<&str>, enforce: bool, allowed: &[String]) -> Result<(), String> {
    if allowed.iter().any(|h| h == "*") || (!enforce && allowed.is_empty()) {
        return Ok(());
    }
    // HTTP/1.0 clients may omit it; browsers always send it.
    let Some(host) = host else { return Ok(()) };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(addr, _)| addr),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let loopback_name = name == "localhost" || name.ends_with(".localhost");
    if name.parse::<IpAddr>().is_ok()
        || loopback_name
        || allowed.iter().any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&name))
    {
        return Ok(());
    }
    Err(format!(
        "Host `{host}` is not served here: this server listens on loopback and answers only \
         loopback names (a DNS-rebinding guard); add the name to allowed_hosts \
         (--allowed-host) if it is yours"
    ))
}

/// The middleware in front of every route.
pub(crate) async fn guard(State(shared): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    match check(host, shared.loopback_only(), &shared.config.allowed_hosts) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let upgrade = req.headers().contains_key(header::UPGRADE);
            let family = if upgrade {
                &shared.metrics.handshakes_refused
            } else {
                &shared.metrics.api_refused
            };
            family.get_or_create(&ReasonLabels { reason: "host" }).inc();
            crate::api::json_error(StatusCode::MISDIRECTED_REQUEST, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listeners_answer_loopback_names_only() {
        let ok = |h| check(Some(h), true, &[]).is_ok();
        for good in [
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:3000",
            "127.0.0.1:8080",
            "[::1]:80",
            "10.0.0.5",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in
            ["evil.example:8080", "evil.example", "localhost.evil.example", "127.0.0.1.nip.io"]
        {
            let e = check(Some(bad), true, &[]).unwrap_err();
            assert!(e.contains("allowed_hosts"), "{e}");
        }
        assert!(check(None, true, &[]).is_ok());
        let allowed = ["dev.example".to_owned()];
        assert!(check(Some("dev.example:8080"), true, &allowed).is_ok());
        assert!(check(Some("evil.example"), true, &allowed).is_err());
        assert!(check(Some("evil.example"), true, &["*".to_owned()]).is_ok());
    }

    #[test]
    fn other_listeners_restrict_only_when_asked() {
        assert!(check(Some("anything.example"), false, &[]).is_ok());
        let allowed = ["gw.example.com".to_owned()];
        assert!(check(Some("gw.example.com"), false, &allowed).is_ok());
        assert!(check(Some("other.example.com"), false, &allowed).is_err());
    }
}
