//! The printed report of an operator run and of the SDK peer: times, hub calls by kind, memory,
//! Secrets and the bound the hub's quotas put on the run.

use std::time::Duration;

use edge_hierarchy_operator::iothub::{OperationClass, RateLimits};

use crate::quota;
use crate::sdk;
use crate::stats::{HubStats, Messages};
use crate::world::HubShape;

/// Messages one S1 unit may use a day (Learn, "Choose the right IoT Hub tier and size").
pub const S1_DAILY_MESSAGES: u64 = 400_000;

/// What one operator run to Ready measured.
pub struct OperatorRun {
    pub elapsed: Duration,
    pub stats: HubStats,
    pub peak_rss_kib: u64,
    pub summary: String,
    pub secrets: String,
}

/// Messages a day of resyncs every `interval` would use, as a share of one unit's daily quota.
pub fn daily_share(per_resync: u64, interval: Duration, quota_per_unit: u64) -> (u64, f64) {
    let per_day = per_resync * (86_400 / interval.as_secs().max(1));
    (per_day, per_day as f64 / quota_per_unit as f64)
}

/// `op n, op n` of a message meter.
pub fn messages_by_operation(messages: &Messages) -> String {
    let parts: Vec<String> = messages
        .by_operation
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The quota lower bound of a run that registered `devices` devices: every device takes one
/// registry operation (a bulk create counts per device), and the other classes the calls made,
/// each at its quota. The slowest class bounds the run.
pub fn quota_floor(stats: &HubStats, devices: u64, limits: &RateLimits) -> (Duration, String) {
    let mut units = quota::units_by_class(stats);
    units.insert(OperationClass::Registry, devices);
    let floors = quota::class_floors(&units, limits);
    let bound = floors.first().map_or(Duration::ZERO, |f| f.time);
    let terms: Vec<String> = floors.iter().map(ToString::to_string).collect();
    (bound, terms.join("; "))
}

/// Prints an operator run: time to Ready, hub calls, memory, Secrets and the quota bound.
pub fn report_operator(
    label: &str,
    run: &OperatorRun,
    n: u64,
    hub: &HubShape,
    algorithm: Option<&str>,
) {
    let ready_secs = run.elapsed.as_secs_f64();
    println!(
        "{label}: {n} devices Ready in {ready_secs:.1} s (apply to Ready=True for the applied generation; {})",
        run.summary
    );
    println!(
        "{label}: {} hub calls = {:.3} per device; 429s: {}; write calls: {}; registry operations (quota units): {}",
        run.stats.hub_calls(),
        run.stats.hub_calls() as f64 / n as f64,
        run.stats.throttled,
        run.stats.write_calls,
        run.stats.registry_operations
    );
    println!("{label}: calls by kind: {}", run.stats.by_kind());
    println!(
        "{label}: peak RSS (VmHWM) {:.1} MiB",
        run.peak_rss_kib as f64 / 1024.0
    );
    println!(
        "{label}: Secrets it made: {}; certificate algorithm {}",
        run.secrets,
        algorithm.unwrap_or("(the operator's default)")
    );
    let limits = hub.limits();
    let (bound, terms) = quota_floor(&run.stats, n, &limits);
    println!(
        "{label}: quota lower bound {:.1} s = the slowest class of [{terms}] (registry: one operation per device; other classes: the calls made; quotas from the operator's RateLimits for {} x{})",
        bound.as_secs_f64(),
        hub.sku_name(),
        hub.units
    );
    if bound > Duration::ZERO {
        println!(
            "{label}: elapsed / quota lower bound = {ready_secs:.1} / {:.1} = {:.2}",
            bound.as_secs_f64(),
            ready_secs / bound.as_secs_f64()
        );
    }
}

/// What the SDK peer took for identities (create + set parent) on every device.
pub struct SdkReport {
    pub identities: Duration,
}

#[allow(clippy::too_many_arguments)]
pub fn report_sdk(
    result: &sdk::SdkResult,
    stats: &HubStats,
    devices: u64,
    with_parent: u64,
    with_modules: u64,
    limits: &RateLimits,
    operator_elapsed: Duration,
    operator_configuration_calls: u64,
) -> SdkReport {
    let s = &result.steps;
    println!(
        "sdk: {}, device by device as `az iot edge devices create` does: create (PUT device); set parent (GET parent, PUT child with If-Match); set modules (applyConfigurationContent, GET modules)",
        result.sdk
    );
    println!(
        "sdk: ran create on {} and set parent on {} of {devices} devices, set modules on {} of {with_modules} Edge devices with a deployment (the first ones; the rest estimated): {:.1} s wall clock, 429s: {}, waited {:.1} s",
        s.create.devices,
        s.set_parent.devices,
        s.set_modules.devices,
        result.elapsed_seconds,
        result.throttled(),
        result.waited_seconds()
    );
    println!(
        "sdk: work per device: create {:.0} ms, set parent {:.0} ms, set modules {:.0} ms (without 429 waits)",
        s.create.per_device() * 1000.0,
        s.set_parent.per_device() * 1000.0,
        s.set_modules.per_device() * 1000.0
    );
    println!(
        "sdk: {} hub calls = {:.3} per device of the run; registry operations: {}; calls by kind: {}",
        stats.hub_calls(),
        stats.hub_calls() as f64 / devices as f64,
        stats.registry_operations,
        stats.by_kind()
    );
    let applies_per_minute = limits.per_minute(OperationClass::Configuration);
    let estimate = sdk::estimate(
        result,
        devices,
        with_parent,
        with_modules,
        applies_per_minute,
    );
    let identities = estimate.identities.as_secs_f64();
    println!(
        "sdk: identities (create + set parent) for {devices} devices: {identities:.1} s ({})",
        if estimate.identities_measured {
            "measured on every device"
        } else {
            "scaled from the devices run"
        }
    );
    let total = estimate.total.as_secs_f64();
    if with_modules > 0 {
        println!(
            "sdk: with modules on all {with_modules} Edge devices (estimate): {total:.0} s = {:.0} s of calls, held back by the configuration quota ({with_modules} applyConfigurationContent at {applies_per_minute}/min: the last batch starts after {:.0} s; the emulator counts applyConfigurationContent against that quota, which Azure's docs do not state either way)",
            (estimate.identities + estimate.modules_work).as_secs_f64(),
            estimate.modules_quota_floor.as_secs_f64()
        );
    }
    let op = operator_elapsed.as_secs_f64();
    println!(
        "compare: operator {op:.1} s vs sdk identities only {identities:.1} s: the SDK run takes {:.2}x the operator's time",
        identities / op
    );
    if with_modules > 0 {
        println!(
            "compare: operator {op:.1} s vs sdk with modules {total:.0} s (estimate): {:.1}x",
            total / op
        );
        if operator_configuration_calls == 0 {
            println!(
                "compare: note: the operator made no configuration calls in its run, so its time does not include deploying modules; the identities-only ratio is the like-for-like one"
            );
        }
    }
    SdkReport {
        identities: estimate.identities,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_of_resyncs_as_a_share_of_one_unit() {
        let (per_day, share) = daily_share(100, Duration::from_secs(300), S1_DAILY_MESSAGES);
        assert_eq!(per_day, 28_800);
        assert!((share - 0.072).abs() < 1e-9);
    }

    #[test]
    fn the_floor_counts_one_registry_operation_per_device() {
        let stats = HubStats::default();
        let limits = RateLimits::for_sku(edge_hierarchy_operator::iothub::HubTier::S3, 1);
        let (bound, terms) = quota_floor(&stats, 1000, &limits);
        assert_eq!(bound, Duration::from_secs(12));
        assert_eq!(terms, "1000 registry at 5000/min = 12.0 s");
    }
}
