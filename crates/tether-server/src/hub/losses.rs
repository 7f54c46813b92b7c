//! What a backplane needs when it may have missed publications (its link to Redis was lost, or
//! its fan-out queue overflowed): where this node's subscribers stand on each channel, to
//! replay from there, and a way to tell those behind what cannot be replayed.

use super::{Hub, Outbound, Published, Subscriber};
use std::sync::Arc;
use tether_core::protocol::StreamPosition;

impl Hub {
    /// Channels with local subscribers (`only`: those of them), each with the lowest position
    /// per epoch among its subscribers. A subscriber still subscribing has none yet: its own
    /// history read covers it.
    pub fn positions(&self, only: Option<&[Arc<str>]>) -> Vec<(Arc<str>, Vec<StreamPosition>)> {
        let rosters: Vec<(Arc<str>, Arc<[Subscriber]>)> = match only {
            Some(channels) => channels
                .iter()
                .filter_map(|c| {
                    let mut shard = crate::sync::lock(self.shard(c));
                    shard.get_mut(&**c).map(|ch| (ch.name.clone(), ch.roster()))
                })
                .collect(),
            None => self
                .shards
                .iter()
                .flat_map(|shard| {
                    let mut shard = crate::sync::lock(shard);
                    shard.values_mut().map(|ch| (ch.name.clone(), ch.roster())).collect::<Vec<_>>()
                })
                .collect(),
        };
        rosters
            .into_iter()
            .map(|(name, roster)| {
                let mut lowest: Vec<StreamPosition> = Vec::new();
                for sub in roster.iter() {
                    let Some((epoch, offset)) = sub.queue.position(&name) else { continue };
                    match lowest.iter_mut().find(|p| *p.epoch == *epoch) {
                        Some(p) => p.offset = p.offset.min(offset),
                        None => lowest.push(StreamPosition { epoch: epoch.to_string(), offset }),
                    }
                }
                (name, lowest)
            })
            .collect()
    }

    /// Publications of `channel` up to `position` (`None`: up to an unknown point) were missed
    /// here and cannot be replayed: each local subscriber behind it is told, behind what it
    /// already has (its connection ends with 1012 and its recovery says `recovered: false`).
    /// Returns the subscribers it was queued to.
    pub fn lost(&self, channel: &str, position: Option<&StreamPosition>) -> usize {
        let Some((name, roster)) = ({
            let mut shard = crate::sync::lock(self.shard(channel));
            shard.get_mut(channel).map(|ch| (ch.name.clone(), ch.roster()))
        }) else {
            return 0;
        };
        let at = position.map(|p| (Arc::from(p.epoch.as_str()), p.offset));
        let news = Arc::new(Published::loss(name, at));
        // A full queue makes the connection a slow consumer, which ends it all the same.
        roster.iter().filter(|s| s.queue.push(Outbound::Publication(news.clone())).is_ok()).count()
    }
}
