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
