//! The optimised `tether` binary, for the tests that measure the product rather than a debug
//! build (the reconnect storm; the Autobahn server run uses it for speed): `$TETHER_RELEASE_BIN`,
//! which scripts/test sets right after building it, else `target/release/tether`. Either is used
//! only when it is not older than the sources it was built from, so a test never measures
//! yesterday's code.

use std::path::{Path, PathBuf};

/// The optimised binary, or why there is none fit to use.
pub fn release_bin() -> Result<PathBuf, String> {
    let bin = std::env::var_os("TETHER_RELEASE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/tether")
    });
    let build = "cargo build --release -p tether-cli --bin tether (scripts/test does)";
    if !bin.is_file() {
        return Err(format!("the release build of tether ({}) is missing: {build}", bin.display()));
    }
    match stale_input(&bin) {
        Ok(None) => Ok(bin),
        Ok(Some(source)) => Err(format!(
            "{} is older than {}, so it would test older code: {build}",
            bin.display(),
            source.display()
        )),
        Err(why) => {
            Err(format!("cannot tell whether {} is up to date ({why}): {build}", bin.display()))
        }
    }
}

/// A source `bin` was built from that changed after it (or is gone), from the dep-info file
/// cargo writes beside it (`tether.d`: every workspace file the binary was compiled from,
/// embedded assets included). `None`: the binary is up to date.
pub fn stale_input(bin: &Path) -> Result<Option<PathBuf>, String> {
    let mut dep_info = bin.as_os_str().to_owned();
    dep_info.push(".d");
    let dep_info = PathBuf::from(dep_info);
    let text = std::fs::read_to_string(&dep_info)
        .map_err(|e| format!("no dep-info at {}: {e}", dep_info.display()))?;
    let built = modified(bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    // `target: input input…`, spaces inside a path escaped as `\ `; the first line only
    // (cargo writes one).
    let line = text.lines().next().unwrap_or_default();
    let (_, inputs) = line
        .split_once(": ")
        .ok_or_else(|| format!("{} is not a dep-info file", dep_info.display()))?;
    let mut paths = Vec::new();
    let mut path = String::new();
    let mut chars = inputs.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => path.extend(chars.next()),
            ' ' => {
                paths.extend((!path.is_empty()).then(|| PathBuf::from(std::mem::take(&mut path))))
            }
            c => path.push(c),
        }
    }
    paths.extend((!path.is_empty()).then(|| PathBuf::from(path)));
    if paths.is_empty() {
        return Err(format!("{} lists no source", dep_info.display()));
    }
    Ok(paths.into_iter().find(|source| modified(source).map_or(true, |time| time > built)))
}

fn modified(path: &Path) -> std::io::Result<std::time::SystemTime> {
    std::fs::metadata(path)?.modified()
}
