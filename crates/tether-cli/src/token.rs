//! `tether token`: make a JWT for a Tether server, for development and tests (production tokens
//! come from your application's own login). Signing is the `jsonwebtoken` crate's.

use crate::units;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// HS256 secret (the server's --jwt-secret)
    #[arg(long, env = "TETHER_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Or a PEM private key: RSA signs RS256, EC P-256 signs ES256 (the server's --jwt-public-key pairs with it)
    #[arg(long, conflicts_with = "secret")]
    private_key: Option<std::path::PathBuf>,
    /// User id (the `sub` claim)
    #[arg(long)]
    sub: Option<String>,
    /// Channel pattern the token may subscribe to, e.g. 'news:*' (repeatable)
    #[arg(long = "subscribe")]
    subscribe: Vec<String>,
    /// Channel pattern the token may publish to (repeatable)
    #[arg(long = "publish")]
    publish: Vec<String>,
    /// Channel the server subscribes the connection to itself (the `channels` claim) (repeatable)
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Lifetime from now (negative lifetimes are not possible: use --ttl 0s for an expired one)
    #[arg(long, default_value = "1h", value_parser = units::duration)]
    ttl: Duration,
    /// Audience (the `aud` claim; the server's --jwt-audience) (repeatable)
    #[arg(long)]
    aud: Vec<String>,
    /// Issuer (the `iss` claim; the server's --jwt-issuer)
    #[arg(long)]
    iss: Option<String>,
    /// Not valid before this long from now (the `nbf` claim), e.g. 10m
    #[arg(long, value_parser = units::duration)]
    nbf: Option<Duration>,
}

pub fn run(args: TokenArgs) -> Result<ExitCode> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?;
    let mut claims = serde_json::json!({
        "exp": (now + args.ttl).as_secs(),
        "subscribe": args.subscribe,
        "publish": args.publish,
    });
    if let Some(sub) = &args.sub {
        claims["sub"] = sub.clone().into();
    }
    if !args.channels.is_empty() {
        claims["channels"] = args.channels.clone().into();
    }
    match args.aud.as_slice() {
        [] => {}
        [one] => claims["aud"] = one.clone().into(),
        many => claims["aud"] = many.into(),
    }
    if let Some(iss) = &args.iss {
        claims["iss"] = iss.clone().into();
    }
    if let Some(nbf) = args.nbf {
        claims["nbf"] = (now + nbf).as_secs().into();
    }
    let (header, key) = match (&args.secret, &args.private_key) {
        (Some(secret), _) => (
            jsonwebtoken::Header::default(),
            jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        ),
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the private key {}", path.display()))?;
            if let Ok(key) = jsonwebtoken::EncodingKey::from_rsa_pem(&pem) {
                (jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), key)
            } else if let Ok(key) = jsonwebtoken::EncodingKey::from_ec_pem(&pem) {
                (jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), key)
            } else {
                bail!("{} is not a PEM RSA or EC P-256 private key (PKCS#8)", path.display());
            }
        }
        (None, None) => bail!("give --secret (HS256) or --private-key (RS256/ES256)"),
    };
    let token = jsonwebtoken::encode(&header, &claims, &key).context("cannot sign the token")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
