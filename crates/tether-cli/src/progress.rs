//! Progress bars for long phases of `tether bench`, `storm` and `soak` (indicatif).

/// A progress bar on stderr for a long phase (drawn only when stderr is a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:40}] {pos}/{len} {elapsed_precise}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}
