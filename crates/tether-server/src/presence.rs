//! Presence: who is subscribed to a channel whose `[[channel]]` block sets `presence`.
//!
//! Each subscription to such a channel is an entry, a [`Member`]: the connection's client id,
//! the user its token names and the token's `info` claim. [`LocalPresence`] holds this node's
//! entries. The memory broker answers presence from it; the Redis broker mirrors it into Redis
//! for the other nodes. Entries are bounded by subscriptions (`max_connections` ×
//! `max_subscriptions`) and counted in `tether_presence_entries`.

use serde_json::value::RawValue;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tether_core::protocol::ClientInfo;

/// One subscription in a presence channel.
#[derive(Debug)]
pub struct Member {
    /// The connection's client id (unique across nodes and restarts).
    pub client: Arc<str>,
    /// The token's `sub`.
    pub user: Option<Arc<str>>,
    /// The token's `info` claim, verbatim.
    pub info: Option<Arc<RawValue>>,
}

impl Member {
    /// As the protocol shows it.
    pub fn to_info(&self) -> ClientInfo {
        ClientInfo {
            client: self.client.to_string(),
            user: self.user.as_deref().map(str::to_owned),
            info: self.info.as_ref().and_then(|raw| serde_json::from_str(raw.get()).ok()),
        }
    }

    /// As stored for other nodes: the [`ClientInfo`] JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.to_info()).unwrap_or_default()
    }
}

/// A membership change to announce (`join_leave`) and the member's `ClientInfo` JSON.
pub type Announcement = (tether_core::protocol::PresenceChange, Arc<str>);

/// How many clients, and distinct users among them, a channel has. A client without a user
/// counts as a user of its own.
pub fn stats(members: &[Arc<Member>]) -> (u64, u64) {
    let users: std::collections::HashSet<&str> =
        members.iter().filter_map(|m| m.user.as_deref()).collect();
    let anonymous = members.iter().filter(|m| m.user.is_none()).count();
    (members.len() as u64, (users.len() + anonymous) as u64)
}

const SHARDS: usize = 16;

/// One channel's entries, and how many of them each user has (for "first connection of this
/// user joined / last one left").
#[derive(Default)]
struct Channel {
    members: HashMap<Arc<str>, Arc<Member>>,
    users: HashMap<Arc<str>, u32>,
}

/// A change to a channel's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The member was added (join) or removed (leave); `false` when nothing changed.
    pub changed: bool,
    /// Its user's first entry in the channel arrived (join) or the last one went (leave).
    pub user_edge: bool,
}

/// Channels by name, one lock per shard.
type Shard = Mutex<HashMap<Box<str>, Channel>>;

/// This node's presence entries, by channel.
pub struct LocalPresence {
    shards: Box<[Shard]>,
    hasher: RandomState,
    entries: AtomicUsize,
}

impl Default for LocalPresence {
    fn default() -> Self {
        LocalPresence {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            entries: AtomicUsize::new(0),
        }
    }
}

impl LocalPresence {
    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Add `member` to `channel` (replacing an entry of the same client).
    pub fn join(&self, channel: &str, member: Arc<Member>) -> Change {
        let mut shard = crate::sync::lock(self.shard(channel));
        let ch = shard.entry(channel.into()).or_default();
        let user = member.user.clone();
        if ch.members.insert(member.client.clone(), member).is_some() {
            return Change { changed: false, user_edge: false };
        }
        self.entries.fetch_add(1, Ordering::Relaxed);
        let user_edge = match user {
            Some(user) => {
                let n = ch.users.entry(user).or_default();
                *n += 1;
                *n == 1
            }
            None => true,
        };
        Change { changed: true, user_edge }
    }

    /// Remove `client` from `channel`; the member it was, if any.
    pub fn leave(&self, channel: &str, client: &str) -> Option<(Arc<Member>, Change)> {
        let mut shard = crate::sync::lock(self.shard(channel));
        let ch = shard.get_mut(channel)?;
        let member = ch.members.remove(client)?;
        self.entries.fetch_sub(1, Ordering::Relaxed);
        let user_edge = match &member.user {
            Some(user) => match ch.users.get_mut(user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    ch.users.remove(user);
                    true
                }
            },
            None => true,
        };
        if ch.members.is_empty() {
            shard.remove(channel);
        }
        Some((member, Change { changed: true, user_edge }))
    }

    /// Everyone in `channel` on this node.
    pub fn members(&self, channel: &str) -> Vec<Arc<Member>> {
        let shard = crate::sync::lock(self.shard(channel));
        shard.get(channel).map(|ch| ch.members.values().cloned().collect()).unwrap_or_default()
    }

    /// Every channel with entries here.
    pub fn channels(&self) -> Vec<String> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(crate::sync::lock(shard).keys().map(|name| name.to_string()));
        }
        out
    }

    /// Every channel with entries here, with its members (for a full resync to a backplane).
    pub fn all(&self) -> Vec<(String, Vec<Arc<Member>>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = crate::sync::lock(shard);
            for (name, ch) in shard.iter() {
                out.push((name.to_string(), ch.members.values().cloned().collect()));
            }
        }
        out
    }

    /// Entries held, all channels.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(client: &str, user: Option<&str>) -> Arc<Member> {
        Arc::new(Member { client: client.into(), user: user.map(Into::into), info: None })
    }

    #[test]
    fn joins_and_leaves_track_clients_and_the_edges_of_each_user() {
        let p = LocalPresence::default();
        assert_eq!(
            p.join("room", member("a1", Some("ada"))),
            Change { changed: true, user_edge: true }
        );
        assert_eq!(
            p.join("room", member("a2", Some("ada"))),
            Change { changed: true, user_edge: false }
        );
        assert!(!p.join("room", member("a2", Some("ada"))).changed, "same client again");
        assert_eq!(p.join("room", member("x", None)), Change { changed: true, user_edge: true });
        assert_eq!(p.entries(), 3);
        assert_eq!(stats(&p.members("room")), (3, 2));
        assert_eq!(p.leave("room", "a1").unwrap().1, Change { changed: true, user_edge: false });
        assert_eq!(p.leave("room", "a2").unwrap().1, Change { changed: true, user_edge: true });
        assert!(p.leave("room", "a2").is_none());
        assert!(p.leave("room", "x").unwrap().1.user_edge);
        assert_eq!((p.entries(), p.members("room").len(), p.all().len()), (0, 0, 0));
    }

    #[test]
    fn stats_count_each_user_once_and_each_anonymous_client() {
        let m =
            [member("1", Some("u")), member("2", Some("u")), member("3", None), member("4", None)];
        assert_eq!(stats(&m), (4, 3));
        assert_eq!(stats(&[]), (0, 0));
    }
}
