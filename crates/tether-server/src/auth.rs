//! JWT authentication (the `jsonwebtoken` crate): a token's signature and claims are checked
//! once, on connect, and what it allows is kept as a [`Grant`] for the connection's life.
//!
//! Claims:
//! - `exp` (required): when the token expires, in seconds since the Unix epoch. A connection
//!   whose token expires is closed with 4002 at `exp` plus the leeway (also while it is idle),
//!   so that its client fetches a fresh token and reconnects.
//! - `nbf` (optional): not valid before this time.
//! - `aud`: with `jwt_audience` set, required and one of those; without it, a token that names an
//!   audience is refused (it was made for someone, and this server does not know it is for it).
//! - `iss`: with `jwt_issuer` set, required and one of those.
//! - `sub` (optional): the user id, logged with the connection.
//! - `channels` (optional): channel names the server subscribes the connection to itself when it
//!   authenticates (server-side subscriptions, with recovery through `connect`'s `subs`),
//!   beside the user's own channel (`user_channel`).
//! - `subscribe`, `publish` (optional): channel patterns (`*` wildcards) the user may subscribe
//!   and publish to. Absent: none. Channels whose `[[channel]]` block sets `anonymous` (or listed in
//!   `anonymous_channels`) need no token to subscribe.
//!
//! One leeway (`jwt_leeway`) serves `exp` and `nbf` on connect and the expiry during the
//! connection, so a token accepted inside it is not closed a moment later. Keys are a shared
//! secret (HS256) or a PEM public key (RS256/ES256); the algorithm is the key's, never the
//! token's header's, so `alg: none` and an HS256 token signed with the public key are refused.
//! JWKS URLs are not supported (fetching and rotating keys needs an HTTPS client and a cache):
//! configure the identity provider's public key as a PEM file.

use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
    #[serde(default)]
    channels: Vec<String>,
    /// Shown to the channel's other subscribers in presence.
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

/// What a verified token allows.
#[derive(Debug)]
pub struct Grant {
    pub sub: Option<String>,
    /// The `info` claim, verbatim: what presence shows of this connection.
    pub info: Option<std::sync::Arc<serde_json::value::RawValue>>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The channels the server subscribes the connection to when it authenticates: the user's
    /// own (`user_channel`), then the `channels` claim's, without repeats.
    pub server_channels: Vec<String>,
    /// When the connection must end: `exp` plus the leeway.
    ends: SystemTime,
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

    /// Past `exp` plus the leeway: the connection must end (4002).
    pub fn expired(&self) -> bool {
        SystemTime::now() >= self.ends
    }

    /// How long until [`Grant::expired`] (zero once it is).
    pub fn remaining(&self) -> Duration {
        self.ends.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

/// Why a token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    /// Not a token this server accepts; the text says why, for the close reason.
    Invalid(String),
}

/// What a token must satisfy besides its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRules {
    /// Accepted `aud` values (see the module docs for an empty list).
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: not checked.
    pub issuer: Vec<String>,
    /// Clock skew tolerated for `exp` and `nbf`, whole seconds.
    pub leeway: Duration,
    /// `user_channel`: the personal channel of a token's `sub` (`{sub}` stands for it).
    pub user_channel: Option<String>,
}

impl Default for ClaimRules {
    fn default() -> Self {
        ClaimRules {
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::from_secs(5),
            user_channel: None,
        }
    }
}

/// The user's channel, then the claim's, once each (what the connection may not subscribe to
/// is dropped when it subscribes: a bad name, over `max_subscriptions`).
fn server_channels(rules: &ClaimRules, sub: Option<&str>, claim: Vec<String>) -> Vec<String> {
    let own = rules.user_channel.as_deref().zip(sub).map(|(t, sub)| t.replace("{sub}", sub));
    let mut out: Vec<String> = Vec::with_capacity(claim.len() + 1);
    for channel in own.into_iter().chain(claim) {
        if !out.contains(&channel) {
            out.push(channel);
        }
    }
    out
}

/// Checks tokens against the configured key.
pub struct Verifier {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    rules: ClaimRules,
}

impl Verifier {
    /// The verifier `config` asks for: from `jwt_secret` or `jwt_public_key`, with the claim
    /// settings; `None` when JWT is off.
    pub fn from_config(config: &crate::config::GatewayConfig) -> Result<Option<Self>, String> {
        let rules = ClaimRules {
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway: config.jwt_leeway,
            user_channel: config.user_channel.clone(),
        };
        match (&config.jwt_secret, &config.jwt_public_key) {
            (Some(secret), _) => Ok(Some(Self::hs256(secret, rules))),
            (None, Some(path)) => Self::public_key_file(path, rules).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// HS256 with a shared secret.
    pub fn hs256(secret: &str, rules: ClaimRules) -> Self {
        Self::with(
            jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            jsonwebtoken::Algorithm::HS256,
            rules,
        )
    }

    /// RS256 or ES256 with the public key in this PEM file (the key's type picks the algorithm).
    pub fn public_key_file(path: &Path, rules: ClaimRules) -> Result<Self, String> {
        use jsonwebtoken::{Algorithm, DecodingKey};
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the JWT public key {}: {e}", path.display()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::with(key, Algorithm::RS256, rules));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Self::with(key, Algorithm::ES256, rules));
        }
        Err(format!("{} is not a PEM RSA (RS256) or EC P-256 (ES256) public key", path.display()))
    }

    fn with(
        key: jsonwebtoken::DecodingKey,
        algorithm: jsonwebtoken::Algorithm,
        rules: ClaimRules,
    ) -> Self {
        // Only the key's algorithm: the token's header does not choose.
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.leeway = rules.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if !rules.audience.is_empty() {
            validation.set_audience(&rules.audience);
            required.push("aud");
        }
        // (Without an audience `validate_aud` stays on: a token that names one is refused.)
        if !rules.issuer.is_empty() {
            validation.set_issuer(&rules.issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Verifier { key, validation, rules }
    }

    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                kind => TokenError::Invalid(self.explain(kind, &e)),
            },
        )?;
        let c = data.claims;
        let patterns = |list: Vec<String>| list.into_iter().map(ChannelPattern::new).collect();
        let server_channels = server_channels(&self.rules, c.sub.as_deref(), c.channels);
        Ok(Grant {
            sub: c.sub,
            info: c.info.map(Into::into),
            exp: c.exp,
            server_channels,
            ends: UNIX_EPOCH + Duration::from_secs(c.exp) + self.rules.leeway,
            subscribe: patterns(c.subscribe),
            publish: patterns(c.publish),
        })
    }

    /// Why a token was refused, in words that say what to change.
    fn explain(&self, kind: &ErrorKind, error: &jsonwebtoken::errors::Error) -> String {
        match kind {
            ErrorKind::InvalidAudience if self.rules.audience.is_empty() => {
                "the token names an audience (`aud`) and this server has none: set jwt_audience \
                 to the audience your identity provider puts in its tokens"
                    .into()
            }
            ErrorKind::InvalidAudience => {
                "the token's audience (`aud`) is not one of this server's (jwt_audience)".into()
            }
            ErrorKind::InvalidIssuer => {
                "the token's issuer (`iss`) is not one this server trusts (jwt_issuer)".into()
            }
            ErrorKind::MissingRequiredClaim(claim) => {
                format!("the token has no `{claim}` claim, which this server requires")
            }
            ErrorKind::ImmatureSignature => {
                "the token is not valid yet: its `nbf` is ahead of this server's clock by more \
                 than jwt_leeway"
                    .into()
            }
            ErrorKind::InvalidAlgorithm => format!(
                "the token is signed with another algorithm than this server's key takes ({:?})",
                self.validation.algorithms.first().copied().unwrap_or_default()
            ),
            ErrorKind::InvalidSignature => "the signature does not match this server's key".into(),
            _ => error.to_string(),
        }
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

/// The access rule: without a verifier everything is allowed; subscribing to an `anonymous`
/// channel needs no token; otherwise the grant must be current and cover the channel.
pub fn access(
    verifier: Option<&Verifier>,
    anonymous: bool,
    grant: Option<&Grant>,
    channel: &str,
    publish: bool,
) -> Access {
    if verifier.is_none() || (!publish && anonymous) {
        return Access::Allowed;
    }
    let Some(grant) = grant else { return Access::TokenRequired };
    if grant.expired() {
        return Access::TokenExpired;
    }
    let allowed = if publish {
        grant.may_publish(channel)
    } else {
        grant.may_subscribe(channel) || grant.server_channels.iter().any(|c| c == channel)
    };
    if allowed {
        Access::Allowed
    } else {
        Access::Forbidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-s3cret-s3cret";

    fn unix_now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn invalid(v: &Verifier, claims: serde_json::Value) -> String {
        match v.verify(&token(SECRET, claims)) {
            Err(TokenError::Invalid(why)) => why,
            Err(TokenError::Expired) => panic!("refused as expired, not as invalid"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn hs256_tokens_and_their_channels() {
        let v = Verifier::hs256(SECRET, ClaimRules::default());
        let exp = unix_now() + 60;
        let good = token(
            SECRET,
            serde_json::json!({"sub": "ada", "exp": exp, "subscribe": ["news:*"], "publish": ["chat:ada"]}),
        );
        let grant = v.verify(&good).unwrap();
        assert_eq!(grant.sub.as_deref(), Some("ada"));
        let anon = |ch: &str| ch.starts_with("public:");
        let a = |ch: &str, publish| access(Some(&v), anon(ch), Some(&grant), ch, publish);
        assert_eq!(a("news:eu", false), Access::Allowed);
        assert_eq!(a("admin", false), Access::Forbidden);
        assert_eq!(a("chat:ada", true), Access::Allowed);
        assert_eq!(a("news:eu", true), Access::Forbidden);
        assert_eq!(a("public:lobby", false), Access::Allowed);
        assert_eq!(access(Some(&v), false, None, "news:eu", false), Access::TokenRequired);
        assert_eq!(access(None, false, None, "anything", true), Access::Allowed);

        let expired = token(SECRET, serde_json::json!({"exp": unix_now() - 100}));
        assert_eq!(v.verify(&expired).unwrap_err(), TokenError::Expired);
        let forged = token("another-secret-entirely", serde_json::json!({"exp": exp}));
        assert!(matches!(v.verify(&forged), Err(TokenError::Invalid(_))));
        let no_exp = token(SECRET, serde_json::json!({"sub": "x"}));
        assert!(matches!(v.verify(&no_exp), Err(TokenError::Invalid(_))));
        assert!(matches!(v.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn one_leeway_for_the_check_on_connect_and_for_the_expiry_after() {
        let v = Verifier::hs256(SECRET, ClaimRules::default()); // 5 s
        let exp = unix_now() - 2;
        let grant = v.verify(&token(SECRET, serde_json::json!({"exp": exp, "subscribe": ["*"]})));
        let grant = grant.expect("accepted inside the leeway");
        assert!(!grant.expired(), "accepted inside the leeway, so not expired either");
        assert_eq!(access(Some(&v), false, Some(&grant), "news", false), Access::Allowed);
        let left = grant.remaining();
        assert!(left > Duration::from_secs(1) && left <= Duration::from_secs(3), "{left:?}");

        let strict = ClaimRules { leeway: Duration::ZERO, ..ClaimRules::default() };
        let v = Verifier::hs256(SECRET, strict);
        let just_expired = token(SECRET, serde_json::json!({"exp": unix_now() - 1}));
        assert_eq!(v.verify(&just_expired).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn not_before_is_checked_with_the_leeway() {
        let v = Verifier::hs256(SECRET, ClaimRules::default());
        let exp = unix_now() + 600;
        let why = invalid(&v, serde_json::json!({"exp": exp, "nbf": unix_now() + 60}));
        assert!(why.contains("nbf"), "{why}");
        assert!(v
            .verify(&token(SECRET, serde_json::json!({"exp": exp, "nbf": unix_now() + 2})))
            .is_ok());
    }

    #[test]
    fn audience_and_issuer() {
        let exp = unix_now() + 600;
        let open = Verifier::hs256(SECRET, ClaimRules::default());
        let why = invalid(&open, serde_json::json!({"exp": exp, "aud": "tether"}));
        assert!(why.contains("set jwt_audience"), "{why}");
        assert!(open.verify(&token(SECRET, serde_json::json!({"exp": exp, "iss": "x"}))).is_ok());

        let rules = ClaimRules {
            audience: vec!["tether".into()],
            issuer: vec!["https://idp".into()],
            ..ClaimRules::default()
        };
        let v = Verifier::hs256(SECRET, rules);
        let ok = |claims| v.verify(&token(SECRET, claims)).is_ok();
        assert!(ok(serde_json::json!({"exp": exp, "aud": "tether", "iss": "https://idp"})));
        assert!(ok(serde_json::json!({"exp": exp, "aud": ["a", "tether"], "iss": "https://idp"})));
        for (claims, word) in [
            (serde_json::json!({"exp": exp, "aud": "billing", "iss": "https://idp"}), "`aud`"),
            (serde_json::json!({"exp": exp, "iss": "https://idp"}), "`aud`"),
            (serde_json::json!({"exp": exp, "aud": "tether", "iss": "https://evil"}), "`iss`"),
            (serde_json::json!({"exp": exp, "aud": "tether"}), "`iss`"),
        ] {
            let why = invalid(&v, claims.clone());
            assert!(why.contains(word), "{claims}: {why}");
        }
    }
}
