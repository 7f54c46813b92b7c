//! Sweeps: one task going round a busy channel's subscribers, handing each everything new
//! in one write. A round copies the entries and the roster under the shard lock and hands them
//! over after releasing it: no socket I/O under the shard lock (see the hub's module docs).

use super::*;

/// Publications a sweep may hold back at most; beyond that it drops its oldest (counted in
/// `tether_fanout_backlog_dropped_total`).
pub(super) const MAX_SWEEP_BACKLOG: usize = 1024;

/// Subscribers a sweep visits between yields to the runtime (about 16 × 5 µs). A sweep runs on
/// the same threads as the tasks that take publications in, and a chunk longer than this
/// holds them back: at 5,000 subscribers × 100/s on one core, the publish API's p99 answer
/// took 43-48 ms with chunks of 64, and 5-13 ms with 16; end-to-end p99, 50-53 against
/// 46-49 ms. (Sweeps on threads of their own, at a lower priority, did no better: 49-51 ms.)
pub(super) const SWEEP_CHUNK: usize = 16;

/// One visit in this many has its delivery lag measured (`tether_delivery_lag_seconds`).
pub(super) const LAG_SAMPLE: u64 = 16;

/// How long an idle sweep waits for more publications before it ends.
pub(super) const SWEEP_LINGER: Duration = Duration::from_secs(1);

/// A sweep: when publications on a channel come faster than one direct fan-out each can take,
/// one task goes round the subscribers again and again, and hands each one, in one `writev`,
/// everything published since its last visit. Rather than a round per publication (and a task
/// wake-up per connection and publication on the queued path), the cost per visit is about one
/// `send`, however many publications it carries; and since the sweep yields every
/// [`SWEEP_CHUNK`] subscribers, a publication joins the round in progress: the subscribers
/// still ahead get it in this round, the others in the next. A publication is thereby
/// delivered within about one round.
///
/// An entry stays until every subscriber has been visited after it came: to the end of the
/// round it came in if that round had not begun, else to the end of the next one. The sweep
/// ends when it holds nothing more. Ordering holds because all publications of the channel go
/// through the sweep while it runs, and admission (the same as for direct writes) still
/// decides what each connection gets.
pub(super) struct Sweep {
    /// Tells this sweep's task from a later one's, should the channel be dropped and made anew.
    pub(super) id: u64,
    pub(super) entries: VecDeque<Entry>,
    /// The round in progress or next to start...
    pub(super) round: u64,
    /// ...and whether it has started.
    pub(super) in_round: bool,
    /// Wakes the sweep's task when it waits, idle, for more.
    pub(super) more: Arc<tokio::sync::Notify>,
}

/// A publication in a sweep, rendered for both modes.
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) appended: Instant,
    /// The last round that must visit everyone with it.
    pub(super) until: u64,
    pub(super) json: Arc<Published>,
    pub(super) raw: Arc<Published>,
}

/// The task of one channel's sweep.
pub(super) struct SweepRun {
    pub(super) shards: Arc<[Shard]>,
    pub(super) index: usize,
    pub(super) name: Arc<str>,
    pub(super) id: u64,
    pub(super) metrics: Arc<Metrics>,
    /// Wait for more even when publications are sparse (`FanoutSweep::Always`).
    pub(super) always: bool,
}

impl SweepRun {
    pub(super) async fn run(self) {
        let mut roster: Arc<[Subscriber]> = Arc::from(Vec::new());
        let mut position = 0;
        let (mut json, mut raw, mut appended) = (Vec::new(), Vec::new(), Vec::new());
        let mut visits = 0u64;
        // Time spent in this round and the direct writes it made, for the channel's pace.
        let (mut busy, mut round_sends) = (Duration::ZERO, 0u64);
        loop {
            let started = Instant::now();
            {
                let mut shard = crate::sync::lock(&self.shards[self.index]);
                let Some(ch) = shard.get_mut(&*self.name) else { return };
                if ch.sweep.as_ref().is_none_or(|s| s.id != self.id) {
                    return;
                }
                if position == 0 {
                    roster = ch.roster();
                }
                let Some(sweep) = ch.sweep.as_mut() else { return };
                sweep.in_round = true;
                json.clear();
                raw.clear();
                appended.clear();
                for e in &sweep.entries {
                    appended.push((e.seq, e.appended));
                    json.push((e.seq, e.json.clone()));
                    raw.push((e.seq, e.raw.clone()));
                }
            }
            let end = (position + SWEEP_CHUNK).min(roster.len());
            let (mut written, mut written_bytes, mut queued, mut dropped) = (0, 0, 0, 0);
            let mut sends = 0;
            for sub in &roster[position..end] {
                let batch = match sub.mode {
                    Mode::Json => &json,
                    Mode::Raw | Mode::Echo => &raw,
                };
                let done = sub.queue.hand_over(batch);
                visits += 1;
                if done.oldest != 0 && visits.is_multiple_of(LAG_SAMPLE) {
                    // How long the oldest of what this visit handed over waited.
                    if let Some((_, at)) = appended.iter().find(|(s, _)| *s == done.oldest) {
                        self.metrics.delivery_lag.observe(at.elapsed().as_secs_f64());
                    }
                }
                sends += u64::from(done.written > 0);
                written += u64::from(done.written);
                written_bytes += done.written_bytes;
                queued += u64::from(done.queued);
                // Refused by a full queue (a slow consumer now), or the connection is ending.
                dropped += u64::from(done.dropped);
                if done.partial {
                    self.metrics.direct_partial_writes.inc();
                }
            }
            position = end;
            let m = &self.metrics;
            m.deliveries.inc_by(written + queued);
            m.deliveries_dropped.inc_by(dropped);
            m.direct_deliveries.inc_by(written);
            m.messages_out.inc_by(written);
            m.bytes_out.inc_by(written_bytes);
            busy += started.elapsed();
            round_sends += sends;
            if position >= roster.len() {
                let next = self.end_round(busy, round_sends);
                (busy, round_sends, position) = (Duration::ZERO, 0, 0);
                match next {
                    RoundEnd::Over => return,
                    RoundEnd::Again => {}
                    RoundEnd::Idle(more) => {
                        // Nothing left to hand over, but publications still come densely: wait
                        // for the next one rather than end (ending would send it down a direct
                        // fan-out, and a busy channel would flap between the two).
                        if tokio::time::timeout(SWEEP_LINGER, more.notified()).await.is_err()
                            && self.end_if_idle()
                        {
                            return;
                        }
                        continue;
                    }
                }
            }
            tokio::task::yield_now().await;
        }
    }
}

/// What a sweep does after a round.
pub(super) enum RoundEnd {
    /// It ended (or its channel is gone).
    Over,
    /// Another round: it still holds entries.
    Again,
    /// Wait for more.
    Idle(Arc<tokio::sync::Notify>),
}

impl SweepRun {
    /// Close a round: drop the entries everyone has been visited with, feed the channel's pace
    /// (`busy` time for `sends` direct writes), and decide what comes next.
    pub(super) fn end_round(&self, busy: Duration, sends: u64) -> RoundEnd {
        let mut shard = crate::sync::lock(&self.shards[self.index]);
        let Some(ch) = shard.get_mut(&*self.name) else { return RoundEnd::Over };
        ch.pace.direct_took(busy, sends);
        let dense = self.always || ch.pace.dense(ch.subscribers.len());
        let Some(sweep) = ch.sweep.as_mut().filter(|s| s.id == self.id) else {
            return RoundEnd::Over;
        };
        let round = sweep.round;
        while sweep.entries.front().is_some_and(|e| e.until <= round) {
            if let Some(e) = sweep.entries.pop_front() {
                self.metrics.fanout_seconds.observe(e.appended.elapsed().as_secs_f64());
            }
        }
        sweep.round += 1;
        sweep.in_round = false;
        if !sweep.entries.is_empty() {
            RoundEnd::Again
        } else if dense {
            RoundEnd::Idle(sweep.more.clone())
        } else {
            ch.sweep = None;
            RoundEnd::Over
        }
    }

    /// After waiting in vain: end the sweep if it still holds nothing. Whether it ended.
    pub(super) fn end_if_idle(&self) -> bool {
        let mut shard = crate::sync::lock(&self.shards[self.index]);
        let Some(ch) = shard.get_mut(&*self.name) else { return true };
        match &ch.sweep {
            Some(s) if s.id == self.id && s.entries.is_empty() => {
                ch.sweep = None;
                true
            }
            Some(s) if s.id == self.id => false,
            _ => true,
        }
    }
}
