//! Whether the tests run under CI, where a missing external program fails a test instead of
//! skipping it. Shared by every test crate of the workspace (tether-client's includes this file
//! by `#[path]`), and mirrored by `underCI` in `web/test/harness.mjs`.

/// `CI` as the environment has it.
pub fn under_ci() -> bool {
    means_yes(std::env::var_os("CI").map(|v| v.to_string_lossy().into_owned()).as_deref())
}

/// Whether a value of `CI` means "this is CI": set, and not a "no" (empty, `0`, `false`, `no`,
/// `off`, in any case). CI services set `true` or `1`, some their own name (`woodpecker`), so any
/// other value counts: a run that meant to be CI then fails on a missing program rather than
/// skipping it.
pub fn means_yes(value: Option<&str>) -> bool {
    let Some(value) = value.map(str::trim) else { return false };
    !(value.is_empty()
        || ["0", "false", "no", "off"].iter().any(|no| value.eq_ignore_ascii_case(no)))
}
