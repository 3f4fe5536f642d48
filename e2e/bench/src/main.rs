//! `operator-bench`: the operator against a real control plane and the IoT Hub emulator, in
//! three scenarios, each in a world of its own (control plane, emulator at its tier, operator):
//!
//! - `quota`: S3, 1 unit. A 1,000-device hierarchy to Ready against the floor the hub's quotas
//!   set; then one resync of it (writes, reads per class, billed messages); then one device
//!   added with `kubectl apply`; then a restart of the operator (time to the first complete
//!   status, hub calls and writes).
//! - `latency`: S3, 10 units, so the quota is out of the way: the same hierarchy to Ready beside
//!   Microsoft's Python SDK creating it device by device (the way `az iot edge devices create`
//!   does), against the same emulator.
//! - `scale`: S3, 10 units: ten 1,000-device hierarchies on one hub, to Ready, memory, status
//!   sizes, and one resync of all ten (configurations listed per hub).
//!
//! Prints every target beside its goal and, for each run, where the operator's time went (its
//! reconcile-step metrics); asserts nothing about time. Every process it starts stops with it.
//! `scripts/bench.sh` builds what it needs and runs it (`make bench`).

mod hierarchy;
mod processes;
mod profile;
mod quota;
mod report;
mod sdk;
mod stats;
mod targets;
mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use e2e_harness::{Operator, workspace_bin, workspace_root};
use edge_hierarchy_operator::iothub::HubTier;
use kube::api::DynamicObject;
use serde_json::Value;

use edge_hierarchy_operator::reconcile::status::OBJECT_BUDGET;
use hierarchy::{Device, DeviceKind, ObjectOptions, Shape};
use processes::{build_profile, peak_rss_kib};
use report::{OperatorRun, S1_DAILY_MESSAGES, daily_share, messages_by_operation};
use stats::HubStats;
use targets::{Target, Targets};
use world::{HubShape, ObjectSize, World};

/// The operator's query page size (`x-ms-max-item-count`), for the reads-per-resync goal.
const QUERY_PAGE_SIZE: u64 = edge_hierarchy_operator::iothub::query::MAX_QUERY_PAGE_SIZE as u64;
/// The resync interval while a resync is measured (the hierarchies are made with 1 h, so the
/// runs to Ready are not interleaved with resyncs), and the one set back after it.
const RESYNC_MEASURED: &str = "20s";
const RESYNC_QUIET: &str = "1h";
/// The device the edit scenario adds, below the first gateway of layer 4.
const ADDED_DEVICE: &str = "op-l5-added";
const ADDED_PARENT: &str = "op-l4-000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario, one after the other.
    All,
    /// S3 x1: Ready against the quota floor, resync, one device added, restart.
    Quota,
    /// S3 x10: Ready beside the SDK device by device.
    Latency,
    /// S3 x10: ten hierarchies of 1,000 devices on one hub.
    Scale,
}

/// Command line of `operator-bench`.
#[derive(Debug, Parser)]
#[command(about = "The operator's performance targets: 1,000 devices at the hub's limit")]
struct Args {
    /// The scenario to run alone (default: all of them).
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// The operator binary (default: edge-hierarchy-operator next to this binary).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// The emulator binary (default: iothub-emulator next to this binary).
    #[arg(long)]
    emulator: Option<PathBuf>,
    /// Python with azure-iot-hub installed (default: <workspace>/.venv/bin/python, made by `make venv`).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Latency the emulator adds to every request.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// spec.certificates.algorithm of the hierarchies (EcdsaP256, Rsa2048, Rsa4096); default: the operator's.
    #[arg(long)]
    certificate_algorithm: Option<String>,
    /// Leave deployments out (identities and parents only).
    #[arg(long)]
    no_deployments: bool,
    /// Edge devices (the first ones) that get their modules set in the SDK run; the rest are estimated.
    #[arg(long, default_value_t = 25)]
    modules_sample: u64,
    /// Skip the SDK run of the latency scenario (its target is then not measured).
    #[arg(long)]
    skip_sdk: bool,
    /// Hierarchies of the scale scenario.
    #[arg(long, default_value_t = 10)]
    hierarchies: usize,
    /// Give up on Ready after this many seconds.
    #[arg(long, default_value_t = 900)]
    ready_timeout_secs: u64,
    /// Give up on the SDK run after this many seconds.
    #[arg(long, default_value_t = 900)]
    sdk_timeout_secs: u64,
    /// Keep logs and files in this folder (default: a temporary folder, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn default_bin(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => bail!(
            "{} does not exist; build it or pass another path",
            path.display()
        ),
        None => workspace_bin(name),
    }
}

/// What every scenario needs: binaries, the generated tree, the deployments, the options.
struct Setup {
    args: Args,
    operator_bin: PathBuf,
    emulator_bin: PathBuf,
    python: PathBuf,
    work_dir: PathBuf,
    shape: Shape,
    deployments: BTreeMap<String, Value>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let operator_bin = default_bin(args.operator.clone(), "edge-hierarchy-operator")?;
    let emulator_bin = default_bin(args.emulator.clone(), "iothub-emulator")?;
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let runs_sdk = matches!(args.scenario, Scenario::All | Scenario::Latency) && !args.skip_sdk;
    if runs_sdk && !python.is_file() {
        bail!(
            "{} not found: run `make venv` (it installs azure-iot-hub), pass --python, or --skip-sdk",
            python.display()
        );
    }
    let temp;
    let work_dir = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("operator-bench-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let factory = std::fs::read_to_string(workspace_root().join("examples/factory.yaml"))
        .context("reading examples/factory.yaml")?;
    let setup = Setup {
        deployments: hierarchy::factory_deployments(&factory)?,
        shape: Shape::thousand_in_five_layers(),
        operator_bin,
        emulator_bin,
        python,
        work_dir,
        args,
    };
    // On Ctrl-C or SIGTERM the run is dropped, and dropping it stops every process it started
    // (the control plane, the emulator, the operator, the SDK script) and removes the temp folder.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run(&setup) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; stopped everything the benchmark started"),
        _ = terminate.recv() => bail!("terminated; stopped everything the benchmark started"),
    }
}

async fn run(setup: &Setup) -> anyhow::Result<()> {
    let args = &setup.args;
    let shape = &setup.shape;
    let layers: Vec<String> = shape.layers.iter().map(usize::to_string).collect();
    let devices = hierarchy::generate("op", shape)?;
    let edge = devices
        .iter()
        .filter(|d| d.kind == DeviceKind::Edge)
        .count();
    println!(
        "hierarchy: {} devices in {} layers ({}; {edge} Edge, {} Leaf at the bottom){}",
        devices.len(),
        shape.layers.len(),
        layers.join("/"),
        devices.len() - edge,
        if args.no_deployments {
            "; no deployments"
        } else {
            "; deployments enterprise/gateway/cell of examples/factory.yaml"
        }
    );
    println!(
        "operator binary: {} ({})",
        setup.operator_bin.display(),
        build_profile(&setup.operator_bin)
    );
    let mut targets = Targets::default();
    let mut failed = Vec::new();
    let scenarios: &[Scenario] = match args.scenario {
        Scenario::All => &[Scenario::Quota, Scenario::Latency, Scenario::Scale],
        Scenario::Quota => &[Scenario::Quota],
        Scenario::Latency => &[Scenario::Latency],
        Scenario::Scale => &[Scenario::Scale],
    };
    for &scenario in scenarios {
        let dir = setup.work_dir.join(format!("{scenario:?}").to_lowercase());
        std::fs::create_dir_all(&dir)?;
        let outcome = match scenario {
            Scenario::Quota => quota_scenario(setup, &dir, &mut targets).await,
            Scenario::Latency => latency_scenario(setup, &dir, &mut targets).await,
            Scenario::Scale => scale_scenario(setup, &dir, &mut targets).await,
            Scenario::All => unreachable!("expanded above"),
        };
        if let Err(error) = outcome {
            println!("scenario {scenario:?} failed: {error:#}");
            failed.push(format!("{scenario:?}"));
        }
    }
    println!("\n== targets\n{}", targets.summary());
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

fn object_options<'a>(setup: &'a Setup, name: &'a str, hub: &'a HubShape) -> ObjectOptions<'a> {
    ObjectOptions {
        name,
        sku: hub.sku_name(),
        units: hub.units,
        certificate_algorithm: setup.args.certificate_algorithm.as_deref(),
        with_deployments: !setup.args.no_deployments,
    }
}

fn banner(title: &str) {
    println!("\n== {title}");
}

/// Applies one hierarchy, waits for Ready and reports it with the profile of the run.
async fn hierarchy_to_ready(
    setup: &Setup,
    world: &World,
    operator: &Operator,
    name: &str,
    object: &Value,
    n: u64,
) -> anyhow::Result<OperatorRun> {
    world.stats.reset().await?;
    let before = profile::scrape(&operator.output()).await?;
    let started = Instant::now();
    world.apply(object).await?;
    let names = [name.to_string()];
    let ready = world
        .wait_ready(
            &names,
            started,
            Duration::from_secs(setup.args.ready_timeout_secs),
            operator,
        )
        .await?;
    let (elapsed, object) = ready.into_values().next().context("no hierarchy Ready")?;
    let run = OperatorRun {
        elapsed,
        stats: world.stats.snapshot().await?,
        peak_rss_kib: peak_rss_kib(operator.process.pid())?,
        summary: summary_of(&object),
        secrets: world.secrets_by_component(name).await?,
    };
    report::report_operator(
        "operator",
        &run,
        n,
        &world.hub,
        setup.args.certificate_algorithm.as_deref(),
    );
    let spent = profile::scrape(&operator.output()).await?.since(&before);
    println!("operator: profile: {}", spent.describe(elapsed));
    Ok(run)
}

fn summary_of(object: &DynamicObject) -> String {
    object
        .data
        .pointer("/status/summary")
        .map_or_else(|| "no summary".to_string(), |s| format!("summary {s}"))
}

/// Reads (requests that are not writes) per quota class, as `class n`.
fn reads_by_class(stats: &HubStats) -> BTreeMap<String, u64> {
    stats
        .classes
        .iter()
        .map(|(class, used)| (class.clone(), used.requests.saturating_sub(used.writes)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn join_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn quota_scenario(setup: &Setup, dir: &Path, targets: &mut Targets) -> anyhow::Result<()> {
    let hub = HubShape {
        sku: HubTier::S3,
        units: 1,
        latency_ms: setup.args.latency_ms,
    };
    banner(&format!(
        "quota: 1,000 devices against {hub}: Ready, resync, one device added, restart",
    ));
    let world = World::start(hub, &setup.emulator_bin, dir).await?;
    let devices = hierarchy::generate("op", &setup.shape)?;
    let n = devices.len() as u64;
    let name = "bench";
    let options = object_options(setup, name, &hub);
    let object = hierarchy::hierarchy_object(&devices, &setup.deployments, &options);
    let mut operator = world
        .start_operator(&setup.operator_bin, &dir.join("operator.log"))
        .await?;

    // Ready against the floor.
    let run = hierarchy_to_ready(setup, &world, &operator, name, &object, n).await?;
    let (floor, _) = report::quota_floor(&run.stats, n, &hub.limits());
    let ratio = run.elapsed.as_secs_f64() / floor.as_secs_f64().max(f64::EPSILON);
    targets.report(Target::at_most(
        "quota-bound: 1,000 devices to Ready (S3, 1 unit)",
        ratio,
        1.2,
        format!(
            "{:.1} s = {ratio:.2} x the {:.1} s floor",
            run.elapsed.as_secs_f64(),
            floor.as_secs_f64()
        ),
        "at most 1.2 x the floor".into(),
    ));

    // One timed resync of the converged hierarchy.
    let names = [name.to_string()];
    world
        .set_resync_interval(&names, RESYNC_MEASURED, &operator)
        .await?;
    let secrets_before = world.secret_versions(name).await?;
    world.stats.reset().await?;
    world.next_timed_resync(&names).await?;
    let stats = world.stats.snapshot().await?;
    world
        .set_resync_interval(&names, RESYNC_QUIET, &operator)
        .await?;
    let secret_writes = secrets_before.changed_in(&world.secret_versions(name).await?);
    let reads = reads_by_class(&stats);
    let most_reads = reads.values().copied().max().unwrap_or(0);
    let reads_goal = n.div_ceil(QUERY_PAGE_SIZE) + 2;
    let (per_day, share) = daily_share(
        stats.messages.total,
        Duration::from_secs(300),
        S1_DAILY_MESSAGES,
    );
    println!(
        "timed resync: calls by kind: {}; billed {} messages (4 KB chunks: {}); every 5 minutes that is {per_day} a day = {:.2}% of one S1 unit's {S1_DAILY_MESSAGES} daily messages",
        stats.by_kind(),
        stats.messages.total,
        messages_by_operation(&stats.messages),
        share * 100.0
    );
    targets.report(Target::at_most(
        "timed resync of 1,000 converged devices: writes",
        (stats.write_calls + secret_writes as u64) as f64,
        0.0,
        format!(
            "{} hub writes, {secret_writes} Secret writes",
            stats.write_calls
        ),
        "zero".into(),
    ));
    targets.report(Target::at_most(
        "timed resync of 1,000 converged devices: reads per class",
        most_reads as f64,
        reads_goal as f64,
        format!(
            "{} ({} messages billed)",
            join_counts(&reads),
            stats.messages.total
        ),
        format!("at most ceil({n} / {QUERY_PAGE_SIZE}) + 2 = {reads_goal} per class"),
    ));

    // One device added with `kubectl apply`, as a user would. The CRD holds at most 1,000
    // devices, so a Leaf goes first (printed, not a target), and the Edge device added is the
    // 1,000th again.
    let mut edited: Vec<Device> = devices.clone();
    let removed = edited.pop().context("no device to remove")?;
    let removal = kubectl_apply_until_ready(setup, &world, &operator, name, &edited).await?;
    println!(
        "edit: Leaf {} removed, Ready again in {:.2} s; calls by kind: {}",
        removed.id,
        removal.0.as_secs_f64(),
        removal.1.by_kind()
    );
    edited.push(Device {
        id: ADDED_DEVICE.into(),
        parent: Some(ADDED_PARENT.into()),
        kind: DeviceKind::Edge,
        layer: 5,
        deployment: Some("cell"),
    });
    let (elapsed, stats) =
        kubectl_apply_until_ready(setup, &world, &operator, name, &edited).await?;
    let round_trips = Duration::from_millis(hub.latency_ms * stats.hub_calls());
    let goal = Duration::from_secs(2) + round_trips;
    println!(
        "edit: Edge {ADDED_DEVICE} added below {ADDED_PARENT}; calls by kind: {}",
        stats.by_kind()
    );
    targets.report(Target::at_most(
        "one device added to 999 converged: kubectl apply to Ready",
        elapsed.as_secs_f64(),
        goal.as_secs_f64(),
        format!(
            "{:.2} s ({} hub calls)",
            elapsed.as_secs_f64(),
            stats.hub_calls()
        ),
        format!(
            "at most 2 s + {} calls x {} ms = {:.2} s",
            stats.hub_calls(),
            hub.latency_ms,
            goal.as_secs_f64()
        ),
    ));

    // A restart with 1,000 converged devices.
    operator.process.stop(Duration::from_secs(10));
    let secrets_before = world.secret_versions(name).await?;
    let synced_before = world.last_sync_times(&names).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world.stats.reset().await?;
    let started = Instant::now();
    let operator = world
        .start_operator(&setup.operator_bin, &dir.join("operator-restarted.log"))
        .await?;
    world
        .wait_synced_after(&names, &synced_before, Duration::from_secs(300))
        .await?;
    let elapsed = started.elapsed();
    let stats = world.stats.snapshot().await?;
    let secret_writes = secrets_before.changed_in(&world.secret_versions(name).await?);
    println!(
        "restart: first complete status {:.1} s after the process started (2 s of it the benchmark's wait for the watches); calls by kind: {}",
        elapsed.as_secs_f64(),
        stats.by_kind()
    );
    targets.report(Target::at_most(
        "restart with 1,000 converged devices: nothing re-issued or re-written",
        (stats.write_calls + secret_writes as u64) as f64,
        0.0,
        format!(
            "first complete status after {:.1} s; {} hub calls ({} writes), {secret_writes} Secret writes",
            elapsed.as_secs_f64(),
            stats.hub_calls(),
            stats.write_calls
        ),
        "zero writes (time and calls printed)".into(),
    ));
    drop(operator);
    world.stop().await;
    Ok(())
}

/// `kubectl apply` of the hierarchy with `devices`, then Ready for the new generation: the time
/// from the apply and the hub calls made meanwhile.
async fn kubectl_apply_until_ready(
    setup: &Setup,
    world: &World,
    operator: &Operator,
    name: &str,
    devices: &[Device],
) -> anyhow::Result<(Duration, HubStats)> {
    let options = object_options(setup, name, &world.hub);
    let mut object = hierarchy::hierarchy_object(devices, &setup.deployments, &options);
    object["metadata"]["namespace"] = world::NAMESPACE.into();
    let yaml = serde_yaml::to_string(&object)?;
    let generation = world.hierarchies().get(name).await?.metadata.generation;
    world.stats.reset().await?;
    let before = profile::scrape(&operator.output()).await?;
    let started = Instant::now();
    let applied = world.cluster.kubectl_apply_stdin(&yaml)?;
    if !applied.status.success() {
        bail!(
            "kubectl apply of the edited hierarchy failed: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    let names = [name.to_string()];
    let ready = world
        .wait_ready(&names, started, Duration::from_secs(120), operator)
        .await?;
    let (elapsed, object) = ready.into_values().next().context("no hierarchy Ready")?;
    if object.metadata.generation == generation {
        bail!(
            "kubectl apply left hierarchy {name} at generation {generation:?}: the edit did not land"
        );
    }
    let spent = profile::scrape(&operator.output()).await?.since(&before);
    println!("edit: profile: {}", spent.describe(elapsed));
    Ok((elapsed, world.stats.snapshot().await?))
}

async fn latency_scenario(setup: &Setup, dir: &Path, targets: &mut Targets) -> anyhow::Result<()> {
    let args = &setup.args;
    let hub = HubShape {
        sku: HubTier::S3,
        units: 10,
        latency_ms: args.latency_ms,
    };
    banner(&format!(
        "latency: 1,000 devices against {hub}, beside the Python SDK device by device",
    ));
    let world = World::start(hub, &setup.emulator_bin, dir).await?;
    let op_devices = hierarchy::generate("op", &setup.shape)?;
    let n = op_devices.len() as u64;
    let name = "bench";
    let object = hierarchy::hierarchy_object(
        &op_devices,
        &setup.deployments,
        &object_options(setup, name, &hub),
    );
    let operator = world
        .start_operator(&setup.operator_bin, &dir.join("operator.log"))
        .await?;
    let run = hierarchy_to_ready(setup, &world, &operator, name, &object, n).await?;
    drop(operator);
    let goal = "the SDK peer takes at least 30 x as long".to_string();
    let target = "latency-bound: 1,000 devices to Ready (S3, 10 units)";
    if args.skip_sdk {
        targets.report(Target::not_measured(target, "--skip-sdk".into(), goal));
        world.stop().await;
        return Ok(());
    }
    let with_deployments = !args.no_deployments;
    let sdk_devices = hierarchy::generate("sdk", &setup.shape)?;
    let plan_path = dir.join("sdk-plan.json");
    std::fs::write(
        &plan_path,
        serde_json::to_vec(&hierarchy::sdk_plan(
            &sdk_devices,
            &setup.deployments,
            with_deployments,
        ))?,
    )?;
    world.stats.reset().await?;
    let script = workspace_root().join("e2e/bench/sdk_create.py");
    let result = sdk::run(&sdk::SdkRun {
        python: &setup.python,
        script: &script,
        hub_dir: &world.emulator.dir,
        plan: &plan_path,
        out: dir.join("sdk-result.json"),
        log: dir.join("sdk.log"),
        modules_sample: args.modules_sample,
        timeout: Duration::from_secs(args.sdk_timeout_secs),
    })
    .await?;
    let sdk_stats = world.stats.snapshot().await?;
    let with_parent = sdk_devices.iter().filter(|d| d.parent.is_some()).count() as u64;
    let with_modules = sdk_devices
        .iter()
        .filter(|d| with_deployments && d.deployment.is_some())
        .count() as u64;
    let configuration_calls = run
        .stats
        .classes
        .get("configurations")
        .map_or(0, |c| c.requests);
    let sdk = report::report_sdk(
        &result,
        &sdk_stats,
        n,
        with_parent,
        with_modules,
        &hub.limits(),
        run.elapsed,
        configuration_calls,
    );
    let ratio = sdk.identities.as_secs_f64() / run.elapsed.as_secs_f64();
    targets.report(Target::at_least(
        target,
        ratio,
        30.0,
        format!(
            "operator {:.1} s, SDK identities alone {:.1} s: {ratio:.1} x",
            run.elapsed.as_secs_f64(),
            sdk.identities.as_secs_f64()
        ),
        goal,
    ));
    world.stop().await;
    Ok(())
}

async fn scale_scenario(setup: &Setup, dir: &Path, targets: &mut Targets) -> anyhow::Result<()> {
    let args = &setup.args;
    let hub = HubShape {
        sku: HubTier::S3,
        units: 10,
        latency_ms: args.latency_ms,
    };
    let count = args.hierarchies.max(1);
    banner(&format!(
        "scale: {count} hierarchies of 1,000 devices on one hub, {hub}",
    ));
    let world = World::start(hub, &setup.emulator_bin, dir).await?;
    let names: Vec<String> = (0..count).map(|i| format!("scale-{i}")).collect();
    let mut objects = Vec::new();
    let mut n = 0;
    for (i, name) in names.iter().enumerate() {
        let devices = hierarchy::generate(&format!("s{i}"), &setup.shape)?;
        n += devices.len() as u64;
        objects.push(hierarchy::hierarchy_object(
            &devices,
            &setup.deployments,
            &object_options(setup, name, &hub),
        ));
    }
    let operator = world
        .start_operator(&setup.operator_bin, &dir.join("operator.log"))
        .await?;
    world.stats.reset().await?;
    let before = profile::scrape(&operator.output()).await?;
    let started = Instant::now();
    for object in &objects {
        world.apply(object).await?;
    }
    let ready = world
        .wait_ready(
            &names,
            started,
            Duration::from_secs(args.ready_timeout_secs),
            &operator,
        )
        .await?;
    let elapsed = ready.values().map(|(at, _)| *at).max().unwrap_or_default();
    let stats = world.stats.snapshot().await?;
    let peak_mib = peak_rss_kib(operator.process.pid())? as f64 / 1024.0;
    let spent = profile::scrape(&operator.output()).await?.since(&before);
    println!(
        "scale: all {count} Ready in {:.1} s; {} hub calls; 429s: {}; calls by kind: {}",
        elapsed.as_secs_f64(),
        stats.hub_calls(),
        stats.throttled,
        stats.by_kind()
    );
    println!("scale: profile: {}", spent.describe(elapsed));
    let (floor, terms) = report::quota_floor(&stats, n, &hub.limits());
    println!(
        "scale: the hub's floor {:.1} s = the slowest class of [{terms}]",
        floor.as_secs_f64()
    );
    let ratio = elapsed.as_secs_f64() / floor.as_secs_f64().max(f64::EPSILON);
    targets.report(Target::at_most(
        "ten hierarchies of 1,000 on one hub: all Ready (S3, 10 units)",
        ratio,
        1.3,
        format!(
            "{:.1} s = {ratio:.2} x the {:.1} s floor",
            elapsed.as_secs_f64(),
            floor.as_secs_f64()
        ),
        "at most 1.3 x the floor".into(),
    ));
    targets.report(Target::at_most(
        "ten hierarchies of 1,000 on one hub: operator peak RSS",
        peak_mib,
        128.0,
        format!("{peak_mib:.1} MiB"),
        "at most 128 MiB".into(),
    ));
    // Each hierarchy's object as the API server stores it: metadata with every manager's
    // managedFields, spec and status (docs/status.md).
    let sizes: Vec<ObjectSize> = names
        .iter()
        .map(|name| ObjectSize::of(&ready[name].1))
        .collect();
    for (name, size) in names.iter().zip(&sizes) {
        println!(
            "scale: {name}: object {} bytes with status and managedFields (status {} bytes, managedFields {} bytes; Ready at {:.1} s)",
            size.total,
            size.status,
            size.managed_fields,
            ready[name].0.as_secs_f64()
        );
    }
    let largest = sizes.iter().map(|s| s.total).max().unwrap_or(0);
    targets.report(Target::at_most(
        "ten hierarchies of 1,000 on one hub: largest object with status and managedFields",
        largest as f64,
        OBJECT_BUDGET as f64,
        format!("{largest} bytes ({:.1} KiB)", largest as f64 / 1024.0),
        format!("at most {OBJECT_BUDGET} bytes (1 MiB; etcd refuses 1.5 MiB)"),
    ));

    world
        .set_resync_interval(&names, RESYNC_MEASURED, &operator)
        .await?;
    world.stats.reset().await?;
    world.next_timed_resync(&names).await?;
    let stats = world.stats.snapshot().await?;
    let lists = stats
        .operations
        .get("configurations.list")
        .map_or(0, |by_status| by_status.values().sum::<u64>());
    println!(
        "scale: one timed resync of all {count}: calls by kind: {}",
        stats.by_kind()
    );
    targets.report(Target::at_most(
        "ten hierarchies on one hub: configurations listed per timed resync",
        lists as f64,
        1.0,
        format!("{lists} configuration lists for {count} hierarchies"),
        "once per hub".into(),
    ));
    drop(operator);
    world.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ClassUse;

    #[test]
    fn reads_leave_out_writes_and_idle_classes() {
        let stats = HubStats {
            classes: BTreeMap::from([
                (
                    "query".to_string(),
                    ClassUse {
                        requests: 12,
                        writes: 0,
                        units: 12,
                    },
                ),
                (
                    "registry".to_string(),
                    ClassUse {
                        requests: 3,
                        writes: 3,
                        units: 300,
                    },
                ),
            ]),
            ..HubStats::default()
        };
        let reads = reads_by_class(&stats);
        assert_eq!(join_counts(&reads), "query 12");
        assert_eq!(join_counts(&BTreeMap::new()), "none");
    }

    #[test]
    fn an_object_size_counts_the_whole_object_and_names_two_parts() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "edgehierarchy.dev/v1alpha1",
            "kind": "EdgeHierarchy",
            "metadata": {"name": "h", "managedFields": [{"manager": "m", "fieldsV1": {"f:status": {}}}]},
            "spec": {"devices": []},
            "status": {"devices": [{"id": "a", "state": "Ready"}]},
        }))
        .unwrap();
        let size = ObjectSize::of(&object);
        let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap().len();
        assert_eq!(
            size.status,
            json(serde_json::json!({"devices": [{"id": "a", "state": "Ready"}]}))
        );
        assert_eq!(
            size.managed_fields,
            json(serde_json::json!([{"manager": "m", "fieldsV1": {"f:status": {}}}]))
        );
        assert_eq!(size.total, world::object_bytes(&object));
        assert!(size.total > size.status + size.managed_fields);
    }

    #[test]
    fn the_added_device_hangs_below_an_edge_gateway_of_the_tree() {
        let devices = hierarchy::generate("op", &Shape::thousand_in_five_layers()).unwrap();
        let parent = devices.iter().find(|d| d.id == ADDED_PARENT).unwrap();
        assert_eq!((parent.kind, parent.layer), (DeviceKind::Edge, 4));
        assert!(devices.iter().all(|d| d.id != ADDED_DEVICE));
    }
}
