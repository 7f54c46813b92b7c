//! The `tether.v1.json` wire protocol, as Rust types. `docs/protocol.md` is the prose version.
//!
//! Client → server: commands, each with an `id` the reply echoes:
//! `{"id":1,"cmd":"subscribe","channel":"news"}`, `unsubscribe`, `publish` (with `data`), `ping`.
//!
//! Server → client, tagged by `type`: `reply` (to a command), `error` (to input that carried no
//! usable id), `publication` (a message on a subscribed channel), and `disconnect` (the advice
//! sent just before the server closes: code, reason, whether to reconnect and when).

use crate::close_code::CloseCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// A command id chosen by the client; replies carry it back.
pub type CommandId = u64;

/// A place in a channel's stream: the `offset` of a publication within an `epoch`. Offsets grow
/// by one per publication; the epoch changes when the stream's history is lost (a restart
/// without persistence), so an offset is only meaningful with its epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub epoch: String,
    pub offset: u64,
}

/// A decoded, validated client command.
#[derive(Debug, Clone)]
pub enum ClientCommand {
    /// `recover`: the last position the client saw; the server replays what came after it.
    Subscribe {
        id: CommandId,
        channel: String,
        recover: Option<StreamPosition>,
    },
    Unsubscribe {
        id: CommandId,
        channel: String,
    },
    Publish {
        id: CommandId,
        channel: String,
        data: Box<RawValue>,
    },
    Ping {
        id: CommandId,
    },
    /// Authenticate this connection with a JWT (kept out of URLs and their logs). The server
    /// then subscribes it to the channels the token makes server-side (the user's channel, the
    /// `channels` claim); `subs` holds the last position seen on those of them the client held
    /// before a reconnect, to recover from.
    Connect {
        id: CommandId,
        token: String,
        subs: std::collections::BTreeMap<String, StreamPosition>,
    },
    /// Who is subscribed to a presence channel (the asker must be subscribed to it).
    Presence {
        id: CommandId,
        channel: String,
    },
    /// How many clients and distinct users are subscribed to a presence channel.
    PresenceStats {
        id: CommandId,
        channel: String,
    },
    /// Publications kept in a subscribed channel's history: the latest `limit`, or the first
    /// `limit` after `since`; newest first with `reverse`.
    History {
        id: CommandId,
        channel: String,
        limit: Option<u64>,
        since: Option<StreamPosition>,
        reverse: bool,
    },
    /// The server's version, heartbeat settings and clock (`tether doctor`).
    Info {
        id: CommandId,
    },
    /// Agree a quiet spell of up to `ms`, to measure the path's idle timeout (`tether doctor
    /// --idle-probe`): the server sends nothing, not even pings, and does not count the
    /// client's silence; at its end it closes with 1000.
    IdleProbe {
        id: CommandId,
        ms: u64,
    },
}

impl PartialEq for ClientCommand {
    fn eq(&self, other: &Self) -> bool {
        use ClientCommand::*;
        match (self, other) {
            (
                Subscribe { id: a, channel: c, recover: x },
                Subscribe { id: b, channel: d, recover: y },
            ) => a == b && c == d && x == y,
            (Unsubscribe { id: a, channel: c }, Unsubscribe { id: b, channel: d }) => {
                a == b && c == d
            }
            (Publish { id: a, channel: c, data: x }, Publish { id: b, channel: d, data: y }) => {
                a == b && c == d && x.get() == y.get()
            }
            (Ping { id: a }, Ping { id: b }) | (Info { id: a }, Info { id: b }) => a == b,
            (IdleProbe { id: a, ms: x }, IdleProbe { id: b, ms: y }) => a == b && x == y,
            (Connect { id: a, token: x, subs: s }, Connect { id: b, token: y, subs: t }) => {
                a == b && x == y && s == t
            }
            (
                History { id: a, channel: c, limit: l, since: s, reverse: r },
                History { id: b, channel: d, limit: m, since: t, reverse: q },
            ) => a == b && c == d && l == m && s == t && r == q,
            (Presence { id: a, channel: c }, Presence { id: b, channel: d })
            | (PresenceStats { id: a, channel: c }, PresenceStats { id: b, channel: d }) => {
                a == b && c == d
            }
            _ => false,
        }
    }
}

impl ClientCommand {
    pub fn id(&self) -> CommandId {
        match self {
            ClientCommand::Subscribe { id, .. }
            | ClientCommand::Unsubscribe { id, .. }
            | ClientCommand::Publish { id, .. }
            | ClientCommand::Ping { id }
            | ClientCommand::Info { id }
            | ClientCommand::IdleProbe { id, .. }
            | ClientCommand::Connect { id, .. }
            | ClientCommand::Presence { id, .. }
            | ClientCommand::PresenceStats { id, .. }
            | ClientCommand::History { id, .. } => *id,
        }
    }
}

/// Why a command failed. Serialized as a snake_case string in error replies; stable API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame was not JSON, or not a JSON object.
    MalformedJson,
    /// `cmd` named a command this server does not know.
    UnknownCommand,
    /// The command lacked a field or had one of the wrong type.
    InvalidCommand,
    /// Binary frames carry no meaning in `tether.v1.json`.
    BinaryNotSupported,
    /// The channel name broke the length or charset rules.
    BadChannel,
    /// The connection already holds `max_subscriptions` channels.
    TooManySubscriptions,
    /// Subscribe to a channel already subscribed on this connection.
    AlreadySubscribed,
    /// Unsubscribe from a channel not subscribed on this connection.
    NotSubscribed,
    /// Client publishing is not enabled for this channel.
    PublishForbidden,
    /// The broker could not take the publication (e.g. unreachable backplane).
    Unavailable,
    /// The server failed unexpectedly; the message says how.
    Internal,
    /// The connection's token does not allow this channel.
    Forbidden,
    /// `presence` or `presence_stats` on a channel without presence (see the server's
    /// `[[channel]]` blocks).
    PresenceDisabled,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::InvalidCommand => "invalid_command",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::PublishForbidden => "publish_forbidden",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PresenceDisabled => "presence_disabled",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of an error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into() }
    }
}

/// What a successful command returns. Empty fields are omitted on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyResult {
    /// `publish`: the offset the publication got in its channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// `publish`: subscribers on this node it was handed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    /// `subscribe` and `publish`: the channel's current epoch (`offset` is then its top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// `subscribe` with `recover`: whether every publication after the given position was
    /// replayed (they follow the reply). `false`: history no longer covers the gap or the epoch
    /// changed — refetch your state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// With `recovered: false`: why, in words (history no longer covers the gap, the epoch
    /// changed, or the replay would not fit the connection's outbound budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The first successful reply on a connection: the id the server gave this connection
    /// (how other clients see it in presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// `presence`: every subscription of the channel, by client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<std::collections::BTreeMap<String, ClientInfo>>,
    /// `presence_stats`: subscribed clients...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_clients: Option<u64>,
    /// ...and distinct users among them (clients without a user count once each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_users: Option<u64>,
    /// `history`: the publications, with `epoch` and `offset` (the channel's top). With
    /// `recovered: false` and a `reason`, history no longer covers the position asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publications: Option<Vec<HistoryEntry>>,
    /// `connect`: the server-side subscriptions it made, by channel (their recoveries' replays
    /// follow the reply, in this order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<std::collections::BTreeMap<String, ServerSubscription>>,
    /// `info` and `idle_probe`: what the server is, how it beats, and its clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerInfo>,
}

/// The answer to `info`: for a diagnosis of the path (`tether doctor`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    /// The server's clock when it answered, ms since the Unix epoch.
    pub time_ms: u64,
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    /// The longest quiet spell `idle_probe` grants (0: none are granted)...
    pub idle_probe_max_ms: u64,
    /// ...and how many may run at once on this server.
    pub idle_probes: u32,
    /// `idle_probe`: the quiet spell granted, in ms (at most `idle_probe_max_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

/// A subscription the server made for the connection (`connect`, or the API's `subscribe`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSubscription {
    /// The channel's epoch and top offset when it was made.
    pub epoch: String,
    pub offset: u64,
    /// As for `subscribe` with `recover`: present when `connect` gave a position for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One publication of a `history` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub offset: u64,
    pub data: serde_json::Value,
}

/// One client in a channel's presence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The connection's id (see [`ReplyResult::client`]).
    pub client: String,
    /// The user its token names (`sub`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The token's `info` claim, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// A change to a channel's membership, sent to its subscribers on channels with `join_leave`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceChange {
    /// A subscription began.
    Join,
    /// A subscription ended.
    Leave,
    /// A user's first subscription to the channel began (on any node).
    UserJoin,
    /// A user's last subscription to the channel ended.
    UserLeave,
}

impl PresenceChange {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceChange::Join => "join",
            PresenceChange::Leave => "leave",
            PresenceChange::UserJoin => "user_join",
            PresenceChange::UserLeave => "user_leave",
        }
    }
}

/// The advice sent before the server closes a `tether.v1.json` connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    pub code: CloseCode,
    pub reason: String,
    /// Whether reconnecting can help. `false` means: do not retry.
    pub reconnect: bool,
    /// When set, wait between this and twice this before reconnecting (spreads a restart's clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Every message the server sends on a `tether.v1.json` connection. (Decoded by
/// [`crate::codec::decode_server_message`]: serde's tagged enums cannot hold a `RawValue`.)
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Reply {
        id: CommandId,
        /// Boxed: a result holds many optional fields, and every message would carry its size.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Box<ReplyResult>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    Error {
        error: ErrorBody,
    },
    Publication {
        channel: String,
        offset: u64,
        epoch: String,
        data: Box<RawValue>,
    },
    Disconnect(Disconnect),
    /// The server subscribed this connection to `channel` (the API's `subscribe`): its
    /// publications follow, after `offset`.
    Subscribed {
        channel: String,
        epoch: String,
        offset: u64,
    },
    /// The server ended this connection's subscription to `channel` (the API's `unsubscribe`).
    Unsubscribed {
        channel: String,
    },
    /// The first message of a streaming session (HTTP-streaming or SSE, where the client has
    /// no socket to write to): the id its commands name when they are `POST`ed to
    /// `/stream/send`, and the heartbeat it must keep.
    Session {
        session: String,
        ping_interval_ms: u64,
        pong_timeout_ms: u64,
        /// The largest body a `POST /stream/send` may have (the server's `max_message_size`):
        /// clients split what waits into batches of at most this.
        max_batch_bytes: u64,
    },
    /// A streaming session's heartbeat: answer within `pong_timeout_ms` with any command (a
    /// `ping` does), or the server ends the session as dead.
    Ping,
    /// Membership changes of one channel, in order: one (`"type": "join"` etc., with `info`)
    /// or a batch (`"type": "presence_batch"`, with `events`), which a busy channel sends at
    /// most once per interval. (The server writes these itself; decoded for the Rust client.)
    #[serde(skip)]
    Presence {
        channel: String,
        events: Vec<(PresenceChange, ClientInfo)>,
    },
}

impl ServerMessage {
    pub fn ok(id: CommandId, result: ReplyResult) -> Self {
        ServerMessage::Reply { id, result: Some(Box::new(result)), error: None }
    }

    pub fn err(id: Option<CommandId>, error: ErrorBody) -> Self {
        match id {
            Some(id) => ServerMessage::Reply { id, result: None, error: Some(error) },
            None => ServerMessage::Error { error },
        }
    }
}
