//! No frame is ever spliced (issue 16): a publisher's direct write that the socket takes only
//! in part leaves the rest of that frame for the connection's task, and every other write of
//! the connection — the pong to a client Ping, the server's own heartbeat Ping, a command reply
//! — must wait until that frame is whole on the wire.
//!
//! Loopback rarely makes a `send` return short, so this test builds the moments that make it
//! happen: a subscriber (536-byte MSS, small receive buffer) that reads in bursts and then
//! pauses, while a second connection floods its channel with publications of about 7 KiB. Each
//! pause fills the server's send buffer to the brim, and the direct write that meets the brim
//! goes out in part (`tether_direct_partial_writes_total` counts them; the test fails if none
//! did). All the while the subscriber sends protocol Pings and `ping` commands, and the server
//! pings it every 10 ms. Then it parses every byte it got: every frame well-formed, every
//! publication intact and in order, every reply in order, every pong answering its ping.
//!
//! Before the fix (the connection's gate, `tether-server/src/gate.rs`) this failed in 3 runs of
//! 3 against the release build, with a publication frame spliced by a pong within 0.4-7.5 s.

mod common;

use common::{raw_ws_head, RawWs, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Publications to push through; the test ends earlier only at its time limit.
const PUBLICATIONS: u64 = 400_000;
const TIME_LIMIT: Duration = Duration::from_secs(120);
/// The run goes on until this many direct writes went out in part (checked on the server's
/// metrics every second), past at least MIN_PUBLICATIONS: each is a chance for a splice.
const PARTIAL_WRITES: f64 = 8.0;
const MIN_PUBLICATIONS: u64 = 20_000;
/// The publication's padding: with the envelope, a frame of about 3 KiB.
const PAD: usize = 7000;
/// The reader reads until less than LOW is outstanding, then pauses until HIGH is (or for
/// PAUSE): more than the server's send buffer holds (up to 4 MiB here, `tcp_wmem`), so that each
/// pause fills it to the brim.
const HIGH: u64 = 8 * 1024 * 1024;
const LOW: u64 = 256 * 1024;
const PAUSE: Duration = Duration::from_millis(1000);

/// A masked client frame.
fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let header = FrameHeader { opcode, mask: Some(key), ..FrameHeader::default() };
    let mut out = Vec::new();
    header.format(payload.len() as u64, &mut out).unwrap();
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// What the subscriber has seen, checked frame by frame.
#[derive(Default)]
struct Seen {
    publications: u64,
    last_offset: u64,
    replies: u64,
    pongs: u64,
    last_pong: u64,
    server_pings: u64,
}

impl Seen {
    /// Check one whole frame; a splice shows as a frame that cannot be what it claims to be.
    fn frame(&mut self, header: &FrameHeader, payload: &[u8], pings_sent: u64) {
        assert!(header.is_final, "a fragmented frame (nothing here is fragmented): {header:?}");
        assert!(!header.rsv1 && !header.rsv2 && !header.rsv3, "reserved bits set: {header:?}");
        assert!(header.mask.is_none(), "a masked frame from the server");
        match header.opcode {
            OpCode::Data(Data::Text) => {
                let text = std::str::from_utf8(payload).unwrap_or_else(|_| {
                    panic!("a text frame that is not UTF-8: a spliced frame? {}", preview(payload))
                });
                let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| {
                    panic!(
                        "a text frame that is not JSON ({e}): a spliced frame? {}",
                        preview(payload)
                    )
                });
                match v["type"].as_str() {
                    Some("publication") => {
                        let offset = v["offset"].as_u64().unwrap();
                        assert_eq!(offset, self.last_offset + 1, "publications out of order");
                        assert_eq!(
                            v["data"]["seq"].as_u64(),
                            Some(offset),
                            "wrong data for {offset}"
                        );
                        assert_eq!(v["data"]["pad"].as_str().map(str::len), Some(PAD));
                        self.last_offset = offset;
                        self.publications += 1;
                    }
                    Some("reply") => {
                        self.replies += 1;
                        assert_eq!(v["id"].as_u64(), Some(self.replies), "replies out of order");
                        assert!(v.get("error").is_none(), "command failed: {text}");
                    }
                    _ => panic!("unexpected message: {text}"),
                }
            }
            OpCode::Control(Control::Pong) => {
                // Each pong answers a Ping we sent, in order (a pong may answer only the latest
                // of several pings received together: RFC 6455 §5.5.3).
                let n: u64 = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|p| p.strip_prefix('p'))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("a pong that answers no ping: {}", preview(payload)));
                assert!(
                    n > self.last_pong && n <= pings_sent,
                    "pong p{n} after p{}",
                    self.last_pong
                );
                self.last_pong = n;
                self.pongs += 1;
            }
            OpCode::Control(Control::Ping) => {
                assert!(payload.is_empty(), "a server ping with a payload: {}", preview(payload));
                self.server_pings += 1;
            }
            OpCode::Control(Control::Close) => panic!("closed by the server: {}", preview(payload)),
            other => panic!("unexpected opcode {other:?}: a spliced frame?"),
        }
    }
}

fn preview(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(80)];
    format!("{} bytes, starting {:?}", bytes.len(), String::from_utf8_lossy(head))
}

#[test]
fn a_slow_reader_under_pings_and_commands_receives_every_frame_whole() {
    // TETHER_SPLICE_BIN: another `tether` build to run this against (how it was shown to fail
    // before the fix).
    let bin = std::env::var("TETHER_SPLICE_BIN").unwrap_or_else(|_| common::BIN.to_owned());
    let server = Server::start_with(
        &bin,
        "127.0.0.1:0",
        &[
            "--ping-interval",
            "10ms",
            "--pong-timeout",
            "10s",
            "--max-inbound-rate",
            "0",
            "--outbound-queue",
            "16384",
            "--client-publish",
            "flood",
        ],
    );
    let partial_before = server.metric("tether_direct_partial_writes_total");
    let mut sub = connect(&server, "?channel=flood", Some(536));
    let mut writer = sub.try_clone().unwrap();

    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let pings_sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // The publisher: a second connection sending `publish` commands of ~3 KiB, never more
    // than HIGH bytes ahead of the reader; its replies are read and dropped by another thread.
    let publisher = {
        let (received, sent, done) = (received.clone(), sent.clone(), done.clone());
        let mut out = connect(&server, "", None);
        let mut replies = out.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut sink = [0u8; 65536];
            while matches!(replies.read(&mut sink), Ok(n) if n > 0) {}
        });
        std::thread::spawn(move || {
            let pad = "x".repeat(PAD);
            for seq in 1..=PUBLICATIONS {
                // Pacing, not synchronisation: the reader decides when it reads.
                while sent.load(Ordering::Relaxed).saturating_sub(received.load(Ordering::Relaxed))
                    > HIGH
                {
                    if done.load(Ordering::Relaxed) {
                        return seq - 1;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                let data = format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#);
                let cmd =
                    format!(r#"{{"id":{seq},"cmd":"publish","channel":"flood","data":{data}}}"#);
                if out.write_all(&client_frame(OpCode::Data(Data::Text), cmd.as_bytes())).is_err() {
                    return seq - 1;
                }
                // The publication's frame: the data in its envelope, and a header.
                sent.fetch_add(data.len() as u64 + 100, Ordering::Relaxed);
            }
            PUBLICATIONS
        })
    };

    // Pings and commands, all the while: each makes the connection's task write.
    let pinger = {
        let (pings_sent, done) = (pings_sent.clone(), done.clone());
        std::thread::spawn(move || {
            let mut commands = 0u64;
            for n in 1..=200_000u64 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let ping = client_frame(OpCode::Control(Control::Ping), format!("p{n}").as_bytes());
                // Counted before it is sent: its pong may come back first.
                pings_sent.store(n, Ordering::Relaxed);
                if writer.write_all(&ping).is_err() {
                    break;
                }
                if n % 4 == 0 {
                    commands += 1;
                    let cmd = format!(r#"{{"id":{commands},"cmd":"ping"}}"#);
                    if writer
                        .write_all(&client_frame(OpCode::Data(Data::Text), cmd.as_bytes()))
                        .is_err()
                    {
                        commands -= 1;
                        break;
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            commands
        })
    };

    // The reader: slow, and parsing every byte.
    let mut seen = Seen::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4096];
    sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut looked = Instant::now();
        while seen.publications < PUBLICATIONS && started.elapsed() < TIME_LIMIT {
            if seen.publications >= MIN_PUBLICATIONS && looked.elapsed() >= Duration::from_secs(1) {
                looked = Instant::now();
                let partial = server.metric("tether_direct_partial_writes_total") - partial_before;
                if partial >= PARTIAL_WRITES {
                    break;
                }
            }
            let n = sub.read(&mut chunk).expect("read from the server");
            assert!(n > 0, "the server closed the connection");
            received.fetch_add(n as u64, Ordering::Relaxed);
            buf.extend_from_slice(&chunk[..n]);
            let mut cursor = std::io::Cursor::new(&buf[..]);
            loop {
                let start = cursor.position() as usize;
                let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap_or_else(|e| {
                    panic!(
                        "an invalid frame header ({e}): a spliced frame? {}",
                        preview(&buf[start..])
                    )
                }) else {
                    cursor.set_position(start as u64);
                    break;
                };
                let body = cursor.position() as usize;
                assert!(len < 1 << 20, "a {len}-byte frame: a spliced frame?");
                if buf.len() - body < len as usize {
                    cursor.set_position(start as u64);
                    break;
                }
                let payload = &buf[body..body + len as usize];
                seen.frame(&header, payload, pings_sent.load(Ordering::Relaxed));
                cursor.set_position((body + len as usize) as u64);
            }
            let used = cursor.position() as usize;
            buf.drain(..used);
            // Drained to LOW: pause until HIGH is outstanding (or a moment has passed). The
            // server's send buffer fills to the brim meanwhile, and the direct write that meets
            // the brim goes out in part; pings keep coming all the while.
            let outstanding =
                || sent.load(Ordering::Relaxed).saturating_sub(received.load(Ordering::Relaxed));
            if outstanding() < LOW {
                let pause = Instant::now();
                while outstanding() < HIGH && pause.elapsed() < PAUSE && !publisher.is_finished() {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }));
    done.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    let commands = pinger.join().unwrap();
    if let Err(panic) = outcome {
        eprintln!(
            "after {} publications, {} replies, {} pongs, {} server pings in {:?}",
            seen.publications,
            seen.replies,
            seen.pongs,
            seen.server_pings,
            started.elapsed()
        );
        std::panic::resume_unwind(panic);
    }
    eprintln!(
        "{} publications ({published} published), {} replies ({commands} commands), {} pongs \
         ({} pings), {} server pings, in {:?}",
        seen.publications,
        seen.replies,
        seen.pongs,
        pings_sent.load(Ordering::Relaxed),
        seen.server_pings,
        started.elapsed()
    );
    // The point of the test: direct writes went out in part while the task wrote.
    let partial = server.metric("tether_direct_partial_writes_total") - partial_before;
    eprintln!(
        "direct writes that the socket took only in part: {partial} (of {} direct)",
        server.metric("tether_direct_deliveries_total")
    );
    assert!(partial > 0.0, "no direct write went out in part: the test proved nothing");
    assert!(seen.publications >= 5_000, "too few publications to mean anything");
    assert!(seen.pongs > 100 && seen.replies > 100 && seen.server_pings > 100);
}

/// A JSON-mode connection; with `mss`, that MSS and a small receive buffer (a slow reader).
fn connect(server: &Server, query: &str, mss: Option<u32>) -> TcpStream {
    let opts = RawWs {
        recv_buf: mss.map(|_| 16 * 1024),
        mss,
        headers: "Sec-WebSocket-Protocol: tether.v1.json\r\n",
        ..RawWs::default()
    };
    let (head, s) = raw_ws_head(server.addr, query, opts);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}
