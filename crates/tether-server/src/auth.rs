//! JWT authentication (the `jsonwebtoken` crate): a token's signature and expiry are checked
//! once, on connect, and what it allows is kept as a [`Grant`] for the connection's life.
//!
//! Claims:
//! - `exp` (required): when the token expires, in seconds since the Unix epoch. A connection
//!   whose token expires is closed with 4002, so that its client fetches a fresh token and
//!   reconnects.
//! - `sub` (optional): the user id, logged with the connection.
//! - `subscribe`, `publish` (optional): channel patterns (`*` wildcards) the user may subscribe
//!   and publish to. Absent: none. Channels listed in `anonymous_channels` need no token.

use serde::Deserialize;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tether_core::channel::{self, ChannelPattern};

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// What a verified token allows.
#[derive(Debug)]
pub struct Grant {
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    subscribe: Vec<ChannelPattern>,
    publish: Vec<ChannelPattern>,
}

impl Grant {
    pub fn may_subscribe(&self, channel: &str) -> bool {
        channel::any_matches(&self.subscribe, channel)
    }

    pub fn may_publish(&self, channel: &str) -> bool {
        channel::any_matches(&self.publish, channel)
    }

    pub fn expired(&self) -> bool {
        unix_now() >= self.exp
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Why a token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid(String),
}

/// Checks tokens against the configured key.
pub struct Verifier {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

impl Verifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &str) -> Self {
        Self::with(
            jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            jsonwebtoken::Algorithm::HS256,
        )
    }

    /// RS256 or ES256 with the public key in this PEM file (the key's type picks the algorithm).
    pub fn public_key_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the JWT public key {}: {e}", path.display()))?;
        if let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::with(key, jsonwebtoken::Algorithm::RS256));
        }
        if let Ok(key) = jsonwebtoken::DecodingKey::from_ec_pem(&pem) {
            return Ok(Self::with(key, jsonwebtoken::Algorithm::ES256));
        }
        Err(format!("{} is not a PEM RSA (RS256) or EC P-256 (ES256) public key", path.display()))
    }

    fn with(key: jsonwebtoken::DecodingKey, algorithm: jsonwebtoken::Algorithm) -> Self {
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        // A few seconds for clocks that disagree; expiry is otherwise exact.
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        Verifier { key, validation }
    }

    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            },
        )?;
        let c = data.claims;
        let patterns = |list: Vec<String>| list.into_iter().map(ChannelPattern::new).collect();
        Ok(Grant {
            sub: c.sub,
            exp: c.exp,
            subscribe: patterns(c.subscribe),
            publish: patterns(c.publish),
        })
    }
}

/// May a connection holding `grant` use `channel`?
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// The token does not cover this channel (the connection stays).
    Forbidden,
    /// No token, and the channel is not anonymous.
    TokenRequired,
    /// The token has expired since the connection was authenticated.
    TokenExpired,
}

/// The access rule: without a verifier everything is allowed; anonymous channels need no
/// token; otherwise the grant must be current and cover the channel.
pub fn access(
    verifier: Option<&Verifier>,
    anonymous: &[ChannelPattern],
    grant: Option<&Grant>,
    channel: &str,
    publish: bool,
) -> Access {
    if verifier.is_none() || (!publish && channel::any_matches(anonymous, channel)) {
        return Access::Allowed;
    }
    let Some(grant) = grant else { return Access::TokenRequired };
    if grant.expired() {
        return Access::TokenExpired;
    }
    let allowed = if publish { grant.may_publish(channel) } else { grant.may_subscribe(channel) };
    if allowed {
        Access::Allowed
    } else {
        Access::Forbidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn hs256_tokens_and_their_channels() {
        let v = Verifier::hs256("s3cret-s3cret-s3cret");
        let exp = unix_now() + 60;
        let good = token(
            "s3cret-s3cret-s3cret",
            serde_json::json!({"sub": "ada", "exp": exp, "subscribe": ["news:*"], "publish": ["chat:ada"]}),
        );
        let grant = v.verify(&good).unwrap();
        assert_eq!(grant.sub.as_deref(), Some("ada"));
        let anon = [ChannelPattern::new("public:*")];
        let a = |ch: &str, publish| access(Some(&v), &anon, Some(&grant), ch, publish);
        assert_eq!(a("news:eu", false), Access::Allowed);
        assert_eq!(a("admin", false), Access::Forbidden);
        assert_eq!(a("chat:ada", true), Access::Allowed);
        assert_eq!(a("news:eu", true), Access::Forbidden);
        assert_eq!(a("public:lobby", false), Access::Allowed);
        assert_eq!(access(Some(&v), &anon, None, "news:eu", false), Access::TokenRequired);
        assert_eq!(access(None, &[], None, "anything", true), Access::Allowed);

        let expired = token("s3cret-s3cret-s3cret", serde_json::json!({"exp": unix_now() - 100}));
        assert_eq!(v.verify(&expired).unwrap_err(), TokenError::Expired);
        let forged = token("another-secret-entirely", serde_json::json!({"exp": exp}));
        assert!(matches!(v.verify(&forged), Err(TokenError::Invalid(_))));
        let no_exp = token("s3cret-s3cret-s3cret", serde_json::json!({"sub": "x"}));
        assert!(matches!(v.verify(&no_exp), Err(TokenError::Invalid(_))));
        assert!(matches!(v.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
    }
}
