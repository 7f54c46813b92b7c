//! On a Redis Cluster, whether a channel's state found on another Redis process than the one
//! that made it came there with its slot (a migration: the stream is whole, its epoch goes on)
//! or by a failover or a restart (acknowledged publications may be missing: a new epoch).
//!
//! The scripts stamp each channel's state with the run id of the process that wrote it last
//! and report a state stamped by another ('MADE>HERE', see `redis_scripts::foreign`). MIGRATE
//! moves keys whole and deletes them at the source, so a state that left a master which is
//! still a master came by migration: its writer was not replaced. A failover shows in the
//! replication ids: a promoted replica carries its old master's id as `master_replid2`, so a
//! holder whose line includes the writer's (or the reverse) took the state over by
//! replication, and may lack its latest writes. A writer that restarted has a new run id and is
//! no longer found; one that was demoted is no longer a master. Anything unsure is a new epoch.

use super::redis_endpoint::Conn;
use redis::Value;

/// What a master says of itself (`INFO server replication`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub run_id: String,
    pub master: bool,
    pub replid: String,
    pub replid2: String,
}

impl Process {
    /// Read from `INFO` text; `None` without a run id.
    pub fn parse(info: &str) -> Option<Process> {
        let mut p = Process::default();
        for line in info.lines() {
            let Some((key, value)) = line.trim_end().split_once(':') else { continue };
            match key {
                "run_id" => p.run_id = value.to_owned(),
                "role" => p.master = value == "master",
                "master_replid" => p.replid = value.to_owned(),
                "master_replid2" => p.replid2 = value.to_owned(),
                _ => {}
            }
        }
        (!p.run_id.is_empty()).then_some(p)
    }
}

/// Whether a state made by `made` and found on `here` (the script's 'MADE>HERE') came with its
/// slot, given what the cluster's masters say now.
pub fn moved_with_slot(masters: &[Process], moved: &str) -> bool {
    let Some((made, here)) = moved.split_once('>') else { return false };
    let find = |run: &str| masters.iter().find(|p| p.run_id == run && p.master);
    let (Some(writer), Some(holder)) = (find(made), find(here)) else { return false };
    // Any replication id in common (a zero id means none): one took the other's line over,
    // or both descend from one master.
    let ids = |p: &Process| {
        [p.replid.clone(), p.replid2.clone()]
            .into_iter()
            .filter(|id| !id.trim_matches('0').is_empty())
    };
    let related = ids(writer).any(|id| ids(holder).any(|other| other == id));
    made != here && !related
}

/// Verdicts of [`check`] for a few seconds, by 'MADE>HERE' (at most [`VERDICTS`] of them).
#[derive(Default)]
pub struct Verdicts(std::sync::Mutex<Vec<(String, bool, std::time::Instant)>>);

/// Pairs remembered at most; how long a verdict holds.
const VERDICTS: usize = 64;
const VERDICT_HOLDS: std::time::Duration = std::time::Duration::from_secs(5);

impl Verdicts {
    pub fn get(&self, moved: &str) -> Option<bool> {
        let now = std::time::Instant::now();
        let mut v = crate::sync::lock(&self.0);
        v.retain(|(_, _, at)| now.duration_since(*at) < VERDICT_HOLDS);
        v.iter().find(|(m, _, _)| m == moved).map(|(_, migrated, _)| *migrated)
    }

    pub fn put(&self, moved: &str, migrated: bool) {
        let mut v = crate::sync::lock(&self.0);
        if v.len() >= VERDICTS {
            v.remove(0);
        }
        v.push((moved.to_owned(), migrated, std::time::Instant::now()));
    }
}

/// Ask every master of the cluster and decide (see [`moved_with_slot`]); `false` when any
/// cannot be asked.
pub async fn check(conn: &mut Conn, moved: &str) -> bool {
    let mut info = redis::cmd("INFO");
    info.arg("server").arg("replication");
    // Routed to every master; the answer maps each address to its text.
    let answers: Value = match info.query_async(conn).await {
        Ok(answers) => answers,
        Err(e) => {
            tracing::warn!(error = %e, "could not ask the cluster's masters whether a slot moved; the channel starts a new epoch");
            return false;
        }
    };
    let Value::Map(answers) = answers else { return false };
    let mut masters = Vec::with_capacity(answers.len());
    for (_, text) in answers {
        match redis::from_redis_value::<String>(text).ok().as_deref().and_then(Process::parse) {
            Some(process) => masters.push(process),
            None => return false,
        }
    }
    let migrated = moved_with_slot(&masters, moved);
    tracing::info!(moved, migrated, "a channel's state was made by another Redis process");
    migrated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(run: &str, replid: &str, replid2: &str) -> Process {
        let [run_id, replid, replid2] = [run, replid, replid2].map(str::to_owned);
        Process { run_id, master: true, replid, replid2 }
    }

    #[test]
    fn info_text_gives_the_process() {
        let text = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n\r\n# Replication\r\nrole:master\r\nmaster_replid:r1\r\nmaster_replid2:0000\r\n";
        assert_eq!(Process::parse(text), Some(master("abc", "r1", "0000")));
        assert_eq!(Process::parse("# Server\r\nredis_version:7\r\n"), None);
    }

    #[test]
    fn only_a_state_that_left_a_master_still_outside_its_holders_line_moved_with_its_slot() {
        let zeros = "0000";
        let (a, b) = (master("A", "ra", zeros), master("B", "rb", zeros));
        assert!(moved_with_slot(&[a, b], "A>B"), "a migration between two masters");
        // B was A's replica and took over: B's line carries A's id.
        let (a, b) = (master("A", "ra", zeros), master("B", "rb2", "ra"));
        assert!(!moved_with_slot(&[a, b], "A>B"), "a failover");
        // The writer restarted (another run id) or is no master now.
        let b = master("B", "rb", zeros);
        assert!(!moved_with_slot(&[b], "A>B"), "a writer gone");
        let mut a = master("A", "ra", zeros);
        a.master = false;
        assert!(!moved_with_slot(&[a, master("B", "rb", zeros)], "A>B"), "a writer demoted");
        assert!(!moved_with_slot(&[master("A", "ra", zeros)], "A>A"));
        assert!(!moved_with_slot(&[], "garbled"));
        // Both descend from one master (each was promoted from its replicas in turn).
        let (a, b) = (master("A", "ra", "rx"), master("B", "rb", "rx"));
        assert!(!moved_with_slot(&[a, b], "A>B"), "a common ancestor");
    }
}
