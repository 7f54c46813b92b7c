//! Rows of the interoperability matrix: each test that drives a real third-party peer records
//! what it checked, and `scripts/interop-table` renders every row into
//! `target/interop/interop.md` (published as `docs/interop.md` with `--write-docs`).

use std::path::PathBuf;

/// One peer in one configuration, and the outcome of each check (`pass`, `fail`, or why the
/// check does not apply).
#[derive(serde::Serialize)]
pub struct Row {
    pub peer: String,
    /// e.g. "client of tether serve" or "server for the Rust client".
    pub role: String,
    pub mode: String,
    pub compression_offered: bool,
    /// The `Sec-WebSocket-Extensions` answer ("" when none was negotiated).
    pub negotiated: String,
    pub checks: Vec<(String, String)>,
}

impl Row {
    pub fn new(peer: &str, role: &str, mode: &str, compression_offered: bool) -> Row {
        Row {
            peer: peer.into(),
            role: role.into(),
            mode: mode.into(),
            compression_offered,
            negotiated: String::new(),
            checks: Vec::new(),
        }
    }

    pub fn check(&mut self, name: &str, ok: bool) {
        self.checks.push((name.into(), if ok { "pass" } else { "fail" }.into()));
    }

    pub fn not_applicable(&mut self, name: &str, why: &str) {
        self.checks.push((name.into(), format!("n/a: {why}")));
    }

    /// Write the row for the table, then fail the test if any check failed.
    pub fn finish(self) {
        let dir = rows_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let slug: String =
            format!("{}-{}-{}-{}", self.peer, self.role, self.mode, self.compression_offered)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
                .collect();
        std::fs::write(
            dir.join(format!("{slug}.json")),
            serde_json::to_string_pretty(&self).unwrap(),
        )
        .unwrap();
        let failed: Vec<_> = self.checks.iter().filter(|(_, r)| r == "fail").collect();
        assert!(
            failed.is_empty(),
            "{} ({}, {}): failed {failed:?}",
            self.peer,
            self.role,
            self.mode
        );
    }
}

/// `target/interop/rows`, where every row lands.
pub fn rows_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("interop/rows")
}
