//! Writing the answer to a `subscribe`: the reply, then the recovery replay the session
//! decided on (see `session::answer` for what fits the connection's budget), streamed.
//!
//! A replay is written in chunks of about [`CHUNK`] bytes, each rendered just before it goes
//! out, while the task holds the write side: live publications queue behind it, against the
//! same budget, so that none can come between the reply and the replay's end. What a replay holds
//! in memory is one chunk, whatever its length; the publications themselves are shared with the
//! history (memory broker) or were read within the budget (Redis).

use super::{feed, within, Connection, WriteFailed, Ws};
use crate::publication::Mode;
use futures_util::SinkExt;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

/// Rendered bytes of a replay written per flush (at least one publication each).
const CHUNK: usize = 64 * 1024;

type Publications = [(u64, Arc<RawValue>)];

impl Connection {
    /// Write the reply and the replay chunk by chunk, each within `write_timeout`, holding the
    /// write side from the first to the last. Live publications that overflow the queue
    /// meanwhile end the connection as a slow consumer at once, as in `write_batch`.
    pub(super) async fn write_replay(
        &self,
        ws: &mut Ws,
        replay: &mut (dyn Iterator<Item = Vec<Message>> + Send),
    ) -> Result<(), WriteFailed> {
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

/// The reply, then the replay's publications, in chunks of about [`CHUNK`] bytes, each rendered
/// when it is taken.
pub(super) struct Chunks<'a> {
    mode: Mode,
    channel: &'a str,
    epoch: &'a str,
    reply: Option<Message>,
    rest: std::slice::Iter<'a, (u64, Arc<RawValue>)>,
}

impl<'a> Chunks<'a> {
    pub(super) fn new(
        mode: Mode,
        channel: &'a str,
        epoch: &'a str,
        reply: impl Into<Option<Message>>,
        publications: &'a Publications,
    ) -> Self {
        Chunks { mode, channel, epoch, reply: reply.into(), rest: publications.iter() }
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
            let weight = crate::session::weight(mode, "news:eu", "e1", 120, &missed);
            assert!(weight >= sent as u64, "{mode:?}: weight {weight} < sent {sent}");
            assert!(weight <= sent as u64 + 120 * 3, "{mode:?}: weight {weight}, sent {sent}");
        }
    }
}
