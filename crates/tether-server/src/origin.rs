//! Which browser origins may open a WebSocket here. Browsers attach the site's cookies to a
//! cross-site WebSocket handshake and do not apply CORS to it, so without this check any page
//! could act as its visitor on this server (cross-site WebSocket hijacking). Non-browser
//! clients send no `Origin` and are not affected.

use url::Url;

/// One entry of `allowed_origins`: `*`, or `scheme://host[:port]` where host may be
/// `*.domain` (any subdomain of `domain`, not `domain` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    Site { scheme: String, host: HostPattern, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`: the suffix `.example.com`.
    Subdomains(String),
}

impl OriginPattern {
    pub fn parse(text: &str) -> Option<OriginPattern> {
        let text = text.trim();
        if text == "*" {
            return Some(OriginPattern::Any);
        }
        let (scheme, rest) = text.split_once("://")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, wildcard) = match rest.strip_prefix("*.") {
            Some(domain) => (domain, true),
            None => (rest, false),
        };
        // Let the URL parser normalise the host and the port (and refuse what is not one).
        let url = Url::parse(&format!("{scheme}://{host}")).ok()?;
        if url.path() != "/" || url.query().is_some() || url.username() != "" {
            return None;
        }
        let host = url.host_str()?.to_ascii_lowercase();
        let port = url.port_or_known_default()?;
        let host = if wildcard {
            HostPattern::Subdomains(format!(".{host}"))
        } else {
            HostPattern::Exact(host)
        };
        Some(OriginPattern::Site { scheme: url.scheme().to_owned(), host, port })
    }

    fn matches(&self, origin: &Url) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Site { scheme, host, port } => {
                let (Some(h), Some(p)) = (origin.host_str(), origin.port_or_known_default()) else {
                    return false;
                };
                let h = h.to_ascii_lowercase();
                let host_ok = match host {
                    HostPattern::Exact(e) => h == *e,
                    HostPattern::Subdomains(suffix) => {
                        h.len() > suffix.len() && h.ends_with(suffix)
                    }
                };
                origin.scheme() == scheme && host_ok && p == *port
            }
        }
    }
}

/// Whether a handshake with this `Origin` may proceed. Allowed: no `Origin` at all, the
/// server's own host (the request's `Host`, same host and port), localhost and loopback
/// addresses, and whatever `patterns` allow. `Err` says why not, for the refusal.
pub fn check(
    origin: Option<&str>,
    host: Option<&str>,
    patterns: &[OriginPattern],
) -> Result<(), String> {
    let Some(origin) = origin else { return Ok(()) };
    let url = match Url::parse(origin) {
        Ok(u) if u.host_str().is_some() => u,
        // `null` (sandboxed frames, file: pages) and anything unparsable.
        _ => return Err(format!("Origin `{origin}` is not an allowed origin")),
    };
    let origin_host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if matches!(origin_host.as_str(), "localhost" | "127.0.0.1" | "[::1]") {
        return Ok(());
    }
    if let (Some(host), Some(port)) = (host, url.port_or_known_default()) {
        // `Host` is host[:port]; without a port it is the default port of the origin's scheme.
        if let Ok(own) = Url::parse(&format!("{}://{host}", url.scheme())) {
            if own.host_str().map(str::to_ascii_lowercase).as_deref() == Some(origin_host.as_str())
                && own.port_or_known_default() == Some(port)
            {
                return Ok(());
            }
        }
    }
    if patterns.iter().any(|p| p.matches(&url)) {
        return Ok(());
    }
    Err(format!(
        "Origin `{origin}` is not allowed to open a WebSocket here; add it to allowed_origins \
         (--allowed-origin) if this page is yours"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<OriginPattern> {
        list.iter().map(|p| OriginPattern::parse(p).expect(p)).collect()
    }

    #[test]
    fn no_origin_own_host_and_localhost_are_allowed_by_default() {
        assert!(check(None, Some("gw.example.com"), &[]).is_ok());
        assert!(check(Some("https://gw.example.com"), Some("gw.example.com"), &[]).is_ok());
        assert!(check(Some("http://gw.example.com:8080"), Some("gw.example.com:8080"), &[]).is_ok());
        assert!(check(Some("http://localhost:5173"), Some("gw.example.com"), &[]).is_ok());
        assert!(check(Some("http://127.0.0.1:3000"), Some("gw.example.com"), &[]).is_ok());
        assert!(check(Some("http://[::1]:3000"), Some("gw.example.com"), &[]).is_ok());
    }

    #[test]
    fn other_sites_ports_and_null_are_refused_by_default() {
        let e = check(Some("https://evil.example"), Some("gw.example.com"), &[]).unwrap_err();
        assert!(e.contains("evil.example") && e.contains("allowed_origins"), "{e}");
        assert!(
            check(Some("http://gw.example.com:9999"), Some("gw.example.com:8080"), &[]).is_err()
        );
        assert!(check(Some("null"), Some("gw.example.com"), &[]).is_err());
        assert!(check(Some("https://gw.example.com.evil.example"), Some("gw.example.com"), &[])
            .is_err());
    }

    #[test]
    fn exact_and_wildcard_patterns() {
        let p = patterns(&["https://app.example.com", "https://*.example.org"]);
        let ok = |o: &str| check(Some(o), Some("gw.internal"), &p).is_ok();
        assert!(ok("https://app.example.com"));
        assert!(ok("https://APP.example.com:443"));
        assert!(!ok("http://app.example.com"), "scheme must match");
        assert!(!ok("https://app.example.com:8443"), "port must match");
        assert!(ok("https://a.example.org"));
        assert!(ok("https://a.b.example.org"));
        assert!(!ok("https://example.org"), "a wildcard means subdomains only");
        assert!(!ok("https://badexample.org"));
        assert!(check(Some("https://anything.test"), None, &patterns(&["*"])).is_ok());
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["example.com", "https://", "https://a.com/path", "https://u@a.com", "*.a.com"] {
            assert_eq!(OriginPattern::parse(bad), None, "{bad}");
        }
    }
}
