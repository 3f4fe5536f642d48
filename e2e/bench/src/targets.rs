//! The performance targets of `make bench`: each measured value printed beside its goal, as the
//! scenario that measures it finishes, and all of them again at the end of the run. Nothing here
//! is asserted: a missed target is reported, and the run goes on.

use std::fmt;

/// How a measured value compares with its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The scenario could not measure it (it failed before, or was not run).
    NotMeasured,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotMeasured => "not measured",
        })
    }
}

/// One target and what this run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Short name, as the issue states the target.
    pub name: String,
    /// The measured value, with its unit and what it is made of.
    pub measured: String,
    /// The goal, in the same terms.
    pub goal: String,
    pub verdict: Verdict,
}

impl Target {
    /// A target whose measured value is `value` against an upper bound `limit`.
    pub fn at_most(name: &str, value: f64, limit: f64, measured: String, goal: String) -> Self {
        Target {
            name: name.into(),
            measured,
            goal,
            verdict: if value <= limit {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        }
    }

    /// A target whose measured value is `value` against a lower bound `floor`.
    pub fn at_least(name: &str, value: f64, floor: f64, measured: String, goal: String) -> Self {
        Target {
            name: name.into(),
            measured,
            goal,
            verdict: if value >= floor {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        }
    }

    /// A target that was not measured, with the reason in place of the value.
    pub fn not_measured(name: &str, why: String, goal: String) -> Self {
        Target {
            name: name.into(),
            measured: why,
            goal,
            verdict: Verdict::NotMeasured,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "target [{}] {}: measured {}; goal {}",
            self.verdict, self.name, self.measured, self.goal
        )
    }
}

/// The targets of one run, in the order they were measured.
#[derive(Debug, Default)]
pub struct Targets(Vec<Target>);

impl Targets {
    /// Prints the target at once and keeps it for the summary.
    pub fn report(&mut self, target: Target) {
        println!("{target}");
        self.0.push(target);
    }

    /// The closing table: every target, then how many were met.
    pub fn summary(&self) -> String {
        let met = self.0.iter().filter(|t| t.verdict == Verdict::Met).count();
        let mut out: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        out.push(format!("targets met: {met} of {}", self.0.len()));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_decide_the_verdict_and_equality_meets_it() {
        let t = |v| Target::at_most("x", v, 1.2, String::new(), String::new()).verdict;
        assert_eq!(t(1.2), Verdict::Met);
        assert_eq!(t(1.21), Verdict::Missed);
        let t = |v| Target::at_least("x", v, 30.0, String::new(), String::new()).verdict;
        assert_eq!(t(30.0), Verdict::Met);
        assert_eq!(t(29.9), Verdict::Missed);
    }

    #[test]
    fn the_summary_lists_every_target_and_counts_the_met_ones() {
        let mut targets = Targets::default();
        targets.report(Target::at_most(
            "quota-bound",
            1.1,
            1.2,
            "13.2 s = 1.10 x floor".into(),
            "<= 1.2 x floor".into(),
        ));
        targets.report(Target::not_measured(
            "restart",
            "the quota scenario failed".into(),
            "no writes".into(),
        ));
        assert_eq!(
            targets.summary(),
            "target [met] quota-bound: measured 13.2 s = 1.10 x floor; goal <= 1.2 x floor\n\
             target [not measured] restart: measured the quota scenario failed; goal no writes\n\
             targets met: 1 of 2"
        );
    }
}
