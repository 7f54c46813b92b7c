//! Fan-out inside the hub: one publication to N local subscribers (encode once, then a cheap
//! clone of the same bytes per subscriber). `cargo bench -p tether-server`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::value::RawValue;
use std::sync::Arc;
use tether_server::hub::{Hub, Mode, OutboundQueue, Subscriber};

fn fanout(c: &mut Criterion) {
    let data = RawValue::from_string(format!(r#"{{"text":"{}"}}"#, "x".repeat(1000))).unwrap();
    let epoch: Arc<str> = Arc::from("3f9a1c0e7b2d");
    let mut group = c.benchmark_group("hub publish 1 KiB");
    for n in [1usize, 100, 1000] {
        let hub = Hub::new(Arc::default());
        let mut receivers = Vec::with_capacity(n);
        for id in 0..n {
            let queue = Arc::new(OutboundQueue::new(u16::MAX as usize, 64 << 20));
            hub.subscribe("c", id as u64, Subscriber::new(queue.clone(), Mode::Json));
            receivers.push(queue);
        }
        group.throughput(Throughput::Elements(n as u64));
        let mut offset = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                offset += 1;
                let delivered = hub.publish("c", &epoch, offset, &data);
                // Drain so queues never fill; the drain is part of what a connection does anyway.
                for queue in &receivers {
                    while queue.pop().is_some() {}
                }
                delivered
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
