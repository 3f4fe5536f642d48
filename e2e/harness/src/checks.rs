//! Several named checks in one test, for suites that share one expensive fixture (a control
//! plane costs seconds to start): every check runs, each result is printed, and the test fails
//! at the end listing every failed check with its error.

use std::future::Future;
use std::time::Instant;

/// Collects the outcome of named checks.
#[derive(Debug, Default)]
pub struct Checks {
    passed: Vec<String>,
    failed: Vec<String>,
}

impl Checks {
    /// An empty set of results.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one check and records its outcome; returns whether it passed, so a check later
    /// checks depend on can stop the run early.
    pub async fn run<F>(&mut self, name: &str, check: F) -> bool
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let started = Instant::now();
        let outcome = check.await;
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                eprintln!("ok   {name} ({took:.1}s)");
                self.passed.push(name.to_owned());
                true
            }
            Err(err) => {
                eprintln!("FAIL {name} ({took:.1}s): {err:#}");
                self.failed.push(format!("{name}: {err:#}"));
                false
            }
        }
    }

    /// Ok if every check passed (and at least one ran); otherwise an error listing the failures.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.failed.is_empty() && !self.passed.is_empty() {
            return Ok(());
        }
        if self.passed.is_empty() && self.failed.is_empty() {
            anyhow::bail!("no check ran");
        }
        anyhow::bail!(
            "{} of {} checks failed:\n- {}",
            self.failed.len(),
            self.failed.len() + self.passed.len(),
            self.failed.join("\n- ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_are_all_listed_and_passes_are_not() {
        let mut checks = Checks::new();
        assert!(checks.run("first", async { Ok(()) }).await);
        assert!(
            !checks
                .run("second", async { anyhow::bail!("broken X") })
                .await
        );
        assert!(
            !checks
                .run("third", async { anyhow::bail!("broken Y") })
                .await
        );
        let err = checks.finish().unwrap_err().to_string();
        assert!(err.starts_with("2 of 3 checks failed"), "{err}");
        assert!(
            err.contains("second: broken X") && err.contains("third: broken Y"),
            "{err}"
        );
        assert!(!err.contains("first"), "{err}");
    }

    #[tokio::test]
    async fn all_passed_is_ok_and_nothing_run_is_not() {
        let mut checks = Checks::new();
        checks.run("only", async { Ok(()) }).await;
        assert!(checks.finish().is_ok());
        assert!(Checks::new().finish().is_err());
    }
}
