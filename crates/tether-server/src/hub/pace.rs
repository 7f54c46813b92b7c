//! When a channel's publications go out direct and when queued: the pacing rule.

use super::*;

/// Direct delivery (the publisher writes to every ready socket itself) is the cheapest per
/// delivery, but writes each publication on its own. When publications on a channel come
/// faster than that, connection tasks gathering several per write keep up where direct writes
/// cannot (measured: 5,000 subscribers × 100/s needs about four per write on one core). So a
/// publication goes direct only while the channel's publications come, on average, at least
/// twice as far apart as a direct fan-out to its subscribers is expected to take: direct
/// fan-out then uses at most half a core.
/// - Averages, not the last gap or the last fan-out: on a saturated server publications are
///   handled in bursts with long gaps between them, and one slow fan-out (a page fault, a
///   preemption) must not switch a channel to queued (an outlier counts as twice the average).
/// - A queued fan-out still writes to its first `SAMPLE` subscribers directly, so the estimate
///   keeps following the machine (a whole direct fan-out as a probe stalls a busy channel for
///   tens of milliseconds: measured, p99 at 5,000 × 100/s went from 130 to 240 ms).
#[derive(Default)]
pub(super) struct Pace {
    pub(super) last: Option<Instant>,
    /// Moving average of the time between publications (weight 1/8 for the newest).
    pub(super) spacing: Option<Duration>,
    /// Moving average of the time per direct write (weight 1/4 for the newest).
    pub(super) per_subscriber: Duration,
}

/// Subscribers written to directly by a queued fan-out, to measure (see [`Pace`]).
pub(super) const SAMPLE: usize = 32;

/// How long a publisher — an HTTP request, a client's `publish`, the Redis link — may spend
/// writing a publication to subscribers itself. A channel whose direct fan-out is expected to
/// take longer goes by sweep even when its publications are sparse, so that publishing answers
/// as soon as the publication is sequenced and handed over, whatever the audience (issue 19:
/// `POST /api/publish` answered in 36-54 ms at 5,000 subscribers, the time of the fan-out).
pub(super) const PUBLISHER_BUDGET: Duration = Duration::from_millis(1);

/// What a direct write is taken to cost before the channel has measured one (about what a
/// loopback `send` costs the sender here, receive path included): 200 subscribers fill the
/// budget.
const ASSUMED_PER_SUBSCRIBER: Duration = Duration::from_micros(5);

impl Pace {
    /// Note a publication to `subscribers` at `now`; whether it may go direct.
    pub(super) fn publication(&mut self, now: Instant, subscribers: usize) -> bool {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            self.spacing = Some(match self.spacing {
                None => gap,
                Some(avg) => (avg * 7 + gap) / 8,
            });
        }
        self.last = Some(now);
        !self.dense(subscribers)
    }

    /// Whether publications come too close together for a direct fan-out each.
    pub(super) fn dense(&self, subscribers: usize) -> bool {
        let expected = self.per_subscriber * u32::try_from(subscribers).unwrap_or(u32::MAX);
        self.spacing.is_some_and(|avg| avg < expected * 2)
    }

    /// Whether a direct fan-out to `subscribers` would keep its publisher past
    /// [`PUBLISHER_BUDGET`].
    pub(super) fn too_long_for_publisher(&self, subscribers: usize) -> bool {
        let per = match self.per_subscriber.is_zero() {
            true => ASSUMED_PER_SUBSCRIBER,
            false => self.per_subscriber,
        };
        per * u32::try_from(subscribers).unwrap_or(u32::MAX) > PUBLISHER_BUDGET
    }

    /// Direct delivery to some subscribers took `took`, `written` of them written directly
    /// (the others were queued: not ready, or busy writing).
    pub(super) fn direct_took(&mut self, took: Duration, written: u64) {
        if written == 0 {
            return;
        }
        let sample = took / u32::try_from(written).unwrap_or(u32::MAX);
        self.per_subscriber = if self.per_subscriber.is_zero() {
            sample
        } else {
            // An outlier counts as at most twice the estimate: a lasting slowdown still raises
            // it within a few fan-outs.
            (self.per_subscriber * 3 + sample.min(self.per_subscriber * 2)) / 4
        };
    }
}
