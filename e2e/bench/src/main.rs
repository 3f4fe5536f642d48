//! `operator-bench`: the operator against a real control plane and the IoT Hub emulator, beside
//! the same hierarchy created device by device with Microsoft's Python SDK (the way
//! `az iot edge devices create` does it), against the same emulator.
//!
//! Prints times, hub calls by kind, calls per device, the operator's peak RSS and ratios; asserts
//! nothing about time. Every process it starts stops with it. `scripts/bench.sh` builds what it
//! needs and runs it (`make bench`).

mod hierarchy;
mod processes;
mod quota;
mod sdk;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use e2e_harness::{
    ControlPlane, ControlPlaneOptions, Emulator, Operator, OperatorFlags, install_crd, wait_until,
    workspace_bin, workspace_root,
};
use edge_hierarchy_operator::iothub::HubTier;
use edge_hierarchy_operator::iothub::{OperationClass, RateLimits};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch,
    PatchParams, PostParams,
};
use serde_json::{Value, json};

use hierarchy::{DeviceKind, ObjectOptions, Shape};
use processes::{build_profile, peak_rss_kib};
use stats::{HubStats, Messages, StatsClient};

const NAMESPACE: &str = "bench";
/// Messages one S1 unit may use a day (Learn, "Choose the right IoT Hub tier and size").
const S1_DAILY_MESSAGES: u64 = 400_000;
const HIERARCHY: &str = "bench";
/// The label the operator puts on its Secrets to say what they hold (root CA, edge CA, bundle).
const COMPONENT_LABEL: &str = "edgehierarchy.dev/component";
/// `run` with its default flags, at info level: the benchmark reads times and memory, not logs.
const OPERATOR_FLAGS: OperatorFlags<'static> = OperatorFlags {
    args: &[],
    rust_log: "info,kube=warn",
};

/// Command line of `operator-bench`.
#[derive(Debug, Parser)]
#[command(
    about = "Time to Ready of a 1,000-device hierarchy: the operator versus the SDK device by device"
)]
struct Args {
    /// The operator binary (default: edge-hierarchy-operator next to this binary).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// The emulator binary (default: iothub-emulator next to this binary).
    #[arg(long)]
    emulator: Option<PathBuf>,
    /// Python with azure-iot-hub installed (default: <workspace>/.venv/bin/python, made by `make venv`).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Hub tier the emulator enforces and the hierarchy's rateLimits name: S1, S2 or S3.
    #[arg(long, default_value = "S3")]
    sku: String,
    /// Hub units.
    #[arg(long, default_value_t = 1)]
    units: u32,
    /// Latency the emulator adds to every request.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// spec.certificates.algorithm of the hierarchy (EcdsaP256, Rsa2048, Rsa4096); default: the operator's.
    #[arg(long)]
    certificate_algorithm: Option<String>,
    /// Leave deployments out of both runs (identities and parents only).
    #[arg(long)]
    no_deployments: bool,
    /// Edge devices (the first ones) that get their modules set in the SDK run; the rest are estimated.
    #[arg(long, default_value_t = 25)]
    modules_sample: u64,
    /// Skip the SDK run.
    #[arg(long)]
    skip_sdk: bool,
    /// Give up on Ready after this many seconds.
    #[arg(long, default_value_t = 600)]
    ready_timeout_secs: u64,
    /// Give up on the SDK run after this many seconds.
    #[arg(long, default_value_t = 900)]
    sdk_timeout_secs: u64,
    /// Keep logs and files in this folder (default: a temporary folder, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn parse_sku(sku: &str) -> anyhow::Result<HubTier> {
    match sku.to_ascii_uppercase().as_str() {
        "S1" => Ok(HubTier::S1),
        "S2" => Ok(HubTier::S2),
        "S3" => Ok(HubTier::S3),
        other => bail!("--sku {other}: use S1, S2 or S3"),
    }
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let sku = parse_sku(&args.sku)?;
    let operator_bin = default_bin(args.operator.clone(), "edge-hierarchy-operator")?;
    let emulator_bin = default_bin(args.emulator.clone(), "iothub-emulator")?;
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    if !args.skip_sdk && !python.is_file() {
        bail!(
            "{} not found: run `make venv` (it installs azure-iot-hub) or pass --python",
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
    // On Ctrl-C or SIGTERM the run is dropped, and dropping it stops every process it started
    // (the control plane, the emulator, the operator, the SDK script) and removes the temp folder.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run(&args, sku, &operator_bin, &emulator_bin, &python, &work_dir) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; stopped everything the benchmark started"),
        _ = terminate.recv() => bail!("terminated; stopped everything the benchmark started"),
    }
}

/// Everything the two runs share.
struct Bench {
    cluster: ControlPlane,
    emulator: Emulator,
    stats: StatsClient,
    limits: RateLimits,
}

async fn run(
    args: &Args,
    sku: HubTier,
    operator_bin: &Path,
    emulator_bin: &Path,
    python: &Path,
    work_dir: &Path,
) -> anyhow::Result<()> {
    let shape = Shape::thousand_in_five_layers();
    let factory = std::fs::read_to_string(workspace_root().join("examples/factory.yaml"))
        .context("reading examples/factory.yaml")?;
    let deployments = hierarchy::factory_deployments(&factory)?;
    let with_deployments = !args.no_deployments;
    let op_devices = hierarchy::generate("op", &shape)?;
    let sdk_devices = hierarchy::generate("sdk", &shape)?;
    let edge = op_devices
        .iter()
        .filter(|d| d.kind == DeviceKind::Edge)
        .count();
    let layers: Vec<String> = shape.layers.iter().map(usize::to_string).collect();
    println!(
        "hierarchy: {} devices in {} layers ({}; {edge} Edge, {} Leaf at the bottom){}",
        op_devices.len(),
        shape.layers.len(),
        layers.join("/"),
        op_devices.len() - edge,
        if with_deployments {
            "; deployments enterprise/gateway/cell of examples/factory.yaml"
        } else {
            "; no deployments"
        }
    );
    println!(
        "emulator: {} {:?} x{} quota, {} ms latency per request",
        emulator_bin.display(),
        sku,
        args.units,
        args.latency_ms
    );
    println!(
        "operator binary: {} ({})",
        operator_bin.display(),
        build_profile(operator_bin)
    );

    let bench = start_environment(args, emulator_bin, work_dir).await?;
    let limits = &bench.limits;

    // The operator run.
    let options = ObjectOptions {
        name: HIERARCHY,
        sku: &args.sku.to_ascii_uppercase(),
        units: args.units,
        certificate_algorithm: args.certificate_algorithm.as_deref(),
        with_deployments,
    };
    let object = hierarchy::hierarchy_object(&op_devices, &deployments, &options);
    let operator = run_operator(args, &bench, operator_bin, &object, work_dir).await?;
    let n = op_devices.len() as u64;
    report_operator(&operator, n, limits, sku, args);
    let operator_configuration_calls = operator
        .stats
        .classes
        .get("configurations")
        .map_or(0, |c| c.requests);

    if args.skip_sdk {
        println!("sdk: skipped (--skip-sdk)");
    } else {
        let plan_path = work_dir.join("sdk-plan.json");
        std::fs::write(
            &plan_path,
            serde_json::to_vec(&hierarchy::sdk_plan(
                &sdk_devices,
                &deployments,
                with_deployments,
            ))?,
        )?;
        bench.stats.reset().await?;
        let script = workspace_root().join("e2e/bench/sdk_create.py");
        let result = sdk::run(&sdk::SdkRun {
            python,
            script: &script,
            hub_dir: &bench.emulator.dir,
            plan: &plan_path,
            out: work_dir.join("sdk-result.json"),
            log: work_dir.join("sdk.log"),
            modules_sample: args.modules_sample,
            timeout: Duration::from_secs(args.sdk_timeout_secs),
        })
        .await?;
        let sdk_stats = bench.stats.snapshot().await?;
        let with_parent = sdk_devices.iter().filter(|d| d.parent.is_some()).count() as u64;
        let with_modules = sdk_devices
            .iter()
            .filter(|d| with_deployments && d.deployment.is_some())
            .count() as u64;
        report_sdk(
            &result,
            &sdk_stats,
            n,
            with_parent,
            with_modules,
            limits,
            operator.elapsed,
            operator_configuration_calls,
        );
    }

    let Bench {
        cluster,
        mut emulator,
        ..
    } = bench;
    emulator.process.stop(Duration::from_secs(10));
    cluster.stop().await;
    Ok(())
}

async fn start_environment(
    args: &Args,
    emulator_bin: &Path,
    work_dir: &Path,
) -> anyhow::Result<Bench> {
    let started = Instant::now();
    let cluster = ControlPlane::start(ControlPlaneOptions::default()).await?;
    install_crd(&cluster)?;
    let emulator_args = vec![
        "--sku".to_string(),
        args.sku.clone(),
        "--units".into(),
        args.units.to_string(),
        "--latency-ms".into(),
        args.latency_ms.to_string(),
        // Azure's query lag (the default, 3 s) stays; configurations are evaluated every 15 s
        // rather than every five minutes, so Ready measures the operator, not the schedule.
        "--config-eval-interval-secs".into(),
        "15".into(),
    ];
    let emulator = Emulator::start(emulator_bin, &work_dir.join("hub"), &emulator_args).await?;
    let stats = StatsClient::new(emulator.port, &emulator.ca_pem)?;
    let client = cluster.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
    for (name, key, value) in [
        (
            "iothub-service",
            "connectionString",
            &emulator.connection_string,
        ),
        ("iothub-ca", "ca.crt", &emulator.ca_pem),
    ] {
        let secret = json!({"metadata": {"name": name}, "stringData": {key: value}});
        secrets
            .create(&PostParams::default(), &serde_json::from_value(secret)?)
            .await?;
    }
    println!(
        "setup: control plane (etcd, kube-apiserver, kube-controller-manager), CRD, emulator and hub Secrets ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let limits = RateLimits::for_sku(parse_sku(&args.sku)?, args.units);
    Ok(Bench {
        cluster,
        emulator,
        stats,
        limits,
    })
}

/// What the operator run measured.
struct OperatorRun {
    elapsed: Duration,
    stats: HubStats,
    /// Messages billed by one resync of the converged hierarchy, by operation.
    resync: Messages,
    peak_rss_kib: u64,
    summary: String,
    secrets: String,
}

/// `N (component a, component b, ...)` of the operator's Secrets, by their component label.
fn count_by_component(secrets: &[PartialObjectMeta<Secret>]) -> String {
    let mut by_component: BTreeMap<&str, usize> = BTreeMap::new();
    for secret in secrets {
        let component = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(COMPONENT_LABEL))
            .map_or("no component label", String::as_str);
        *by_component.entry(component).or_default() += 1;
    }
    let parts: Vec<String> = by_component
        .iter()
        .map(|(component, n)| format!("{component} {n}"))
        .collect();
    format!("{} ({})", secrets.len(), parts.join(", "))
}

fn hierarchies(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("edgehierarchy.dev", "v1alpha1", "EdgeHierarchy");
    Api::namespaced_with(
        client,
        NAMESPACE,
        &ApiResource::from_gvk_with_plural(&gvk, "edgehierarchies"),
    )
}

/// The Ready condition's status, if the status is about the object's current generation.
fn ready_status(object: &DynamicObject) -> Option<&str> {
    let status = object.data.get("status")?;
    if status.get("observedGeneration").and_then(Value::as_i64) != object.metadata.generation {
        return None;
    }
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .get("status")?
        .as_str()
}

fn describe_status(object: Option<&DynamicObject>) -> String {
    let Some(status) = object.and_then(|o| o.data.get("status")) else {
        return "no status".into();
    };
    let conditions: Vec<String> = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={} ({})",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    format!(
        "summary {}; conditions {}",
        status.get("summary").cloned().unwrap_or(Value::Null),
        conditions.join("; ")
    )
}

async fn run_operator(
    args: &Args,
    bench: &Bench,
    operator_bin: &Path,
    object: &Value,
    work_dir: &Path,
) -> anyhow::Result<OperatorRun> {
    let log = work_dir.join("operator.log");
    let mut operator = Operator::start(
        operator_bin,
        bench.cluster.kubeconfig_path(),
        &log,
        OPERATOR_FLAGS,
    )?;
    // Let it start its watches first, so the clock measures reconciling, not process start-up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(status) = operator.process.exit_status() {
        bail!(
            "the operator exited at start ({status}); its log ends:\n{}",
            operator.process.log_tail(20)
        );
    }
    bench.stats.reset().await?;
    let api = hierarchies(bench.cluster.client());
    let started = Instant::now();
    api.patch(
        HIERARCHY,
        &PatchParams::apply("operator-bench").force(),
        &Patch::Apply(object),
    )
    .await
    .context("applying the benchmark hierarchy")?;
    let ready = wait_until(
        Duration::from_secs(args.ready_timeout_secs),
        Duration::from_millis(250),
        "the hierarchy to be Ready=True",
        || async {
            let object = api.get(HIERARCHY).await.ok()?;
            (ready_status(&object) == Some("True")).then_some(object)
        },
    )
    .await;
    let elapsed = started.elapsed();
    let object = match ready {
        Ok(object) => object,
        Err(error) => {
            let last = api.get(HIERARCHY).await.ok();
            bail!(
                "{error:#}\nlast status: {}\noperator log ends:\n{}",
                describe_status(last.as_ref()),
                operator.process.log_tail(20)
            );
        }
    };
    let stats = bench.stats.snapshot().await?;
    let peak_rss_kib = peak_rss_kib(operator.process.pid())?;
    let summary = object
        .data
        .pointer("/status/summary")
        .map_or_else(|| "no summary".to_string(), |s| format!("summary {s}"));
    let secrets: Api<Secret> = Api::namespaced(bench.cluster.client(), NAMESPACE);
    let selector = format!("edgehierarchy.dev/hierarchy={HIERARCHY}");
    let secrets = count_by_component(
        &secrets
            .list_metadata(&ListParams::default().labels(&selector))
            .await?
            .items,
    );
    let resync = measure_resync(bench, &api).await?;
    operator.process.stop(Duration::from_secs(10));
    Ok(OperatorRun {
        elapsed,
        stats,
        resync,
        peak_rss_kib,
        summary,
        secrets,
    })
}

/// The messages one resync of the converged hierarchy is billed: the meter before and after the
/// sync an annotation triggers (what a `resyncInterval` timer does, without waiting for it).
async fn measure_resync(bench: &Bench, api: &Api<DynamicObject>) -> anyhow::Result<Messages> {
    let last_sync = |object: &DynamicObject| {
        object
            .data
            .pointer("/status/lastSyncTime")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let before_sync = last_sync(&api.get(HIERARCHY).await?);
    // lastSyncTime has one-second precision.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = bench.stats.snapshot().await?.messages;
    let stamp = format!("{:?}", std::time::SystemTime::now());
    api.patch(
        HIERARCHY,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"bench.edgehierarchy.dev/resync": stamp}}}),
        ),
    )
    .await
    .context("annotating the hierarchy to trigger a resync")?;
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(250),
        "the resync to finish",
        || async {
            let object = api.get(HIERARCHY).await.ok()?;
            (last_sync(&object) != before_sync).then_some(())
        },
    )
    .await?;
    let after = bench.stats.snapshot().await?.messages;
    let by_operation = after
        .by_operation
        .iter()
        .map(|(op, n)| {
            (
                op.clone(),
                n - before.by_operation.get(op).copied().unwrap_or(0),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    Ok(Messages {
        total: after.total - before.total,
        by_operation,
    })
}

/// Messages a day of resyncs every `interval` would use, as a share of one unit's daily quota.
fn daily_share(per_resync: u64, interval: Duration, quota_per_unit: u64) -> (u64, f64) {
    let per_day = per_resync * (86_400 / interval.as_secs().max(1));
    (per_day, per_day as f64 / quota_per_unit as f64)
}

/// Prints the operator run: time to Ready, hub calls, memory, Secrets and the quota bound.
fn report_operator(operator: &OperatorRun, n: u64, limits: &RateLimits, sku: HubTier, args: &Args) {
    let ready_secs = operator.elapsed.as_secs_f64();
    println!(
        "operator: {n} devices Ready in {ready_secs:.1} s (apply to Ready=True for the applied generation; {})",
        operator.summary
    );
    println!(
        "operator: {} hub calls = {:.3} per device; 429s: {}; write calls: {}; registry operations (quota units): {}",
        operator.stats.hub_calls(),
        operator.stats.hub_calls() as f64 / n as f64,
        operator.stats.throttled,
        operator.stats.write_calls,
        operator.stats.registry_operations
    );
    println!("operator: calls by kind: {}", operator.stats.by_kind());
    let per_resync = operator.resync.total;
    let (per_day, share) = daily_share(per_resync, Duration::from_secs(300), S1_DAILY_MESSAGES);
    let by_operation: Vec<String> = operator
        .resync
        .by_operation
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    println!(
        "operator: one resync of the converged {n} devices is billed {per_resync} messages (4 KB chunks: {}); every 5 minutes that is {per_day} a day = {:.2}% of one S1 unit's {S1_DAILY_MESSAGES} daily messages",
        by_operation.join(", "),
        share * 100.0
    );
    println!(
        "operator: peak RSS (VmHWM) {:.1} MiB",
        operator.peak_rss_kib as f64 / 1024.0
    );
    println!(
        "operator: Secrets it made: {}; certificate algorithm {}",
        operator.secrets,
        args.certificate_algorithm
            .as_deref()
            .unwrap_or("(the operator's default)")
    );
    // The bound: every device needs one registry operation (a bulk create counts per device);
    // the queries and configuration calls are the ones the operator made, each at its quota.
    let mut units = quota::units_by_class(&operator.stats);
    units.insert(OperationClass::Registry, n);
    let floors = quota::class_floors(&units, limits);
    let bound = floors.first().map_or(Duration::ZERO, |f| f.time);
    let terms: Vec<String> = floors.iter().map(ToString::to_string).collect();
    println!(
        "operator: quota lower bound {:.1} s = the slowest class of [{}] (registry: one operation per device; other classes: the calls made; quotas from the operator's RateLimits for {:?} x{})",
        bound.as_secs_f64(),
        terms.join("; "),
        sku,
        args.units
    );
    let made = quota::class_floors(&quota::units_by_class(&operator.stats), limits);
    if let Some(slowest) = made.first() {
        println!("operator: for the calls it actually made, the slowest class is {slowest}");
    }
    if bound > Duration::ZERO {
        println!(
            "operator: elapsed / quota lower bound = {ready_secs:.1} / {:.1} = {:.2}",
            bound.as_secs_f64(),
            ready_secs / bound.as_secs_f64()
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn report_sdk(
    result: &sdk::SdkResult,
    stats: &HubStats,
    devices: u64,
    with_parent: u64,
    with_modules: u64,
    limits: &RateLimits,
    operator_elapsed: Duration,
    operator_configuration_calls: u64,
) {
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
}
