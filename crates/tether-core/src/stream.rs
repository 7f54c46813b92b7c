//! A channel's stream: offsets, epoch and bounded history, with the recovery rule — pure, driven
//! by an explicit `now`. The memory broker keeps one per channel behind a lock; the Redis broker
//! implements the same rules in a Lua script.
//!
//! Recovery from `since` succeeds when the epoch is the same and history still holds every
//! publication after `since.offset`; then exactly those are returned, in order. Otherwise the
//! client is told `recovered: false` and must refetch its state — never a silent gap.

use crate::protocol::StreamPosition;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A new epoch: 12 hex digits from `random` (48 bits). A channel's epoch changes whenever its
/// stream starts afresh (a restarted memory broker, an expired Redis stream), so that a client
/// holding an offset of the old one is told `recovered: false` instead of a wrong replay.
pub fn epoch_from(random: u64) -> String {
    format!("{:012x}", random & 0xffff_ffff_ffff)
}

/// How much history a channel keeps. Both bounds apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Publications kept at most.
    pub size: usize,
    /// Publications older than this are dropped.
    pub ttl: Duration,
}

/// The result of a recovery attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery<T> {
    /// Every publication after the given position, oldest first (possibly none).
    Recovered(Vec<(u64, T)>),
    /// History does not cover the gap, or the epoch changed.
    NotRecovered,
}

#[derive(Debug)]
pub struct Stream<T> {
    epoch: String,
    /// Offset of the latest publication (0 before the first).
    top: u64,
    policy: Option<HistoryPolicy>,
    history: VecDeque<(u64, Instant, T)>,
}

impl<T: Clone> Stream<T> {
    /// A new stream; `epoch` must be unique per stream incarnation (e.g. random).
    pub fn new(epoch: String, policy: Option<HistoryPolicy>) -> Self {
        Stream { epoch, top: 0, policy: policy.filter(|p| p.size > 0), history: VecDeque::new() }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn position(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch.clone(), offset: self.top }
    }

    /// Append a publication; returns its offset.
    pub fn append(&mut self, data: T, now: Instant) -> u64 {
        self.top += 1;
        if let Some(policy) = self.policy {
            self.history.push_back((self.top, now, data));
            while self.history.len() > policy.size {
                self.history.pop_front();
            }
        }
        self.expire(now);
        self.top
    }

    /// Drop history older than the policy's ttl.
    pub fn expire(&mut self, now: Instant) {
        let Some(policy) = self.policy else { return };
        while let Some((_, at, _)) = self.history.front() {
            if now.saturating_duration_since(*at) > policy.ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    /// Publications after `since`, if history covers them all.
    pub fn recover(&mut self, since: &StreamPosition, now: Instant) -> Recovery<T> {
        self.expire(now);
        if since.epoch != self.epoch || since.offset > self.top {
            return Recovery::NotRecovered;
        }
        if since.offset == self.top {
            return Recovery::Recovered(Vec::new());
        }
        match self.history.front() {
            Some((first, _, _)) if *first <= since.offset + 1 => Recovery::Recovered(
                self.history
                    .iter()
                    .filter(|(offset, _, _)| *offset > since.offset)
                    .map(|(offset, _, data)| (*offset, data.clone()))
                    .collect(),
            ),
            _ => Recovery::NotRecovered,
        }
    }

    /// True when the stream holds no history (after expiry): it can be dropped once nobody is
    /// subscribed, at the cost of a new epoch next time.
    pub fn is_idle(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.history.is_empty()
    }

    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Forget every publication kept (the API's `history_remove`); the position stays, so a
    /// recovery from before it is answered "not recovered" and later publications go on from
    /// the same offset.
    pub fn clear_history(&mut self) {
        self.history = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition { epoch: epoch.into(), offset }
    }

    fn policy(size: usize, secs: u64) -> Option<HistoryPolicy> {
        Some(HistoryPolicy { size, ttl: Duration::from_secs(secs) })
    }

    #[test]
    fn offsets_grow_by_one_within_an_epoch() {
        let t = Instant::now();
        let mut s = Stream::new("e".into(), None);
        assert_eq!(s.position(), pos("e", 0));
        assert_eq!((s.append("a", t), s.append("b", t)), (1, 2));
        assert_eq!(s.history_len(), 0, "no policy, no history");
    }

    #[test]
    fn recovers_exactly_what_was_missed() {
        let t = Instant::now();
        let mut s = Stream::new("e".into(), policy(10, 60));
        for d in ["a", "b", "c", "d"] {
            s.append(d, t);
        }
        assert_eq!(s.recover(&pos("e", 2), t), Recovery::Recovered(vec![(3, "c"), (4, "d")]));
        assert_eq!(s.recover(&pos("e", 4), t), Recovery::Recovered(vec![]));
        assert_eq!(
            s.recover(&pos("e", 0), t),
            Recovery::Recovered(vec![(1, "a"), (2, "b"), (3, "c"), (4, "d")])
        );
    }

    #[test]
    fn too_short_history_other_epoch_or_future_offset_is_not_recovered() {
        let t = Instant::now();
        let mut s = Stream::new("e".into(), policy(2, 60));
        for d in ["a", "b", "c", "d"] {
            s.append(d, t);
        }
        assert_eq!(s.recover(&pos("e", 2), t), Recovery::Recovered(vec![(3, "c"), (4, "d")]));
        assert_eq!(s.recover(&pos("e", 1), t), Recovery::NotRecovered, "offset 2 fell out");
        assert_eq!(s.recover(&pos("other", 4), t), Recovery::NotRecovered);
        assert_eq!(s.recover(&pos("e", 5), t), Recovery::NotRecovered);
    }

    #[test]
    fn history_expires_by_age() {
        let t = Instant::now();
        let mut s = Stream::new("e".into(), policy(10, 10));
        s.append("old", t);
        s.append("new", t + Duration::from_secs(8));
        assert_eq!(s.recover(&pos("e", 0), t + Duration::from_secs(11)), Recovery::NotRecovered);
        assert_eq!(
            s.recover(&pos("e", 1), t + Duration::from_secs(11)),
            Recovery::Recovered(vec![(2, "new")])
        );
        assert!(!s.is_idle(t + Duration::from_secs(11)));
        assert!(s.is_idle(t + Duration::from_secs(19)));
    }

    #[test]
    fn without_history_only_an_up_to_date_client_recovers() {
        let t = Instant::now();
        let mut s = Stream::new("e".into(), None);
        s.append("a", t);
        assert_eq!(s.recover(&pos("e", 1), t), Recovery::Recovered(vec![]));
        assert_eq!(s.recover(&pos("e", 0), t), Recovery::NotRecovered);
    }
}
