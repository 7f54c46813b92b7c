//! The answer to a `subscribe` once the broker has said where the channel stands (and, for a
//! recovery, what the client missed), and the replies to a client's `publish` and `presence`.
//!
//! A replay counts against `outbound_queue_bytes`: the publications it would send, as rendered,
//! must fit in what the budget leaves beside what is queued for the connection now (`room`).
//! One that does not fit is answered `recovered: false` with a reason and is never rendered
//! (the Redis broker does not even read it whole: the budget goes to its script). The client
//! refetches its state, as after any gap that history does not cover. Without this, one
//! `subscribe` could make the server render up to 10,000 × 64 KiB into one buffer, and anyone
//! could ask for it up to `max_subscriptions` times per connection.

use super::{count_error, Close, Rules, Session};
use crate::broker::{BrokerError, History, NotRecovered, PublishReceipt, MAX_REPLAY};
use crate::metrics::OutcomeLabels;
use crate::presence::Member;
use crate::publication::Mode;
use serde_json::value::RawValue;
use std::sync::Arc;
use tether_core::protocol::{
    ErrorBody, ErrorCode, HistoryEntry, ReplyResult, ServerMessage, StreamPosition,
};

/// Missed publications, oldest first, with their offsets.
pub(crate) type Publications = Vec<(u64, Arc<RawValue>)>;

/// How a `subscribe` is answered.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Set the subscription's watermark to (`epoch`, `top`) — queued live publications at or
    /// below it are duplicates of the replay — then send `reply`, then `replay`, with nothing
    /// between them.
    Replay {
        reply: ServerMessage,
        epoch: Arc<str>,
        top: u64,
        replay: Publications,
    },
    /// Drop the subscription just registered and send this error; the connection stays.
    Refuse(ServerMessage),
    Close(Close),
}

impl Session {
    /// Answer `subscribe { id, channel, recover }` with what the broker said. `room`: the bytes
    /// the connection's outbound budget has left now.
    pub fn answer(
        &self,
        rules: Rules,
        id: u64,
        channel: &str,
        recover: Option<&StreamPosition>,
        history: Result<History, BrokerError>,
        room: u64,
    ) -> Answer {
        let history = match history {
            Ok(h) => h,
            Err(e @ BrokerError::Limit(_)) => {
                // A limit: refuse this subscription, keep the connection.
                let reply = ServerMessage::err(
                    Some(id),
                    ErrorBody::new(ErrorCode::Unavailable, e.to_string()),
                );
                count_error(rules.metrics, &reply);
                return Answer::Refuse(reply);
            }
            Err(e) => {
                tracing::warn!(channel, error = %e, "subscribe failed: broker unavailable");
                return Answer::Close(Close::broker_unavailable());
            }
        };
        let epoch: Arc<str> = Arc::from(history.position.epoch.as_str());
        let top = history.position.offset;
        let (mut replay, mut not_recovered) = (history.publications, history.not_recovered);
        if history.recovered == Some(true) {
            // The broker bounded the data; the envelopes count too.
            let bytes = weight(self.mode, channel, &epoch, top, &replay);
            if bytes > room {
                (replay, not_recovered) = (Vec::new(), Some(NotRecovered::OverBudget { bytes }));
            }
        }
        let recovered = history.recovered.map(|_| not_recovered.is_none());
        if recovered.is_some() {
            let outcome = match not_recovered {
                None => "recovered",
                Some(NotRecovered::OverBudget { .. }) => "over_budget",
                Some(_) => "not_recovered",
            };
            rules.metrics.recoveries.get_or_create(&OutcomeLabels { outcome }).inc();
        }
        let reason = not_recovered.map(|why| explain(why, recover, room));
        if let Some(reason) = &reason {
            tracing::debug!(channel, reason, "subscribe not recovered");
        }
        let result = ReplyResult {
            offset: Some(top),
            epoch: Some(history.position.epoch),
            recovered,
            reason,
            ..ReplyResult::default()
        };
        Answer::Replay { reply: ServerMessage::ok(id, result), epoch, top, replay }
    }
}

/// The reply to a client's `publish`, from what the node made of it.
pub(crate) fn published<E: std::fmt::Display>(
    rules: Rules,
    id: u64,
    receipt: Result<PublishReceipt, E>,
) -> ServerMessage {
    match receipt {
        Ok(receipt) => ServerMessage::ok(
            id,
            ReplyResult {
                offset: Some(receipt.offset),
                delivered: Some(receipt.delivered),
                epoch: Some(receipt.epoch.to_string()),
                ..ReplyResult::default()
            },
        ),
        Err(e) => {
            let reply =
                ServerMessage::err(Some(id), ErrorBody::new(ErrorCode::Unavailable, e.to_string()));
            count_error(rules.metrics, &reply);
            reply
        }
    }
}

/// A history page's publications as the protocol shows them.
pub(crate) fn history_entries(publications: &[(u64, Arc<RawValue>)]) -> Vec<HistoryEntry> {
    publications
        .iter()
        .map(|(offset, data)| HistoryEntry {
            offset: *offset,
            data: serde_json::from_str(data.get()).unwrap_or_default(),
        })
        .collect()
}

/// The reply to `history` with the page the node read.
pub(crate) fn history_reply<E: std::fmt::Display>(
    rules: Rules,
    id: u64,
    page: Result<crate::broker::HistoryPage, E>,
) -> ServerMessage {
    match page {
        Ok(page) => ServerMessage::ok(
            id,
            ReplyResult {
                epoch: Some(page.epoch),
                offset: Some(page.top),
                publications: Some(history_entries(&page.publications)),
                recovered: page.incomplete.is_some().then_some(false),
                reason: page.incomplete,
                ..ReplyResult::default()
            },
        ),
        Err(e) => {
            let error = ErrorBody::new(ErrorCode::Unavailable, e.to_string());
            let reply = ServerMessage::err(Some(id), error);
            count_error(rules.metrics, &reply);
            reply
        }
    }
}

/// The reply to `presence` (`stats`: `presence_stats`) with what the broker answered.
pub(crate) fn presence_reply<E: std::fmt::Display>(
    rules: Rules,
    id: u64,
    stats: bool,
    members: Result<Vec<Arc<Member>>, E>,
) -> ServerMessage {
    match members {
        Ok(members) if stats => {
            let (clients, users) = crate::presence::stats(&members);
            let result = ReplyResult {
                num_clients: Some(clients),
                num_users: Some(users),
                ..Default::default()
            };
            ServerMessage::ok(id, result)
        }
        Ok(members) => {
            let clients = members.iter().map(|m| (m.client.to_string(), m.to_info())).collect();
            ServerMessage::ok(id, ReplyResult { clients: Some(clients), ..Default::default() })
        }
        Err(e) => {
            let error = ErrorBody::new(ErrorCode::Unavailable, e.to_string());
            let reply = ServerMessage::err(Some(id), error);
            count_error(rules.metrics, &reply);
            reply
        }
    }
}

/// What a replay of `publications` weighs as sent, at most: each one's data plus the envelope of
/// a publication at offset `top` (the longest offset among them).
pub(crate) fn weight(
    mode: Mode,
    channel: &str,
    epoch: &str,
    top: u64,
    publications: &[(u64, Arc<RawValue>)],
) -> u64 {
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
