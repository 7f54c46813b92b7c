//! This node's answers to the questions the server API asks every node (`control::Question`):
//! its channels with their subscriber counts, and who it is.

use super::Hub;
use crate::control::Question;
use serde_json::{json, Map, Value};
use tether_core::channel::{ChannelPattern, RESERVED_PREFIX};

/// Channels one node lists at most in an answer.
pub const MAX_CHANNELS_LISTED: usize = 10_000;

impl Hub {
    /// Name this node (the prefix of its client ids), once.
    pub fn set_name(&self, name: &str) {
        let _ = self.name.set(name.to_owned());
    }

    /// `Channels`: `{"channels": {NAME: subscribers}}` (the 10,000 most subscribed), reserved
    /// channels left out. `Info`: name, version, uptime, connections, subscriptions.
    pub fn answer(&self, question: &Question) -> Value {
        match question {
            Question::Channels { pattern } => {
                let pattern = ChannelPattern::new(pattern.as_deref().unwrap_or("*"));
                let keep = |name: &str| pattern.matches(name) && !name.starts_with(RESERVED_PREFIX);
                let listed = self.channels(keep, MAX_CHANNELS_LISTED);
                let channels: Map<String, Value> =
                    listed.into_iter().map(|(name, n)| (name.to_string(), json!(n))).collect();
                json!({ "channels": channels })
            }
            Question::Info => json!({
                "name": self.name.get().map_or("", String::as_str),
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": self.born.elapsed().as_secs(),
                "connections": self.metrics.connections_open.get(),
                "subscriptions": self.metrics.subscriptions.get(),
            }),
        }
    }
}
