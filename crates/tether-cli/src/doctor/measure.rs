//! What the doctor measures over open connections: round trips of protocol and application
//! pings, the clock offset, the idle cut (a quiet spell the server agrees to), and whether
//! the HTTP-streaming fallback gets through.

use super::path::{self, Offer, Target, Ws};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tether_core::protocol::{ServerInfo, ServerMessage};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Round trips, in ms.
#[derive(Clone, Debug, Serialize)]
pub struct Rtt {
    pub samples: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub max_ms: f64,
}

impl Rtt {
    fn of(mut samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        Some(Rtt { samples: n, min_ms: samples[0], p50_ms: samples[n / 2], max_ms: samples[n - 1] })
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The next data or control message, skipping the server's pings (tungstenite answers them).
async fn next(ws: &mut Ws, deadline: Instant) -> Result<Message, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return Err("no answer in time".into()),
            Ok(None) => return Err("the connection ended".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            Ok(Some(Ok(m))) => return Ok(m),
        }
    }
}

/// `count` protocol pings, one every `every`; each waits for its own pong.
pub async fn protocol_pings(ws: &mut Ws, count: usize, every: Duration) -> Result<Rtt, String> {
    let mut samples = Vec::new();
    for i in 0..count {
        let tag = Bytes::from(format!("doctor-{i}"));
        let sent = Instant::now();
        ws.send(Message::Ping(tag.clone())).await.map_err(|e| e.to_string())?;
        loop {
            match next(ws, sent + Duration::from_secs(5)).await? {
                Message::Pong(p) if p == tag => break,
                _ => continue,
            }
        }
        samples.push(ms(sent.elapsed()));
        tokio::time::sleep(every.saturating_sub(sent.elapsed())).await; // pacing, not waiting
    }
    Rtt::of(samples).ok_or_else(|| "no pings sent".into())
}

/// A reply to command `id`, skipping anything else.
async fn reply(ws: &mut Ws, id: u64, deadline: Instant) -> Result<ServerMessage, String> {
    loop {
        if let Message::Text(text) = next(ws, deadline).await? {
            let message = tether_core::codec::decode_server_message(&text)
                .map_err(|e| format!("not Tether's protocol: {e}"))?;
            if matches!(&message, ServerMessage::Reply { id: got, .. } if *got == id) {
                return Ok(message);
            }
        }
    }
}

/// `count` application pings: `ping` commands in JSON mode, the text `ping` in raw mode (a
/// `pong` must come back: any other answer means the server does not speak it).
pub async fn app_pings(
    ws: &mut Ws,
    json: bool,
    count: usize,
    every: Duration,
) -> Result<Rtt, String> {
    let mut samples = Vec::new();
    for i in 0..count as u64 {
        let sent = Instant::now();
        let deadline = sent + Duration::from_secs(5);
        if json {
            ws.send(Message::text(format!(r#"{{"id":{},"cmd":"ping"}}"#, 1000 + i)))
                .await
                .map_err(|e| e.to_string())?;
            reply(ws, 1000 + i, deadline).await?;
        } else {
            ws.send(Message::text("ping")).await.map_err(|e| e.to_string())?;
            match next(ws, deadline).await? {
                Message::Text(t) if t.as_str() == "pong" => {}
                other => return Err(format!("`ping` was answered {other:?}, not `pong`")),
            }
        }
        samples.push(ms(sent.elapsed()));
        tokio::time::sleep(every.saturating_sub(sent.elapsed())).await; // pacing
    }
    Rtt::of(samples).ok_or_else(|| "no pings sent".into())
}

/// The server's `info` and the offset of its clock from ours (server minus client, ms): of
/// `count` samples, the one with the shortest round trip, its midpoint taken as the server's
/// instant (as NTP does).
pub async fn info_and_clock(ws: &mut Ws, count: usize) -> Result<(ServerInfo, f64), String> {
    let mut best: Option<(f64, f64, ServerInfo)> = None;
    for i in 0..count as u64 {
        let (sent, wall) = (Instant::now(), SystemTime::now());
        ws.send(Message::text(format!(r#"{{"id":{},"cmd":"info"}}"#, 2000 + i)))
            .await
            .map_err(|e| e.to_string())?;
        let answer = reply(ws, 2000 + i, sent + Duration::from_secs(5)).await?;
        let rtt = sent.elapsed();
        let info = match answer {
            ServerMessage::Reply { result: Some(r), .. } => r.server,
            _ => None,
        };
        let info = info.ok_or("the server does not answer `info` (an older Tether?)")?;
        let mid = wall + rtt / 2;
        let ours = mid.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let offset = info.time_ms as f64 - ours;
        if best.as_ref().is_none_or(|(r, _, _)| ms(rtt) < *r) {
            best = Some((ms(rtt), offset, info));
        }
    }
    let (_, offset, info) = best.ok_or("no samples")?;
    Ok((info, (offset * 10.0).round() / 10.0))
}

/// How one silent connection ended.
#[derive(Clone, Debug, Serialize)]
pub struct Silence {
    /// From the quiet spell's start to the end, ms.
    pub after_ms: f64,
    /// `server_ended` (nothing cut it), `close_frame` (someone on the path sent one),
    /// `no_close_frame` (1006: the TCP connection ended without a WebSocket close), `reset`
    /// (a TCP RST), `traffic` (something on the path sent data), `error`.
    pub kind: String,
    pub code: Option<u16>,
    pub reason: Option<String>,
    /// In words.
    pub how: String,
}

/// The quiet spell the server granted, and how each silent connection ended.
#[derive(Clone, Debug, Serialize)]
pub struct IdleProbe {
    pub granted_ms: u64,
    pub connections: Vec<Silence>,
}

/// Open `connections` silent connections, each granted a quiet spell of up to `max`, and wait
/// for each to end: cut by the path, or ended by the server when the spell ran out.
pub async fn idle_probe(
    target: &Target,
    connections: usize,
    max: Duration,
    timeout: Duration,
    progress: &indicatif::ProgressBar,
) -> Result<IdleProbe, String> {
    let mut opened = Vec::new();
    let mut granted = u64::MAX;
    for _ in 0..connections {
        let offer = Offer { json: true, deflate: false };
        let (mut ws, _) = path::open(target, offer, timeout).await.map_err(|e| e.to_string())?;
        let ask = format!(r#"{{"id":1,"cmd":"idle_probe","ms":{}}}"#, max.as_millis());
        ws.send(Message::text(ask)).await.map_err(|e| e.to_string())?;
        let spell = match reply(&mut ws, 1, Instant::now() + timeout).await? {
            ServerMessage::Reply { result: Some(r), .. } => {
                r.server.and_then(|s| s.idle_ms).ok_or("no idle_ms in the answer")?
            }
            ServerMessage::Reply { error: Some(e), .. } => {
                return Err(format!("the server refused: {}", e.message))
            }
            _ => return Err("an unexpected answer to idle_probe".into()),
        };
        // The path's idle timers start at the last byte through them: this reply.
        granted = granted.min(spell);
        opened.push((ws, Instant::now()));
    }
    progress.set_message(format!(
        "idle probe: {connections} silent connection(s), up to {}",
        humantime::format_duration(Duration::from_millis(granted))
    ));
    let waits = opened.into_iter().map(|(ws, since)| silence(ws, since, granted));
    let connections = futures_util::future::join_all(waits).await;
    Ok(IdleProbe { granted_ms: granted, connections })
}

/// Wait, silent, for `ws` to end.
async fn silence(mut ws: Ws, since: Instant, spell: u64) -> Silence {
    let limit = since + Duration::from_millis(spell) + Duration::from_secs(10);
    let end = tokio::time::timeout_at(limit.into(), ws.next()).await;
    let after_ms = ms(since.elapsed());
    // Tether says why before it closes (`disconnect`): the spell's end, or another reason.
    if let Ok(Some(Ok(Message::Text(text)))) = &end {
        if let Ok(ServerMessage::Disconnect(d)) = tether_core::codec::decode_server_message(text) {
            let (code, reason) = (d.code.0, d.reason);
            let (kind, how) = if code == 1000 && reason.starts_with("idle probe over") {
                ("server_ended", "nothing cut it".to_owned())
            } else {
                ("server_closed", format!("the server closed it: {code} {reason:?}"))
            };
            return Silence {
                after_ms,
                kind: kind.into(),
                code: Some(code),
                reason: Some(reason),
                how,
            };
        }
    }
    let (kind, code, reason, how) = match end {
        Err(_) => ("error", None, None, "neither cut nor ended by the server in time".into()),
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            let code = u16::from(frame.code);
            let reason = frame.reason.to_string();
            if code == 1000 && reason.starts_with("idle probe over") {
                ("server_ended", Some(code), Some(reason), "nothing cut it".to_owned())
            } else {
                let how = format!("a close frame {code} {reason:?} (not the server's)");
                ("close_frame", Some(code), Some(reason), how)
            }
        }
        Ok(Some(Ok(Message::Close(None)))) => {
            ("close_frame", None, None, "a close frame without a code (not the server's)".into())
        }
        Ok(Some(Ok(other))) => {
            let how = format!("something on the path sent a {} frame", kind_of(&other));
            ("traffic", None, None, how)
        }
        Ok(None)
        | Ok(Some(Err(WsError::ConnectionClosed)))
        | Ok(Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)))) => {
            let how = "closed without a close frame (1006): the TCP connection ended".into();
            ("no_close_frame", Some(1006), None, how)
        }
        Ok(Some(Err(WsError::Io(e)))) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            ("reset", Some(1006), None, "a TCP reset (RST)".into())
        }
        Ok(Some(Err(e))) => ("error", None, None, format!("the connection failed: {e}")),
    };
    Silence { after_ms, kind: kind.into(), code, reason, how }
}

fn kind_of(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) | Message::Frame(_) => "control",
    }
}

/// Whether an HTTP-streaming session (the fallback for paths that refuse WebSocket upgrades)
/// opens through this path, and how long it took: Tether's own Rust client, which speaks it.
#[derive(Clone, Debug, Serialize)]
pub struct Fallback {
    pub ok: bool,
    pub ms: Option<f64>,
    pub detail: String,
}

pub async fn http_stream(
    target: &Target,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    timeout: Duration,
) -> Fallback {
    use tether_client::{ClientConfig, Event, Transport};
    let mut config = ClientConfig::new(target.url.clone())
        .transports(vec![Transport::HttpStream])
        .no_reconnect();
    config.tls_roots = roots;
    let started = Instant::now();
    let (client, mut events) = tether_client::connect(config);
    let outcome = tokio::time::timeout(timeout, async {
        while let Some(event) = events.next().await {
            match event {
                Event::Open { .. } => return Ok(ms(started.elapsed())),
                Event::Closed(info) => return Err(format!("it closed: {info}")),
                _ => {}
            }
        }
        Err("the client stopped".to_owned())
    })
    .await
    .unwrap_or_else(|_| Err(format!("no session within {}", humantime::format_duration(timeout))));
    client.close().await;
    match outcome {
        Ok(ms) => {
            Fallback { ok: true, ms: Some(ms), detail: "a session opened (POST /stream)".into() }
        }
        Err(detail) => Fallback { ok: false, ms: None, detail },
    }
}
