//! Alerts and metrics checked by Prometheus' own promtool (issue 15): the chart's PrometheusRule
//! (rendered by helm) passes `promtool check rules` and its unit tests, and a live scrape of the
//! operator passes `promtool check metrics`, holds every series the rules and the dashboard use,
//! and describes the fleet it reconciles. Both through scripts/check-monitoring.sh.

mod common;

use std::process::Command;

use anyhow::{Context as _, ensure};
use common::{Env, example};
use e2e_harness::workspace_root;

fn check_monitoring(args: &[&str]) -> anyhow::Result<()> {
    let script = workspace_root().join("scripts/check-monitoring.sh");
    let out = Command::new("bash").arg(&script).args(args).output()?;
    ensure!(
        out.status.success(),
        "check-monitoring.sh {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The value of the series whose line starts with `series` (name and labels, exactly).
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn alert_rules_and_dashboard_pass_promtool() -> anyhow::Result<()> {
    check_monitoring(&[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_describe_the_fleet() -> anyhow::Result<()> {
    let env = Env::start(&[]).await?;
    env.namespace("mon").await?;
    env.apply("mon", &example("tutorial.yaml")).await?;
    env.wait_condition("mon", "tutorial", "Ready", "True")
        .await?;
    let (_, metrics) = common::scrape_metrics(&env).await?;
    let labels = r#"namespace="mon",hierarchy="tutorial""#;
    let series = |name: &str, extra: &str| format!("edge_hierarchy_{name}{{{labels}{extra}}}");
    ensure!(
        value(&metrics, &series("devices", r#",state="Ready""#)) == Some(2.0),
        "two Ready devices expected:\n{metrics}"
    );
    ensure!(
        value(&metrics, &series("condition", r#",condition="Ready""#)) == Some(1.0)
            && value(&metrics, &series("condition", r#",condition="Stalled""#)) == Some(0.0),
        "Ready=1, Stalled=0 expected:\n{metrics}"
    );
    let expiry = value(&metrics, &series("certificate_expiry_seconds", ""))
        .context("no certificate expiry series")?;
    // The tutorial's certificates last 90 days by default, far from their renewal.
    ensure!(
        expiry > 80.0 * 86_400.0 && expiry <= 90.0 * 86_400.0,
        "expiry in {expiry} s"
    );
    ensure!(
        value(&metrics, &series("certificate_renewal_overdue_seconds", "")) == Some(0.0),
        "a renewal is overdue:\n{metrics}"
    );
    ensure!(
        value(
            &metrics,
            r#"edge_hierarchy_iothub_class_calls_total{class="registry"}"#
        )
        .is_some_and(|v| v > 0.0),
        "no registry calls counted:\n{metrics}"
    );
    let file = env.dir.path().join("metrics.txt");
    std::fs::write(&file, &metrics)?;
    check_monitoring(&["--metrics", &file.display().to_string()])?;

    // A stall shows in the gauge the alert reads; a deleted hierarchy leaves no series.
    env.put_secret(
        "mon",
        "iothub-service",
        "connectionString",
        "HostName=only-a-host",
    )
    .await?;
    env.poke("mon", "tutorial").await?;
    env.wait_condition("mon", "tutorial", "Stalled", "True")
        .await?;
    let (_, metrics) = common::scrape_metrics(&env).await?;
    ensure!(
        value(&metrics, &series("condition", r#",condition="Stalled""#)) == Some(1.0),
        "Stalled=1 expected:\n{metrics}"
    );
    env.put_secret(
        "mon",
        "iothub-service",
        "connectionString",
        &env.hub.emulator.connection_string,
    )
    .await?;
    env.wait_condition("mon", "tutorial", "Ready", "True")
        .await?;
    env.hierarchies("mon")
        .delete("tutorial", &Default::default())
        .await?;
    common::wait_until_gone(&env, "mon", "tutorial").await?;
    let (_, metrics) = common::scrape_metrics(&env).await?;
    ensure!(
        !metrics.contains(r#"hierarchy="tutorial""#),
        "series of the deleted hierarchy remain:\n{metrics}"
    );
    Ok(())
}
