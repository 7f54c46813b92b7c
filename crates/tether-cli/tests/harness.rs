//! The test harness's own rules, checked without a server: when `CI` counts as CI, how a
//! metric is looked up, when the optimised binary counts as up to date.

mod common;
use common::*;

#[test]
fn ci_counts_only_when_set_to_a_yes() {
    for value in ["true", "TRUE", "True", "1", "yes", "on", "woodpecker"] {
        assert!(ci::means_yes(Some(value)), "CI={value:?} is CI");
    }
    for value in [
        None,
        Some(""),
        Some(" "),
        Some("false"),
        Some("FALSE"),
        Some("0"),
        Some("no"),
        Some("off"),
    ] {
        assert!(!ci::means_yes(value), "CI={value:?} is not CI");
    }
}

/// A /metrics text as the server writes it (OpenMetrics), with one extra gauge whose name
/// starts with another's.
const EXPOSITION: &str = r#"# HELP tether_connections_open Open WebSocket connections.
# TYPE tether_connections_open gauge
tether_connections_open 7
# TYPE tether_connections_open_max gauge
tether_connections_open_max 9
# TYPE tether_deliveries counter
tether_deliveries_total 5
# TYPE tether_deliveries_dropped counter
tether_deliveries_dropped_total 2
# TYPE tether_heartbeat_timeouts counter
tether_heartbeat_timeouts_total 1
# TYPE tether_heartbeat_rtt_seconds histogram
tether_heartbeat_rtt_seconds_sum 0.5
tether_heartbeat_rtt_seconds_count 4
tether_heartbeat_rtt_seconds_bucket{le="0.1"} 3
tether_heartbeat_rtt_seconds_bucket{le="+Inf"} 4
# TYPE tether_connections_closed counter
tether_connections_closed_total{code="1000",initiator="client"} 3
tether_connections_closed_total{code="1006",initiator="network"} 2
tether_connections_closed_total{code="1006",initiator="client"} 1
# EOF
"#;

/// The panic message of `f`, if it panics.
fn panic_of(f: impl FnOnce() -> f64 + std::panic::UnwindSafe) -> Option<String> {
    let err = std::panic::catch_unwind(f).err()?;
    Some(err.downcast_ref::<String>().cloned().unwrap_or_default())
}

#[test]
fn a_metric_is_its_exact_name_and_labels_never_a_prefix() {
    let sum = |selector: &str| metric_sum(EXPOSITION, selector);
    // The exact name, not every name that starts with it.
    assert_eq!(sum("tether_connections_open"), 7.0);
    assert_eq!(sum("tether_deliveries_total"), 5.0);
    // Labels in any order; the ones not given are summed over.
    assert_eq!(sum(r#"tether_connections_closed_total{code="1000",initiator="client"}"#), 3.0);
    assert_eq!(sum(r#"tether_connections_closed_total{initiator="client",code="1000"}"#), 3.0);
    assert_eq!(sum(r#"tether_connections_closed_total{code="1006"}"#), 3.0);
    assert_eq!(sum("tether_connections_closed_total"), 6.0);
    assert_eq!(sum(r#"tether_heartbeat_rtt_seconds_bucket{le="+Inf"}"#), 4.0);
    // A family with no series yet is 0, not an error (labelled families appear with their first).
    assert_eq!(sum(r#"tether_recoveries_total{outcome="recovered"}"#), 0.0);
    // A name that is no sample of any metric is an error, not a silent 0 or a sum of others.
    for wrong in [
        "tether_deliveries",            // a prefix of two counters
        "tether_heartbeat_timeouts",    // a counter's samples end in _total
        "tether_heartbeat_rtt_seconds", // a histogram's are _bucket, _sum, _count
        "tether_recoverys_total",       // a typo
    ] {
        let why = panic_of(|| sum(wrong)).unwrap_or_else(|| panic!("{wrong} was accepted"));
        assert!(why.contains(wrong), "{why}");
    }
    let why = panic_of(|| sum(r#"tether_connections_closed_total{code="1006""#)).unwrap();
    assert!(why.contains("selector"), "an unclosed label set is an error: {why}");
}

/// A fake build in a temporary directory: sources, a binary, and cargo's dep-info beside it.
struct FakeBuild {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl FakeBuild {
    fn new(name: &str) -> FakeBuild {
        let dir =
            std::env::temp_dir().join(format!("tether-fake-build-{}-{name}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        for file in ["src/main.rs", "src/my module.rs", "index.html"] {
            std::fs::write(dir.join(file), "x").unwrap();
        }
        let bin = dir.join("tether");
        std::fs::write(&bin, "binary").unwrap();
        let d = dir.display().to_string().replace(' ', "\\ ");
        std::fs::write(
            dir.join("tether.d"),
            format!("{d}/tether: {d}/src/main.rs {d}/src/my\\ module.rs {d}/src/../index.html\n"),
        )
        .unwrap();
        FakeBuild { dir, bin }
    }

    /// Set a file's modification time to `secs` after an arbitrary origin.
    fn touch(&self, file: &str, secs: u64) {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + secs);
        let f = std::fs::File::options().write(true).open(self.dir.join(file)).unwrap();
        f.set_modified(time).unwrap();
    }
}

impl Drop for FakeBuild {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_binary_older_than_a_source_it_was_built_from_is_stale() {
    let build = FakeBuild::new("stale");
    for file in ["src/main.rs", "src/my module.rs", "index.html"] {
        build.touch(file, 0);
    }
    build.touch("tether", 10);
    assert_eq!(release::stale_input(&build.bin).unwrap(), None, "built after every source");

    build.touch("src/my module.rs", 20);
    let stale = release::stale_input(&build.bin).unwrap();
    assert!(stale.is_some_and(|p| p.ends_with("src/my module.rs")), "an edited source");

    build.touch("src/my module.rs", 0);
    build.touch("index.html", 20);
    let stale = release::stale_input(&build.bin).unwrap();
    assert!(stale.is_some_and(|p| p.ends_with("index.html")), "an embedded asset");

    build.touch("index.html", 0);
    std::fs::remove_file(build.dir.join("src/main.rs")).unwrap();
    let stale = release::stale_input(&build.bin).unwrap();
    assert!(stale.is_some_and(|p| p.ends_with("src/main.rs")), "a source that is gone");

    std::fs::remove_file(build.dir.join("tether.d")).unwrap();
    assert!(release::stale_input(&build.bin).is_err(), "no dep-info: cannot tell");

    // The release binary scripts/test has just built (`cargo build` writes its dep-info; a
    // binary `cargo test` builds for its tests gets none) reads as up to date from cargo's own.
    if let Ok(bin) = std::env::var("TETHER_RELEASE_BIN") {
        let bin = std::path::Path::new(&bin);
        assert_eq!(release::stale_input(bin), Ok(None), "{}", bin.display());
    }
}
