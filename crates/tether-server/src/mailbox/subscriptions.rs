//! A connection's subscriptions, each with the last publication delivered on it, and the
//! admission rule every delivery passes (direct, queued or by sweep): skip what was already
//! delivered (the seam between a recovery replay and live traffic), flag a gap.

use crate::publication::Published;
use std::sync::Arc;

/// The last publication delivered on a channel.
#[derive(Default)]
pub(crate) struct Watermark {
    pub epoch: Option<Arc<str>>,
    pub offset: u64,
    /// The last sweep entry handed over on this channel, written or queued (see
    /// `OutboundQueue::hand_over`): a sweep visits a connection more than once per entry.
    pub handed: u64,
}

/// What to do with a publication (see [`Subscriptions::admit`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Send,
    Skip,
    Gap,
}

/// A connection's subscriptions: a sorted vector rather than a hash map, because most
/// connections hold one or a few (a one-entry `HashMap` allocates ~220 bytes, this 48), and a
/// binary search stays fast up to `max_subscriptions`.
#[derive(Default)]
pub(crate) struct Subscriptions(Vec<(Arc<str>, Watermark)>);

impl Subscriptions {
    pub(super) fn find(&self, channel: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| (**c).cmp(channel))
    }
    /// The watermark for a publication's channel: found by pointer first (the names are the
    /// hub's own `Arc`s), which saves a string comparison per delivery.
    pub(super) fn for_tag(&mut self, channel: &Arc<str>) -> Option<&mut Watermark> {
        match self.0.iter().position(|(c, _)| Arc::ptr_eq(c, channel)) {
            Some(i) => Some(&mut self.0[i].1),
            None => self.get_mut(channel),
        }
    }
    pub fn contains(&self, channel: &str) -> bool {
        self.find(channel).is_ok()
    }
    pub fn get_mut(&mut self, channel: &str) -> Option<&mut Watermark> {
        self.find(channel).ok().map(|i| &mut self.0[i].1)
    }
    /// Returns false when already present.
    pub fn insert(&mut self, channel: Arc<str>) -> bool {
        match self.find(&channel) {
            Ok(_) => false,
            Err(i) => {
                if self.0.capacity() == 0 {
                    // Most connections hold one subscription: room for exactly one (a first
                    // insert would otherwise make room for four, 144 bytes more).
                    self.0.reserve_exact(1);
                }
                let handed = crate::publication::sweep_position();
                self.0.insert(i, (channel, Watermark { handed, ..Watermark::default() }));
                true
            }
        }
    }
    /// Key an existing subscription by the hub's own `Arc` of its name, which publications are
    /// tagged with (found by pointer, see `for_tag`).
    pub fn adopt(&mut self, name: Arc<str>) {
        if let Ok(i) = self.find(&name) {
            self.0[i].0 = name;
        }
    }
    pub fn remove(&mut self, channel: &str) -> bool {
        match self.find(channel) {
            Ok(i) => {
                self.0.remove(i);
                if self.0.capacity() > 4 * self.0.len().max(1) {
                    self.0.shrink_to_fit();
                }
                true
            }
            Err(_) => false,
        }
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The last publication delivered on `channel` (epoch and offset), once there is one or
    /// the subscription's starting position is set.
    pub fn position(&self, channel: &str) -> Option<(Arc<str>, u64)> {
        let w = &self.0[self.find(channel).ok()?].1;
        Some((w.epoch.clone()?, w.offset))
    }
    pub fn take_channels(&mut self) -> impl Iterator<Item = Arc<str>> {
        std::mem::take(&mut self.0).into_iter().map(|(c, _)| c)
    }

    /// Whether a publication goes out, and if so, it becomes the channel's watermark.
    /// Publications already delivered (by a recovery replay) or for channels unsubscribed since
    /// they were queued are skipped. A publication that does not follow the last one delivered
    /// on its channel (an offset was skipped: the queue overflowed, or the backplane lost one)
    /// is a gap: nothing more may be delivered on this connection, or the client's position
    /// would jump over the hole and a later recovery would miss it. So is one in another epoch
    /// than the subscription's. A message in no stream
    /// (an empty channel: the conformance echo) always goes out.
    /// Whether `tag` would still be news to this connection (not a duplicate of what it was
    /// delivered): what a connection that closes with it queued has missed.
    pub(super) fn is_news(&self, tag: &Published) -> bool {
        if tag.loss {
            return false;
        }
        if tag.channel.is_empty() {
            return true;
        }
        let Ok(i) = self.find(&tag.channel) else { return false };
        let w = &self.0[i].1;
        let same_epoch = w.epoch.as_ref().is_some_and(|e| *e == tag.epoch);
        !same_epoch || tag.offset > w.offset
    }

    pub(super) fn admit(&mut self, tag: &Published, overflowed: bool) -> Admission {
        if overflowed {
            return Admission::Gap;
        }
        if tag.loss {
            // News of publications this node missed: a gap for a subscription behind them.
            let Some(w) = self.for_tag(&tag.channel) else { return Admission::Skip };
            let past = w.epoch.as_ref().is_some_and(|e| *e == tag.epoch) && w.offset >= tag.offset;
            return if past { Admission::Skip } else { Admission::Gap };
        }
        if tag.channel.is_empty() {
            // In no stream (the conformance echo): nothing to skip, no gap to see.
            return Admission::Send;
        }
        let Some(w) = self.for_tag(&tag.channel) else { return Admission::Skip };
        let same_epoch =
            w.epoch.as_ref().is_some_and(|e| Arc::ptr_eq(e, &tag.epoch) || *e == tag.epoch);
        if same_epoch {
            if tag.offset <= w.offset {
                return Admission::Skip;
            }
            if tag.offset != w.offset + 1 {
                return Admission::Gap;
            }
        }
        if !same_epoch {
            // Another epoch than the one this subscription is at: the stream's continuity was
            // lost upstream (its state expired, Redis lost it), and what the subscriber missed
            // of the old epoch cannot be known — a gap: told, and its recovery says so. Only a
            // subscription not yet in any epoch (subscribed before the first publication, or
            // before its subscribe's read answered) takes up the first one it meets.
            if w.epoch.as_deref().is_some_and(|e| !e.is_empty()) {
                return Admission::Gap;
            }
            w.epoch = Some(tag.epoch.clone());
        }
        w.offset = tag.offset;
        Admission::Send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(epoch: &str, offset: u64) -> Published {
        Published::new("x".into(), Arc::from("feed"), Arc::from(epoch), offset)
    }

    fn at(epoch: Option<&str>, offset: u64) -> Subscriptions {
        let mut s = Subscriptions::default();
        s.insert(Arc::from("feed"));
        let w = s.get_mut("feed").unwrap();
        (w.epoch, w.offset) = (epoch.map(Arc::from), offset);
        s
    }

    #[test]
    fn another_epoch_than_the_one_a_subscription_is_at_is_a_gap() {
        // At offset 5 of epoch `e`: whatever of `e` came after 5 may be lost with it.
        assert_eq!(at(Some("e"), 5).admit(&publication("f", 1), false), Admission::Gap);
        assert_eq!(at(Some("e"), 0).admit(&publication("f", 1), false), Admission::Gap);
        // Subscribed before the channel's first publication (epoch ""), or not yet placed
        // (the subscribe's history read has not answered): the first epoch is followed.
        let mut fresh = at(Some(""), 0);
        assert_eq!(fresh.admit(&publication("f", 1), false), Admission::Send);
        assert_eq!(fresh.admit(&publication("f", 2), false), Admission::Send);
        assert_eq!(at(None, 0).admit(&publication("f", 7), false), Admission::Send);
        // The same epoch: the next one goes, a repeat is skipped, a jump is a gap.
        let mut same = at(Some("e"), 5);
        assert_eq!(same.admit(&publication("e", 5), false), Admission::Skip);
        assert_eq!(same.admit(&publication("e", 6), false), Admission::Send);
        assert_eq!(same.admit(&publication("e", 8), false), Admission::Gap);
    }
}
