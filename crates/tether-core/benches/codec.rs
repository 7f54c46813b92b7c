//! Micro-benchmarks of the protocol's hot paths: decoding commands, encoding publications,
//! and the heartbeat's per-wake-up decision. `cargo bench -p tether-core`.

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

criterion_group!(codec_benches, benches);
criterion_main!(codec_benches);
