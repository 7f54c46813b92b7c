//! Reading an Autobahn|Testsuite report (`index.json`: agent → case → behaviour).

use std::collections::BTreeMap;
use std::path::Path;

/// The grades Autobahn gives, in its own words; ERROR is its word for a case whose own code
/// raised (the test tool failed, not necessarily the peer: it counts as a failure all the same).
pub const GRADES: [&str; 6] =
    ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"];

/// The grades that pass.
const PASSING: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];

/// One agent's run: every case with its behaviour and its closing behaviour.
pub struct Summary {
    pub agent: String,
    pub total: usize,
    /// Case id → (behavior, behaviorClose).
    pub cases: BTreeMap<String, (String, String)>,
    pub dir: std::path::PathBuf,
}

impl Summary {
    /// The report's only agent.
    pub fn read(index: &Path) -> Summary {
        let text = std::fs::read_to_string(index)
            .unwrap_or_else(|e| panic!("no Autobahn report at {}: {e}", index.display()));
        let report: serde_json::Value = serde_json::from_str(&text).expect("index.json is JSON");
        let (agent, cases) = report.as_object().and_then(|o| o.iter().next()).expect("an agent");
        let cases: BTreeMap<String, (String, String)> = cases
            .as_object()
            .expect("cases")
            .iter()
            .map(|(id, c)| {
                let grade = |k: &str| c[k].as_str().unwrap_or("?").to_owned();
                (id.clone(), (grade("behavior"), grade("behaviorClose")))
            })
            .collect();
        Summary {
            agent: agent.clone(),
            total: cases.len(),
            cases,
            dir: index.parent().unwrap().to_owned(),
        }
    }

    pub fn count(&self, grade: &str) -> usize {
        self.cases.values().filter(|(b, _)| b == grade).count()
    }

    /// Cases that fail, as kosoku grades them: a behaviour other than OK, NON-STRICT or
    /// INFORMATIONAL, or a closing behaviour other than OK or INFORMATIONAL (FAILED, WRONG
    /// CODE, UNCLEAN, FAILED BY CLIENT).
    pub fn failures(&self) -> Vec<(&String, &(String, String))> {
        self.cases
            .iter()
            .filter(|(_, (b, c))| {
                !PASSING.contains(&b.as_str()) || !["OK", "INFORMATIONAL"].contains(&c.as_str())
            })
            .collect()
    }

    /// `517 cases: OK 500, NON-STRICT 5, INFORMATIONAL 12, UNIMPLEMENTED 0, FAILED 0, ERROR 0`.
    pub fn line(&self) -> String {
        let counts: Vec<String> = GRADES.iter().map(|g| format!("{g} {}", self.count(g))).collect();
        format!("{} cases: {}", self.total, counts.join(", "))
    }

    /// Panic with every failing case, its grades and what its report says.
    pub fn assert_passed(&self) {
        let failures = self.failures();
        if failures.is_empty() {
            return;
        }
        let mut text = String::new();
        for (id, (behavior, close)) in &failures {
            text.push_str(&format!("  {id}: {behavior} (close: {close}){}\n", self.reason(id)));
        }
        panic!(
            "{} of {} Autobahn cases failed for {}:\n{text}",
            failures.len(),
            self.total,
            self.agent
        );
    }

    /// The case report's own result text, when it has one.
    fn reason(&self, id: &str) -> String {
        let name = format!("{}_case_{}.json", self.agent, id.replace('.', "_")).to_lowercase();
        let Ok(text) = std::fs::read_to_string(self.dir.join(&name)) else { return String::new() };
        let Ok(case) = serde_json::from_str::<serde_json::Value>(&text) else {
            return String::new();
        };
        let mut out = String::new();
        for key in ["result", "resultClose"] {
            if let Some(r) = case[key].as_str() {
                out.push_str(&format!(" — {key}: {r}"));
            }
        }
        out
    }
}
