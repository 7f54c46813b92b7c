//! Text frames in, commands out; server messages in, text frames out. Pure functions: the
//! connection task calls them and turns every error into an error reply.

use crate::close_code::CloseCode;
use crate::protocol::{
    ClientCommand, ClientInfo, CommandId, Disconnect, ErrorBody, ErrorCode, PresenceChange,
    ReplyResult, ServerMessage, StreamPosition,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A command that could not be decoded, with the id to answer to when one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub id: Option<CommandId>,
    pub error: ErrorBody,
}

impl DecodeError {
    fn new(id: Option<CommandId>, code: ErrorCode, message: impl Into<String>) -> Self {
        DecodeError { id, error: ErrorBody::new(code, message) }
    }

    /// The server message that answers this error.
    pub fn into_reply(self) -> ServerMessage {
        ServerMessage::err(self.id, self.error)
    }
}

/// The loose shape of any command; validated into [`ClientCommand`] by [`decode_command`].
/// (Not a tagged serde enum: that would lose the `id` of a command with a bad `cmd`, and serde
/// cannot flatten a `RawValue`.)
#[derive(Deserialize)]
struct WireCommand<'a> {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    cmd: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    channel: Option<String>,
    /// `Some` whenever present, `null` included (a plain `Option` would read `null` as absent).
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    recover: Option<StreamPosition>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: Option<bool>,
    #[serde(default)]
    subs: Option<std::collections::BTreeMap<String, StreamPosition>>,
    #[serde(default)]
    ms: Option<u64>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// How deeply arrays and objects nest in `json`, if not deeper than `max`; `Err` with the
/// depth reached (`max + 1`) otherwise. A scan of the bytes, no parsing and no recursion, so
/// it is safe to run on anything before a parser sees it.
pub fn json_depth(json: &str, max: usize) -> Result<usize, usize> {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(depth);
                }
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(deepest)
}

/// Decode one text frame of the `tether.v1.json` protocol, refusing nesting deeper than
/// [`crate::defaults::MAX_JSON_DEPTH`].
pub fn decode_command(text: &str) -> Result<ClientCommand, DecodeError> {
    decode_command_limited(text, crate::defaults::MAX_JSON_DEPTH)
}

/// [`decode_command`] with the nesting limit `max_depth` (the command object itself is depth 1).
pub fn decode_command_limited(text: &str, max_depth: usize) -> Result<ClientCommand, DecodeError> {
    if json_depth(text, max_depth).is_err() {
        return Err(DecodeError::new(
            None,
            ErrorCode::MalformedJson,
            format!("JSON nested deeper than {max_depth} levels (max_json_depth)"),
        ));
    }
    let wire: WireCommand = serde_json::from_str(text).map_err(|e| {
        DecodeError::new(None, ErrorCode::MalformedJson, format!("not a JSON command object: {e}"))
    })?;
    let id = match wire.id {
        Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| {
            DecodeError::new(None, ErrorCode::InvalidCommand, "`id` must be a non-negative integer")
        })?,
        Some(_) => {
            return Err(DecodeError::new(
                None,
                ErrorCode::InvalidCommand,
                "`id` must be a non-negative integer",
            ))
        }
        None => {
            return Err(DecodeError::new(None, ErrorCode::InvalidCommand, "missing `id`"));
        }
    };
    let cmd = wire
        .cmd
        .ok_or_else(|| DecodeError::new(Some(id), ErrorCode::InvalidCommand, "missing `cmd`"))?;
    let channel = |wire_channel: Option<String>| {
        wire_channel.ok_or_else(|| {
            DecodeError::new(
                Some(id),
                ErrorCode::InvalidCommand,
                format!("`{cmd}` needs a `channel`"),
            )
        })
    };
    match cmd.as_ref() {
        "subscribe" => Ok(ClientCommand::Subscribe {
            id,
            channel: channel(wire.channel)?,
            recover: wire.recover,
        }),
        "unsubscribe" => Ok(ClientCommand::Unsubscribe { id, channel: channel(wire.channel)? }),
        "publish" => {
            let channel = channel(wire.channel)?;
            let data = wire.data.ok_or_else(|| {
                DecodeError::new(Some(id), ErrorCode::InvalidCommand, "`publish` needs `data`")
            })?;
            Ok(ClientCommand::Publish { id, channel, data })
        }
        "ping" => Ok(ClientCommand::Ping { id }),
        "presence" => Ok(ClientCommand::Presence { id, channel: channel(wire.channel)? }),
        "history" => Ok(ClientCommand::History {
            id,
            channel: channel(wire.channel)?,
            limit: wire.limit,
            since: wire.since,
            reverse: wire.reverse.unwrap_or(false),
        }),
        "presence_stats" => {
            Ok(ClientCommand::PresenceStats { id, channel: channel(wire.channel)? })
        }
        "connect" => {
            let token = wire.token.ok_or_else(|| {
                DecodeError::new(Some(id), ErrorCode::InvalidCommand, "`connect` needs a `token`")
            })?;
            Ok(ClientCommand::Connect { id, token, subs: wire.subs.unwrap_or_default() })
        }
        "info" => Ok(ClientCommand::Info { id }),
        "idle_probe" => {
            let ms = wire.ms.ok_or_else(|| {
                DecodeError::new(Some(id), ErrorCode::InvalidCommand, "`idle_probe` needs `ms`")
            })?;
            Ok(ClientCommand::IdleProbe { id, ms })
        }
        other => Err(DecodeError::new(
            Some(id),
            ErrorCode::UnknownCommand,
            format!(
                "unknown command `{other}`; known: connect, subscribe, unsubscribe, publish, ping, \
                 presence, presence_stats, history, info, idle_probe"
            ),
        )),
    }
}

/// Encode a server message as the text of one frame.
pub fn encode(message: &ServerMessage) -> String {
    if let ServerMessage::Presence { channel, events } = message {
        let infos: Vec<String> =
            events.iter().map(|(_, i)| serde_json::to_string(i).unwrap_or_default()).collect();
        let changes = events.iter().map(|(c, _)| *c).zip(infos.iter().map(String::as_str));
        return encode_presence_batch(channel, changes);
    }
    // Serializing these types cannot fail: no maps with non-string keys, no failing Serialize
    // impls, and the one variant serde skips is written above.
    serde_json::to_string(message).expect("server messages always serialize")
}

/// The wire shape of a command, for encoding. `data` is written verbatim: re-parsing it would
/// reject JSON that `RawValue` accepts (`1e400`, deep nesting) and round big integers.
#[derive(serde::Serialize)]
struct OutCommand<'a> {
    id: CommandId,
    cmd: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recover: Option<&'a StreamPosition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<&'a StreamPosition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reverse: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subs: Option<&'a std::collections::BTreeMap<String, StreamPosition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<u64>,
}

/// Encode a command the way the Rust client sends it.
pub fn encode_command(command: &ClientCommand) -> String {
    let recover = match command {
        ClientCommand::Subscribe { recover, .. } => recover.as_ref(),
        _ => None,
    };
    let (cmd, channel, data) = match command {
        ClientCommand::Subscribe { channel, .. } => ("subscribe", Some(channel.as_str()), None),
        ClientCommand::Unsubscribe { channel, .. } => ("unsubscribe", Some(channel.as_str()), None),
        ClientCommand::Publish { channel, data, .. } => {
            ("publish", Some(channel.as_str()), Some(&**data))
        }
        ClientCommand::Ping { .. } => ("ping", None, None),
        ClientCommand::Connect { .. } => ("connect", None, None),
        ClientCommand::Presence { channel, .. } => ("presence", Some(channel.as_str()), None),
        ClientCommand::PresenceStats { channel, .. } => {
            ("presence_stats", Some(channel.as_str()), None)
        }
        ClientCommand::History { channel, .. } => ("history", Some(channel.as_str()), None),
        ClientCommand::Info { .. } => ("info", None, None),
        ClientCommand::IdleProbe { .. } => ("idle_probe", None, None),
    };
    let ms = match command {
        ClientCommand::IdleProbe { ms, .. } => Some(*ms),
        _ => None,
    };
    let token = match command {
        ClientCommand::Connect { token, .. } => Some(token.as_str()),
        _ => None,
    };
    let (limit, since, reverse) = match command {
        ClientCommand::History { limit, since, reverse, .. } => {
            (*limit, since.as_ref(), reverse.then_some(true))
        }
        _ => (None, None, None),
    };
    let subs = match command {
        ClientCommand::Connect { subs, .. } if !subs.is_empty() => Some(subs),
        _ => None,
    };
    let out = OutCommand {
        id: command.id(),
        cmd,
        channel,
        data,
        recover,
        token,
        limit,
        since,
        reverse,
        subs,
        ms,
    };
    serde_json::to_string(&out).expect("commands always serialize")
}

/// The loose shape of any server message; see [`decode_server_message`].
#[derive(Deserialize)]
struct WireServerMessage {
    #[serde(rename = "type")]
    kind: String,
    id: Option<CommandId>,
    result: Option<ReplyResult>,
    error: Option<ErrorBody>,
    channel: Option<String>,
    offset: Option<u64>,
    epoch: Option<String>,
    data: Option<Box<RawValue>>,
    code: Option<CloseCode>,
    reason: Option<String>,
    reconnect: Option<bool>,
    retry_after_ms: Option<u64>,
    info: Option<ClientInfo>,
    events: Option<Vec<WireEvent>>,
    session: Option<String>,
    ping_interval_ms: Option<u64>,
    pong_timeout_ms: Option<u64>,
    max_batch_bytes: Option<u64>,
}

/// One event of a `presence_batch`.
#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: PresenceChange,
    info: ClientInfo,
}

/// A server message that does not fit the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ServerDecodeError {
    #[error("not a JSON server message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("server message of type `{kind}` lacks `{field}`")]
    Missing { kind: String, field: &'static str },
    #[error("unknown server message type `{0}`")]
    UnknownType(String),
}

/// Decode a server message (used by the Rust client).
pub fn decode_server_message(text: &str) -> Result<ServerMessage, ServerDecodeError> {
    let w: WireServerMessage = serde_json::from_str(text)?;
    let missing = |field| ServerDecodeError::Missing { kind: w.kind.clone(), field };
    Ok(match w.kind.as_str() {
        "reply" => ServerMessage::Reply {
            id: w.id.ok_or_else(|| missing("id"))?,
            result: w.result.map(Box::new),
            error: w.error,
        },
        "error" => ServerMessage::Error { error: w.error.ok_or_else(|| missing("error"))? },
        "publication" => ServerMessage::Publication {
            channel: w.channel.ok_or_else(|| missing("channel"))?,
            offset: w.offset.ok_or_else(|| missing("offset"))?,
            epoch: w.epoch.ok_or_else(|| missing("epoch"))?,
            data: w.data.ok_or_else(|| missing("data"))?,
        },
        "disconnect" => ServerMessage::Disconnect(Disconnect {
            code: w.code.ok_or_else(|| missing("code"))?,
            reason: w.reason.unwrap_or_default(),
            reconnect: w.reconnect.ok_or_else(|| missing("reconnect"))?,
            retry_after_ms: w.retry_after_ms,
        }),
        "subscribed" => ServerMessage::Subscribed {
            channel: w.channel.ok_or_else(|| missing("channel"))?,
            epoch: w.epoch.ok_or_else(|| missing("epoch"))?,
            offset: w.offset.ok_or_else(|| missing("offset"))?,
        },
        "unsubscribed" => {
            ServerMessage::Unsubscribed { channel: w.channel.ok_or_else(|| missing("channel"))? }
        }
        kind @ ("join" | "leave" | "user_join" | "user_leave") => {
            let change = match kind {
                "join" => PresenceChange::Join,
                "leave" => PresenceChange::Leave,
                "user_join" => PresenceChange::UserJoin,
                _ => PresenceChange::UserLeave,
            };
            ServerMessage::Presence {
                channel: w.channel.ok_or_else(|| missing("channel"))?,
                events: vec![(change, w.info.ok_or_else(|| missing("info"))?)],
            }
        }
        "session" => ServerMessage::Session {
            session: w.session.ok_or_else(|| missing("session"))?,
            ping_interval_ms: w.ping_interval_ms.ok_or_else(|| missing("ping_interval_ms"))?,
            pong_timeout_ms: w.pong_timeout_ms.ok_or_else(|| missing("pong_timeout_ms"))?,
            max_batch_bytes: w.max_batch_bytes.ok_or_else(|| missing("max_batch_bytes"))?,
        },
        "ping" => ServerMessage::Ping,
        "presence_batch" => ServerMessage::Presence {
            channel: w.channel.ok_or_else(|| missing("channel"))?,
            events: w
                .events
                .ok_or_else(|| missing("events"))?
                .into_iter()
                .map(|e| (e.kind, e.info))
                .collect(),
        },
        other => return Err(ServerDecodeError::UnknownType(other.to_owned())),
    })
}

/// A presence event as the server sends it alone: `{"type": "join", "channel": C, "info": I}`.
pub fn encode_presence_event(channel: &str, change: PresenceChange, info: &str) -> String {
    format!(
        r#"{{"type":"{}","channel":{},"info":{info}}}"#,
        change.as_str(),
        serde_json::Value::String(channel.to_owned())
    )
}

/// Presence events as the server sends them together, in order:
/// `{"type": "presence_batch", "channel": C, "events": [{"type": "leave", "info": I}, …]}`.
pub fn encode_presence_batch<'a>(
    channel: &str,
    events: impl IntoIterator<Item = (PresenceChange, &'a str)>,
) -> String {
    let mut out = format!(
        r#"{{"type":"presence_batch","channel":{},"events":["#,
        serde_json::Value::String(channel.to_owned())
    );
    for (i, (change, info)) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(r#"{{"type":"{}","info":{info}}}"#, change.as_str()));
    }
    out.push_str("]}");
    out
}

/// The text a raw-mode client receives for a publication: a JSON string as its plain text,
/// any other JSON value as its JSON text.
pub fn raw_text(data: &RawValue) -> String {
    let json = data.get();
    if json.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(json) {
            return s;
        }
    }
    json.to_owned()
}

/// Parse user-supplied data (a CLI argument, say): JSON if it parses, else a JSON string.
pub fn data_from_user_text(text: &str) -> Box<RawValue> {
    match RawValue::from_string(text.to_owned()) {
        Ok(raw) if serde_json::from_str::<serde_json::Value>(text).is_ok() => raw,
        _ => RawValue::from_string(serde_json::Value::String(text.to_owned()).to_string())
            .expect("a serialized JSON string is valid JSON"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_command() {
        assert_eq!(
            decode_command(r#"{"id":1,"cmd":"subscribe","channel":"news"}"#).unwrap(),
            ClientCommand::Subscribe { id: 1, channel: "news".into(), recover: None }
        );
        assert_eq!(
            decode_command(r#"{"id":2,"cmd":"unsubscribe","channel":"news"}"#).unwrap(),
            ClientCommand::Unsubscribe { id: 2, channel: "news".into() }
        );
        assert_eq!(
            decode_command(r#"{"cmd":"ping","id":3}"#).unwrap(),
            ClientCommand::Ping { id: 3 }
        );
        match decode_command(r#"{"id":4,"cmd":"publish","channel":"c","data":{"a":[1,2]}}"#)
            .unwrap()
        {
            ClientCommand::Publish { id, channel, data } => {
                assert_eq!((id, channel.as_str(), data.get()), (4, "c", r#"{"a":[1,2]}"#));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subscribe_with_recovery_round_trips() {
        let text =
            r#"{"id":5,"cmd":"subscribe","channel":"c","recover":{"epoch":"e1","offset":41}}"#;
        let cmd = decode_command(text).unwrap();
        let want = ClientCommand::Subscribe {
            id: 5,
            channel: "c".into(),
            recover: Some(StreamPosition { epoch: "e1".into(), offset: 41 }),
        };
        assert_eq!(cmd, want);
        assert_eq!(encode_command(&cmd), text);
    }

    #[test]
    fn malformed_json_has_no_id() {
        let e = decode_command("{not json").unwrap_err();
        assert_eq!((e.id, e.error.code), (None, ErrorCode::MalformedJson));
        let e = decode_command("[1,2]").unwrap_err();
        assert_eq!(e.error.code, ErrorCode::MalformedJson);
    }

    #[test]
    fn unknown_command_keeps_its_id() {
        let e = decode_command(r#"{"id":9,"cmd":"dance"}"#).unwrap_err();
        assert_eq!((e.id, e.error.code), (Some(9), ErrorCode::UnknownCommand));
        assert!(e.error.message.contains("dance"));
    }

    #[test]
    fn missing_fields_are_invalid_commands() {
        for (text, id) in [
            (r#"{"cmd":"ping"}"#, None),
            (r#"{"id":"x","cmd":"ping"}"#, None),
            (r#"{"id":-1,"cmd":"ping"}"#, None),
            (r#"{"id":5}"#, Some(5)),
            (r#"{"id":5,"cmd":"subscribe"}"#, Some(5)),
            (r#"{"id":6,"cmd":"publish","channel":"c"}"#, Some(6)),
        ] {
            let e = decode_command(text).unwrap_err();
            assert_eq!((e.id, e.error.code), (id, ErrorCode::InvalidCommand), "{text}");
        }
    }

    #[test]
    fn replies_encode_as_documented() {
        let ok = encode(&ServerMessage::ok(1, ReplyResult::default()));
        assert_eq!(ok, r#"{"type":"reply","id":1,"result":{}}"#);
        let err = encode(&ServerMessage::err(None, ErrorBody::new(ErrorCode::MalformedJson, "x")));
        assert_eq!(err, r#"{"type":"error","error":{"code":"malformed_json","message":"x"}}"#);
        let publication = ServerMessage::Publication {
            channel: "c".into(),
            offset: 7,
            epoch: "e1".into(),
            data: RawValue::from_string(r#"{"k":1}"#.into()).unwrap(),
        };
        assert_eq!(
            encode(&publication),
            r#"{"type":"publication","channel":"c","offset":7,"epoch":"e1","data":{"k":1}}"#
        );
    }

    #[test]
    fn server_messages_round_trip() {
        let texts = [
            r#"{"type":"publication","channel":"c","offset":7,"epoch":"e1","data":{"k":[1,"x"]}}"#,
            r#"{"type":"reply","id":3,"result":{"offset":9,"epoch":"e1","recovered":true}}"#,
            r#"{"type":"reply","id":1,"result":{"offset":3,"delivered":2}}"#,
            r#"{"type":"reply","id":2,"error":{"code":"bad_channel","message":"m"}}"#,
            r#"{"type":"error","error":{"code":"malformed_json","message":"m"}}"#,
            r#"{"type":"disconnect","code":1012,"reason":"r","reconnect":true,"retry_after_ms":500}"#,
        ];
        for text in texts {
            assert_eq!(encode(&decode_server_message(text).unwrap()), text);
        }
        assert!(matches!(
            decode_server_message(r#"{"type":"publication","channel":"c"}"#),
            Err(ServerDecodeError::Missing { field: "offset", .. })
        ));
        assert!(matches!(
            decode_server_message(r#"{"type":"x"}"#),
            Err(ServerDecodeError::UnknownType(_))
        ));
    }

    #[test]
    fn command_round_trip_keeps_data_verbatim() {
        for data in ["[1,\"é\"]", "1e400", "123456789012345678901234567890", &"[".repeat(200)] {
            let data = if data.starts_with('[') && data.len() == 200 {
                format!("{data}{}", "]".repeat(200))
            } else {
                data.to_owned()
            };
            let cmd = ClientCommand::Publish {
                id: 3,
                channel: "c".into(),
                data: RawValue::from_string(data.clone()).unwrap(),
            };
            let text = encode_command(&cmd);
            assert!(text.contains(&data), "{text}");
            assert_eq!(text.find("\"id\":3"), Some(1), "{text}");
        }
        let ping = encode_command(&ClientCommand::Ping { id: 9 });
        assert_eq!(ping, r#"{"id":9,"cmd":"ping"}"#);
        assert_eq!(decode_command(&ping).unwrap(), ClientCommand::Ping { id: 9 });
        let probe = ClientCommand::IdleProbe { id: 2, ms: 60_000 };
        assert_eq!(encode_command(&probe), r#"{"id":2,"cmd":"idle_probe","ms":60000}"#);
        assert_eq!(decode_command(&encode_command(&probe)).unwrap(), probe);
        let missing = decode_command(r#"{"id":2,"cmd":"idle_probe"}"#).unwrap_err();
        assert_eq!(missing.error.code, ErrorCode::InvalidCommand);
        let since = Some(StreamPosition { epoch: "e".into(), offset: 3 });
        for cmd in [
            ClientCommand::History {
                id: 7,
                channel: "c".into(),
                limit: Some(2),
                since,
                reverse: true,
            },
            ClientCommand::History {
                id: 8,
                channel: "c".into(),
                limit: None,
                since: None,
                reverse: false,
            },
            ClientCommand::Presence { id: 4, channel: "room".into() },
            ClientCommand::PresenceStats { id: 5, channel: "room".into() },
        ] {
            assert_eq!(decode_command(&encode_command(&cmd)).unwrap(), cmd);
        }
        let missing = decode_command(r#"{"id":6,"cmd":"presence"}"#).unwrap_err();
        assert_eq!((missing.id, missing.error.code), (Some(6), ErrorCode::InvalidCommand));
    }

    #[test]
    fn presence_events_decode_alone_and_in_batches_in_order() {
        let info = r#"{"client":"n-1","user":"ada"}"#;
        let one = encode_presence_event("room", PresenceChange::UserJoin, info);
        let ServerMessage::Presence { channel, events } = decode_server_message(&one).unwrap()
        else {
            panic!("{one}")
        };
        assert_eq!((channel.as_str(), events.len()), ("room", 1));
        assert_eq!(
            (events[0].0, events[0].1.user.as_deref()),
            (PresenceChange::UserJoin, Some("ada"))
        );
        let batch = encode_presence_batch(
            "room",
            [
                (PresenceChange::Leave, info),
                (PresenceChange::UserLeave, info),
                (PresenceChange::Join, r#"{"client":"n-2"}"#),
            ],
        );
        let ServerMessage::Presence { events, .. } = decode_server_message(&batch).unwrap() else {
            panic!("{batch}")
        };
        let kinds: Vec<_> = events.iter().map(|(k, i)| (*k, i.client.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (PresenceChange::Leave, "n-1"),
                (PresenceChange::UserLeave, "n-1"),
                (PresenceChange::Join, "n-2")
            ]
        );
    }

    #[test]
    fn presence_replies_decode_into_their_fields() {
        let text = r#"{"type":"reply","id":1,"result":{"client":"c1","clients":{"c1":{"client":"c1","user":"ada","info":{"name":"Ada"}}},"num_clients":1,"num_users":1}}"#;
        let ServerMessage::Reply { result: Some(r), .. } = decode_server_message(text).unwrap()
        else {
            panic!("a reply")
        };
        assert_eq!(r.client.as_deref(), Some("c1"));
        let entry = &r.clients.unwrap()["c1"];
        assert_eq!(entry.user.as_deref(), Some("ada"));
        assert_eq!(entry.info, Some(serde_json::json!({"name": "Ada"})));
        assert_eq!((r.num_clients, r.num_users), (Some(1), Some(1)));
    }

    #[test]
    fn raw_text_unwraps_strings_only() {
        assert_eq!(raw_text(&data_from_user_text("hello")), "hello");
        assert_eq!(raw_text(&data_from_user_text(r#""quoted""#)), "quoted");
        assert_eq!(raw_text(&data_from_user_text(r#"{"a":1}"#)), r#"{"a":1}"#);
        assert_eq!(raw_text(&data_from_user_text("42")), "42");
    }
}
