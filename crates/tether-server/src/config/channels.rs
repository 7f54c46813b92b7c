//! Channel options by name pattern: the `[[channel]]` blocks.
//!
//! Each block names a pattern and sets some options. For each option, the first block whose
//! pattern matches the channel and that sets the option decides it; an option no matching
//! block sets takes its default. So a specific block placed first can override one option of
//! a broad block further down, and leave the broad block's other options in force.
//!
//! The flat per-pattern settings of earlier versions (`history`, `client_publish`,
//! `anonymous_channels`, `compression_channels` and their flags) still work: they are folded
//! into blocks placed after the written ones ([`super::GatewayConfig::fold_channel_settings`]),
//! which is what `--print-config` shows.

use super::HistoryRule;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tether_core::channel::ChannelPattern;
use tether_core::stream::HistoryPolicy;

/// One `[[channel]]` block. `None`: this block leaves the option to later blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// Channels this block applies to: literal characters and `*` (any run of characters).
    pub pattern: ChannelPattern,
    /// Publications kept for recovery, `SIZE/TTL` (e.g. `1000/10m`), or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySetting>,
    /// Who is subscribed is kept and can be asked for: `presence` and `presence_stats` by the
    /// channel's subscribers and through the HTTP API (default: no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    /// Subscribers are told when others join and leave, and when a user's first subscription
    /// arrives or last one goes (default: no). Keeps presence on the channel too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,
    /// Clients may publish to these channels over the WebSocket (default: no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_publish: Option<bool>,
    /// With JWT on, anyone may subscribe without a token (default: no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<bool>,
    /// Publications are compressed for permessage-deflate clients (default: yes, when
    /// `compression` is on and they are at least `compression_min_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<bool>,
}

impl ChannelRule {
    /// A block for `pattern` that sets nothing yet.
    pub fn new(pattern: impl Into<String>) -> Self {
        ChannelRule {
            pattern: ChannelPattern::new(pattern),
            history: None,
            presence: None,
            join_leave: None,
            client_publish: None,
            anonymous: None,
            compression: None,
        }
    }
}

impl From<HistoryRule> for ChannelRule {
    fn from(rule: HistoryRule) -> Self {
        let history = Some(HistorySetting::Keep { size: rule.size, ttl: rule.ttl });
        ChannelRule { history, ..ChannelRule::new(rule.pattern.as_str()) }
    }
}

/// A block's `history`: `SIZE/TTL` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistorySetting {
    Off,
    Keep { size: usize, ttl: Duration },
}

impl std::str::FromStr for HistorySetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "off" {
            return Ok(HistorySetting::Off);
        }
        let usage = || format!("`{s}`: expected SIZE/TTL (e.g. 1000/10m) or off");
        let (size, ttl) = s.split_once('/').ok_or_else(usage)?;
        Ok(HistorySetting::Keep {
            size: size.trim().parse().map_err(|_| usage())?,
            ttl: humantime::parse_duration(ttl.trim()).map_err(|_| usage())?,
        })
    }
}

impl std::fmt::Display for HistorySetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HistorySetting::Off => f.write_str("off"),
            HistorySetting::Keep { size, ttl } => {
                write!(f, "{size}/{}", humantime::format_duration(*ttl))
            }
        }
    }
}

impl Serialize for HistorySetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HistorySetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The first matching block's value for one option.
pub fn channel_option<T>(
    rules: &[ChannelRule],
    channel: &str,
    pick: impl Fn(&ChannelRule) -> Option<T>,
) -> Option<T> {
    rules.iter().filter(|r| r.pattern.matches(channel)).find_map(pick)
}

/// The history kept for `channel`, if any.
pub fn history_policy(rules: &[ChannelRule], channel: &str) -> Option<HistoryPolicy> {
    match channel_option(rules, channel, |r| r.history)? {
        HistorySetting::Off => None,
        HistorySetting::Keep { size, ttl } => Some(HistoryPolicy { size, ttl }),
    }
}

/// Whether `channel` keeps presence: `presence`, or `join_leave`, which needs it.
pub fn presence_on(rules: &[ChannelRule], channel: &str) -> bool {
    channel_option(rules, channel, |r| r.presence).unwrap_or(false)
        || channel_option(rules, channel, |r| r.join_leave).unwrap_or(false)
}

/// Whether `channel`'s subscribers are told of joins and leaves.
pub fn join_leave_on(rules: &[ChannelRule], channel: &str) -> bool {
    channel_option(rules, channel, |r| r.join_leave).unwrap_or(false)
}

/// The flat settings as blocks, in the order they decide: history rules, then the pattern
/// lists. A `compression_channels` list also gets a last `*` block that turns compression off
/// for every channel it does not name (an empty list means every channel, the default).
pub(super) fn fold(
    history: Vec<HistoryRule>,
    client_publish: Vec<ChannelPattern>,
    anonymous: Vec<ChannelPattern>,
    compression: Vec<ChannelPattern>,
) -> Vec<ChannelRule> {
    let mut rules: Vec<ChannelRule> = history.into_iter().map(ChannelRule::from).collect();
    let block = |p: ChannelPattern, set: fn(&mut ChannelRule)| {
        let mut rule = ChannelRule::new(p.as_str());
        set(&mut rule);
        rule
    };
    rules.extend(client_publish.into_iter().map(|p| block(p, |r| r.client_publish = Some(true))));
    rules.extend(anonymous.into_iter().map(|p| block(p, |r| r.anonymous = Some(true))));
    if !compression.is_empty() {
        rules.extend(compression.into_iter().map(|p| block(p, |r| r.compression = Some(true))));
        rules.push(block(ChannelPattern::new("*"), |r| r.compression = Some(false)));
    }
    rules
}

/// A block's values out of range, as (field, problem).
pub(super) fn check(rules: &[ChannelRule]) -> Result<(), (&'static str, String)> {
    for rule in rules {
        let name = rule.pattern.as_str();
        if name.is_empty() || name.len() > 1024 {
            return Err(("channel.pattern", "must be 1 to 1024 characters".into()));
        }
        if let Some(HistorySetting::Keep { size, ttl }) = rule.history {
            if size == 0 || size > 100_000 || ttl < Duration::from_secs(1) {
                return Err((
                    "channel.history",
                    format!("`{name}`: needs 1 <= SIZE <= 100000 and a TTL of at least 1s"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every option at once, to compare channels whole (the server asks one option at a time).
    /// Everything the blocks decide for one channel.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ChannelOptions {
        pub history: Option<HistoryPolicy>,
        pub presence: bool,
        pub join_leave: bool,
        pub client_publish: bool,
        pub anonymous: bool,
        pub compression: bool,
    }

    /// Every option for `channel`.
    pub fn channel_options(rules: &[ChannelRule], channel: &str) -> ChannelOptions {
        let flag = |pick: fn(&ChannelRule) -> Option<bool>, default| {
            channel_option(rules, channel, pick).unwrap_or(default)
        };
        ChannelOptions {
            history: history_policy(rules, channel),
            presence: flag(|r| r.presence, false),
            join_leave: flag(|r| r.join_leave, false),
            client_publish: flag(|r| r.client_publish, false),
            anonymous: flag(|r| r.anonymous, false),
            compression: flag(|r| r.compression, true),
        }
    }

    fn parse(toml: &str) -> Vec<ChannelRule> {
        #[derive(Deserialize)]
        struct File {
            channel: Vec<ChannelRule>,
        }
        toml::from_str::<File>(toml).unwrap().channel
    }

    #[test]
    fn for_each_option_the_first_block_that_sets_it_decides() {
        let rules = parse(
            r#"
            [[channel]]
            pattern = "chat:secret"
            client_publish = false
            [[channel]]
            pattern = "chat:*"
            client_publish = true
            history = "100/1m"
            compression = false
            "#,
        );
        let secret = channel_options(&rules, "chat:secret");
        assert!(!secret.client_publish, "the specific block comes first");
        assert_eq!(secret.history, Some(HistoryPolicy { size: 100, ttl: Duration::from_secs(60) }));
        assert!(!secret.compression);
        let lobby = channel_options(&rules, "chat:lobby");
        assert!(lobby.client_publish);
        let other = channel_options(&rules, "news");
        assert_eq!(other, channel_options(&[], "news"), "no block: the defaults");
        assert!(other.compression && !other.client_publish && other.history.is_none());
    }

    #[test]
    fn history_off_overrides_a_broader_block() {
        let rules = parse(
            "[[channel]]\npattern = \"a:tmp\"\nhistory = \"off\"\n\
             [[channel]]\npattern = \"a:*\"\nhistory = \"10/5s\"\n",
        );
        assert_eq!(history_policy(&rules, "a:tmp"), None);
        assert_eq!(history_policy(&rules, "a:b").map(|p| p.size), Some(10));
    }

    #[test]
    fn flat_settings_fold_into_blocks_that_decide_the_same() {
        let p = |s: &str| ChannelPattern::new(s);
        let history = vec!["chat:*=50/10m".parse::<HistoryRule>().unwrap()];
        let rules = fold(history, vec![p("chat:*")], vec![p("public:*")], vec![p("prices:*")]);
        let chat = channel_options(&rules, "chat:x");
        assert!(chat.client_publish && chat.history.is_some() && !chat.compression);
        let public = channel_options(&rules, "public:x");
        assert!(public.anonymous && !public.client_publish && !public.compression);
        assert!(channel_options(&rules, "prices:x").compression);
        // An empty compression list is the default: every channel.
        assert!(channel_options(&fold(vec![], vec![], vec![], vec![]), "x").compression);
    }

    #[test]
    fn a_block_prints_as_it_reads() {
        let text = "pattern = \"chat:*\"\nhistory = \"1000/10m\"\nclient_publish = true\n";
        let rule: ChannelRule = toml::from_str(text).unwrap();
        assert_eq!(toml::to_string(&rule).unwrap(), text);
        let bad = toml::from_str::<ChannelRule>("pattern = \"a\"\nhistory = \"lots\"\n");
        assert!(bad.unwrap_err().to_string().contains("expected SIZE/TTL"));
        let unknown = toml::from_str::<ChannelRule>("pattern = \"a\"\nhistroy = \"1/1s\"\n");
        assert!(unknown.unwrap_err().to_string().contains("histroy"));
    }
}
