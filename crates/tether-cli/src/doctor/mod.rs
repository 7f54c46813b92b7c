//! `tether doctor URL`: a diagnosis of one path to a Tether server — how long each step of
//! opening a connection takes, what stands on the path and what it did to the upgrade, round
//! trips, the clock offset, whether the HTTP-streaming fallback gets through, and, with
//! `--idle-probe`, after how much silence the path cuts a connection (decision 0029).
//!
//! The files: `path` opens connections step by step; `measure` measures over them; `report`
//! judges and prints.

mod measure;
mod path;
mod report;

use anyhow::Context;
use clap::Args;
use futures_util::SinkExt;
use path::{DialError, Offer, Target};
use report::{secs, Report};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The server's WebSocket URL (ws:// or wss://; http(s):// works too; no path means /ws)
    pub url: String,
    /// Protocol and application pings to send, one of each every 200 ms
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub pings: u16,
    /// Measure the path's idle timeout: open connections on which both sides stay silent (the
    /// server grants this, a few at a time) and wait until the path cuts them
    #[arg(long)]
    pub idle_probe: bool,
    /// The longest silence to wait for (the server caps it at its idle_probe_max, 10m by default)
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle_max: Duration,
    /// Silent connections to open for --idle-probe
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub idle_connections: u8,
    /// Trust this CA certificate (PEM) for wss://, beside the public roots
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// How long each step (DNS, TCP, TLS, the upgrade, an answer) may take
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let roots = match &args.ca_cert {
        Some(path) => {
            tether_client::ClientConfig::new("")
                .with_ca_file(path)
                .map_err(|e| anyhow::anyhow!("--ca-cert: {e}"))?
                .tls_roots
        }
        None => Vec::new(),
    };
    let tls = tether_client::tls_config(&roots).map_err(|e| anyhow::anyhow!("{e}"))?;
    let target = Target::parse(&args.url, tls).context("the URL")?;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(120));
    let mut report = Report { url: target.url.clone(), ..Report::default() };
    diagnose(&args, &target, roots, &progress, &mut report).await;
    progress.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("the report")?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn diagnose(
    args: &DoctorArgs,
    target: &Target,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    progress: &indicatif::ProgressBar,
    report: &mut Report,
) {
    progress.set_message(format!("opening {}", target.url));
    // The first connection offers everything a Tether client may, to see what comes back.
    let mut offer = Offer { json: true, deflate: true };
    let first = match path::open(target, offer, args.timeout).await {
        Err(DialError::NoSubprotocol) => {
            offer.json = false;
            path::open(target, offer, args.timeout).await
        }
        other => other,
    };
    match first {
        Ok((mut ws, opening)) => {
            report.tether = opening.upgrade.subprotocol.as_deref() == Some("tether.v1.json");
            report.opening = Some(opening);
            let _ = ws.close(None).await;
        }
        Err(DialError::Refused { status, body, intermediaries }) => {
            let by = intermediaries.iter().find_map(|i| i.product.clone());
            let by = by.map_or(String::new(), |p| format!(" ({p} answered)"));
            report.note(
                "fail",
                format!("the WebSocket upgrade was answered {status}{by}: {body}"),
                refusal_advice(status),
            );
            report.unmeasured("everything over a WebSocket: no WebSocket opened");
            fallback(args, target, roots, progress, report).await;
            return;
        }
        Err(e) => {
            let what = format!("no connection: {e}");
            let advice = if what.contains("certificate") {
                "the server's certificate is not trusted here: trust its CA with --ca-cert"
            } else {
                "check the URL, the host's name and port, and that the server runs"
            };
            report.note("fail", what, advice);
            report.unmeasured("everything after opening a connection");
            return;
        }
    }
    judge_opening(report);

    progress.set_message("pinging");
    let offer = Offer { json: report.tether, deflate: false };
    match path::open(target, offer, args.timeout).await {
        Ok((mut ws, _)) => measure_open(args, &mut ws, report).await,
        Err(e) => report.note("fail", format!("a second connection did not open: {e}"), ""),
    }
    if report.tether {
        fallback(args, target, roots, progress, report).await;
    } else {
        report.unmeasured(
            "the HTTP-streaming fallback: a Tether server's (tether.v1.json was not accepted)",
        );
    }
    idle(args, target, progress, report).await;
}

/// Pings, `info` and the clock over an open connection.
async fn measure_open(args: &DoctorArgs, ws: &mut path::Ws, report: &mut Report) {
    let every = Duration::from_millis(200);
    let count = usize::from(args.pings);
    match measure::protocol_pings(ws, count, every).await {
        Ok(rtt) => report.protocol_ping = Some(rtt),
        Err(e) => report.note(
            "fail",
            format!("protocol pings went unanswered: {e}"),
            "a proxy on the path may not forward control frames",
        ),
    }
    match measure::app_pings(ws, report.tether, count, every).await {
        Ok(rtt) => report.app_ping = Some(rtt),
        Err(e) => report.unmeasured(format!(
            "application pings (what browsers send, which cannot send protocol pings): {e}"
        )),
    }
    if let Some(rtt) = &report.app_ping {
        if rtt.p50_ms > 250.0 {
            let what = format!("round trips are long: p50 {:.0} ms", rtt.p50_ms);
            report.note(
                "warn",
                what,
                "keep pong_timeout well above the round trip (at least 4 times it)",
            );
        }
    }
    if !report.tether {
        report.unmeasured(
            "the server's version, heartbeat and clock: a Tether server answers `info`",
        );
        let _ = ws.close(None).await;
        return;
    }
    match measure::info_and_clock(ws, 5).await {
        Ok((info, offset)) => {
            report.server = Some(info);
            report.clock_offset_ms = Some(offset);
            let what = format!("the server's clock is {offset:+.1} ms from this machine's");
            if offset.abs() > 1000.0 {
                let advice =
                    "token times (exp, nbf) are judged by the server's clock: run NTP on both";
                report.note("warn", what, advice);
            } else {
                report.note("ok", what, "");
            }
        }
        Err(e) => report.unmeasured(format!("the server's clock: {e}")),
    }
    let _ = ws.send(Message::Close(None)).await;
}

/// What the first connection's upgrade says about the path.
fn judge_opening(report: &mut Report) {
    let Some(o) = report.opening.clone() else { return };
    let u = &o.upgrade;
    if !u.upgrade_header {
        report.note(
            "warn",
            "the 101 answer carried no `Upgrade: websocket`",
            "a proxy rewrote the hop-by-hop headers; strict clients may refuse such an answer",
        );
    }
    if report.tether {
        report.note("ok", "a Tether server answered (subprotocol tether.v1.json)", "");
    } else {
        report.note("info", "the server did not accept tether.v1.json: not a Tether server, or one behind a path that drops Sec-WebSocket-Protocol", "");
    }
    match &u.extensions {
        Some(e) if e.contains("permessage-deflate") => {
            report.note("ok", format!("compression negotiated: {e}"), "")
        }
        _ => report.note(
            "info",
            "no compression: permessage-deflate was not negotiated",
            "a proxy may strip Sec-WebSocket-Extensions, or the server runs --no-compression",
        ),
    }
    for i in &u.intermediaries {
        let product = i.product.as_deref().map_or(String::new(), |p| format!(" ({p})"));
        report.note("info", format!("on the path: {}: {}{product}", i.header, i.value), "");
    }
}

async fn fallback(
    args: &DoctorArgs,
    target: &Target,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    progress: &indicatif::ProgressBar,
    report: &mut Report,
) {
    progress.set_message("trying the HTTP-streaming fallback");
    let outcome = measure::http_stream(target, roots, args.timeout).await;
    if outcome.ok {
        report.note("ok", "the HTTP-streaming fallback gets through (POST /stream)", "");
    } else {
        let advice = "clients that cannot open a WebSocket here have no fallback: let /stream through, unbuffered";
        report.note(
            "warn",
            format!("the HTTP-streaming fallback failed: {}", outcome.detail),
            advice,
        );
    }
    report.http_stream = Some(outcome);
}

async fn idle(
    args: &DoctorArgs,
    target: &Target,
    progress: &indicatif::ProgressBar,
    report: &mut Report,
) {
    if !args.idle_probe {
        report.unmeasured("the idle cut: run with --idle-probe (waits up to --idle-max for the path to cut a silent connection)");
        return;
    }
    if !report.tether {
        report.unmeasured("the idle cut: only a Tether server can be asked to stay silent (another server's own pings would hide the cut)");
        return;
    }
    if report.server.as_ref().is_some_and(|s| s.idle_probe_max_ms == 0) {
        report.unmeasured("the idle cut: this server grants no idle probes (idle_probes = 0)");
        return;
    }
    progress.set_message(format!("idle probe: waiting up to {}", secs(args.idle_max)));
    let connections = usize::from(args.idle_connections);
    match measure::idle_probe(target, connections, args.idle_max, args.timeout, progress).await {
        Ok(probe) => {
            report.idle_probe = Some(probe);
            report.judge_idle();
        }
        Err(e) => report.unmeasured(format!("the idle cut: {e}")),
    }
}

fn refusal_advice(status: u16) -> &'static str {
    match status {
        400 => "the server or a proxy refused the request's headers: check that the proxy passes Upgrade and Connection (nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\")",
        403 => "an origin or token check refused it: check allowed_origins and the token",
        404 => "no WebSocket endpoint at this path: Tether's is /ws",
        426 => "the upgrade did not reach the server as one: the proxy must pass Upgrade and Connection",
        429 | 503 => "the server is busy or limiting this address: try again later",
        _ => "see the answer's body",
    }
}
