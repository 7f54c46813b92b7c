//! Parsing of human units on the command line: durations (`250ms`, `25s`, `1m`) and sizes
//! (`64KiB`, `1MiB`, `512`), with errors that show an example of what is accepted.

use bytesize::ByteSize;
use std::time::Duration;

pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 250ms, 25s or 1m"))
}

/// A duration for a period (a timer's interval): at least a millisecond, which is also what
/// the bench passes on to its worker processes.
pub fn period(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!("`{s}` is too short for a period; it must be at least 1ms"));
    }
    Ok(d)
}

pub fn size(s: &str) -> Result<ByteSize, String> {
    s.trim()
        .parse::<ByteSize>()
        .map_err(|e| format!("`{s}` is not a size ({e}); write e.g. 512, 64KiB or 1MiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_forms() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("25s").unwrap(), Duration::from_secs(25));
        assert_eq!(size("64KiB").unwrap().as_u64(), 64 * 1024);
        assert_eq!(size("1MiB").unwrap().as_u64(), 1024 * 1024);
        assert_eq!(size("512").unwrap().as_u64(), 512);
        assert!(duration("soon").unwrap_err().contains("250ms"));
        assert!(size("big").unwrap_err().contains("64KiB"));
    }
}
