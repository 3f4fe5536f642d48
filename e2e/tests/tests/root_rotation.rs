//! A root rotation rolled out the way a fleet installs bundles: one device at a time, top-down,
//! against the real control plane, the IoT Hub emulator, the operator and edge-sim. The test
//! plays the installer: it hands each device its bundle Secret (a `MemorySource` of edge-sim)
//! and, once the simulated device runs it, acknowledges it with
//! `edgehierarchy.dev/installed-fingerprint`. edge-sim counts every parent-child TLS handshake;
//! none may fail, and the old root may leave the trust bundles only once the rollout is done.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use base64::Engine;
use common::{Env, hierarchy_yaml};
use e2e_harness::{Checks, wait_until};
use edge_hierarchy_operator::api::{EdgeHierarchyStatus, RootRotationPhase};
use edge_sim::{EdgeSim, MemorySource, SimOptions, Snapshot};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};

const NS: &str = "rotation";
const NAME: &str = "plant";
const TRUST_FILE: &str = "iotedge_config_cli_root.pem";
const INSTALLED: &str = "edgehierarchy.dev/installed-fingerprint";
const FINGERPRINT: &str = "edgehierarchy.dev/fingerprint";
const ROOT_ANNOTATION: &str = "edgehierarchy.dev/root-thumbprint";
/// The tree, top-down: (id, layer).
const DEVICES: [(&str, u32); 4] = [("r-top", 1), ("r-mid-a", 2), ("r-mid-b", 2), ("r-low", 3)];

fn devices_yaml() -> String {
    "    - {id: r-top}\n    - {id: r-mid-a, parent: r-top}\n    - {id: r-mid-b, parent: r-top}\n    - {id: r-low, parent: r-mid-a}\n".into()
}

fn rcgen_root(name: &str) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

async fn put_root(secrets: &Api<Secret>, cert: &str, key: &str) -> anyhow::Result<()> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "factory-root"},
        "data": {"tls.crt": b64(cert), "tls.key": b64(key)},
    }))?;
    secrets
        .patch(
            "factory-root",
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// The hierarchy's Secrets of one component, by device id.
async fn secrets_of(env: &Env, component: &str) -> anyhow::Result<BTreeMap<String, Secret>> {
    env.device_secrets(NS, NAME, component).await
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn file(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

/// The body of a PEM certificate on one line, to find it in a trust bundle whatever its
/// line breaks.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

fn trusts(bundle: &Secret, root: &str) -> bool {
    let trust: String = file(bundle, TRUST_FILE)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    trust.contains(&pem_body(root))
}

/// Total and failed handshakes of every child, and the TCP-level failures.
fn handshake_totals(snapshot: &Snapshot) -> (u64, u64, u64) {
    snapshot
        .devices
        .values()
        .filter_map(|d| d.link.as_ref())
        .fold((0, 0, 0), |(h, f, c), l| {
            (
                h + l.counts.handshakes,
                f + l.counts.handshake_failures,
                c + l.counts.connect_failures,
            )
        })
}

fn print_links(snapshot: &Snapshot) {
    for (id, d) in &snapshot.devices {
        if let Some(link) = &d.link {
            println!(
                "  link {id} -> {}: {} handshakes, {} failed, {} TCP failures{}",
                link.parent_hostname,
                link.counts.handshakes,
                link.counts.handshake_failures,
                link.counts.connect_failures,
                link.counts
                    .last_handshake_error
                    .as_deref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            );
        }
    }
}

fn ensure_no_failed_handshake(sim: &EdgeSim, when: &str) -> anyhow::Result<()> {
    let snapshot = sim.snapshot();
    let (_, failed, _) = handshake_totals(&snapshot);
    if failed > 0 {
        print_links(&snapshot);
        bail!("{failed} parent-child TLS handshakes failed {when}");
    }
    Ok(())
}

/// The installer: hands device `id` its current bundle Secret, waits until the simulated device
/// runs it (installed, checks passed, its link to its parent verified) and acknowledges it.
/// Returns the fingerprint acknowledged.
async fn install(
    env: &Env,
    source: &MemorySource,
    sim: &EdgeSim,
    id: &str,
) -> anyhow::Result<String> {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let bundles = secrets_of(env, "bundle").await?;
    let secret = bundles.get(id).context("bundle Secret")?;
    let fingerprint = annotation(secret, FINGERPRINT)
        .context("bundle fingerprint")?
        .to_string();
    let bundle = edge_sim::source::bundle_from_secret(secret).map_err(anyhow::Error::msg)?;
    let sim_fingerprint = bundle.fingerprint();
    source.put(bundle);
    let what = format!("device {id} running bundle {fingerprint}");
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        &what,
        || {
            let snapshot = sim.snapshot();
            let running = snapshot.devices.get(id).is_some_and(|d| {
                let linked = d.parent_hostname.is_none() || d.link.as_ref().is_some_and(|l| l.ok);
                d.bundle_fingerprint == sim_fingerprint && d.failure.is_none() && linked
            });
            async move { running.then_some(()) }
        },
    )
    .await?;
    let name = secret.metadata.name.clone().context("bundle name")?;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {INSTALLED: fingerprint}}})),
    )
    .await?;
    Ok(fingerprint)
}

/// A device whose bundle Secret changed since it was last acknowledged, top-down.
async fn next_outdated(env: &Env) -> anyhow::Result<Option<String>> {
    let bundles = secrets_of(env, "bundle").await?;
    Ok(DEVICES
        .iter()
        .map(|(id, _)| *id)
        .find(|id| {
            bundles
                .get(*id)
                .is_some_and(|s| annotation(s, INSTALLED) != annotation(s, FINGERPRINT))
        })
        .map(str::to_string))
}

fn rotation_line(status: &EdgeHierarchyStatus) -> String {
    match status.root_ca.as_ref().and_then(|r| r.rotation.as_ref()) {
        None => "no rotation".into(),
        Some(r) => format!(
            "{:?}{} trusting {}/{} reissued {}/{} installed {}/{}",
            r.phase,
            r.layer.map(|l| format!(" layer {l}")).unwrap_or_default(),
            r.trusting_new_root,
            r.devices,
            r.reissued,
            r.devices,
            r.installed,
            r.devices
        ),
    }
}

async fn staged_rotation(env: &Env) -> anyhow::Result<()> {
    env.namespace(NS).await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let (old_cert, old_key) = rcgen_root("plant root 1")?;
    put_root(&secrets, &old_cert, &old_key).await?;
    let yaml = format!(
        "{}  certificates: {{rootCA: {{secretRef: {{name: factory-root}}}}, rootRotation: {{overlap: 2h}}}}\n",
        hierarchy_yaml(NAME, "", &devices_yaml())
    );
    env.apply(NS, &yaml).await?;
    env.wait_condition(NS, NAME, "Ready", "True").await?;
    env.wait_status(NS, NAME, "a bundle for every device", |s| {
        s.devices.iter().filter(|d| d.bundle.is_some()).count() == DEVICES.len()
    })
    .await?;

    let source = Arc::new(MemorySource::new());
    let mut options = SimOptions::new(source.clone(), &env.hub.emulator.dir);
    options.state_dir = Some(env.dir.path().join("sim-rotation"));
    options.interval = Duration::from_millis(300);
    let sim = EdgeSim::start(options).await?;
    for (id, _) in DEVICES {
        install(env, &source, &sim, id).await?;
    }
    ensure_no_failed_handshake(&sim, "before the rotation")?;
    println!("before the rotation:");
    print_links(&sim.snapshot());

    // The new root.
    let (new_cert, new_key) = rcgen_root("plant root 2")?;
    put_root(&secrets, &new_cert, &new_key).await?;
    env.wait_status(NS, NAME, "the rotation to begin", |s| {
        s.root_ca
            .as_ref()
            .and_then(|r| r.rotation.as_ref())
            .is_some_and(|r| r.phase == RootRotationPhase::Trusting)
    })
    .await?;
    env.wait_event(NS, NAME, "RootRotationStarted", "both roots")
        .await?;
    let certs = secrets_of(env, "certs").await?;
    let old_thumbprint = annotation(&certs["r-top"], ROOT_ANNOTATION)
        .context("root annotation")?
        .to_string();
    ensure!(
        certs
            .values()
            .all(|s| annotation(s, ROOT_ANNOTATION) == Some(old_thumbprint.as_str())),
        "edge CAs were re-issued before the devices trusted the new root"
    );

    // Roll out, one device at a time, top-down, until no bundle is left to install.
    let started = std::time::Instant::now();
    let mut order: Vec<String> = Vec::new();
    let mut reissued_at: BTreeMap<String, usize> = BTreeMap::new();
    let mut steps = 0;
    let mut completed_at = None;
    loop {
        // The next bundle to install; while the rotation runs and none is outdated, the
        // operator has yet to act on the last acknowledgement.
        let next = wait_until(
            Duration::from_secs(60),
            Duration::from_millis(200),
            "a bundle to install, or the rotation to end",
            || async {
                if let Some(id) = next_outdated(env).await.ok()? {
                    return Some(Some(id));
                }
                let status = env.status(NS, NAME).await.ok()?;
                let rotating = status.root_ca.as_ref()?.rotation.is_some();
                (!rotating).then_some(None)
            },
        )
        .await?;
        let Some(id) = next else { break };
        steps += 1;
        ensure!(
            steps <= 40,
            "the rollout did not end after 40 installations"
        );
        let status = env.status(NS, NAME).await?;
        let rotating = status
            .root_ca
            .as_ref()
            .is_some_and(|r| r.rotation.is_some());
        let bundles = secrets_of(env, "bundle").await?;
        if rotating {
            ensure!(
                bundles
                    .values()
                    .all(|b| trusts(b, &old_cert) && trusts(b, &new_cert)),
                "step {steps}: a bundle dropped a root while the rotation runs ({})",
                rotation_line(&status)
            );
        } else if completed_at.is_none() {
            completed_at = Some(steps);
        }
        install(env, &source, &sim, &id).await?;
        order.push(id.clone());
        ensure_no_failed_handshake(&sim, &format!("after installing {id} (step {steps})"))?;
        // The operator acts on the acknowledgement within a moment (the Secret watch); what it
        // re-issued is read after it. A late re-issue is only seen a step later, which could
        // fail the ordering checks below, never pass them wrongly.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let certs = secrets_of(env, "certs").await?;
        for (device, secret) in &certs {
            if annotation(secret, ROOT_ANNOTATION) != Some(old_thumbprint.as_str()) {
                reissued_at.entry(device.clone()).or_insert(steps);
            }
        }
        let status = env.status(NS, NAME).await?;
        println!(
            "step {steps:2}: installed {id:8} -> {} ({:?} since the new root)",
            rotation_line(&status),
            started.elapsed()
        );
    }
    // The rollout is done: the rotation completed, the old root left every bundle (and the
    // devices run those last bundles), the retired-root Secret is gone.
    let status = env
        .wait_status(NS, NAME, "the rotation to complete", |s| {
            s.root_ca.as_ref().is_some_and(|r| r.rotation.is_none())
        })
        .await?;
    env.wait_event(NS, NAME, "RootRotationCompleted", "new root")
        .await?;
    let bundles = secrets_of(env, "bundle").await?;
    ensure!(
        bundles
            .values()
            .all(|b| trusts(b, &new_cert) && !trusts(b, &old_cert)),
        "after the rollout the bundles still trust the old root"
    );
    ensure!(
        secrets
            .get_opt(&format!("{NAME}-retired-root-ca"))
            .await?
            .is_none(),
        "the retired-root Secret outlived the rotation"
    );
    let certs = secrets_of(env, "certs").await?;
    ensure!(
        certs
            .values()
            .all(|s| annotation(s, ROOT_ANNOTATION) != Some(old_thumbprint.as_str())),
        "a certificate is still under the old root"
    );
    ensure!(
        status.root_ca.as_ref().map(|r| r.secret_name.as_str()) == Some("factory-root"),
        "{:?}",
        status.root_ca
    );
    // Top-down: a parent's edge CA moved to the new root strictly before its children's.
    let at = |id: &str| reissued_at.get(id).copied().unwrap_or(usize::MAX);
    println!("installation order: {order:?}; re-issued at step {reissued_at:?}");
    ensure!(
        at("r-top") < at("r-mid-a") && at("r-top") < at("r-mid-b"),
        "the top was not re-issued before the middle layer: {reissued_at:?}"
    );
    ensure!(
        at("r-mid-a") < at("r-low") && at("r-mid-b") < at("r-low"),
        "the middle layer was not re-issued before the bottom: {reissued_at:?}"
    );
    ensure!(
        at("r-mid-a") == at("r-mid-b"),
        "one layer is re-issued together: {reissued_at:?}"
    );
    let completed_at = completed_at.context("the rotation never completed during the rollout")?;
    ensure!(
        reissued_at.values().all(|at| *at < completed_at),
        "the rotation completed before every edge CA was re-issued and installed: {reissued_at:?}, completed at step {completed_at}"
    );
    // A few more polls over the final links.
    let ticks = sim.snapshot().ticks;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "more polls",
        || {
            let now = sim.snapshot().ticks;
            async move { (now >= ticks + 5).then_some(()) }
        },
    )
    .await?;
    ensure_no_failed_handshake(&sim, "after the rollout")?;
    let snapshot = sim.snapshot();
    let (handshakes, failed, tcp) = handshake_totals(&snapshot);
    println!(
        "root rotation rolled out in {steps} installations over {:?}: {handshakes} parent-child TLS handshakes, {failed} failed, {tcp} TCP-level failures",
        started.elapsed()
    );
    print_links(&snapshot);
    ensure!(handshakes > 0, "no handshake was made at all");
    ensure!(
        snapshot
            .devices
            .values()
            .filter_map(|d| d.link.as_ref())
            .all(|l| l.ok),
        "a link is down at the end"
    );
    sim.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_rolls_out_top_down_without_a_failed_handshake() -> anyhow::Result<()> {
    let env = Env::start(&[]).await?;
    let mut checks = Checks::new();
    checks
        .run(
            "a root rotation rolls out top-down, one device at a time, with no failed handshake",
            staged_rotation(&env),
        )
        .await;
    let result = checks.finish();
    if result.is_err() {
        println!("{}", env.describe(NS, NAME));
    }
    result
}
