//! Micro-benchmarks of the protocol's hot paths: decoding commands, encoding publications,
//! the heartbeat's per-wake-up decision, and permessage-deflate on a realistic publication.
//! `cargo bench -p tether-core`.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::value::RawValue;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tether_core::codec;
use tether_core::heartbeat::Heartbeat;
use tether_core::protocol::ServerMessage;

fn benches(c: &mut Criterion) {
    let subscribe = r#"{"id":17,"cmd":"subscribe","channel":"chat:lobby","recover":{"epoch":"3f9a1c0e7b2d","offset":41}}"#;
    c.bench_function("decode subscribe command", |b| {
        b.iter(|| codec::decode_command(black_box(subscribe)))
    });
    let publish = r#"{"id":18,"cmd":"publish","channel":"chat:lobby","data":{"user":"ada","text":"hello, world","tags":[1,2,3]}}"#;
    c.bench_function("decode publish command", |b| {
        b.iter(|| codec::decode_command(black_box(publish)))
    });

    let data = RawValue::from_string(format!(r#"{{"user":"ada","text":"{}"}}"#, "x".repeat(1000)))
        .unwrap();
    c.bench_function("encode 1 KiB publication", |b| {
        b.iter(|| {
            codec::encode(&ServerMessage::Publication {
                channel: "chat:lobby".into(),
                offset: 123_456,
                epoch: "3f9a1c0e7b2d".into(),
                data: black_box(&data).to_owned(),
            })
        })
    });

    let t0 = Instant::now();
    let mut hb = Heartbeat::new(Duration::from_secs(25), Duration::from_secs(10), t0);
    let mut now = t0;
    c.bench_function("heartbeat on_inbound + poll", |b| {
        b.iter(|| {
            now += Duration::from_millis(1);
            hb.on_inbound(now);
            black_box(hb.poll(now))
        })
    });
}

/// A market-feed-like JSON publication of about 1.5 KiB: repeated keys, varying numbers.
fn quotes_json() -> String {
    let symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AVGO"];
    let quotes: Vec<String> = (0..12u64)
        .map(|i| {
            let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
            format!(
                r#"{{"symbol":"{}","bid":{:.2},"ask":{:.2},"bid_size":{},"ask_size":{},"ts":{},"id":"{:016x}"}}"#,
                symbols[i as usize % 8],
                100.0 + (r % 50_000) as f64 / 100.0,
                100.01 + (r % 50_000) as f64 / 100.0,
                r % 5000 + 1,
                (r >> 13) % 5000 + 1,
                1_764_000_000_000u64 + r % 1_000_000,
                r.wrapping_mul(31),
            )
        })
        .collect();
    format!(
        r#"{{"type":"publication","channel":"quotes","offset":7,"data":[{}]}}"#,
        quotes.join(",")
    )
}

fn deflate_benches(c: &mut Criterion) {
    use tether_core::permessage_deflate::{compress, compressed_text_frame, MessageInflater};
    let json = quotes_json();
    let compressed = compress(json.as_bytes());
    eprintln!("permessage-deflate: {} bytes of JSON → {} compressed", json.len(), compressed.len());
    // What one publication costs once (Tether), and what a server that compresses per
    // subscriber pays for each of them.
    c.bench_function("deflate a 1.5 KiB JSON publication (frame)", |b| {
        b.iter(|| compressed_text_frame(black_box(json.as_bytes())))
    });
    let mut inflater = MessageInflater::default();
    c.bench_function("inflate it (a client's cost)", |b| {
        b.iter(|| inflater.inflate(black_box(&compressed), 1 << 20))
    });
}

criterion_group!(codec_benches, benches, deflate_benches);
criterion_main!(codec_benches);
