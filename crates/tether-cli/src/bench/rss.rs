//! The server's resident memory sampled while a benchmark runs (from `/proc/PID/status`'s VmRSS,
//! so only with `--server-pid`: polling a /metrics endpoint this often would load the server).

use crate::probe::ServerProbe;
use std::time::Duration;

/// How often the sampler reads VmRSS.
pub(super) const EVERY: Duration = Duration::from_millis(50);

/// A background task reading the server's RSS every [`EVERY`] until [`RssSampler::finish`].
pub(super) struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

/// What the samples say, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct RssSummary {
    pub samples: usize,
    pub median: f64,
    pub peak: f64,
}

impl RssSampler {
    /// Starts sampling, with a first sample at once; `None` without `--server-pid`.
    pub fn start(probe: &ServerProbe) -> Option<Self> {
        probe.server_pid?;
        let probe = probe.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => samples.extend(probe.rss()),
                }
            }
            // A last sample at the end, so that every run has at least two.
            samples.extend(probe.rss());
            samples
        });
        Some(RssSampler { stop, task })
    }

    /// Stops sampling; `None` if no sample could be read (the process was gone).
    pub async fn finish(self) -> Option<RssSummary> {
        let _ = self.stop.send(());
        summarize(self.task.await.ok()?)
    }
}

fn summarize(mut samples: Vec<f64>) -> Option<RssSummary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    Some(RssSummary {
        samples: samples.len(),
        median: samples[samples.len() / 2],
        peak: samples[samples.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_peak_of_the_samples() {
        assert_eq!(summarize(vec![]), None);
        let s = summarize(vec![30.0, 10.0, 20.0, 50.0, 40.0]).unwrap();
        assert_eq!((s.samples, s.median, s.peak), (5, 30.0, 50.0));
    }
}
