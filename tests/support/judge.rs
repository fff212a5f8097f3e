//! What a judge found, counted: how much it judged and its violations by kind, printed as one
//! `JUDGE` line per judge and asserted to be zero. Every figure on the line is computed from the
//! data the judge read, so a judge that judged nothing shows `judged=0`, not a reassuring zero.

use std::{collections::BTreeMap, fmt::Write as _};

/// One judge's findings over a scenario (or the sum over a scenario's shards).
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Verdict {
    /// The judge's name on the `JUDGE` line, e.g. `leader-writes`.
    pub judge: &'static str,
    /// How many things were judged (writes, requests, settle checks: the judge says which).
    pub judged: usize,
    /// Violations by kind, each with its description.
    pub violations: BTreeMap<&'static str, Vec<String>>,
    /// Further counts (name, value), printed after the violations; summed by [`Verdict::absorb`].
    pub counts: Vec<(&'static str, usize)>,
    /// Further measured figures (name, value), printed last; not carried by [`Verdict::absorb`]
    /// (a minimum of minima is the caller's to compute).
    pub figures: Vec<(&'static str, String)>,
}

impl Verdict {
    pub fn new(judge: &'static str) -> Self {
        Self {
            judge,
            ..Self::default()
        }
    }

    pub fn violation(&mut self, kind: &'static str, what: String) {
        self.violations.entry(kind).or_default().push(what);
    }

    /// Adds `n` to the count `name`.
    pub fn count(&mut self, name: &'static str, n: usize) {
        match self.counts.iter_mut().find(|(c, _)| *c == name) {
            Some((_, value)) => *value += n,
            None => self.counts.push((name, n)),
        }
    }

    pub fn figure(&mut self, name: &'static str, value: &impl ToString) {
        self.figures.push((name, value.to_string()));
    }

    pub fn violation_count(&self) -> usize {
        self.violations.values().map(Vec::len).sum()
    }

    /// Adds another verdict of the same judge (another shard's): counts and violations add up;
    /// figures are dropped (the caller computes them for the sum).
    pub fn absorb(&mut self, other: Verdict) {
        assert_eq!(
            self.judge, other.judge,
            "adding verdicts of different judges"
        );
        self.judged += other.judged;
        for (name, n) in other.counts {
            self.count(name, n);
        }
        for (kind, list) in other.violations {
            self.violations.entry(kind).or_default().extend(list);
        }
    }

    /// `JUDGE <name> judged=N violations=M [<kind>=<count> ...] [<figure>=<value> ...]`
    pub fn line(&self) -> String {
        let mut line = format!(
            "JUDGE {} judged={} violations={}",
            self.judge,
            self.judged,
            self.violation_count()
        );
        for (kind, list) in &self.violations {
            let _ = write!(line, " {kind}={}", list.len());
        }
        for (name, value) in &self.counts {
            let _ = write!(line, " {name}={value}");
        }
        for (name, value) in &self.figures {
            let _ = write!(line, " {name}={value}");
        }
        line
    }

    /// Prints the `JUDGE` line, then [`Verdict::assert_clean`].
    pub fn print_and_assert(&self) {
        println!("{}", self.line());
        self.assert_clean();
    }

    /// Panics with the line and the violations (the first 20 of each kind) unless there are none.
    pub fn assert_clean(&self) {
        if self.violation_count() == 0 {
            return;
        }
        let mut details = String::new();
        for (kind, list) in &self.violations {
            for v in list.iter().take(20) {
                let _ = writeln!(details, "  {kind}: {v}");
            }
            if list.len() > 20 {
                let _ = writeln!(details, "  {kind}: ... and {} more", list.len() - 20);
            }
        }
        panic!("{}\n{details}", self.line());
    }
}
