//! The answer to a `subscribe`: the channel's position and, for a recovery, the replay of what the
//! client missed — bounded by the connection's outbound budget, and streamed.
//!
//! A replay counts against `outbound_queue_bytes`: the publications it would send, as rendered,
//! must fit in what the budget leaves beside what is queued for the connection now. One that does
//! not fit is answered `recovered: false` with a reason and is never rendered (the Redis broker
//! does not even read it whole: the budget goes to its script). The client refetches its state,
//! as after any gap that history does not cover. Without this, one `subscribe` could make the
//! server render up to 10,000 × 64 KiB into one buffer, and anyone could ask for it up to
//! `max_subscriptions` times per connection.
//!
//! A replay that fits is written in chunks of about [`CHUNK`] bytes, each rendered just before it
//! goes out, while the task holds the write side: live publications queue behind it, against the
//! same budget, so that none can come between the reply and the replay's end. What a replay holds
//! in memory is one chunk, whatever its length; the publications themselves are shared with the
//! history (memory broker) or were read within the budget (Redis).

use super::{feed, within, Connection, Ending, WriteFailed, Ws};
use crate::broker::{BrokerError, NotRecovered, MAX_REPLAY};
use crate::publication::Mode;
use futures_util::SinkExt;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tether_core::close_code::CloseCode;
use tether_core::codec;
use tether_core::protocol::{ErrorBody, ErrorCode, ReplyResult, ServerMessage, StreamPosition};
use tokio_tungstenite::tungstenite::Message;

/// Rendered bytes of a replay written per flush (at least one publication each).
const CHUNK: usize = 64 * 1024;

type Publications = [(u64, Arc<RawValue>)];

impl Connection {
    /// Answer a `subscribe` already registered in the hub (live publications are queueing): ask
    /// the broker for the position and, with `recover`, the missed publications; set the
    /// watermark at the top, so that queued live publications at or below it are dropped as
    /// duplicates; write the reply, then the replay. No gap, no duplicate.
    pub(super) async fn answer_subscribe(
        &mut self,
        ws: &mut Ws,
        id: u64,
        channel: &str,
        recover: Option<&StreamPosition>,
    ) -> Option<Ending> {
        let room = self.queue.room_bytes();
        let history = match self.shared.broker.history(channel, recover, room).await {
            Ok(h) => h,
            Err(e @ BrokerError::Limit(_)) => {
                // A limit: refuse this subscription, keep the connection.
                self.queue.with_subscriptions(|s| s.remove(channel));
                self.shared.hub.unsubscribe(channel, self.id);
                let error = ErrorBody::new(ErrorCode::Unavailable, e.to_string());
                let reply = ServerMessage::err(Some(id), error);
                self.count_error(&reply);
                return self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await;
            }
            Err(e) => {
                // Without the stream's position the subscription cannot promise anything: ask
                // the client to come back later, when the broker is reachable again.
                tracing::warn!(conn = self.id, channel, error = %e, "subscribe failed: broker unavailable");
                let hint = Some(Duration::from_secs(1));
                let code = CloseCode::TRY_AGAIN_LATER;
                return Some(self.close(ws, code, "broker unavailable", hint, false).await);
            }
        };
        let epoch: Arc<str> = Arc::from(history.position.epoch.as_str());
        let top = history.position.offset;
        let (mut publications, mut not_recovered) = (history.publications, history.not_recovered);
        if history.recovered == Some(true) {
            // The broker bounded the data; the envelopes count too.
            let bytes = weight(self.mode, channel, &epoch, top, &publications);
            if bytes > room {
                (publications, not_recovered) =
                    (Vec::new(), Some(NotRecovered::OverBudget { bytes }));
            }
        }
        let recovered = history.recovered.map(|_| not_recovered.is_none());
        if recovered.is_some() {
            let outcome = match not_recovered {
                None => "recovered",
                Some(NotRecovered::OverBudget { .. }) => "over_budget",
                Some(_) => "not_recovered",
            };
            let labels = crate::metrics::OutcomeLabels { outcome };
            self.shared.metrics.recoveries.get_or_create(&labels).inc();
        }
        let reason = not_recovered.map(|why| explain(why, recover, room));
        if let Some(reason) = &reason {
            tracing::debug!(conn = self.id, channel, reason, "subscribe not recovered");
        }
        let result = ReplyResult {
            offset: Some(top),
            epoch: Some(history.position.epoch),
            recovered,
            reason,
            ..ReplyResult::default()
        };
        self.queue.with_subscriptions(|s| {
            if let Some(w) = s.get_mut(channel) {
                (w.epoch, w.offset) = (Some(epoch.clone()), top);
            }
        });
        let reply = Message::Text(codec::encode(&ServerMessage::ok(id, result)).into());
        let replay = Chunks::new(self.mode, channel, &epoch, reply, &publications);
        self.write_replay(ws, replay).await.err().map(|e| self.write_failed(e))
    }

    /// Write the reply and the replay chunk by chunk, each within `write_timeout`, holding the
    /// write side from the first to the last. Live publications that overflow the queue
    /// meanwhile end the connection as a slow consumer at once, as in `write_batch`.
    async fn write_replay(&self, ws: &mut Ws, replay: Chunks<'_>) -> Result<(), WriteFailed> {
        ws.get_mut().hold();
        let write_timeout = self.shared.config.write_timeout;
        for chunk in replay {
            let n = chunk.len() as u64;
            let bytes = chunk.iter().map(|m| m.len() as u64).sum();
            let write = async {
                for message in chunk {
                    feed(ws, message).await?;
                }
                ws.flush().await
            };
            let outcome = tokio::select! {
                biased;
                outcome = within(write_timeout, write) => outcome,
                () = self.queue.overflow() => return Err(WriteFailed::Overflowed),
            };
            self.written(outcome, n, bytes)?;
        }
        ws.get_mut().release();
        Ok(())
    }
}

/// What a replay of `publications` weighs as sent, at most: each one's data plus the envelope of
/// a publication at offset `top` (the longest offset among them).
fn weight(mode: Mode, channel: &str, epoch: &str, top: u64, publications: &Publications) -> u64 {
    let zero = RawValue::from_string("0".into()).expect("0 is JSON");
    let envelope = crate::publication::render(mode, channel, epoch, top, &zero).len() - 1;
    let data: u64 = publications.iter().map(|(_, d)| d.get().len() as u64).sum();
    data + envelope as u64 * publications.len() as u64
}

/// Why a recovery was not made, for the reply's `reason`.
fn explain(why: NotRecovered, since: Option<&StreamPosition>, room: u64) -> String {
    let offset = since.map_or(0, |s| s.offset);
    match why {
        NotRecovered::OtherEpoch => {
            "the channel's stream was restarted (new epoch): refetch your state".into()
        }
        NotRecovered::HistoryGone => {
            format!("history no longer holds every publication after offset {offset}: refetch your state")
        }
        NotRecovered::TooFarBehind => {
            format!("more than {MAX_REPLAY} publications behind: refetch your state")
        }
        NotRecovered::OverBudget { bytes } => format!(
            "the replay (at least {} KiB) does not fit this connection's outbound budget \
             ({} KiB left of outbound_queue_bytes): refetch your state",
            bytes.div_ceil(1024),
            room / 1024
        ),
    }
}

/// The reply, then the replay's publications, in chunks of about [`CHUNK`] bytes, each rendered
/// when it is taken.
struct Chunks<'a> {
    mode: Mode,
    channel: &'a str,
    epoch: &'a str,
    reply: Option<Message>,
    rest: std::slice::Iter<'a, (u64, Arc<RawValue>)>,
}

impl<'a> Chunks<'a> {
    fn new(
        mode: Mode,
        channel: &'a str,
        epoch: &'a str,
        reply: Message,
        publications: &'a Publications,
    ) -> Self {
        Chunks { mode, channel, epoch, reply: Some(reply), rest: publications.iter() }
    }
}

impl Iterator for Chunks<'_> {
    type Item = Vec<Message>;

    fn next(&mut self) -> Option<Vec<Message>> {
        let mut chunk: Vec<Message> = self.reply.take().into_iter().collect();
        let mut size = chunk.iter().map(Message::len).sum::<usize>();
        while size < CHUNK {
            let Some((offset, data)) = self.rest.next() else { break };
            let text =
                crate::publication::render(self.mode, self.channel, self.epoch, *offset, data);
            size += text.len();
            chunk.push(Message::Text(text));
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publications(n: u64, size: usize) -> Vec<(u64, Arc<RawValue>)> {
        let data = format!("\"{}\"", "x".repeat(size - 2));
        (1..=n).map(|o| (o, Arc::from(RawValue::from_string(data.clone()).unwrap()))).collect()
    }

    #[test]
    fn a_replay_goes_out_in_bounded_chunks_in_order() {
        let missed = publications(200, 1000);
        let reply = Message::text("reply");
        let chunks: Vec<_> = Chunks::new(Mode::Json, "feed", "e1", reply, &missed).collect();
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        for chunk in &chunks {
            let size: usize = chunk.iter().map(Message::len).sum();
            assert!(size < CHUNK + 1200, "a chunk of {size} bytes");
        }
        let all: Vec<_> = chunks.into_iter().flatten().collect();
        assert_eq!(all.len(), 201);
        assert_eq!(all[0], Message::text("reply"));
        for (i, message) in all[1..].iter().enumerate() {
            let p: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
            assert_eq!(p["offset"], i as u64 + 1);
        }
    }

    #[test]
    fn a_replays_weight_bounds_what_is_sent() {
        for mode in [Mode::Json, Mode::Raw] {
            let missed = publications(120, 300);
            let sent: usize = Chunks::new(mode, "news:eu", "e1", Message::text(""), &missed)
                .flatten()
                .map(|m| m.len())
                .sum();
            let weight = weight(mode, "news:eu", "e1", 120, &missed);
            assert!(weight >= sent as u64, "{mode:?}: weight {weight} < sent {sent}");
            assert!(weight <= sent as u64 + 120 * 3, "{mode:?}: weight {weight}, sent {sent}");
        }
    }
}
