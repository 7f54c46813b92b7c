//! `tether bench pingpong`: C connections each sending "ping" and awaiting "pong".

use super::*;

#[derive(Args, Debug)]
pub struct PingpongArgs {
    /// WebSocket URL (raw mode: "ping" → "pong")
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Connections, each with one ping in flight
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// How long to run
    #[arg(long, default_value = "10s", value_parser = units::duration)]
    duration: Duration,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    probe: ServerProbe,
}

pub(super) async fn pingpong(args: PingpongArgs) -> Result<ExitCode> {
    if args.conns == 0 {
        bail!("--conns must be at least 1");
    }
    eprintln!("connecting {} clients to {} …", args.conns, args.url);
    let mut sockets = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let ws = LeanWs::connect(args.url.as_str())
            .await
            .with_context(|| format!("cannot connect to {}", args.url))?;
        sockets.push(ws);
    }
    eprintln!("running for {:?} …", args.duration);
    let cpu = CpuMeter::start(&args.probe);
    let started = Instant::now();
    let deadline = started + args.duration;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut h =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if ws.send_text(b"ping").await.is_err() {
                        break;
                    }
                    let mut answered = false;
                    while !answered {
                        let read = ws
                            .read_some(|e| {
                                answered |= matches!(e, lean_ws::Event::Message(b"pong"));
                            })
                            .await;
                        if !matches!(read, Ok(true)) {
                            return h;
                        }
                    }
                    let _ = h.record((sent.elapsed().as_micros() as u64).max(1));
                }
                h
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(&t.await?).ok();
    }
    let secs = started.elapsed().as_secs_f64();
    let (server_cpu, my_cpu) = cpu.finish(&args.probe);
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let rate = all.len() as f64 / secs;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "conns": args.conns, "round_trips": all.len(), "round_trips_per_sec": rate.round(),
                "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": all.max() as f64 / 1000.0},
                "server_cpu_percent": server_cpu, "generator_cpu_percent": my_cpu,
            })
        );
    } else {
        println!(
            "pingpong: {} connections: {:.0} round trips/s; latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
            args.conns, rate, ms(0.5), ms(0.99), ms(0.999)
        );
        println!("{}", cpu_line(server_cpu, my_cpu));
    }
    Ok(ExitCode::SUCCESS)
}
