//! The session without sockets, tasks or a runtime: messages in, decisions out, time as an
//! argument (in the manner of python-websockets' sans-I/O protocol tests).

use super::*;
use crate::auth::ClaimRules;
use crate::broker::{BrokerError, History, NotRecovered};
use crate::metrics::OutcomeLabels;
use std::collections::HashSet;
use tether_core::channel::ChannelPattern;
use tether_core::close_code::CloseCode;

const SECRET: &str = "s3cret-s3cret-s3cret";

/// The subscriptions a test connection holds.
#[derive(Default)]
struct Subs(HashSet<String>);

impl Held for Subs {
    fn holds(&self, channel: &str) -> bool {
        self.0.contains(channel)
    }

    fn count(&self) -> usize {
        self.0.len()
    }
}

struct World {
    config: GatewayConfig,
    verifier: Option<Verifier>,
    metrics: Metrics,
}

impl World {
    fn new(mut config: GatewayConfig) -> Self {
        config.fold_channel_settings(); // as the gateway does
        World { config, verifier: None, metrics: Metrics::new() }
    }

    fn with_jwt(mut self) -> Self {
        self.verifier = Some(Verifier::hs256(SECRET, ClaimRules::default()));
        self
    }

    fn rules(&self) -> Rules<'_> {
        Rules { config: &self.config, verifier: self.verifier.as_ref(), metrics: &self.metrics }
    }

    fn session(&self, mode: Mode, t0: Instant) -> Session {
        Session::new(&self.config, mode, None, t0, 0)
    }

    fn errors(&self, reason: &'static str) -> u64 {
        self.metrics.command_errors.get_or_create(&ReasonLabels { reason }).get()
    }
}

fn json(s: &mut Session, w: &World, held: &Subs, text: &str) -> Action {
    s.message(w.rules(), held, Inbound::Text(text))
}

/// The reply's JSON, for assertions on what the peer would read.
fn sent(action: Action) -> serde_json::Value {
    match action {
        Action::Reply(reply) => serde_json::from_str(&codec::encode(&reply)).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn error_code(action: Action) -> String {
    let reply = sent(action);
    reply["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error: {reply}")).to_owned()
}

fn closed(action: Action) -> Close {
    match action {
        Action::Close(close) => close,
        other => panic!("expected a close, got {other:?}"),
    }
}

fn token(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A ping every 100 ms, dead after 50 ms more of silence.
fn quick_heartbeat() -> GatewayConfig {
    GatewayConfig { ping_interval: ms(100), pong_timeout: ms(50), ..GatewayConfig::default() }
}

#[test]
fn commands_get_replies_with_their_ids() {
    let w = World::new(GatewayConfig::default());
    let (mut s, held) = (w.session(Mode::Json, Instant::now()), Subs::default());
    let reply = sent(json(&mut s, &w, &held, r#"{"id":7,"cmd":"ping"}"#));
    assert_eq!(reply["id"], 7);
    assert!(reply.get("error").is_none(), "{reply}");
    // Without JWT, `connect` has nothing to check.
    let reply = sent(json(&mut s, &w, &held, r#"{"id":8,"cmd":"connect","token":"x"}"#));
    assert_eq!(reply["id"], 8);
}

#[test]
fn bad_input_gets_an_error_reply_and_is_counted() {
    let w = World::new(GatewayConfig { max_json_depth: 4, ..GatewayConfig::default() });
    let (mut s, held) = (w.session(Mode::Json, Instant::now()), Subs::default());
    assert_eq!(error_code(json(&mut s, &w, &held, "not json")), "malformed_json");
    assert_eq!(error_code(json(&mut s, &w, &held, r#"{"id":1,"cmd":"dance"}"#)), "unknown_command");
    let deep = r#"{"id":1,"cmd":"ping","x":[[[[[1]]]]]}"#;
    assert_eq!(error_code(json(&mut s, &w, &held, deep)), "malformed_json");
    assert_eq!(w.metrics.json_too_deep.get(), 1);
    assert_eq!(w.errors("malformed_json"), 2);
    let binary = s.message(w.rules(), &held, Inbound::Binary);
    assert_eq!(error_code(binary), "binary_not_supported");
}

#[test]
fn raw_mode_answers_its_ping_and_ignores_the_rest() {
    let w = World::new(GatewayConfig::default());
    let (mut s, held) = (w.session(Mode::Raw, Instant::now()), Subs::default());
    let ping = w.config.raw_ping.clone();
    assert!(matches!(s.message(w.rules(), &held, Inbound::Text(&ping)), Action::Pong));
    assert!(matches!(json(&mut s, &w, &held, r#"{"id":1,"cmd":"ping"}"#), Action::Ignore));
    assert!(matches!(s.message(w.rules(), &held, Inbound::Binary), Action::Ignore));
    assert_eq!(w.metrics.raw_messages_ignored.get(), 2);
    let mut echo = w.session(Mode::Echo, Instant::now());
    assert!(matches!(echo.message(w.rules(), &held, Inbound::Binary), Action::Echo));
}

#[test]
fn subscribe_checks_the_name_duplicates_and_the_limit() {
    let w = World::new(GatewayConfig { max_subscriptions: 2, ..GatewayConfig::default() });
    let mut s = w.session(Mode::Json, Instant::now());
    let mut held = Subs::default();
    let sub = |id: u64, channel: &str| {
        format!(r#"{{"id":{id},"cmd":"subscribe","channel":"{channel}"}}"#)
    };
    assert_eq!(error_code(json(&mut s, &w, &held, &sub(1, "bad channel!"))), "bad_channel");
    match json(&mut s, &w, &held, &sub(2, "news")) {
        Action::Subscribe { id: 2, channel, recover: None } => assert_eq!(channel, "news"),
        other => panic!("{other:?}"),
    }
    held.0.insert("news".into());
    assert_eq!(error_code(json(&mut s, &w, &held, &sub(3, "news"))), "already_subscribed");
    held.0.insert("sport".into());
    assert_eq!(error_code(json(&mut s, &w, &held, &sub(4, "weather"))), "too_many_subscriptions");
    let recover =
        r#"{"id":5,"cmd":"subscribe","channel":"news","recover":{"epoch":"e1","offset":3}}"#;
    held.0.clear();
    match json(&mut s, &w, &held, recover) {
        Action::Subscribe { recover: Some(position), .. } => {
            assert_eq!((position.epoch.as_str(), position.offset), ("e1", 3));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsubscribe_needs_a_subscription() {
    let w = World::new(GatewayConfig::default());
    let (mut s, mut held) = (w.session(Mode::Json, Instant::now()), Subs::default());
    let unsub = r#"{"id":1,"cmd":"unsubscribe","channel":"news"}"#;
    assert_eq!(error_code(json(&mut s, &w, &held, unsub)), "not_subscribed");
    held.0.insert("news".into());
    assert!(matches!(json(&mut s, &w, &held, unsub), Action::Unsubscribe { id: 1, .. }));
}

#[test]
fn clients_publish_only_where_client_publish_allows() {
    let config = GatewayConfig {
        client_publish: vec![ChannelPattern::new("chat:*"), ChannelPattern::new("_tether:*")],
        ..GatewayConfig::default()
    };
    let w = World::new(config);
    let (mut s, held) = (w.session(Mode::Json, Instant::now()), Subs::default());
    let publish = |channel: &str| {
        format!(r#"{{"id":1,"cmd":"publish","channel":"{channel}","data":{{"a":1}}}}"#)
    };
    match json(&mut s, &w, &held, &publish("chat:1")) {
        Action::Publish { channel, data, .. } => {
            assert_eq!((channel.as_str(), data.get()), ("chat:1", r#"{"a":1}"#));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error_code(json(&mut s, &w, &held, &publish("news"))), "publish_forbidden");
    // Reserved for the server whatever `client_publish` says.
    let reserved = publish("_tether:dashboard");
    assert_eq!(error_code(json(&mut s, &w, &held, &reserved)), "publish_forbidden");
}

#[test]
fn tokens_decide_access_and_bad_ones_close() {
    let config = GatewayConfig {
        anonymous_channels: vec![ChannelPattern::new("public:*")],
        client_publish: vec![ChannelPattern::new("*")],
        ..GatewayConfig::default()
    };
    let w = World::new(config).with_jwt();
    let (mut s, held) = (w.session(Mode::Json, Instant::now()), Subs::default());
    let sub = |channel: &str| format!(r#"{{"id":1,"cmd":"subscribe","channel":"{channel}"}}"#);
    // No token yet: anonymous channels only.
    assert!(matches!(json(&mut s, &w, &held, &sub("public:a")), Action::Subscribe { .. }));
    let close = closed(json(&mut s, &w, &held, &sub("news:eu")));
    assert_eq!(close.code, CloseCode::TOKEN_REQUIRED);
    // A token for news:*, publishing to chat:ada.
    let exp = unix_now() + 600;
    let claims = serde_json::json!({"sub": "ada", "exp": exp, "subscribe": ["news:*"], "publish": ["chat:ada"]});
    let connect = format!(r#"{{"id":2,"cmd":"connect","token":"{}"}}"#, token(claims));
    match json(&mut s, &w, &held, &connect) {
        Action::Connect { id: 2, subs, previous: None, dropped } => {
            assert!(subs.is_empty() && dropped.is_empty())
        }
        other => panic!("expected the connect to be carried out, got {other:?}"),
    }
    assert!(matches!(json(&mut s, &w, &held, &sub("news:eu")), Action::Subscribe { .. }));
    assert_eq!(error_code(json(&mut s, &w, &held, &sub("admin"))), "forbidden");
    let publish =
        |channel: &str| format!(r#"{{"id":3,"cmd":"publish","channel":"{channel}","data":1}}"#);
    assert!(matches!(json(&mut s, &w, &held, &publish("chat:ada")), Action::Publish { .. }));
    assert_eq!(error_code(json(&mut s, &w, &held, &publish("chat:bob"))), "forbidden");
    // A forged token: do not retry (4502); an expired one: fetch a fresh one (4002).
    let forged = r#"{"id":4,"cmd":"connect","token":"a.b.c"}"#;
    assert_eq!(closed(json(&mut s, &w, &held, forged)).code, CloseCode::TOKEN_INVALID);
    let old = serde_json::json!({"sub": "ada", "exp": unix_now() - 3600});
    let expired = format!(r#"{{"id":5,"cmd":"connect","token":"{}"}}"#, token(old));
    assert_eq!(closed(json(&mut s, &w, &held, &expired)).code, CloseCode::TOKEN_EXPIRED);
}

#[test]
fn a_silent_peer_is_pinged_then_declared_dead_in_bounded_time() {
    let w = World::new(quick_heartbeat());
    let t0 = Instant::now();
    let mut s = w.session(Mode::Json, t0);
    assert_eq!(s.tick(w.rules(), t0), Tick::Wait(t0 + ms(100)));
    assert_eq!(s.tick(w.rules(), t0 + ms(100)), Tick::SendPing);
    // The pong comes back 20 ms later: a round trip, and the peer lives on.
    assert_eq!(s.pong(w.rules(), t0 + ms(120)), Some(ms(20)));
    assert_eq!(s.tick(w.rules(), t0 + ms(150)), Tick::Wait(t0 + ms(200)));
    // Then silence: a ping at 200, none answered; dead at 120 + 100 + 50.
    assert_eq!(s.tick(w.rules(), t0 + ms(200)), Tick::SendPing);
    assert_eq!(s.tick(w.rules(), t0 + ms(210)), Tick::Wait(t0 + ms(270)));
    assert_eq!(s.tick(w.rules(), t0 + ms(270)), Tick::PeerDead);
    assert_eq!(w.metrics.heartbeat_timeouts.get(), 1);
}

#[test]
fn any_frame_proves_the_peer_alive() {
    let w = World::new(quick_heartbeat());
    let t0 = Instant::now();
    let mut s = w.session(Mode::Raw, t0);
    for step in 1..=10 {
        let now = t0 + ms(step * 100);
        assert_ne!(s.tick(w.rules(), now), Tick::PeerDead, "at {step}");
        s.received(w.rules(), now, step * 100, true).unwrap();
    }
    assert_eq!(w.metrics.heartbeat_timeouts.get(), 0);
}

#[test]
fn going_to_sleep_never_consumes_a_due_ping() {
    // A connection that parks asks when to wake. Asking used to poll the heartbeat, which
    // marked a due ping as sent without anyone sending it: the peer was then declared dead
    // with no ping ever sent (pong_timeout < ping_interval).
    let w = World::new(quick_heartbeat());
    let t0 = Instant::now();
    let mut s = w.session(Mode::Json, t0);
    assert_eq!(s.tick(w.rules(), t0 + ms(10)), Tick::Wait(t0 + ms(100)));
    // It parks just as the ping falls due: it must wake at once …
    assert!(s.wake_at(t0 + ms(101)) <= t0 + ms(101));
    // … and the ping is still to send.
    assert_eq!(s.tick(w.rules(), t0 + ms(101)), Tick::SendPing);
    assert_eq!(s.wake_at(t0 + ms(102)), t0 + ms(150), "the dead-peer deadline comes next");
}

#[test]
fn more_than_max_inbound_rate_closes_with_1008() {
    let w = World::new(GatewayConfig { max_inbound_rate: 5, ..GatewayConfig::default() });
    let t0 = Instant::now();
    let mut s = w.session(Mode::Json, t0);
    for _ in 0..5 {
        s.received(w.rules(), t0, 0, true).unwrap();
    }
    // Pongs and close frames are not counted.
    s.received(w.rules(), t0, 0, false).unwrap();
    let close = s.received(w.rules(), t0, 0, true).unwrap_err();
    assert_eq!(close.code, CloseCode::POLICY_VIOLATION);
    assert!(close.stream_failed, "what follows is not read: drain and half-close");
    assert_eq!(w.metrics.inbound_rate_limited.get(), 1);
    // A second later the bucket has refilled.
    s.received(w.rules(), t0 + ms(1000), 1000, true).unwrap();
}

fn history(offsets: std::ops::RangeInclusive<u64>, size: usize) -> History {
    let data = format!("\"{}\"", "x".repeat(size - 2));
    let publications: Vec<_> = offsets
        .clone()
        .map(|o| (o, Arc::from(RawValue::from_string(data.clone()).unwrap())))
        .collect();
    History {
        position: StreamPosition { epoch: "e1".into(), offset: *offsets.end() },
        recovered: Some(true),
        publications,
        not_recovered: None,
    }
}

#[test]
fn a_recovery_that_fits_is_replayed_after_the_reply() {
    let w = World::new(GatewayConfig::default());
    let s = w.session(Mode::Json, Instant::now());
    let since = StreamPosition { epoch: "e1".into(), offset: 3 };
    let answer = s.answer(w.rules(), 9, "news", Some(&since), Ok(history(4..=6, 100)), 1 << 20);
    let Answer::Replay { reply, epoch, top, replay } = answer else { panic!("{answer:?}") };
    let reply: serde_json::Value = serde_json::from_str(&codec::encode(&reply)).unwrap();
    assert_eq!(
        (reply["id"].as_u64(), reply["result"]["recovered"].as_bool()),
        (Some(9), Some(true))
    );
    assert_eq!((&*epoch, top), ("e1", 6));
    assert_eq!(replay.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [4, 5, 6]);
    let recovered = w.metrics.recoveries.get_or_create(&OutcomeLabels { outcome: "recovered" });
    assert_eq!(recovered.get(), 1);
}

#[test]
fn a_recovery_over_the_budget_is_not_rendered_and_says_why() {
    let w = World::new(GatewayConfig::default());
    let s = w.session(Mode::Json, Instant::now());
    let since = StreamPosition { epoch: "e1".into(), offset: 0 };
    let answer = s.answer(w.rules(), 1, "news", Some(&since), Ok(history(1..=100, 1000)), 50_000);
    let Answer::Replay { reply, replay, top, .. } = answer else { panic!("{answer:?}") };
    assert!(replay.is_empty());
    assert_eq!(top, 100, "the client still learns where the stream stands");
    let reply: serde_json::Value = serde_json::from_str(&codec::encode(&reply)).unwrap();
    assert_eq!(reply["result"]["recovered"], false);
    let reason = reply["result"]["reason"].as_str().unwrap();
    assert!(reason.contains("does not fit") && reason.contains("48 KiB left"), "{reason}");
    // (The family's guard is dropped at once: `answer` below takes its lock again.)
    let over = w.metrics.recoveries.get_or_create(&OutcomeLabels { outcome: "over_budget" }).get();
    assert_eq!(over, 1);
    // History that is gone: not recovered, with its own reason.
    let gone = History {
        position: StreamPosition { epoch: "e2".into(), offset: 7 },
        recovered: Some(false),
        publications: Vec::new(),
        not_recovered: Some(NotRecovered::OtherEpoch),
    };
    let Answer::Replay { reply, .. } =
        s.answer(w.rules(), 2, "news", Some(&since), Ok(gone), 1 << 20)
    else {
        panic!()
    };
    let reply: serde_json::Value = serde_json::from_str(&codec::encode(&reply)).unwrap();
    assert!(reply["result"]["reason"].as_str().unwrap().contains("new epoch"), "{reply}");
}

#[test]
fn a_broker_limit_refuses_the_subscription_and_an_outage_closes_with_advice() {
    let w = World::new(GatewayConfig::default());
    let s = w.session(Mode::Json, Instant::now());
    let limit = Err(BrokerError::Limit("100 channels are active".into()));
    let Answer::Refuse(reply) = s.answer(w.rules(), 3, "news", None, limit, 1 << 20) else {
        panic!()
    };
    assert_eq!(error_code(Action::Reply(reply)), "unavailable");
    let down = Err(BrokerError::Unavailable("connection refused".into()));
    let Answer::Close(close) = s.answer(w.rules(), 4, "news", None, down, 1 << 20) else {
        panic!()
    };
    assert_eq!((close.code, close.retry_after), (CloseCode::TRY_AGAIN_LATER, Some(ms(1000))));
}

#[test]
fn a_close_advises_json_clients_and_fits_its_frame() {
    let config = GatewayConfig { restart_retry_hint: ms(2500), ..GatewayConfig::default() };
    let close = Close::shutdown(&config);
    assert_eq!(close.code, CloseCode::SERVICE_RESTART);
    let advice = close.advice(Mode::Json).expect("JSON clients are told");
    let advice: serde_json::Value = serde_json::from_str(&codec::encode(&advice)).unwrap();
    assert_eq!(advice["retry_after_ms"], 2500);
    assert_eq!(advice["reconnect"], true);
    assert!(close.advice(Mode::Raw).is_none());
    assert_eq!(
        closed(Action::Close(Close::token_invalid("bad"))).advice(Mode::Json).map(|a| {
            serde_json::from_str::<serde_json::Value>(&codec::encode(&a)).unwrap()["reconnect"]
                .clone()
        }),
        Some(serde_json::Value::Bool(false))
    );
    // At most 123 bytes on the wire, cut between characters.
    let long = Close::token_invalid(&"é".repeat(100));
    assert!(long.wire_reason().len() <= 123 && long.reason.starts_with(long.wire_reason()));
}

#[test]
fn an_idle_probe_is_granted_capped_then_silent_until_a_normal_close() {
    let w = World::new(GatewayConfig { idle_probe_max: ms(2_000), ..quick_heartbeat() });
    let t0 = Instant::now();
    let mut s = w.session(Mode::Json, t0);
    let probe = r#"{"id":3,"cmd":"idle_probe","ms":60000}"#;
    let mut subscribed = Subs::default();
    subscribed.0.insert("news".into());
    let refused = sent(json(&mut s, &w, &subscribed, probe)).to_string();
    assert!(refused.contains("no subscriptions"), "{refused}");
    let Action::IdleProbe { id: 3, ms: granted } = json(&mut s, &w, &Subs::default(), probe) else {
        panic!("not granted")
    };
    assert_eq!(granted, 2_000, "capped at idle_probe_max");
    s.begin_quiet(t0, granted);
    assert!(s.is_quiet());
    // No ping at 100 ms, no death at 150 ms: silence was agreed; then a normal close.
    assert_eq!(s.tick(w.rules(), t0 + ms(100)), Tick::Wait(t0 + ms(2_000)));
    assert_eq!(s.tick(w.rules(), t0 + ms(1_999)), Tick::Wait(t0 + ms(2_000)));
    let Tick::Close(close) = s.tick(w.rules(), t0 + ms(2_000)) else { panic!("no close") };
    assert_eq!(close.code, CloseCode::NORMAL);

    let none = World::new(GatewayConfig { idle_probes: 0, ..quick_heartbeat() });
    let mut s = none.session(Mode::Json, t0);
    let refused = sent(json(&mut s, &none, &Subs::default(), probe)).to_string();
    assert!(refused.contains("grants no idle probes"), "{refused}");
    let info = sent(json(&mut s, &none, &Subs::default(), r#"{"id":4,"cmd":"info"}"#)).to_string();
    assert!(info.contains(r#""ping_interval_ms":100"#) && info.contains("time_ms"), "{info}");
}
