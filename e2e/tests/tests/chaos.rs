//! The chaos suite: the operator keeps every device and every key through crashes, restarts and
//! outages. Each case applies a hierarchy, injects one fault while it converges (kube-apiserver
//! restarted, etcd restarted, the hub down for two minutes, the operator SIGKILLed at 20 random
//! points, 10% of hub calls failing with 500/503, a 429 storm without Retry-After), waits for
//! Ready, and prints one line from [`common::chaos::tally`]: devices lost, duplicated and
//! orphaned (all zero) and bundles that authenticate (all). docs/chaos.md explains each case.
//!
//! One test runs the cases one after another against one control plane, emulator and operator
//! (each case in its own namespace), so the suite never runs two control planes at once.
//! `CHAOS_SEED=N` replays the SIGKILL points of an earlier run (the seed is printed).

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::chaos::{Witness, tally};
use common::{Env, stat};
use e2e_harness::{Checks, wait_until, workspace_root};
use serde_json::{Value, json};

/// The environment variable that fixes the seed of the SIGKILL points.
const SEED_ENV: &str = "CHAOS_SEED";
/// Every case's hierarchy is called this, in a namespace named after the case.
const NAME: &str = "plant";
/// How long a case may take to converge after its fault (the hub outage's backoff included).
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the hub is down in the outage case ("several minutes": at least two).
const OUTAGE: Duration = Duration::from_secs(120);
/// How long the 429 storm lasts (at most; it ends early if the hierarchy is Ready).
const STORM: Duration = Duration::from_secs(90);
/// How often the operator is SIGKILLed while the 200-device hierarchy converges.
const KILLS: usize = 20;
/// Each kill comes this long (uniformly drawn, in ms) after the operator (re)started.
const KILL_DELAY_MS: (u64, u64) = (300, 4000);

/// The emulator of the suite: an S3 hub with one unit, as strict as Azure. S3's quotas (5,000
/// registry operations and 1,000 queries a minute, 20 configuration writes) keep a 200-device
/// hierarchy converging in seconds, so each case spends its time on its fault.
const EMULATOR_ARGS: [&str; 5] = ["--sku", "S3", "--units", "1", "--strict"];

/// A hierarchy of `edge` IoT Edge devices (two top gateways, the rest one layer below them)
/// and `leaves` Leaf devices under the lower gateways, with the tutorial's two deployments.
/// Device ids start with `prefix`: ids are unique hub-wide, and every case shares the hub.
fn hierarchy(prefix: &str, edge: usize, leaves: usize) -> String {
    assert!(edge >= 3, "two top gateways and at least one below them");
    let mut devices = String::new();
    for t in 0..2 {
        devices.push_str(&format!(
            "    - {{id: {prefix}-top-{t}, deployment: top-layer}}\n"
        ));
    }
    let gateways = edge - 2;
    for g in 0..gateways {
        devices.push_str(&format!(
            "    - {{id: {prefix}-gw-{g:03}, parent: {prefix}-top-{}, deployment: lower-layer}}\n",
            g % 2
        ));
    }
    for s in 0..leaves {
        devices.push_str(&format!(
            "    - {{id: {prefix}-sensor-{s:03}, parent: {prefix}-gw-{:03}, type: Leaf}}\n",
            s % gateways
        ));
    }
    let tutorial = std::fs::read_to_string(workspace_root().join("examples/tutorial.yaml"))
        .expect("examples/tutorial.yaml exists");
    let deployments = &tutorial[tutorial
        .find("  deployments:\n")
        .expect("the tutorial has deployments")..];
    format!(
        "apiVersion: edgehierarchy.dev/v1alpha1\nkind: EdgeHierarchy\nmetadata:\n  name: {NAME}\nspec:\n  iotHub:\n    connectionStringSecretRef: {{name: iothub-service, key: connectionString}}\n    caSecretRef: {{name: iothub-ca}}\n    rateLimits: {{sku: S3}}\n  devices:\n{devices}{deployments}"
    )
}

/// splitmix64: a small, well-known generator, so a printed seed replays the same kill points.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// The seed from [`SEED_ENV`], or a new one from the clock.
fn seed() -> anyhow::Result<u64> {
    match std::env::var(SEED_ENV) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{SEED_ENV}={text:?} is not an unsigned 64-bit number")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64),
    }
}

/// Changes the emulator at run time (`PUT /_emulator/<what>`, see its README).
async fn control(env: &Env, what: &str, body: Value) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(
            env.hub.emulator.ca_pem.as_bytes(),
        )?)
        .build()?;
    let response = http
        .put(format!("https://{}/_emulator/{what}", env.hub.admin.host()))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("PUT /_emulator/{what}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or_default();
    ensure!(
        status.is_success(),
        "PUT /_emulator/{what}: {status} {answer}"
    );
    Ok(answer)
}

fn is_ready(h: &edge_hierarchy_operator::api::EdgeHierarchy) -> bool {
    h.status.as_ref().is_some_and(|s| {
        s.observed_generation == h.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn ready_now(env: &Env, namespace: &str) -> bool {
    matches!(env.hierarchies(namespace).get(NAME).await, Ok(h) if is_ready(&h))
}

async fn wait_ready(env: &Env, namespace: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let api = env.hierarchies(namespace);
    wait_until(
        READY_TIMEOUT,
        Duration::from_secs(1),
        &format!("{namespace}/{NAME} to be Ready"),
        || async { api.get(NAME).await.ok().filter(is_ready).map(|_| ()) },
    )
    .await
    .with_context(|| env.describe(namespace, NAME))?;
    Ok(started.elapsed())
}

/// A namespace for the case, a witness on its hierarchy, and the hierarchy applied: 100 Edge
/// devices and 100 Leaf devices, ids starting with `prefix`.
async fn begin(env: &Env, namespace: &str, prefix: &str) -> anyhow::Result<Witness> {
    env.namespace(namespace).await?;
    let witness = Witness::start(env, namespace, NAME);
    env.apply(namespace, &hierarchy(prefix, 100, 100)).await?;
    Ok(witness)
}

/// When a fault comes: once the hub has taken this many more registry operations (the
/// hierarchy's devices are being created), or once this many bundle Secrets exist (the
/// operator is writing Secrets and status).
enum Trigger {
    RegistryOperations(u64),
    Bundles(usize),
}

/// Waits for `trigger` and fails if the hierarchy is Ready already: the fault must come
/// mid-convergence. `before` is the hub's stats from before the hierarchy was applied.
async fn wait_mid_convergence(
    env: &Env,
    namespace: &str,
    before: &Value,
    trigger: Trigger,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let admin = env.hub.admin.clone();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.client.clone(), namespace);
    let bundles = kube::api::ListParams::default().labels(&format!(
        "edgehierarchy.dev/hierarchy={NAME},edgehierarchy.dev/component=bundle"
    ));
    wait_until(
        READY_TIMEOUT,
        Duration::from_millis(100),
        &format!("{namespace}/{NAME} to be part-way converged"),
        || async {
            match trigger {
                Trigger::RegistryOperations(n) => {
                    let now = admin.stats().await.ok()?;
                    (stat(&now, "registryOperations") >= stat(before, "registryOperations") + n)
                        .then_some(())
                }
                Trigger::Bundles(n) => {
                    let list = secrets.list_metadata(&bundles).await.ok()?;
                    (list.items.len() >= n).then_some(())
                }
            }
        },
    )
    .await
    .with_context(|| operator_tail(env))?;
    eprintln!(
        "chaos[{namespace}]: part-way converged {:.1?} after the apply",
        started.elapsed()
    );
    ensure!(
        !ready_now(env, namespace).await,
        "{namespace}/{NAME} converged before the fault; the case did not test mid-convergence"
    );
    Ok(())
}

/// The operator's last log lines, newest first, for failure messages.
fn operator_tail(env: &Env) -> String {
    let log = env.operator.output();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    format!("operator log (newest first):\n{}", tail.join("\n"))
}

/// Counts the case's figures, prints its line and checks them.
async fn finish(env: &Env, namespace: &str, witness: Witness) -> anyhow::Result<()> {
    let figures = tally(env, namespace, NAME, witness).await?;
    figures.print_and_check(namespace)
}

/// kube-apiserver (or etcd) stopped mid-convergence for five seconds and started again in place.
async fn control_plane_restart(
    env: &Env,
    component: &str,
    namespace: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let before = env.hub.admin.stats().await?;
    let witness = begin(env, namespace, prefix).await?;
    wait_mid_convergence(env, namespace, &before, Trigger::Bundles(10)).await?;
    let bundles = witness.bundles_seen();
    let started = Instant::now();
    env.cluster
        .restart(component, Duration::from_secs(5))
        .await?;
    eprintln!(
        "chaos[{namespace}]: {component} restarted ({bundles} bundles written before it stopped), serving again after {:.1?}",
        started.elapsed()
    );
    let took = wait_ready(env, namespace).await?;
    eprintln!("chaos[{namespace}]: Ready {took:.1?} after the restart");
    // The watches must have recovered too: a change made now (one more Leaf) is reconciled.
    env.apply(namespace, &hierarchy(prefix, 100, 101)).await?;
    let noticed = wait_ready(env, namespace).await?;
    eprintln!(
        "chaos[{namespace}]: a change applied after the restart (generation 2) was Ready {noticed:.1?} later"
    );
    ensure!(
        !env.operator.output().contains("panicked"),
        "the operator panicked: {}",
        env.describe(namespace, NAME)
    );
    finish(env, namespace, witness).await
}

/// The hub refuses every connection for [`OUTAGE`] mid-convergence, then comes back with its
/// state.
async fn hub_outage(env: &Env) -> anyhow::Result<()> {
    let namespace = "hub-outage";
    let before = env.hub.admin.stats().await?;
    let witness = begin(env, namespace, "outage").await?;
    // After the top layer (2 devices), while the rest is being created.
    wait_mid_convergence(env, namespace, &before, Trigger::RegistryOperations(2)).await?;
    control(env, "outage", json!({"seconds": OUTAGE.as_secs()})).await?;
    let started = Instant::now();
    let admin = env.hub.admin.clone();
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the hub to go down",
        || async { admin.stats().await.is_err().then_some(()) },
    )
    .await?;
    eprintln!(
        "chaos[{namespace}]: the hub is down ({} bundles written before)",
        witness.bundles_seen()
    );
    wait_until(
        OUTAGE + Duration::from_secs(60),
        Duration::from_secs(1),
        "the hub to come back",
        || async { admin.stats().await.ok().map(|_| ()) },
    )
    .await?;
    eprintln!(
        "chaos[{namespace}]: the hub is back after {:.1?}",
        started.elapsed()
    );
    let took = wait_ready(env, namespace).await?;
    eprintln!("chaos[{namespace}]: Ready {took:.1?} after the hub came back");
    finish(env, namespace, witness).await
}

/// The operator SIGKILLed [`KILLS`] times at random points while 200 devices converge.
async fn sigkill_storm(env: &mut Env) -> anyhow::Result<()> {
    let namespace = "sigkill";
    let seed = seed()?;
    eprintln!(
        "chaos[{namespace}]: seed {seed} (set {SEED_ENV}={seed} to replay these kill points)"
    );
    let mut rng = SplitMix64(seed);
    let delays: Vec<u64> = (0..KILLS)
        .map(|_| rng.between(KILL_DELAY_MS.0, KILL_DELAY_MS.1))
        .collect();
    eprintln!(
        "chaos[{namespace}]: kill {KILLS} times, each this many ms after a start: {delays:?}"
    );
    let witness = begin(env, namespace, "kill").await?;
    let mut mid_convergence = 0;
    for delay in &delays {
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        if !ready_now(env, namespace).await {
            mid_convergence += 1;
        }
        env.operator.kill_hard();
        env.restart_operator()?;
    }
    eprintln!(
        "chaos[{namespace}]: {mid_convergence} of {KILLS} kills came before the hierarchy was Ready ({} bundles seen by then)",
        witness.bundles_seen()
    );
    ensure!(
        mid_convergence > 0,
        "every kill came after convergence; the case did not kill mid-reconcile"
    );
    let took = wait_ready(env, namespace).await?;
    eprintln!("chaos[{namespace}]: Ready {took:.1?} after the last restart");
    finish(env, namespace, witness).await
}

/// 10% of hub calls answered 500 or 503 while the hierarchy converges.
async fn hub_faults(env: &Env) -> anyhow::Result<()> {
    let namespace = "hub-faults";
    let before = env.hub.admin.stats().await?;
    control(env, "faults", json!({"faultRate": 0.1})).await?;
    let converged = async {
        let witness = begin(env, namespace, "fault").await?;
        let took = wait_ready(env, namespace).await?;
        anyhow::Ok((witness, took))
    }
    .await;
    control(env, "faults", json!({"faultRate": 0.0})).await?;
    let (witness, took) = converged?;
    let after = env.hub.admin.stats().await?;
    let faults = stat(&after, "faultsInjected") - stat(&before, "faultsInjected");
    let calls = stat(&after, "total") - stat(&before, "total");
    eprintln!(
        "chaos[{namespace}]: Ready after {took:.1?}; {faults} of {calls} hub calls failed with 500/503"
    );
    ensure!(faults > 0, "no fault was injected; the case tested nothing");
    finish(env, namespace, witness).await
}

/// Half of all hub calls answered 429 without Retry-After for [`STORM`] from the apply (or
/// until Ready, if that comes first), then the storm ends and the hierarchy must converge.
async fn throttle_storm(env: &Env) -> anyhow::Result<()> {
    let namespace = "throttle-storm";
    let before = env.hub.admin.stats().await?;
    control(env, "faults", json!({"throttleRate": 0.5})).await?;
    let stormed = async {
        let witness = begin(env, namespace, "storm").await?;
        let during = tokio::time::timeout(STORM, wait_ready(env, namespace)).await;
        anyhow::Ok((witness, during.ok().transpose()?))
    }
    .await;
    control(env, "faults", json!({"throttleRate": 0.0})).await?;
    let (witness, during) = stormed?;
    let storm_stats = env.hub.admin.stats().await?;
    let throttled = stat(&storm_stats, "throttled") - stat(&before, "throttled");
    let calls = stat(&storm_stats, "total") - stat(&before, "total");
    match during {
        Some(took) => eprintln!("chaos[{namespace}]: Ready {took:.1?} into the storm"),
        None => {
            let took = wait_ready(env, namespace).await?;
            eprintln!(
                "chaos[{namespace}]: not Ready after {STORM:?} of storm; Ready {took:.1?} after it ended"
            );
        }
    }
    eprintln!(
        "chaos[{namespace}]: {throttled} of {calls} hub calls answered 429 without Retry-After during the storm"
    );
    ensure!(
        throttled > 0,
        "no call was throttled; the case tested nothing"
    );
    finish(env, namespace, witness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_under_faults() -> anyhow::Result<()> {
    let suite = Instant::now();
    let mut env = Env::start(&EMULATOR_ARGS).await?;
    let mut checks = Checks::new();
    let mut timed = Vec::new();
    macro_rules! case {
        ($name:expr, $run:expr) => {{
            let started = Instant::now();
            checks.run($name, $run).await;
            timed.push(($name, started.elapsed()));
        }};
    }
    case!(
        "kube-apiserver restarted mid-convergence",
        control_plane_restart(&env, "kube-apiserver", "apiserver-restart", "api")
    );
    case!(
        "etcd restarted mid-convergence",
        control_plane_restart(&env, "etcd", "etcd-restart", "etcd")
    );
    case!("the hub down for two minutes, then back", hub_outage(&env));
    case!(
        "the operator SIGKILLed at 20 random points (200 devices)",
        sigkill_storm(&mut env)
    );
    case!("10% of hub calls fail with 500/503", hub_faults(&env));
    case!("a 429 storm without Retry-After", throttle_storm(&env));
    for (name, took) in &timed {
        eprintln!("chaos: {took:>8.1?}  {name}");
    }
    eprintln!("chaos: the suite took {:.1?}", suite.elapsed());
    checks.finish()
}
