//! Which address a request comes from. Behind a load balancer every client shares the
//! balancer's address, and per-address limits would then limit everyone at once; the
//! balancer names the client in `Forwarded` (RFC 7239) or `X-Forwarded-For`. Those headers are
//! believed only from `trusted_proxies`: anyone else could name any address they like.

use axum::http::{header, HeaderMap};
use ipnet::IpNet;
use std::net::IpAddr;

/// The client's address: `peer` itself, or, when `peer` is a trusted proxy, the address the
/// forwarding header names — the rightmost one that is not itself a trusted proxy (each proxy
/// appends the address it received from, so entries to the left of an untrusted one may be
/// made up by the client).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain = match forwarded_for(headers) {
        Some(chain) => chain,
        None => x_forwarded_for(headers),
    };
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            // An obfuscated or unknown hop: the proxy to its right is as far as we can see.
            None => return client,
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    return client;
                }
            }
        }
    }
    client
}

/// The `for=` addresses of every `Forwarded` element, in order; `None` when there is no
/// `Forwarded` header. An entry is `None` when it is not an IP address (`unknown`, `_hidden`).
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut values = headers.get_all(header::FORWARDED).iter().peekable();
    values.peek()?;
    let mut out = Vec::new();
    for value in values {
        let Ok(text) = value.to_str() else {
            out.push(None);
            continue;
        };
        for element in text.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim().eq_ignore_ascii_case("for").then(|| value.trim())
            });
            if let Some(node) = node {
                out.push(parse_node(node.trim_matches('"')));
            }
        }
    }
    Some(out)
}

/// `X-Forwarded-For: client, proxy1, proxy2`.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|node| parse_node(node.trim()))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn untrusted_peers_are_who_they_are() {
        let h = headers(&[("x-forwarded-for", "203.0.113.5")]);
        assert_eq!(client_address(ip("198.51.100.7"), &h, &[]), ip("198.51.100.7"));
        let lb: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_address(ip("198.51.100.7"), &h, &lb), ip("198.51.100.7"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let lb: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = ip("10.1.2.3");
        let h = headers(&[("x-forwarded-for", "203.0.113.5")]);
        assert_eq!(client_address(peer, &h, &lb), ip("203.0.113.5"));
        // A client that sends its own header cannot pick its address: the rightmost untrusted
        // entry is the one the proxy saw.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.5, 10.9.9.9")]);
        assert_eq!(client_address(peer, &h, &lb), ip("203.0.113.5"));
        let h = headers(&[("forwarded", r#"for=1.2.3.4, for="[2001:db8::7]:4711";proto=https"#)]);
        assert_eq!(client_address(peer, &h, &lb), ip("2001:db8::7"));
        let h = headers(&[("forwarded", "for=192.0.2.60:80"), ("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(client_address(peer, &h, &lb), ip("192.0.2.60"), "Forwarded wins");
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_address(peer, &h, &lb), peer, "an unknown hop: the proxy is all we know");
        assert_eq!(client_address(peer, &HeaderMap::new(), &lb), peer, "no header");
    }
}
