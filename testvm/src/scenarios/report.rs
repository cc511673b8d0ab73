// SPDX-License-Identifier: Apache-2.0
//! Pass/fail checks with their evidence, per scenario.

use std::fmt::Write as _;

/// One assertion.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is asserted.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The observed facts, one line.
    pub detail: String,
    /// Serial-log (or other) excerpt, shown on failure.
    pub evidence: String,
}

/// The result of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Checks in order.
    pub checks: Vec<Check>,
    /// Facts worth printing whatever the outcome (timings, counts).
    pub facts: Vec<(String, String)>,
    /// Set when the scenario could not run to the end.
    pub error: Option<String>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            ..Self::default()
        }
    }

    /// Records a check; `evidence` is computed only when it failed.
    pub fn check(
        &mut self,
        name: &str,
        ok: bool,
        detail: impl Into<String>,
        evidence: impl FnOnce() -> String,
    ) {
        let evidence = if ok { String::new() } else { evidence() };
        self.checks.push(Check {
            name: name.to_owned(),
            ok,
            detail: detail.into(),
            evidence,
        });
    }

    /// Records a fact.
    pub fn fact(&mut self, key: &str, value: impl Into<String>) {
        self.facts.push((key.to_owned(), value.into()));
    }

    /// The value of fact `key`, if recorded.
    pub fn fact_value(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every check held and the scenario ran to the end.
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(s, "=== scenario {}: {verdict}", self.scenario);
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  [{}] {}: {}",
                if c.ok { "ok" } else { "FAILED" },
                c.name,
                c.detail
            );
            if !c.ok && !c.evidence.is_empty() {
                for l in c.evidence.lines() {
                    let _ = writeln!(s, "      | {l}");
                }
            }
        }
        for (k, v) in &self.facts {
            let _ = writeln!(s, "  {k}: {v}");
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "  error: {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_shows_its_evidence() {
        let mut r = Report::new("x");
        r.check("a", true, "fine", || unreachable!());
        assert!(r.passed());
        r.check("b", false, "bad", || "line 1\nline 2".into());
        assert!(!r.passed());
        let t = r.render();
        assert!(t.contains("scenario x: FAIL"));
        assert!(t.contains("      | line 2"));
        assert!(!Report::new("empty").passed());
    }
}
