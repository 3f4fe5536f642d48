//! EST (issue 12) with the operator as its own process, `run --est-addr 127.0.0.1:PORT`: under
//! `spec.certificates.issuance: Est` each Edge bundle carries config.toml's EST sections and the
//! files they name, and a second, independent EST client (Bouncy Castle's, in
//! e2e/est-conformance) enrolls with the bundle's bootstrap identity and is refused for another
//! device's name, an expired and an unknown client certificate, and no certificate at all.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::{CONVERGE, Env, POLL, hierarchy_yaml, scrape_metrics};
use e2e_harness::{wait_until, workspace_root};
use edge_hierarchy_operator::api::KeyAlgorithm;
use edge_hierarchy_operator::pki::{
    IdentitySigner, generate_key, generate_root_ca, import_root_ca, issue_identity_certificate,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

const NS: &str = "est";
const NAME: &str = "line";

/// A free loopback port for the EST server (its URL, and so its certificate, must be known
/// before it starts).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Control plane, emulator and an operator serving EST on `port`.
async fn start(port: u16) -> anyhow::Result<Env> {
    let est_addr = format!("127.0.0.1:{port}");
    Env::start_with(&[], &["--est-addr", est_addr.as_str()]).await
}

fn hierarchy(extra_certificates: &str) -> String {
    hierarchy_yaml(
        NAME,
        "",
        "    - {id: gw-1, type: Edge}\n    - {id: gw-2, type: Edge, parent: gw-1}\n",
    )
    .replace(
        "  devices:\n",
        &format!("  certificates:\n    issuance: Est\n{extra_certificates}  devices:\n"),
    )
}

/// Each device's bundle files, by device id, once every Edge device has one.
async fn bundles(
    env: &Env,
    devices: usize,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>> {
    wait_until(CONVERGE, POLL, "a bundle for every Edge device", || async {
        let secrets = env.device_secrets(NS, NAME, "bundle").await.ok()?;
        let out: BTreeMap<_, _> = secrets
            .into_iter()
            .filter_map(|(id, s)| {
                let files = s.data?.into_iter().map(|(k, v)| (k, v.0)).collect();
                Some((id, files))
            })
            .collect();
        (out.len() == devices).then_some(out)
    })
    .await
    .with_context(|| env.describe(NS, NAME))
}

/// The base name of a `file://` URI, checked to be in the bundle.
fn named_file<'a>(
    files: &'a BTreeMap<String, Vec<u8>>,
    uri: &str,
) -> anyhow::Result<(&'a str, &'a [u8])> {
    let path = uri.strip_prefix("file://").context("not a file:// URI")?;
    let base = Path::new(path)
        .file_name()
        .context("no file name")?
        .to_str()
        .context("utf-8")?;
    let (name, bytes) = files
        .get_key_value(base)
        .with_context(|| format!("{uri} names {base}, which is not in the bundle"))?;
    Ok((name.as_str(), bytes.as_slice()))
}

/// What a bundle's EST sections name.
struct EstFiles {
    trusted_ca: Vec<u8>,
    bootstrap_cert: Vec<u8>,
    bootstrap_key: Vec<u8>,
}

/// The EST sections of a bundle's config.toml, checked against the contract.
fn est_sections(
    id: &str,
    files: &BTreeMap<String, Vec<u8>>,
    port: u16,
) -> anyhow::Result<EstFiles> {
    let config: toml::Table = String::from_utf8(files["config.toml"].clone())?.parse()?;
    let est = &config["cert_issuance"]["est"];
    let url = est["urls"]["default"]
        .as_str()
        .context("urls.default")?
        .to_string();
    ensure!(
        url == format!("https://127.0.0.1:{port}/.well-known/est"),
        "{id}: urls.default is {url}"
    );
    let trusted = est["trusted_certs"].as_array().context("trusted_certs")?;
    ensure!(trusted.len() == 1, "{id}: trusted_certs {trusted:?}");
    let (_, ca) = named_file(files, trusted[0].as_str().context("uri")?)?;
    let auth = &est["auth"];
    let (_, cert) = named_file(
        files,
        auth["bootstrap_identity_cert"].as_str().context("cert")?,
    )?;
    let (key_name, key) = named_file(files, auth["bootstrap_identity_pk"].as_str().context("pk")?)?;
    ensure!(key_name.ends_with(".key.pem"), "{id}: key file {key_name}");
    let edge_ca = &config["edge_ca"];
    ensure!(
        edge_ca["method"].as_str() == Some("est"),
        "{id}: [edge_ca] {edge_ca:?}"
    );
    let cn = edge_ca.get("common_name").and_then(|v| v.as_str());
    ensure!(
        cn.is_none() || cn == Some(format!("{id}.deviceca").as_str()),
        "{id}: edge CA common_name {cn:?}"
    );
    ensure!(
        edge_ca.get("cert").is_none(),
        "{id}: [edge_ca] still names a file"
    );
    let install = String::from_utf8(files["install.sh"].clone())?;
    for file in [
        &files_named(files, ca),
        &files_named(files, cert),
        &files_named(files, key),
    ] {
        ensure!(
            install.contains(file.as_str()),
            "{id}: install.sh does not install {file}"
        );
    }
    Ok(EstFiles {
        trusted_ca: ca.to_vec(),
        bootstrap_cert: cert.to_vec(),
        bootstrap_key: key.to_vec(),
    })
}

fn files_named(files: &BTreeMap<String, Vec<u8>>, contents: &[u8]) -> String {
    files
        .iter()
        .find(|(_, v)| v.as_slice() == contents)
        .map(|(k, _)| k.clone())
        .unwrap_or_default()
}

/// Compiles the harness (Maven downloads Bouncy Castle into ~/.m2 the first time) and runs it.
fn run_conformance(args: &[(&str, String)]) -> anyhow::Result<String> {
    let pom = workspace_root().join("e2e/est-conformance/pom.xml");
    let classpath_file = workspace_root().join("e2e/est-conformance/target/classpath.txt");
    let build = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .args(["compile", "dependency:build-classpath"])
        .arg(format!("-Dmdep.outputFile={}", classpath_file.display()))
        .output()
        .context("running mvn (scripts/install-deps.sh installs Maven and a JDK)")?;
    ensure!(
        build.status.success(),
        "mvn failed:\n{}\n{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let classpath = format!(
        "{}:{}",
        workspace_root()
            .join("e2e/est-conformance/target/classes")
            .display(),
        std::fs::read_to_string(&classpath_file)?.trim()
    );
    let mut java = Command::new("java");
    java.args(["-cp", &classpath, "dev.edgehierarchy.est.Conformance"]);
    for (flag, value) in args {
        java.args([flag, value.as_str()]);
    }
    let out = java.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "the Bouncy Castle harness failed:\n{text}"
    );
    Ok(text)
}

/// A metric's value from a /metrics text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bouncy_castle_enrolls_and_is_refused_where_it_must_be() -> anyhow::Result<()> {
    let port = free_port()?;
    let env = start(port).await?;
    env.namespace(NS).await?;
    env.apply(NS, &hierarchy("")).await?;
    let bundles = bundles(&env, 2).await?;
    let work = tempfile::tempdir()?;
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<String> {
        let path = work.path().join(name);
        std::fs::write(&path, bytes)?;
        Ok(path.display().to_string())
    };
    let EstFiles {
        trusted_ca: ca,
        bootstrap_cert: cert,
        bootstrap_key: key,
    } = est_sections("gw-1", &bundles["gw-1"], port)?;
    est_sections("gw-2", &bundles["gw-2"], port)?;
    let root_pem = bundles["gw-1"]["iotedge_config_cli_root.pem"].clone();

    // An expired certificate for gw-1 from the hierarchy's own root, and a fresh one for gw-1
    // from a CA the operator does not know.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let root_secret = secrets.get(&format!("{NAME}-root-ca")).await?;
    let data = root_secret.data.context("root Secret data")?;
    let text = |k: &str| String::from_utf8_lossy(&data[k].0).into_owned();
    let now = jiff::Timestamp::now();
    let root = import_root_ca(&text("tls.crt"), &text("tls.key"), now)?;
    let day = Duration::from_secs(24 * 3600);
    let old_key = generate_key(KeyAlgorithm::EcdsaP256)?;
    let expired = issue_identity_certificate(
        "gw-1",
        &old_key,
        IdentitySigner::Root(&root),
        day,
        now - jiff::SignedDuration::from_hours(72),
    )?;
    let stranger_key = generate_key(KeyAlgorithm::EcdsaP256)?;
    let stranger = generate_root_ca(NAME, &stranger_key, 10 * day, now)?;
    let unknown_key = generate_key(KeyAlgorithm::EcdsaP256)?;
    let unknown = issue_identity_certificate(
        "gw-1",
        &unknown_key,
        IdentitySigner::Root(&stranger),
        day,
        now,
    )?;

    let started = std::time::Instant::now();
    let output = run_conformance(&[
        ("--server", format!("127.0.0.1:{port}")),
        ("--trust", write("est-ca.pem", &ca)?),
        ("--root", write("root.pem", &root_pem)?),
        ("--device", "gw-1".into()),
        ("--cert", write("bootstrap.pem", &cert)?),
        ("--key", write("bootstrap.key.pem", &key)?),
        ("--other", "gw-2".into()),
        (
            "--expired-cert",
            write("expired.pem", expired.cert_pem.as_bytes())?,
        ),
        (
            "--expired-key",
            write("expired.key.pem", old_key.pem().as_bytes())?,
        ),
        (
            "--unknown-cert",
            write("unknown.pem", unknown.cert_pem.as_bytes())?,
        ),
        (
            "--unknown-key",
            write("unknown.key.pem", unknown_key.pem().as_bytes())?,
        ),
    ])?;
    println!("{output}");
    println!(
        "Bouncy Castle harness took {:?} (Maven included)",
        started.elapsed()
    );

    // The server counted what it refused, and told the hierarchy.
    let (_, metrics) = scrape_metrics(&env).await?;
    for (series, at_least) in [
        (
            "edge_hierarchy_est_refusals_total{reason=\"foreign-name\"}",
            2.0,
        ),
        ("edge_hierarchy_est_refusals_total{reason=\"expired\"}", 1.0),
        (
            "edge_hierarchy_est_refusals_total{reason=\"unknown-issuer\"}",
            1.0,
        ),
        (
            "edge_hierarchy_est_refusals_total{reason=\"no-client-certificate\"}",
            1.0,
        ),
        (
            "edge_hierarchy_est_enrollments_total{profile=\"edge-ca\"}",
            1.0,
        ),
        (
            "edge_hierarchy_est_enrollments_total{profile=\"identity\"}",
            1.0,
        ),
    ] {
        let value = metric(&metrics, series);
        println!("{series} {value}");
        ensure!(
            value >= at_least,
            "{series} is {value}, expected at least {at_least}"
        );
    }
    env.wait_event(NS, NAME, "EstRefused", "gw-2").await?;
    env.wait_event(NS, NAME, "EstEnrolled", "gw-1").await?;
    // The status shows gw-1's latest EST certificate, not gw-2's (which enrolled nothing).
    let status = env
        .wait_status(NS, NAME, "gw-1's EST certificate in the status", |s| {
            s.devices
                .iter()
                .any(|d| d.id == "gw-1" && d.certificate.as_ref().is_some_and(|c| c.est.is_some()))
        })
        .await?;
    let est = |id: &str| {
        status
            .devices
            .iter()
            .find(|d| d.id == id)
            .and_then(|d| d.certificate.as_ref()?.est.clone())
    };
    println!("status of gw-1: {:?}", est("gw-1"));
    ensure!(
        est("gw-2").is_none(),
        "gw-2 enrolled nothing: {:?}",
        est("gw-2")
    );
    Ok(())
}

/// The hierarchy's bundles as they are now, as a source that never changes: the devices get
/// their bundle once, and everything after comes over EST.
fn installed_once(
    bundles: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> std::sync::Arc<edge_sim::MemorySource> {
    let source = edge_sim::MemorySource::new();
    for (id, files) in bundles {
        source.put(edge_sim::Bundle {
            device_id: id.clone(),
            origin: format!("bundle of {id}, installed once"),
            files: files.clone(),
        });
    }
    std::sync::Arc::new(source)
}

async fn simulate(
    env: &Env,
    source: std::sync::Arc<edge_sim::MemorySource>,
) -> anyhow::Result<edge_sim::EdgeSim> {
    let mut options = edge_sim::SimOptions::new(source, &env.hub.emulator.dir);
    options.state_dir = Some(env.dir.path().join("sim"));
    options.interval = Duration::from_millis(500);
    edge_sim::EdgeSim::start(options).await
}

/// Short certificates: the EST certificates live `duration` (plus the 5 min clock-skew
/// allowance before issuance), so the devices' 80% threshold comes about every 100 s.
const SHORT: &str = "    duration: 3m\n    renewBefore: 30s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_ca_renews_over_est_without_a_new_bundle_and_the_child_link_holds()
-> anyhow::Result<()> {
    let port = free_port()?;
    let env = start(port).await?;
    env.namespace(NS).await?;
    env.apply(NS, &hierarchy(SHORT)).await?;
    let bundles = bundles(&env, 2).await?;
    let sim = simulate(&env, installed_once(&bundles)).await?;

    // Both devices enroll, the child's link to gw-1 comes up.
    let first = wait_until(
        CONVERGE,
        POLL,
        "gw-1 to hold an EST edge CA and gw-2 to link to it",
        || async {
            let counts = sim.est_counts();
            let snapshot = sim.snapshot();
            let linked = snapshot.devices.get("gw-2")?.link.as_ref()?.ok;
            (linked && counts.get("gw-1")?.edge_ca_not_after.is_some())
                .then(|| counts["gw-1"].clone())
        },
    )
    .await
    .with_context(|| {
        format!(
            "{:?}\n{:?}",
            sim.est_counts(),
            sim.snapshot().devices.get("gw-2")
        )
    })?;
    println!(
        "gw-1 enrolled its edge CA over EST, valid until {:?}",
        first.edge_ca_not_after
    );

    // Follow every tick until gw-1 renewed its edge CA twice; a failed link check of gw-2 is a
    // failed handshake to gw-1 (one TLS handshake per tick).
    let started = std::time::Instant::now();
    let mut failed_ticks = std::collections::BTreeSet::new();
    let mut checked_ticks = std::collections::BTreeSet::new();
    let mut servers = std::collections::BTreeSet::new();
    let renewals = loop {
        let snapshot = sim.snapshot();
        if let Some(link) = snapshot.devices.get("gw-2").and_then(|d| d.link.clone()) {
            checked_ticks.insert(snapshot.ticks);
            if !link.ok {
                failed_ticks.insert(snapshot.ticks);
                println!(
                    "tick {}: gw-2 -> gw-1 failed: {}",
                    snapshot.ticks, link.detail
                );
            }
        }
        if let Some(port) = snapshot.devices.get("gw-1").and_then(|d| d.port) {
            servers.insert(port);
        }
        let counts = sim.est_counts();
        let renewals = counts.get("gw-1").map_or(0, |c| c.edge_ca_renewals);
        if renewals >= 2 {
            break counts["gw-1"].clone();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(420),
            "gw-1 renewed its edge CA {renewals} time(s) in {:?}; EST: {counts:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "gw-1 renewed its edge CA {} time(s) over EST in {:?} (now valid until {:?}); gw-1's edgeHub restarted on {} port(s); gw-2's link to gw-1 checked on {} ticks, failed on {}",
        renewals.edge_ca_renewals,
        started.elapsed(),
        renewals.edge_ca_not_after,
        servers.len(),
        checked_ticks.len(),
        failed_ticks.len()
    );
    ensure!(
        renewals.edge_ca_not_after > first.edge_ca_not_after,
        "the edge CA did not move on"
    );
    ensure!(
        servers.len() >= 2,
        "gw-1's modules were not restarted with the new edge CA: {servers:?}"
    );
    ensure!(
        failed_ticks.is_empty(),
        "gw-2's handshakes to gw-1 failed on ticks {failed_ticks:?}"
    );
    ensure!(
        checked_ticks.len() >= 10,
        "too few link checks seen: {}",
        checked_ticks.len()
    );
    // The device never got a second bundle: the source is the one captured at the start.
    let snapshot = sim.snapshot();
    ensure!(snapshot.devices["gw-1"].origin.contains("installed once"));
    // Every TLS handshake gw-2 began with gw-1 (link checks and telemetry), not only the sampled
    // ticks: none failed. Connections refused while gw-1's edgeHub restarted are counted apart.
    let handshakes = snapshot.devices["gw-2"]
        .link
        .as_ref()
        .map(|l| l.counts.clone())
        .unwrap_or_default();
    println!(
        "gw-2 -> gw-1 TLS handshakes across the renewals: {} begun, {} failed, {} connections refused",
        handshakes.handshakes, handshakes.handshake_failures, handshakes.connect_failures
    );
    ensure!(
        handshakes.handshake_failures == 0,
        "gw-2's handshakes to gw-1 failed: {handshakes:?}"
    );
    ensure!(
        handshakes.handshakes >= 10,
        "too few handshakes counted: {handshakes:?}"
    );
    let events = env.events(NS, NAME).await?;
    let enrolled = events
        .iter()
        .filter(|e| e.starts_with("EstEnrolled:") && e.contains("edge-ca"))
        .count();
    println!("EstEnrolled edge-ca Events: {enrolled}");
    sim.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_device_renews_its_identity_over_est_and_keeps_its_hub_access() -> anyhow::Result<()>
{
    let port = free_port()?;
    let env = start(port).await?;
    env.namespace(NS).await?;
    let yaml = hierarchy(SHORT).replace("spec:\n", "spec:\n  authentication: X509\n");
    env.apply(NS, &yaml).await?;
    let bundles = bundles(&env, 2).await?;
    let config: toml::Table = String::from_utf8(bundles["gw-1"]["config.toml"].clone())?.parse()?;
    ensure!(
        config["provisioning"]["authentication"]["identity_cert"]["method"].as_str() == Some("est"),
        "the X509 bundle does not enroll its identity over EST: {config:?}"
    );
    let sim = simulate(&env, installed_once(&bundles)).await?;
    let first = wait_until(
        CONVERGE,
        POLL,
        "gw-1 to hold an EST identity and reach the hub",
        || async {
            let counts = sim.est_counts();
            let device = sim.snapshot().devices.get("gw-1").cloned()?;
            (device.hub_error.is_none() && device.failure.is_none() && device.reported_patches > 0)
                .then(|| counts.get("gw-1")?.identity_thumbprint.clone())
                .flatten()
        },
    )
    .await
    .with_context(|| {
        format!(
            "{:?}\n{:?}",
            sim.est_counts(),
            sim.snapshot().devices.get("gw-1")
        )
    })?;
    println!("gw-1 holds the EST identity {first}");

    let started = std::time::Instant::now();
    let mut hub_errors = Vec::new();
    let mut unregistered = Vec::new();
    let mut polls = 0u32;
    let renewed = loop {
        polls += 1;
        let device = sim.snapshot().devices.get("gw-1").cloned();
        if let Some(error) = device.as_ref().and_then(|d| d.hub_error.clone()) {
            hub_errors.push(error);
        }
        let counts = sim.est_counts();
        let held = counts
            .get("gw-1")
            .and_then(|c| c.identity_thumbprint.clone());
        let registered = env.hub.admin.device("gw-1").await?.unwrap_or_default();
        let slots = &registered["authentication"]["x509Thumbprint"];
        let in_hub = |t: &str| {
            ["primaryThumbprint", "secondaryThumbprint"]
                .iter()
                .any(|k| slots[k].as_str().is_some_and(|s| s.eq_ignore_ascii_case(t)))
        };
        if let Some(held) = &held
            && !in_hub(held)
        {
            unregistered.push(held.clone());
        }
        let renewals = counts.get("gw-1").map_or(0, |c| c.identity_renewals);
        if renewals >= 2 {
            break counts["gw-1"].clone();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(420),
            "gw-1 renewed its identity {renewals} time(s) in {:?}: {counts:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    println!(
        "gw-1 renewed its identity {} time(s) over EST in {:?}; {polls} polls: hub errors {}, identity held but not registered {}",
        renewed.identity_renewals,
        started.elapsed(),
        hub_errors.len(),
        unregistered.len()
    );
    ensure!(renewed.identity_thumbprint.as_deref() != Some(first.as_str()));
    ensure!(
        hub_errors.is_empty(),
        "gw-1 lost hub access: {hub_errors:?}"
    );
    ensure!(
        unregistered.is_empty(),
        "gw-1 held identities the hub did not know: {unregistered:?}"
    );
    // A reconcile after the renewal keeps the enrolled identity registered.
    env.resync(NS, NAME).await?;
    let registered = env.hub.admin.device("gw-1").await?.unwrap_or_default();
    let held = renewed.identity_thumbprint.unwrap_or_default();
    ensure!(
        registered["authentication"]["x509Thumbprint"]
            .to_string()
            .to_ascii_uppercase()
            .contains(&held),
        "after a resync the hub lost {held}: {registered}"
    );
    sim.stop().await;
    Ok(())
}
