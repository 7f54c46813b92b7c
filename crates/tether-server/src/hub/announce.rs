//! Join/leave announcements: a channel's membership changes, sent to its JSON subscribers on
//! this node (raw subscribers get publications only).
//!
//! While a channel has at most `batch_above` local subscribers, each change goes out at once,
//! alone (`{"type": "join", …}`). Above that, changes are gathered and sent as one
//! `presence_batch` per channel per `interval` (the gateway's announcer task calls
//! [`Hub::flush_announcements`]): when N members leave at once, each remaining subscriber gets
//! one message instead of N, so a mass disconnect costs N messages rather than N². A batch holds
//! at most [`MAX_BATCH`] changes; older ones beyond that are dropped and counted.

use super::*;
use tether_core::codec::{encode_presence_batch, encode_presence_event};

/// Changes one batch holds at most (per channel and interval).
pub const MAX_BATCH: usize = 10_000;

use crate::presence::Announcement;

/// How announcements are batched (see the module docs).
pub(super) struct Announcements {
    pub(super) batch_above: usize,
    pending: Mutex<HashMap<Arc<str>, Vec<Announcement>>>,
}

impl Default for Announcements {
    fn default() -> Self {
        Announcements { batch_above: 100, pending: Mutex::default() }
    }
}

impl Hub {
    /// Channels with more local subscribers than this get their changes in batches.
    pub fn join_leave_batch_above(mut self, subscribers: usize) -> Self {
        self.announcements.batch_above = subscribers;
        self
    }

    /// Announce `changes` of `channel`'s membership to its local JSON subscribers: now, or in
    /// the channel's next batch.
    pub fn announce(&self, channel: &str, changes: Vec<Announcement>) {
        self.metrics.presence_events.inc_by(changes.len() as u64);
        let subscribers = self.subscriber_count(channel);
        if subscribers == 0 {
            return;
        }
        if subscribers <= self.announcements.batch_above {
            for (change, info) in changes {
                self.notify(channel, encode_presence_event(channel, change, &info));
            }
            return;
        }
        let mut pending = crate::sync::lock(&self.announcements.pending);
        let batch = pending.entry(Arc::from(channel)).or_default();
        batch.extend(changes);
        if batch.len() > MAX_BATCH {
            let over = batch.len() - MAX_BATCH;
            batch.drain(..over);
            self.metrics.presence_events_dropped.inc_by(over as u64);
        }
    }

    /// Send every channel's gathered changes as one batch each.
    pub fn flush_announcements(&self) {
        let pending = std::mem::take(&mut *crate::sync::lock(&self.announcements.pending));
        for (channel, changes) in pending {
            let text = encode_presence_batch(&channel, changes.iter().map(|(c, i)| (*c, &**i)));
            self.notify(&channel, text);
        }
    }

    /// One message to every local JSON subscriber of `channel`, framed once, written directly
    /// to ready sockets like a publication (outside any stream: no offset, no history).
    fn notify(&self, channel: &str, text: String) -> u64 {
        let roster = {
            let mut shard = crate::sync::lock(self.shard(channel));
            match shard.get_mut(channel) {
                Some(ch) => ch.roster(),
                None => return 0,
            }
        };
        let message = Arc::new(Published::unsequenced(Payload::Text(text.into()), Compress::Never));
        let mut sent = 0;
        for sub in roster.iter().filter(|s| s.mode == Mode::Json) {
            if sub.queue.deliver(message.clone(), self.direct).is_ok() {
                sent += 1;
            }
        }
        self.metrics.presence_messages.inc_by(sent);
        sent
    }
}
