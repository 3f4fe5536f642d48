//! Where a run's time went, from the operator's own /metrics: the sum and count of each reconcile
//! step's duration histogram, the reconciles themselves, and the wall-clock time no reconcile
//! was running (waiting for a requeue, a watch event or the hub's schedule).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;

const STEP_SUM: &str = "edge_hierarchy_reconcile_step_duration_seconds_sum";
const STEP_COUNT: &str = "edge_hierarchy_reconcile_step_duration_seconds_count";
const RECONCILE_SUM: &str = "edge_hierarchy_reconcile_duration_seconds_sum";
const RECONCILE_COUNT: &str = "edge_hierarchy_reconcile_duration_seconds_count";
/// The steps in the order a reconcile runs them (`devices`, `configurations` and
/// `certificate_secrets` side by side).
const STEP_ORDER: [&str; 8] = [
    "spec",
    "certificates",
    "devices",
    "configurations",
    "certificate_secrets",
    "bundles",
    "deployments",
    "status",
];

/// Time spent, and how often.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub seconds: f64,
    pub count: u64,
}

/// The durations the operator recorded since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub steps: BTreeMap<String, Spent>,
    pub reconciles: Spent,
}

impl Profile {
    /// What happened between `earlier` and `self` (both from one operator process).
    pub fn since(&self, earlier: &Profile) -> Profile {
        let minus = |now: Spent, then: Spent| Spent {
            seconds: (now.seconds - then.seconds).max(0.0),
            count: now.count.saturating_sub(then.count),
        };
        Profile {
            steps: self
                .steps
                .iter()
                .map(|(step, spent)| {
                    let then = earlier.steps.get(step).copied().unwrap_or_default();
                    (step.clone(), minus(*spent, then))
                })
                .collect(),
            reconciles: minus(self.reconciles, earlier.reconciles),
        }
    }

    /// One line: each step's share of the wall clock, then the reconciles and the idle time.
    /// Reconciles of several hierarchies run at once, so shares can add up to more than 100%.
    pub fn describe(&self, wall: Duration) -> String {
        let wall = wall.as_secs_f64().max(f64::EPSILON);
        let mut parts: Vec<String> = Vec::new();
        let known = STEP_ORDER.iter().map(|s| s.to_string());
        let others = self
            .steps
            .keys()
            .filter(|s| !STEP_ORDER.contains(&s.as_str()))
            .cloned();
        for step in known.chain(others) {
            if let Some(spent) = self.steps.get(&step).filter(|s| s.count > 0) {
                parts.push(format!(
                    "{step} {:.1} s ({:.0}%, {}x)",
                    spent.seconds,
                    100.0 * spent.seconds / wall,
                    spent.count
                ));
            }
        }
        let busy = self.reconciles.seconds;
        format!(
            "{}; reconciles {:.1} s in {}; not reconciling {:.1} s of {:.1} s",
            if parts.is_empty() {
                "no step recorded".to_string()
            } else {
                parts.join(", ")
            },
            busy,
            self.reconciles.count,
            (wall - busy).max(0.0),
            wall
        )
    }
}

/// Reads the sums and counts out of an OpenMetrics text.
pub fn parse(text: &str) -> Profile {
    let mut profile = Profile::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let step = || {
            labels
                .split("step=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?")
                .to_string()
        };
        match name {
            STEP_SUM => profile.steps.entry(step()).or_default().seconds = value,
            STEP_COUNT => profile.steps.entry(step()).or_default().count = value as u64,
            RECONCILE_SUM => profile.reconciles.seconds = value,
            RECONCILE_COUNT => profile.reconciles.count = value as u64,
            _ => {}
        }
    }
    profile
}

/// The address the operator logged for its metrics endpoint.
pub fn metrics_address(operator_log: &str) -> Option<String> {
    operator_log
        .lines()
        .find(|l| l.contains("serving /metrics"))?
        .split("address=")
        .nth(1)?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// GETs the operator's /metrics and returns the text.
pub async fn scrape_text(operator_log: &str) -> anyhow::Result<String> {
    let address =
        metrics_address(operator_log).context("the operator did not log its metrics address")?;
    let url = format!("http://{address}/metrics");
    reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .text()
        .await
        .with_context(|| format!("reading GET {url}"))
}

/// The operator's durations so far.
pub async fn scrape(operator_log: &str) -> anyhow::Result<Profile> {
    Ok(parse(&scrape_text(operator_log).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP edge_hierarchy_reconcile_duration_seconds Duration of one reconcile.
# TYPE edge_hierarchy_reconcile_duration_seconds histogram
edge_hierarchy_reconcile_duration_seconds_sum 12.5
edge_hierarchy_reconcile_duration_seconds_count 3
edge_hierarchy_reconcile_duration_seconds_bucket{le="0.01"} 0
edge_hierarchy_reconcile_step_duration_seconds_sum{step="bundles"} 4.25
edge_hierarchy_reconcile_step_duration_seconds_count{step="bundles"} 2
edge_hierarchy_reconcile_step_duration_seconds_bucket{le="1.0",step="bundles"} 1
edge_hierarchy_reconcile_step_duration_seconds_sum{step="certificates"} 6.0
edge_hierarchy_reconcile_step_duration_seconds_count{step="certificates"} 3
edge_hierarchy_reconciles_total{outcome="ok"} 3
"#;

    #[test]
    fn reads_step_and_reconcile_sums_and_counts() {
        let profile = parse(TEXT);
        assert_eq!(
            profile.reconciles,
            Spent {
                seconds: 12.5,
                count: 3
            }
        );
        assert_eq!(
            profile.steps["bundles"],
            Spent {
                seconds: 4.25,
                count: 2
            }
        );
        assert_eq!(profile.steps["certificates"].count, 3);
        assert_eq!(profile.steps.len(), 2, "bucket lines are not steps");
    }

    #[test]
    fn describes_steps_in_reconcile_order_with_the_idle_time() {
        let line = parse(TEXT).describe(Duration::from_secs(20));
        assert_eq!(
            line,
            "certificates 6.0 s (30%, 3x), bundles 4.2 s (21%, 2x); reconciles 12.5 s in 3; not reconciling 7.5 s of 20.0 s"
        );
    }

    #[test]
    fn since_subtracts_an_earlier_scrape() {
        let later = parse(TEXT);
        let earlier = Profile {
            steps: BTreeMap::from([(
                "bundles".to_string(),
                Spent {
                    seconds: 4.0,
                    count: 1,
                },
            )]),
            reconciles: Spent {
                seconds: 10.0,
                count: 2,
            },
        };
        let delta = later.since(&earlier);
        assert_eq!(delta.steps["bundles"].count, 1);
        assert!((delta.steps["bundles"].seconds - 0.25).abs() < 1e-9);
        assert_eq!(delta.steps["certificates"].count, 3);
        assert_eq!(delta.reconciles.count, 1);
    }

    #[test]
    fn finds_the_logged_metrics_address() {
        let log = "2026-12-01T16:20:23Z  INFO edge_hierarchy_operator::metrics: serving /metrics, /healthz and /readyz address=127.0.0.1:41234\n";
        assert_eq!(metrics_address(log).as_deref(), Some("127.0.0.1:41234"));
        assert_eq!(metrics_address("nothing here"), None);
    }
}
