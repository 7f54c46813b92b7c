//! Channel names and the `*` patterns configuration uses to select channels.
//!
//! A channel name is 1..=`max_len` bytes of `A–Z a–z 0–9 _ - . : @ / = +`. The charset is narrow
//! on purpose: names end up in logs, metrics, Redis keys and URLs (`?channel=`), and none of those
//! should need escaping.

use std::fmt;

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {len} bytes; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("channel name has {found:?} at byte {at}; allowed: A-Z a-z 0-9 _ - . : @ / = +")]
    BadChar { found: char, at: usize },
}

/// Channels under this prefix are the server's own: clients and the HTTP API may not publish
/// to them.
pub const RESERVED_PREFIX: &str = "_tether:";

/// The channel the server's dashboard figures are published on (once a second, while anyone
/// subscribes).
pub const DASHBOARD_CHANNEL: &str = "_tether:dashboard";

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '/' | '=' | '+')
}

/// Check a channel name against the length limit and the charset.
pub fn validate(name: &str, max_len: usize) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > max_len {
        return Err(ChannelError::TooLong { len: name.len(), max: max_len });
    }
    match name.char_indices().find(|(_, c)| !allowed(*c)) {
        Some((at, found)) => Err(ChannelError::BadChar { found, at }),
        None => Ok(()),
    }
}

/// A channel pattern: literal characters and `*`, which matches any run of characters
/// (including none). `chat:*` matches `chat:lobby`; `*` matches every channel.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ChannelPattern(String);

impl ChannelPattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        ChannelPattern(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, channel: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = channel.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty(); // no `*` at all: exact match
        };
        for part in middle {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// True when any pattern matches the channel.
pub fn any_matches(patterns: &[ChannelPattern], channel: &str) -> bool {
    patterns.iter().any(|p| p.matches(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(validate("chat:lobby-1/a@b=c+d.e_f", 128), Ok(()));
        assert_eq!(validate("", 128), Err(ChannelError::Empty));
        assert_eq!(validate("abcd", 3), Err(ChannelError::TooLong { len: 4, max: 3 }));
        assert_eq!(validate("a b", 128), Err(ChannelError::BadChar { found: ' ', at: 1 }));
        assert!(matches!(validate("é", 128), Err(ChannelError::BadChar { .. })));
    }

    #[test]
    fn patterns() {
        let p = |s: &str| ChannelPattern::new(s);
        assert!(p("*").matches("anything"));
        assert!(p("chat:*").matches("chat:lobby"));
        assert!(p("chat:*").matches("chat:"));
        assert!(!p("chat:*").matches("news"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exactly"));
        assert!(p("*:room").matches("chat:room"));
        assert!(p("a*b*c").matches("a-x-b-y-c"));
        assert!(!p("a*b*c").matches("a-x-c"));
        assert!(!p("ab*ba").matches("aba"));
    }
}
