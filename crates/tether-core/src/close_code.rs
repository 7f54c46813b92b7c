//! The close-code catalogue. Close codes are API: the server sends them, the Rust client and
//! `tether.js` act on them, and `docs/protocol.md` prints this table. One table, one source.
//!
//! Tether's own codes live in two bands so that a client can act on a code it has never seen:
//! 4000–4499 are transient (reconnect with backoff), 4500–4999 are terminal (do not reconnect).
//! 1005, 1006 and 1015 are reported locally and never put on the wire (RFC 6455 §7.4.1).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A WebSocket close code (RFC 6455 §7.4) as a plain number with Tether's meaning attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CloseCode(pub u16);

/// Who ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initiator {
    /// The client started the closing handshake, or decided locally that the server was dead.
    Client,
    /// The server started the closing handshake, or decided locally that the client was dead.
    Server,
    /// Neither: the transport ended without a closing handshake (TCP reset or EOF, a proxy
    /// cutting the connection, a process killed). Always reported with code 1006.
    Network,
}

impl Initiator {
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Server => "server",
            Initiator::Network => "network",
        }
    }
}

impl fmt::Display for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client should do after a close with a given code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAdvice {
    /// Reconnect with the usual backoff.
    Reconnect,
    /// Reconnect, and prefer the server's `retry_after_ms` hint over the backoff when one came.
    ReconnectAfterHint,
    /// Do not reconnect: retrying cannot help (policy violation, auth). A server that wants a
    /// client gone for good says so with one of these codes or with `reconnect: false`; a plain
    /// 1000 from a server (many close idle or restarting connections so) is not enough.
    Stop,
}

/// Who may put a code on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Server,
    Client,
    Either,
    /// Reported by the local endpoint only; never sent in a close frame.
    LocalOnly,
}

/// One row of the catalogue.
#[derive(Clone, Copy, Debug)]
pub struct CodeInfo {
    pub code: CloseCode,
    pub name: &'static str,
    pub meaning: &'static str,
    pub sent_by: Sender,
    pub advice: RetryAdvice,
}

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    pub const TLS_HANDSHAKE: CloseCode = CloseCode(1015);
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4000);
    /// A slow consumer gets the standard "try again later" (1013), with a reason that says
    /// "slow consumer": third-party clients know the code, and reconnecting is right.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(1013);
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4002);
    pub const TOKEN_REQUIRED: CloseCode = CloseCode(4501);
    pub const TOKEN_INVALID: CloseCode = CloseCode(4502);

    /// The catalogue row for this code, or a synthesized row for codes outside it (by band).
    pub fn info(self) -> CodeInfo {
        if let Some(row) = CATALOGUE.iter().find(|r| r.code == self) {
            return *row;
        }
        let (name, advice) = match self.0 {
            4000..=4499 => ("transient", RetryAdvice::Reconnect),
            4500..=4999 => ("terminal", RetryAdvice::Stop),
            3000..=3999 => ("registered", RetryAdvice::Reconnect),
            _ => ("unknown", RetryAdvice::Reconnect),
        };
        CodeInfo {
            code: self,
            name,
            meaning: "not in Tether's catalogue; acted on by its band",
            sent_by: Sender::Either,
            advice,
        }
    }

    pub fn advice(self) -> RetryAdvice {
        self.info().advice
    }

    /// True for codes that must never appear in a close frame.
    pub fn is_local_only(self) -> bool {
        matches!(self.0, 1005 | 1006 | 1015) || self.0 < 1000 || (1016..3000).contains(&self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.info().name)
    }
}

impl From<u16> for CloseCode {
    fn from(v: u16) -> Self {
        CloseCode(v)
    }
}

const fn row(
    code: u16,
    name: &'static str,
    meaning: &'static str,
    sent_by: Sender,
    advice: RetryAdvice,
) -> CodeInfo {
    CodeInfo { code: CloseCode(code), name, meaning, sent_by, advice }
}

/// The table printed in `docs/protocol.md`. Order is by code.
pub const CATALOGUE: &[CodeInfo] = &[
    row(
        1000,
        "normal",
        "the peer ended the session normally",
        Sender::Either,
        RetryAdvice::Reconnect,
    ),
    row(
        1001,
        "going away",
        "server shutting down, or browser page left",
        Sender::Either,
        RetryAdvice::Reconnect,
    ),
    row(1002, "protocol error", "a frame broke RFC 6455", Sender::Either, RetryAdvice::Reconnect),
    row(
        1003,
        "unsupported data",
        "a frame type this endpoint does not accept",
        Sender::Either,
        RetryAdvice::Reconnect,
    ),
    row(
        1005,
        "no status",
        "a close frame arrived without a code",
        Sender::LocalOnly,
        RetryAdvice::Reconnect,
    ),
    row(
        1006,
        "abnormal closure",
        "the connection ended without a closing handshake",
        Sender::LocalOnly,
        RetryAdvice::Reconnect,
    ),
    row(
        1007,
        "invalid payload",
        "a text message was not valid UTF-8",
        Sender::Either,
        RetryAdvice::Reconnect,
    ),
    row(
        1008,
        "policy violation",
        "the peer broke a rule; retrying cannot help",
        Sender::Server,
        RetryAdvice::Stop,
    ),
    row(
        1009,
        "message too big",
        "a message exceeded max_message_size",
        Sender::Either,
        RetryAdvice::Reconnect,
    ),
    row(
        1011,
        "internal error",
        "the server hit an unexpected condition",
        Sender::Server,
        RetryAdvice::Reconnect,
    ),
    row(
        1012,
        "service restart",
        "the server is restarting; reconnect after the hint",
        Sender::Server,
        RetryAdvice::ReconnectAfterHint,
    ),
    row(
        1013,
        "try again later",
        "the server is overloaded, or this client read too slowly (reason: slow consumer); reconnect after the hint",
        Sender::Server,
        RetryAdvice::ReconnectAfterHint,
    ),
    row(
        1015,
        "TLS handshake",
        "the TLS handshake failed",
        Sender::LocalOnly,
        RetryAdvice::Reconnect,
    ),
    row(
        4000,
        "heartbeat timeout",
        "no sign of life within ping interval + pong timeout",
        Sender::LocalOnly,
        RetryAdvice::Reconnect,
    ),
    row(
        4002,
        "token expired",
        "the connection's token expired; fetch a fresh one, then reconnect",
        Sender::Server,
        RetryAdvice::Reconnect,
    ),
    row(
        4501,
        "token required",
        "this server or channel needs a token and none was given",
        Sender::Server,
        RetryAdvice::Stop,
    ),
    row(
        4502,
        "token invalid",
        "the token's signature, algorithm or claims are not accepted",
        Sender::Server,
        RetryAdvice::Stop,
    ),
];

/// The catalogue as the Markdown table printed in `docs/protocol.md` (a test keeps them equal).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| code | name | meaning | sent by | client action |\n|---|---|---|---|---|\n",
    );
    for row in CATALOGUE {
        let sent_by = match row.sent_by {
            Sender::Server => "server",
            Sender::Client => "client",
            Sender::Either => "either",
            Sender::LocalOnly => "never sent (local report)",
        };
        let action = match row.advice {
            RetryAdvice::Reconnect => "reconnect with backoff",
            RetryAdvice::ReconnectAfterHint => "reconnect after the server's hint",
            RetryAdvice::Stop => "stop",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.code.0, row.name, row.meaning, sent_by, action
        ));
    }
    out.push_str("| 4000–4499 | transient | Tether codes not listed above | server | reconnect with backoff |\n");
    out.push_str(
        "| 4500–4999 | terminal | Tether codes not listed above (auth, …) | server | stop |\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_print_the_catalogue() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md"))
                .expect("docs/protocol.md exists");
        let table = markdown_table();
        assert!(
            docs.contains(&table),
            "docs/protocol.md must contain the close-code table exactly as generated:\n{table}"
        );
    }

    #[test]
    fn catalogue_is_sorted_and_unique() {
        for pair in CATALOGUE.windows(2) {
            assert!(pair[0].code < pair[1].code, "{:?} before {:?}", pair[0].code, pair[1].code);
        }
    }

    #[test]
    fn bands_decide_unknown_codes() {
        assert_eq!(CloseCode(4321).advice(), RetryAdvice::Reconnect);
        assert_eq!(CloseCode(4600).advice(), RetryAdvice::Stop);
        assert_eq!(CloseCode::POLICY_VIOLATION.advice(), RetryAdvice::Stop);
        assert_eq!(CloseCode::SERVICE_RESTART.advice(), RetryAdvice::ReconnectAfterHint);
    }

    #[test]
    fn local_only_codes_are_flagged() {
        for c in [1005, 1006, 1015, 999, 1016, 2999] {
            assert!(CloseCode(c).is_local_only(), "{c}");
        }
        for c in [1000, 1001, 1008, 1012, 4000, 4999] {
            assert!(!CloseCode(c).is_local_only(), "{c}");
        }
    }
}
