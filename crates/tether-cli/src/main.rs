//! `tether`: the command-line face of Tether.
//!
//! - `tether serve` — run the gateway (config file, `TETHER_*` environment, flags; flags win).
//! - `tether connect URL` — an interactive client that explains every close and reconnects.
//! - `tether publish CHANNEL DATA` — publish through the HTTP API.
//! - `tether api METHOD PARAMS`, `tether presence CHANNEL` — the rest of the server API.
//! - `tether doctor URL` — a diagnosis of the path to a server (with `--idle-probe`, its idle cut).
//! - `tether completions SHELL`, `tether man` — shell completions and the manual page.
//!
//! Errors reach the user as one `error: …` line that says what to do, and a non-zero exit.
//!
//! ## Layers
//! Bottom up; a module imports only those of lower layers (checked by
//! `tether-core/tests/layers.rs`):
//! 1. `units`, `lean_ws`, `probe`, `progress`, `http_api`
//! 2. `connect`, `publish`, `api`, `serve`, `token`, `storm`, `soak`, `doctor`
//! 3. `bench`

mod api;
mod bench;
mod connect;
mod doctor;
mod http_api;
mod lean_ws;
mod probe;
mod progress;
mod publish;
mod serve;
mod soak;
mod storm;
mod token;
mod units;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "WebSocket gateway whose connections never die silently"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (defaults: 127.0.0.1:8080, in-memory broker, 25 s ping).
    Serve(Box<serve::ServeArgs>),
    /// Connect to a WebSocket URL, print what arrives, send what you type; reconnects by itself.
    Connect(connect::ConnectArgs),
    /// Publish DATA to CHANNEL through a gateway's HTTP API.
    Publish(publish::PublishArgs),
    /// Call a method of a gateway's server API (POST /api/METHOD) and print its JSON answer.
    Api(api::ApiArgs),
    /// Who is in a presence channel (one line per client: id, user, info), or --stats.
    Presence(api::PresenceArgs),
    /// Measure a running gateway from the outside (fan-out throughput, latency, loss).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Churn clients in cycles and check that server memory comes back (leak check).
    Soak(soak::SoakArgs),
    /// Diagnose the path to a server: timings, proxies, round trips, clock, fallback, and with
    /// --idle-probe the idle timeout that cuts silent connections.
    Doctor(doctor::DoctorArgs),
    /// Make a JWT for a server with --jwt-secret or --jwt-public-key (development and tests).
    Token(token::TokenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    Man,
}

/// The commands that only print something about the command line itself: no runtime, no
/// logging. `None` for the others.
fn describe(command: &Command) -> Option<ExitCode> {
    // Rendered whole first: clap_complete panics on a failed write (a closed pipe).
    let mut text = Vec::new();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "tether", &mut text);
        }
        Command::Man => {
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut text) {
                eprintln!("error: cannot render the manual page: {e}");
                return Some(ExitCode::FAILURE);
            }
        }
        _ => return None,
    }
    use std::io::Write;
    if let Err(e) = std::io::stdout().write_all(&text) {
        eprintln!("error: cannot write to standard output: {e}");
        return Some(ExitCode::FAILURE);
    }
    Some(ExitCode::SUCCESS)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TETHER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = describe(&cli.command) {
        return code;
    }
    init_logging();
    tether_server::metrics::set_allocator_stats(jemalloc_figures);
    tether_server::metrics::set_heap_profiler(Box::new(JemallocProfiler));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Connect(args) => connect::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Api(args) => api::run_api(args).await,
            Command::Presence(args) => api::run_presence(args).await,
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Soak(args) => soak::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Doctor(args) => doctor::run(args).await,
            Command::Completions { .. } | Command::Man => unreachable!("handled by `describe`"),
        }
    });
    // Without waiting for blocking tasks: `tether connect` reads stdin on one, and a read from
    // a terminal or an open pipe would otherwise keep the process alive after it has stopped.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's own figures for `/metrics` (`tether_allocator_*`). Its statistics are cached;
/// advancing the epoch refreshes them.
fn jemalloc_figures() -> Option<tether_server::metrics::AllocatorFigures> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(tether_server::metrics::AllocatorFigures {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
    })
}

/// Heap profiles from jemalloc's own sampling, as pprof (`jemalloc_pprof`). Profiling is
/// compiled in and enabled (`prof:true` below) but inactive until asked: inactive, it costs a
/// counter per allocation; active, one stack trace per 512 KiB allocated on average.
struct JemallocProfiler;

impl JemallocProfiler {
    fn ctl(
    ) -> Result<&'static std::sync::Arc<tokio::sync::Mutex<jemalloc_pprof::JemallocProfCtl>>, String>
    {
        jemalloc_pprof::PROF_CTL.as_ref().ok_or_else(|| "jemalloc profiling is not enabled".into())
    }
}

impl tether_server::metrics::HeapProfiler for JemallocProfiler {
    fn set_active(&self, on: bool) -> Result<(), String> {
        let mut ctl = Self::ctl()?.blocking_lock();
        match on {
            true if !ctl.activated() => ctl.activate().map_err(|e| e.to_string()),
            false if ctl.activated() => ctl.deactivate().map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    fn is_active(&self) -> bool {
        Self::ctl().is_ok_and(|ctl| ctl.blocking_lock().activated())
    }

    fn dump_pprof(&self) -> Result<Vec<u8>, String> {
        Self::ctl()?.blocking_lock().dump_pprof().map_err(|e| format!("{e:#}"))
    }
}

/// jemalloc settings baked into the binary: a background thread returns freed pages to the OS
/// after a second, so that resident memory follows what connections actually hold (parked
/// connections free their WebSocket buffers; see docs/decisions/0007). Heap profiling is
/// enabled but inactive (`JemallocProfiler` switches it on when asked).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,prof:true,prof_active:false,lg_prof_sample:19\0";
