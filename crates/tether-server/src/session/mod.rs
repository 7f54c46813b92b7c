//! The session: what a connection's peer may say and what the server answers, as sans-I/O code.
//!
//! Inputs go in — a data message, a frame's arrival, a pong, the clock, the outcome of a
//! broker call the transport made for it — and decisions come out: an [`Action`] (a reply to
//! send, a subscription to register, a publication to make, a [`Close`]), or a [`Tick`] (send a
//! heartbeat ping, wait until, end). The session owns the heartbeat state machine, the inbound
//! rate limit, the connection's token, the command protocol with its access rules and the
//! answer to a `subscribe` with recovery (`answer`). It holds no socket, no task, no timer and
//! knows nothing of WebSocket frames: the connection (`connection/`) carries its decisions out
//! over a WebSocket, and another transport (HTTP streaming, SSE) can carry out the same ones.
//! Time comes in as arguments; its unit tests (`tests`) run without sockets or a runtime.
//!
//! Two things stay with the transport because they are about the wire, not the protocol: which
//! read or write failure maps to which close, and the closing handshake itself.

mod answer;
mod ending;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use answer::weight;
pub(crate) use answer::{history_entries, history_reply, presence_reply, published, Answer};
pub(crate) use ending::{Close, Ending};

use crate::auth::{Access, Grant, TokenError, Verifier};
use crate::config::{channel_option, GatewayConfig};
use crate::metrics::{Metrics, ReasonLabels};
use crate::publication::Mode;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_core::channel;
use tether_core::codec;
use tether_core::heartbeat::{self, Heartbeat};
use tether_core::protocol::{
    ClientCommand, ErrorBody, ErrorCode, ReplyResult, ServerInfo, ServerMessage, StreamPosition,
};
use tether_core::rate::TokenBucket;

/// What the session decides with: the settings, the token verifier, and where it counts.
#[derive(Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub config: &'a GatewayConfig,
    pub verifier: Option<&'a Verifier>,
    pub metrics: &'a Metrics,
}

/// The subscriptions the connection holds, as the session needs to see them (they live in the
/// connection's mailbox, where publishers read them).
pub(crate) trait Held {
    fn holds(&self, channel: &str) -> bool;
    fn count(&self) -> usize;
}

/// A data message from the peer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Inbound<'a> {
    Text(&'a str),
    /// Its bytes mean nothing to the protocol (only the echo sends them back, as they came).
    Binary,
}

/// What the session decided about a data message.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send this to the peer, in order with its publications.
    Reply(ServerMessage),
    /// Raw mode's heartbeat: answer with `raw_pong`.
    Pong,
    /// The conformance echo: send the message back as it came, as a publication.
    Echo,
    /// Nothing to send.
    Ignore,
    /// Register the subscription (publications start queueing), ask the broker for the
    /// channel's position and, with `recover`, what was missed; then [`Session::answer`].
    Subscribe {
        id: u64,
        channel: String,
        recover: Option<StreamPosition>,
    },
    /// The connection authenticated (`connect`): it now belongs to the token's user (before:
    /// `previous`); end the previous token's server-side subscriptions the new one neither
    /// makes nor allows (`dropped`), make the new one's (recovering those in `subs`), then
    /// reply with them.
    Connect {
        id: u64,
        subs: std::collections::BTreeMap<String, StreamPosition>,
        previous: Option<String>,
        dropped: Vec<String>,
    },
    /// A `subscribe` to a channel the server already subscribed this connection to (its
    /// token's): a plain ok, so that a client may attach to it like to any other.
    Held {
        id: u64,
    },
    /// Drop the subscription and reply ok ([`Session::ok`]).
    Unsubscribe {
        id: u64,
        channel: String,
    },
    /// Publish through the node (offsets, history, fan-out), then reply with [`published`].
    Publish {
        id: u64,
        channel: String,
        data: Box<RawValue>,
    },
    /// A quiet spell of `ms` (already capped) is asked for: take one of the node's places for
    /// it, [`Session::begin_quiet`], and reply with [`Session::info`]; or refuse. WebSockets
    /// only: a quiet spell measures the path a WebSocket takes.
    IdleProbe {
        id: u64,
        ms: u64,
    },
    /// Read a page of the channel's history (a subscribed channel), then reply with
    /// [`history_reply`].
    History {
        id: u64,
        channel: String,
        limit: u64,
        since: Option<StreamPosition>,
        reverse: bool,
    },
    /// Ask the broker who is in the channel (a subscribed presence channel), then reply with
    /// [`presence_reply`]: the entries, or with `stats` their counts.
    Presence {
        id: u64,
        channel: String,
        stats: bool,
    },
    Close(Close),
}

/// What the clock calls for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Send a heartbeat ping now, then tick again.
    SendPing,
    /// Nothing until this instant (the next heartbeat, or the token's expiry if sooner).
    Wait(Instant),
    /// The peer is dead: end without a handshake.
    PeerDead,
    Close(Close),
}

/// One connection's protocol state. Small: it lives in every connection, parked or not.
pub(crate) struct Session {
    mode: Mode,
    heartbeat: Heartbeat,
    /// Inbound messages allowed (`max_inbound_rate`), in ms ticks.
    inbound: TokenBucket,
    /// What the connection's token allows (JWT on, and a token given).
    grant: Option<Arc<Grant>>,
    /// A successful reply has carried the connection's client id.
    introduced: bool,
}

impl Session {
    /// A session opening at `now` (`ticks`: the same instant in ms ticks, for the rate limit),
    /// with the grant of a token given at the handshake, if any.
    pub fn new(
        config: &GatewayConfig,
        mode: Mode,
        grant: Option<Arc<Grant>>,
        now: Instant,
        ticks: u64,
    ) -> Self {
        let heartbeat = Heartbeat::new(config.ping_interval, config.pong_timeout, now);
        let inbound = TokenBucket::full(config.max_inbound_rate as f32, ticks);
        Session { mode, heartbeat, inbound, grant, introduced: false }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What the connection's token allows, if it gave one.
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_deref()
    }

    /// Put the connection's client id into the first successful reply (see
    /// `ReplyResult::client`).
    pub fn introduce(&mut self, reply: &mut ServerMessage, client: impl FnOnce() -> String) {
        if let ServerMessage::Reply { result: Some(result), .. } = reply {
            if !self.introduced {
                result.client = Some(client());
                self.introduced = true;
            }
        }
    }

    /// A frame arrived at `now` (any frame: it proves the peer alive). `counted`: a data message
    /// or a ping, which the inbound rate limit counts. A peer over the limit is closed (1008).
    pub fn received(
        &mut self,
        rules: Rules,
        now: Instant,
        ticks: u64,
        counted: bool,
    ) -> Result<(), Close> {
        let rate = rules.config.max_inbound_rate as f32;
        if counted && rate != 0.0 && !self.inbound.take(ticks, rate, rate) {
            rules.metrics.inbound_rate_limited.inc();
            return Err(Close::rate_limited(rules.config));
        }
        self.heartbeat.on_inbound(now);
        Ok(())
    }

    /// How long the peer had been quiet when a frame arrives at `now` (call before
    /// [`Session::received`]).
    pub fn quiet_before(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.heartbeat.last_seen())
    }

    /// A pong to our heartbeat arrived at `now`: the round trip, when it answers our ping.
    pub fn pong(&mut self, rules: Rules, now: Instant) -> Option<Duration> {
        let rtt = self.heartbeat.on_pong(now);
        if let Some(rtt) = rtt {
            rules.metrics.heartbeat_rtt.observe(rtt.as_secs_f64());
        }
        rtt
    }

    /// What the clock calls for at `now`: an expired token ends the connection (4002), a dead
    /// peer too; otherwise a ping, or a wait until the heartbeat or the token's expiry.
    pub fn tick(&mut self, rules: Rules, now: Instant) -> Tick {
        if self.grant.as_ref().is_some_and(|g| g.expired()) {
            return Tick::Close(Close::token_expired());
        }
        match self.heartbeat.poll(now) {
            heartbeat::Action::SendPing => Tick::SendPing,
            heartbeat::Action::PeerDead => {
                rules.metrics.heartbeat_timeouts.inc();
                Tick::PeerDead
            }
            heartbeat::Action::Wait(at) => Tick::Wait(self.or_token_expiry(now, at)),
            heartbeat::Action::QuietOver => Tick::Close(Close::idle_probe_over()),
        }
    }

    /// Begin a quiet spell of `ms` at `now`: no pings, the client's silence agreed, then a
    /// close (1000). The connection holds one of the node's `idle_probes` places meanwhile.
    pub fn begin_quiet(&mut self, now: Instant, ms: u64) {
        self.heartbeat.quiet(now, Duration::from_millis(ms));
    }

    /// Whether a quiet spell was agreed (the connection gives its place back when it ends).
    pub fn is_quiet(&self) -> bool {
        self.heartbeat.is_quiet()
    }

    /// The reply to `info`, and to a granted `idle_probe` (with `idle_ms`).
    pub fn info(rules: Rules, id: u64, idle_ms: Option<u64>) -> ServerMessage {
        let c = rules.config;
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let server = ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            time_ms: since_epoch.map_or(0, |d| d.as_millis() as u64),
            ping_interval_ms: c.ping_interval.as_millis() as u64,
            pong_timeout_ms: c.pong_timeout.as_millis() as u64,
            idle_probe_max_ms: if c.idle_probes == 0 {
                0
            } else {
                c.idle_probe_max.as_millis() as u64
            },
            idle_probes: c.idle_probes,
            idle_ms,
        };
        ServerMessage::ok(id, ReplyResult { server: Some(server), ..ReplyResult::default() })
    }

    /// `idle_probe`: refused here when it cannot be granted whatever the node's load.
    fn idle_probe(rules: Rules, held: &dyn Held, id: u64, ms: u64) -> Action {
        let max = rules.config.idle_probe_max.as_millis() as u64;
        let why = if rules.config.idle_probes == 0 || max == 0 {
            "this server grants no idle probes (idle_probes = 0)"
        } else if held.count() > 0 {
            "an idle probe holds no subscriptions: publications would break its silence"
        } else if ms == 0 {
            "`ms` must be at least 1"
        } else {
            return Action::IdleProbe { id, ms: ms.min(max) };
        };
        let error = ErrorBody::new(ErrorCode::InvalidCommand, why);
        reply(rules, ServerMessage::err(Some(id), error))
    }

    /// When a connection that goes to sleep at `now` must wake: its heartbeat's next ping or
    /// deadline, or the token's expiry. Decides nothing (a ping due now stays due: the
    /// connection wakes at once and sends it).
    pub fn wake_at(&self, now: Instant) -> Instant {
        self.or_token_expiry(now, self.heartbeat.next_due())
    }

    /// `at`, or when the token expires if that comes first.
    fn or_token_expiry(&self, now: Instant, at: Instant) -> Instant {
        self.grant.as_ref().map_or(at, |g| at.min(now + g.remaining()))
    }

    /// A data message from the peer: what to do about it.
    pub fn message(&mut self, rules: Rules, held: &dyn Held, message: Inbound) -> Action {
        let m = rules.metrics;
        match (self.mode, message) {
            (Mode::Raw, Inbound::Text(text)) if text == rules.config.raw_ping => Action::Pong,
            (Mode::Echo, _) => Action::Echo,
            (Mode::Raw, _) => {
                // Raw mode is receive-only: other inbound messages are counted and dropped.
                m.raw_messages_ignored.inc();
                Action::Ignore
            }
            (Mode::Json, Inbound::Text(text)) => {
                let depth = rules.config.max_json_depth;
                if codec::json_depth(text, depth).is_err() {
                    m.json_too_deep.inc();
                }
                match codec::decode_command_limited(text, depth) {
                    Ok(command) => self.command(rules, held, command),
                    Err(e) => reply(rules, e.into_reply()),
                }
            }
            (Mode::Json, Inbound::Binary) => {
                let error = ErrorBody::new(
                    ErrorCode::BinaryNotSupported,
                    "binary frames carry no meaning in tether.v1.json; send JSON text",
                );
                reply(rules, ServerMessage::err(None, error))
            }
        }
    }

    fn command(&mut self, rules: Rules, held: &dyn Held, command: ClientCommand) -> Action {
        match command {
            ClientCommand::Connect { id, token, subs } => self.connect(rules, id, &token, subs),
            ClientCommand::Ping { id } => Action::Reply(Session::ok(id)),
            ClientCommand::Info { id } => Action::Reply(Session::info(rules, id, None)),
            ClientCommand::IdleProbe { id, ms } => Session::idle_probe(rules, held, id, ms),
            ClientCommand::Subscribe { id, channel, recover } => {
                match self.access(rules, &channel, false) {
                    Access::Allowed => {}
                    Access::Forbidden => {
                        let why = format!(
                            "this connection's token does not allow subscribing to `{channel}`"
                        );
                        let error = ErrorBody::new(ErrorCode::Forbidden, why);
                        return reply(rules, ServerMessage::err(Some(id), error));
                    }
                    Access::TokenRequired => return Action::Close(Close::token_required(&channel)),
                    Access::TokenExpired => return Action::Close(Close::token_expired()),
                }
                let server_side =
                    self.grant.as_ref().is_some_and(|g| g.server_channels.contains(&channel));
                if server_side && held.holds(&channel) {
                    return Action::Held { id };
                }
                match subscribable(rules.config, held, &channel) {
                    Ok(()) => Action::Subscribe { id, channel, recover },
                    Err(error) => reply(rules, ServerMessage::err(Some(id), error)),
                }
            }
            ClientCommand::Unsubscribe { id, channel } => {
                if held.holds(&channel) {
                    Action::Unsubscribe { id, channel }
                } else {
                    let why = format!("not subscribed to `{channel}`");
                    let error = ErrorBody::new(ErrorCode::NotSubscribed, why);
                    reply(rules, ServerMessage::err(Some(id), error))
                }
            }
            ClientCommand::Publish { id, channel, data } => match self.publishable(rules, &channel)
            {
                Ok(()) => Action::Publish { id, channel, data },
                Err(error) => reply(rules, ServerMessage::err(Some(id), error)),
            },
            ClientCommand::Presence { id, channel } => presence(rules, held, id, channel, false),
            ClientCommand::PresenceStats { id, channel } => {
                presence(rules, held, id, channel, true)
            }
            ClientCommand::History { id, channel, limit, since, reverse } => {
                let limit = limit.unwrap_or(100);
                let refuse = |code, why: String| {
                    reply(rules, ServerMessage::err(Some(id), ErrorBody::new(code, why)))
                };
                if limit > crate::broker::MAX_HISTORY {
                    let why = format!("`limit` must be at most {}", crate::broker::MAX_HISTORY);
                    return refuse(ErrorCode::InvalidCommand, why);
                }
                if !held.holds(&channel) {
                    return refuse(
                        ErrorCode::NotSubscribed,
                        format!("subscribe to `{channel}` to read its history"),
                    );
                }
                Action::History { id, channel, limit, since, reverse }
            }
        }
    }

    /// The `connect` command: verify the token and keep what it allows. A token that cannot
    /// work closes the connection with advice not to retry (4502); an expired one with advice
    /// to fetch a fresh one and reconnect (4002).
    fn connect(
        &mut self,
        rules: Rules,
        id: u64,
        token: &str,
        subs: std::collections::BTreeMap<String, StreamPosition>,
    ) -> Action {
        // No JWT configured: nothing to check, the connection may do what anyone may.
        let Some(verifier) = rules.verifier else { return Action::Reply(Session::ok(id)) };
        match verifier.verify(token) {
            Ok(grant) => {
                tracing::debug!(sub = ?grant.sub, "authenticated");
                let previous = self.grant.as_ref().and_then(|g| g.sub.clone());
                let dropped = match &self.grant {
                    Some(old) => old
                        .server_channels
                        .iter()
                        .filter(|c| !grant.server_channels.contains(c) && !grant.may_subscribe(c))
                        .cloned()
                        .collect(),
                    None => Vec::new(),
                };
                self.grant = Some(Arc::new(grant));
                Action::Connect { id, subs, previous, dropped }
            }
            Err(TokenError::Expired) => Action::Close(Close::token_expired()),
            Err(TokenError::Invalid(why)) => Action::Close(Close::token_invalid(&why)),
        }
    }

    fn access(&self, rules: Rules, channel: &str, publish: bool) -> Access {
        let anonymous = channel_option(&rules.config.channel, channel, |r| r.anonymous);
        let anonymous = anonymous.unwrap_or(false);
        crate::auth::access(rules.verifier, anonymous, self.grant.as_deref(), channel, publish)
    }

    fn publishable(&self, rules: Rules, channel: &str) -> Result<(), ErrorBody> {
        let cfg = rules.config;
        channel::validate(channel, cfg.max_channel_name_len)
            .map_err(|e| ErrorBody::new(ErrorCode::BadChannel, e.to_string()))?;
        if channel.starts_with(channel::RESERVED_PREFIX)
            || !channel_option(&cfg.channel, channel, |r| r.client_publish).unwrap_or(false)
        {
            return Err(ErrorBody::new(
                ErrorCode::PublishForbidden,
                format!("clients may not publish to `{channel}`; see the `client_publish` setting"),
            ));
        }
        if self.access(rules, channel, true) != Access::Allowed {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!("this connection's token does not allow publishing to `{channel}`"),
            ));
        }
        Ok(())
    }

    /// A successful reply with nothing to report.
    pub fn ok(id: u64) -> ServerMessage {
        ServerMessage::ok(id, ReplyResult::default())
    }
}

/// May this connection subscribe to `channel`: a valid name, not held yet, and within
/// `max_subscriptions`? (Access is checked apart: `?channel=`s were checked at the handshake.)
pub(crate) fn subscribable(
    config: &GatewayConfig,
    held: &dyn Held,
    channel: &str,
) -> Result<(), ErrorBody> {
    channel::validate(channel, config.max_channel_name_len)
        .map_err(|e| ErrorBody::new(ErrorCode::BadChannel, e.to_string()))?;
    if held.holds(channel) {
        return Err(ErrorBody::new(
            ErrorCode::AlreadySubscribed,
            format!("already subscribed to `{channel}`"),
        ));
    }
    if held.count() >= config.max_subscriptions {
        return Err(ErrorBody::new(
            ErrorCode::TooManySubscriptions,
            format!(
                "this connection already holds {} subscriptions (max_subscriptions)",
                config.max_subscriptions
            ),
        ));
    }
    Ok(())
}

/// `presence` / `presence_stats`: only on a channel with presence, by a subscriber of it (who
/// sees its members anyway, as they publish and join).
fn presence(rules: Rules, held: &dyn Held, id: u64, channel: String, stats: bool) -> Action {
    let refuse =
        |code, why: String| reply(rules, ServerMessage::err(Some(id), ErrorBody::new(code, why)));
    if !crate::config::presence_on(&rules.config.channel, &channel) {
        let why =
            format!("`{channel}` keeps no presence; see the `presence` option of `[[channel]]`");
        return refuse(ErrorCode::PresenceDisabled, why);
    }
    if !held.holds(&channel) {
        let why = format!("subscribe to `{channel}` to see who is in it");
        return refuse(ErrorCode::NotSubscribed, why);
    }
    Action::Presence { id, channel, stats }
}

/// A reply, counted when it is an error (`tether_command_errors_total{reason}`).
fn reply(rules: Rules, message: ServerMessage) -> Action {
    count_error(rules.metrics, &message);
    Action::Reply(message)
}

pub(crate) fn count_error(metrics: &Metrics, reply: &ServerMessage) {
    let code = match reply {
        ServerMessage::Reply { error: Some(e), .. } | ServerMessage::Error { error: e } => e.code,
        _ => return,
    };
    metrics.command_errors.get_or_create(&ReasonLabels { reason: code.as_str() }).inc();
}
