//! The JWT claims an operator needs (issue 17): `aud` and `iss` checked against `jwt_audience` and
//! `jwt_issuer`, `nbf` honoured, one leeway for the check on connect and for expiry during the
//! connection, expiry of an idle (parked) connection at its time rather than at its next
//! heartbeat, a `?token=` refused for expiry saying so, and algorithm confusion refused.

mod common;
use common::json_ws::*;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite;

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A token made by `tether token` with `args`.
fn tether_token(args: &[&str]) -> String {
    let out = Command::new(BIN).arg("token").args(args).output().unwrap();
    assert!(out.status.success(), "tether token: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Connect with `token`; the reply (accepted) or the disconnect advice and close code (refused).
fn connect(server: &Server, token: &str) -> Result<(JsonWs, Value), (Value, u16)> {
    let mut ws = json_client(server, "");
    send(&mut ws, json!({"id": 1, "cmd": "connect", "token": token}));
    let first = next_json(&mut ws);
    if first["type"] == "reply" && first["error"].is_null() {
        return Ok((ws, first));
    }
    assert_eq!(first["type"], "disconnect", "{first}");
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => return Err((first, u16::from(f.code))),
            Ok(_) => {}
            Err(e) => panic!("no close frame after {first}: {e}"),
        }
    }
}

/// A refusal with close 4502 whose reason mentions `word`.
fn refused(server: &Server, token: &str, word: &str) {
    match connect(server, token) {
        Ok((_, reply)) => panic!("accepted ({reply}); expected a refusal naming {word}"),
        Err((advice, code)) => {
            assert_eq!(code, 4502, "{advice}");
            assert_eq!(advice["reconnect"], false, "{advice}");
            let reason = advice["reason"].as_str().unwrap();
            assert!(reason.contains(word), "the reason should name {word}: {reason}");
        }
    }
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    let iss = "https://idp.example";
    let server =
        Server::start(&["--jwt-secret", SECRET, "--jwt-audience", "tether", "--jwt-issuer", iss]);
    // The right `aud` and `iss` (an identity provider's token, here minted by `tether token`).
    let good = tether_token(&[
        "--secret",
        SECRET,
        "--aud",
        "tether",
        "--iss",
        iss,
        "--subscribe",
        "news:*",
    ]);
    let (mut ws, _) = connect(&server, &good).expect("a token with the right aud and iss");
    let reply = call(&mut ws, json!({"id": 2, "cmd": "subscribe", "channel": "news:eu"}));
    assert!(reply["error"].is_null(), "{reply}");
    // An audience list holding ours is accepted too.
    let exp = now() + 600;
    let listed =
        hs256(&json!({"exp": exp, "aud": ["billing", "tether"], "iss": iss}), SECRET.as_bytes());
    assert!(connect(&server, &listed).is_ok(), "aud as a list that holds ours");

    let wrong_aud = json!({"exp": exp, "aud": "billing", "iss": iss});
    refused(&server, &hs256(&wrong_aud, SECRET.as_bytes()), "aud");
    let no_aud = json!({"exp": exp, "iss": iss});
    refused(&server, &hs256(&no_aud, SECRET.as_bytes()), "aud");
    let wrong_iss = json!({"exp": exp, "aud": "tether", "iss": "https://evil.example"});
    refused(&server, &hs256(&wrong_iss, SECRET.as_bytes()), "iss");
    let no_iss = json!({"exp": exp, "aud": "tether"});
    refused(&server, &hs256(&no_iss, SECRET.as_bytes()), "iss");
    assert!(wait_until(Duration::from_secs(5), || server.closed("4502", "server") == 4.0));
}

#[test]
fn a_token_naming_an_audience_the_server_has_not_configured_says_what_to_set() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let token = hs256(&json!({"exp": now() + 600, "aud": "tether"}), SECRET.as_bytes());
    refused(&server, &token, "jwt_audience");
}

#[test]
fn a_token_not_valid_yet_is_refused() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let later = tether_token(&["--secret", SECRET, "--nbf", "10m", "--subscribe", "news:*"]);
    refused(&server, &later, "nbf");
    // Within the leeway (5 s by default), a clock a little ahead of ours is tolerated.
    let soon = hs256(&json!({"exp": now() + 600, "nbf": now() + 2}), SECRET.as_bytes());
    assert!(connect(&server, &soon).is_ok(), "nbf 2 s ahead, inside the leeway");
}

#[test]
fn alg_none_and_hs256_signed_with_the_rsa_public_key_are_refused() {
    let public = fixture("test-only-rsa-public.pem");
    let server = Server::start(&["--jwt-public-key", public.to_str().unwrap()]);
    let claims = json!({"exp": now() + 600, "subscribe": ["*"]});
    // The genuine article: RS256 signed with the private key.
    let private = std::fs::read(fixture("test-only-rsa-private.pem")).unwrap();
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    assert!(connect(&server, &rs256).is_ok(), "RS256 with the key pair's private half");
    // `alg: none`, no signature.
    let b64 = |v: &Value| base64url(v.to_string().as_bytes());
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims));
    refused(&server, &none, "token not accepted");
    // HS256 with the server's public key (which anyone may have) as the HMAC secret.
    let confused = hs256(&claims, &std::fs::read(&public).unwrap());
    refused(&server, &confused, "algorithm");
}

#[test]
fn a_token_accepted_inside_the_leeway_is_not_closed_a_moment_later() {
    let server = Server::start(&["--jwt-secret", SECRET, "--ping-interval", "100ms"]);
    // Expired 2 s ago: inside the default 5 s leeway, so accepted...
    let exp = now() - 2;
    let token = hs256(&json!({"exp": exp, "subscribe": ["news:*"]}), SECRET.as_bytes());
    let (mut ws, _) = connect(&server, &token).expect("accepted inside the leeway");
    // ...and usable, not closed with 4002 at the next pass of the connection's loop.
    let reply = call(&mut ws, json!({"id": 2, "cmd": "subscribe", "channel": "news:eu"}));
    assert!(reply["error"].is_null() && reply["type"] == "reply", "{reply}");
    // The same leeway ends it: 4002 at exp + 5 s.
    let (advice, code) = advice_and_close(&mut ws);
    let at = now_f64();
    assert_eq!(code, 4002, "{advice}");
    let due = (exp + 5) as f64;
    assert!(at >= due - 0.05, "closed at {at:.2}, before exp + leeway ({due})");
}

#[test]
fn an_idle_connection_is_closed_when_its_token_expires_not_at_its_next_heartbeat() {
    // A 20 s heartbeat: the connection parks within a second, and its next heartbeat is 20 s away.
    let server = Server::start(&["--jwt-secret", SECRET, "--ping-interval", "20s"]);
    // (Far enough ahead for the connection to park first: it parks after a second idle.)
    let exp = now() + 3;
    let token = hs256(&json!({"exp": exp}), SECRET.as_bytes());
    let (mut ws, _) = connect(&server, &token).expect("a valid token");
    assert!(
        wait_until(Duration::from_secs(5), || server.metric("tether_connections_parked") == 1.0),
        "the connection should park: {}",
        server.metrics()
    );
    tcp(&ws).set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (advice, code) = advice_and_close(&mut ws);
    let at = now_f64();
    assert_eq!(code, 4002, "{advice}");
    let due = (exp + 5) as f64; // the default 5 s leeway
    assert!(
        at >= due - 0.05 && at <= due + 1.0,
        "closed at {at:.2}; due at exp + leeway = {due} (the parked connection's tick is 500 ms)"
    );
}

#[test]
fn a_raw_token_refused_for_expiry_says_token_expired() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let token = |exp: u64| hs256(&json!({"exp": exp, "subscribe": ["news:*"]}), SECRET.as_bytes());
    let handshake = |query: String| match tungstenite::connect(server.ws_url(&query)) {
        Ok(_) => (101, Value::Null),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            (resp.status().as_u16(), serde_json::from_slice(body).unwrap_or(Value::Null))
        }
        Err(e) => panic!("{e}"),
    };
    // Inside the leeway the token is good for its channel.
    let (status, body) = handshake(format!("?channel=news:eu&token={}", token(now() - 2)));
    assert_eq!(status, 101, "{body}");
    // Beyond it: 401 "token expired", never "needs a token".
    let (status, body) = handshake(format!("?channel=news:eu&token={}", token(now() - 60)));
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("token expired"), "{body}");
    assert_eq!(server.metric("tether_handshakes_refused_total{reason=\"token_expired\"}"), 1.0);
    assert_eq!(server.metric("tether_handshakes_refused_total{reason=\"token_required\"}"), 0.0);
}

/// Base64url without padding (RFC 7515), for a hand-made token.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
