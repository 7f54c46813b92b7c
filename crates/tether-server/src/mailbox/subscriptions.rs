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
    /// would jump over the hole and a later recovery would miss it. A message in no stream
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
        // Same epoch and next in line, or a first/new epoch (history lost upstream): follow it.
        if !same_epoch {
            w.epoch = Some(tag.epoch.clone());
        }
        w.offset = tag.offset;
        Admission::Send
    }
}
