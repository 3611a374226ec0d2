//! What each test did in a VM, from libtest's lines, and the kernel × test table.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Ignored,
    /// Passed by returning early: the test said why (`SKIPPED name: reason`).
    Skipped(String),
}

impl Outcome {
    fn cell(&self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::Ignored => "ignored",
            Self::Skipped(_) => "skipped",
        }
    }
}

/// Reads a VM's console line by line (libtest runs with `--test-threads=1`).
#[derive(Debug, Default)]
pub struct Parser {
    results: BTreeMap<String, Outcome>,
    skips: BTreeMap<String, String>,
    /// A `test NAME ... ` whose result a test's own output pushed to a later line.
    pending: Option<String>,
    /// How long each test took, as the console told: from the result line before it (or
    /// the binary's `running N tests`) to its own.
    times: BTreeMap<String, Duration>,
    since: Option<Instant>,
}

fn result_word(s: &str) -> Option<Outcome> {
    let s = s.trim();
    if s == "ok" {
        Some(Outcome::Pass)
    } else if s.starts_with("FAILED") {
        Some(Outcome::Fail)
    } else if s.starts_with("ignored") {
        Some(Outcome::Ignored)
    } else {
        None
    }
}

impl Parser {
    pub fn line(&mut self, line: &str) {
        self.line_at(line, Instant::now());
    }

    /// A line, read at `at`.
    pub fn line_at(&mut self, line: &str, at: Instant) {
        let line = line.trim_end_matches('\r');
        if line.starts_with("running ") && (line.ends_with(" tests") || line.ends_with(" test")) {
            self.since = Some(at);
        }
        // Written by a test that returns early (see `have_root` and `needs_kernel`).
        if let Some((name, reason)) = line
            .find("SKIPPED ")
            .and_then(|at| line.get(at + "SKIPPED ".len()..))
            .and_then(|rest| rest.split_once(": "))
        {
            self.skips.insert(name.to_owned(), reason.trim().to_owned());
        }
        if let Some((name, rest)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            match result_word(rest) {
                Some(outcome) => {
                    self.result(name.to_owned(), outcome, at);
                    self.pending = None;
                }
                None => self.pending = Some(name.to_owned()),
            }
            return;
        }
        if let Some(outcome) = result_word(line)
            && let Some(name) = self.pending.take()
        {
            self.result(name, outcome, at);
        }
    }

    fn result(&mut self, name: String, outcome: Outcome, at: Instant) {
        if let Some(since) = self.since.replace(at) {
            self.times
                .insert(name.clone(), at.saturating_duration_since(since));
        }
        self.results.insert(name, outcome);
    }

    /// The `n` slowest tests so far, slowest first.
    pub fn slowest(&self, n: usize) -> Vec<(String, Duration)> {
        let mut times: Vec<(String, Duration)> =
            self.times.iter().map(|(t, d)| (t.clone(), *d)).collect();
        times.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
        times.truncate(n);
        times
    }

    /// Each test's outcome, a pass that said `SKIPPED` counting as skipped.
    pub fn finish(self) -> BTreeMap<String, Outcome> {
        let mut results = self.results;
        for (name, reason) in self.skips {
            if let Some(o @ Outcome::Pass) = results.get_mut(&name) {
                *o = Outcome::Skipped(reason);
            }
        }
        results
    }
}

/// One kernel's run.
#[derive(Debug)]
pub struct Run {
    /// The column's title: the series or suite asked for.
    pub label: String,
    /// What `--kernel` said.
    pub spec: String,
    pub package: String,
    /// `uname -r` inside the VM, once it booted.
    pub release: Option<String>,
    pub results: BTreeMap<String, Outcome>,
    /// Why the VM gave no (full) answer, when it did not.
    pub error: Option<String>,
    pub seconds: f64,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && !self.results.is_empty()
            && self.results.values().all(|o| *o != Outcome::Fail)
    }
}

/// The kernel × test table, tests in `tests`' order (then any the VMs reported besides).
pub fn table(tests: &[String], runs: &[Run]) -> String {
    let mut rows: Vec<&str> = tests.iter().map(String::as_str).collect();
    for run in runs {
        for name in run.results.keys() {
            if !rows.contains(&name.as_str()) {
                rows.push(name);
            }
        }
    }
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(4).max(4);
    let cols: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    let colw: Vec<usize> = cols.iter().map(|c| c.len().max(7)).collect();
    let mut out = String::new();
    let _ = write!(out, "{:width$}", "test");
    for (c, w) in cols.iter().zip(&colw) {
        let _ = write!(out, "  {c:w$}");
    }
    out.push('\n');
    for row in &rows {
        let _ = write!(out, "{row:width$}");
        for (run, w) in runs.iter().zip(&colw) {
            let cell = match run.results.get(*row) {
                Some(o) => o.cell(),
                None if run.error.is_some() => "not run",
                None => "missing",
            };
            let _ = write!(out, "  {cell:w$}");
        }
        out.push('\n');
    }
    let _ = write!(out, "{:width$}", "wall time");
    for (run, w) in runs.iter().zip(&colw) {
        let t = format!("{:.0}s", run.seconds);
        let _ = write!(out, "  {t:w$}");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_skips_and_split_lines() {
        let mut p = Parser::default();
        for l in [
            "running 4 tests",
            "test a ... ok",
            "test b ... FAILED",
            "test c ... SKIPPED c: skipped on 5.10: needs X (kernel >= 5.13)",
            "ok",
            "test d ... ignored, slow",
            "test result: FAILED. 2 passed; 1 failed; 1 ignored",
        ] {
            p.line(l);
        }
        assert_eq!(p.slowest(9).len(), 4);
        let r = p.finish();
        assert_eq!(r.get("a"), Some(&Outcome::Pass));
        assert_eq!(r.get("b"), Some(&Outcome::Fail));
        assert_eq!(
            r.get("c"),
            Some(&Outcome::Skipped(
                "skipped on 5.10: needs X (kernel >= 5.13)".to_owned()
            ))
        );
        assert_eq!(r.get("d"), Some(&Outcome::Ignored));
    }

    #[test]
    fn times_run_from_result_to_result() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = Parser::default();
        p.line_at("running 2 tests", t0);
        p.line_at("test a ... ok", t0 + s(3));
        p.line_at("test b ... some output of b's", t0 + s(4));
        p.line_at("ok", t0 + s(10));
        assert_eq!(
            p.slowest(5),
            [("b".to_owned(), s(7)), ("a".to_owned(), s(3))]
        );
    }
}
