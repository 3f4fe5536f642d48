//! The chart installed for real (issue 11): the image `make image` builds, loaded into the test
//! node's containerd, `helm install` with two replicas, the in-cluster operator (its
//! service-account token, in-cluster config) bringing the tutorial to Ready against the emulator,
//! the leader's Pod force-deleted, a `helm upgrade` to a new tag with never two replicas writing,
//! `helm test`, and `helm uninstall` leaving the hub as the hierarchies' deletion policies say.
//!
//! The node runs Pods with `hostNetwork` only (docs/test-node.md): the operator reaches the
//! emulator on 127.0.0.1 and the apiserver through the chart's `apiServer` values.
//!
//! EST is on (`est.enabled`, on the node's loopback): each leader, the first, the one after the
//! failover and the upgraded one, routes the selectorless EST Service to itself through its
//! EndpointSlice (with `est.endpointIP` 192.0.2.10, TEST-NET: published, never contacted), and
//! answers EST on 127.0.0.1 with a server certificate of the release's EST CA.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use common::leases::{check_no_overlap, operator_writes, record_terms};
use common::{World, example, wait_until_absent};
use e2e_harness::{ControlPlane, ControlPlaneOptions, tools_bin_dir, wait_until, workspace_root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const RELEASE: &str = "edge-hierarchy-operator";
const NAMESPACE: &str = "eho-system";
/// The chart's default Lease name: the release's full name.
const LEASE: &str = "edge-hierarchy-operator";
/// Short, so the force-deleted leader's term runs out quickly.
const LEASE_DURATION: &str = "8";
const ROLLOUT: Duration = Duration::from_secs(240);
/// The chart's EST Service, and the name of the EndpointSlice its leader writes.
const EST_SERVICE: &str = "edge-hierarchy-operator-est";
/// Published for the Service only; nothing connects to it.
const EST_ENDPOINT_IP: &str = "192.0.2.10";

fn image_archive() -> anyhow::Result<PathBuf> {
    let archive = workspace_root().join("target/image/edge-hierarchy-operator.tar");
    ensure!(
        archive.is_file(),
        "{} is missing: run `make image` first (`make test` does)",
        archive.display()
    );
    Ok(archive)
}

fn helm(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tools_bin_dir()?.join("helm"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("eho-helm-cache"),
        )
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The values of this node: the loaded image (never pulled), host networking, the apiserver's
/// loopback address (there is no kube-proxy), a short lease, EST on loopback port `est_port`.
fn values(cluster: &ControlPlane, tag: &str, est_port: u16) -> anyhow::Result<Vec<String>> {
    let port = cluster
        .server_url()
        .rsplit_once(':')
        .and_then(|(_, port)| port.trim_end_matches('/').parse::<u16>().ok())
        .context("the apiserver URL has a port")?;
    Ok([
        "image.repository=edge-hierarchy-operator".to_string(),
        format!("image.tag={tag}"),
        "image.pullPolicy=Never".to_string(),
        "hostNetwork=true".to_string(),
        "apiServer.host=127.0.0.1".to_string(),
        format!("apiServer.port={port}"),
        format!("leaderElection.leaseDuration={LEASE_DURATION}"),
        "est.enabled=true".to_string(),
        "est.listenAddress=127.0.0.1".to_string(),
        format!("est.port={est_port}"),
        format!("est.endpointIP={EST_ENDPOINT_IP}"),
    ]
    .into_iter()
    .flat_map(|v| ["--set".to_string(), v])
    .collect())
}

/// Every log line the operator's containers wrote on the node (kubectl logs cannot reach it).
fn pod_logs(dir: &Path) -> String {
    let mut text = String::new();
    let Ok(pods) = std::fs::read_dir(dir) else {
        return text;
    };
    for pod in pods.flatten() {
        let name = pod.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{NAMESPACE}_")) {
            continue;
        }
        for file in walk(&pod.path()) {
            if let Ok(content) = std::fs::read_to_string(&file) {
                text.push_str(&format!("== {}\n{content}", file.display()));
            }
        }
    }
    text
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Waits until the Deployment has rolled out its current template: every replica updated,
/// Ready and Available.
async fn rolled_out(env: &World, replicas: i32) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), NAMESPACE);
    wait_until(
        ROLLOUT,
        Duration::from_millis(500),
        "the operator's Deployment to be Available with every replica Ready",
        || async {
            let d = deployments.get(RELEASE).await.ok()?;
            let status = d.status?;
            let available = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available
                && status.observed_generation == d.metadata.generation
                && status.replicas == Some(replicas)
                && status.updated_replicas == Some(replicas)
                && status.ready_replicas == Some(replicas)
                && status.available_replicas == Some(replicas))
            .then_some(())
        },
    )
    .await
    .with_context(|| {
        let out = env
            .cluster
            .kubectl(&["-n", NAMESPACE, "get", "deploy,rs,pods", "-o", "wide"]);
        let pods = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!("{pods}\n{}", env.operator_output())
    })?;
    Ok(started.elapsed())
}

async fn holder(env: &World) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), NAMESPACE);
    leases.get(LEASE).await.ok()?.spec?.holder_identity
}

async fn wait_holder(env: &World, pick: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    wait_until(
        ROLLOUT,
        Duration::from_millis(200),
        "a replica to hold the operator's Lease",
        || async { holder(env).await.filter(|h| pick(h)) },
    )
    .await
}

/// The EST Service routes to `leader`: the Service has no selector and the port `est`, its
/// EndpointSlice names `leader`'s Pod with the published address and the port, and EST answers
/// on the node's loopback with a certificate of the release's EST CA. Without a device's client
/// certificate `cacerts` is refused with 401, which is EST's own answer (docs/est.md).
async fn est_routes_to(env: &World, est_port: u16, leader: &str) -> anyhow::Result<Duration> {
    use k8s_openapi::api::core::v1::{Secret, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let started = Instant::now();
    let services: Api<Service> = Api::namespaced(env.client.clone(), NAMESPACE);
    let service = services.get(EST_SERVICE).await?;
    let spec = service.spec.clone().unwrap_or_default();
    ensure!(
        spec.selector.is_none(),
        "the EST Service selects Pods: {:?}",
        spec.selector
    );
    let ports: Vec<(Option<String>, i32)> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.port))
        .collect();
    ensure!(
        ports == [(Some("est".to_string()), i32::from(est_port))],
        "EST Service ports: {ports:?}"
    );
    let uid = service.metadata.uid.clone().unwrap_or_default();
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), NAMESPACE);
    let seen = std::sync::Mutex::new(String::from("none"));
    wait_until(
        ROLLOUT,
        Duration::from_millis(500),
        &format!("the EST EndpointSlice to name the leader {leader}"),
        || async {
            let slice = slices.get_opt(EST_SERVICE).await.ok()??;
            *seen.lock().unwrap() = format!("{:?}", slice.endpoints);
            let endpoint = slice.endpoints.first()?;
            let port = slice.ports.as_ref()?.first()?;
            let labels = slice.metadata.labels.clone().unwrap_or_default();
            let owned = slice
                .metadata
                .owner_references
                .as_ref()?
                .iter()
                .any(|o| o.kind == "Service" && o.uid == uid);
            (slice.endpoints.len() == 1
                && slice.address_type == "IPv4"
                && endpoint.addresses == [EST_ENDPOINT_IP]
                && endpoint.target_ref.as_ref()?.name.as_deref() == Some(leader)
                && port.name.as_deref() == Some("est")
                && port.port == Some(i32::from(est_port))
                && labels.get("kubernetes.io/service-name").map(String::as_str)
                    == Some(EST_SERVICE)
                && labels
                    .get("endpointslice.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some("edge-hierarchy-operator")
                && owned)
                .then_some(())
        },
    )
    .await
    .with_context(|| {
        format!(
            "last seen endpoints: {}\n{}",
            seen.lock().unwrap(),
            env.operator_output()
        )
    })?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), NAMESPACE);
    let ca = secrets
        .get("edge-hierarchy-operator-est-ca")
        .await?
        .data
        .and_then(|d| d.get("tls.crt").cloned())
        .context("the EST CA Secret has no tls.crt")?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca.0)?)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("https://127.0.0.1:{est_port}/.well-known/est/cacerts");
    // The new leader may still be binding the port (the previous one closing it).
    let answer = wait_until(
        ROLLOUT,
        Duration::from_millis(500),
        &format!("EST to answer on {url}"),
        || async {
            let response = http.get(&url).send().await.ok()?;
            let status = response.status();
            Some((status, response.text().await.unwrap_or_default()))
        },
    )
    .await
    .with_context(|| env.operator_output())?;
    ensure!(
        answer.0 == reqwest::StatusCode::UNAUTHORIZED,
        "GET {url} without a client certificate: {} {}",
        answer.0,
        answer.1
    );
    Ok(started.elapsed())
}

/// The tutorial with `extra` devices added below lower-layer.
fn tutorial(extra: &str) -> String {
    example("tutorial.yaml").replace(
        "      parent: top-layer\n      deployment: lower-layer\n",
        &format!("      parent: top-layer\n      deployment: lower-layer\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_on_a_real_node_with_two_replicas() -> anyhow::Result<()> {
    let archive = image_archive()?;
    let cluster = ControlPlane::start(ControlPlaneOptions::default().with_node()).await?;
    eprintln!(
        "control plane with its node ready in {:?} (node {:?})",
        cluster.startup_time(),
        cluster.node_ready_time()
    );
    let kubeconfig = cluster.kubeconfig_path().to_path_buf();
    let names = cluster.load_image(&archive, None).await?;
    ensure!(
        names
            .iter()
            .any(|n| n.ends_with("edge-hierarchy-operator:dev")),
        "the archive is not tagged edge-hierarchy-operator:dev: {names:?}"
    );
    // "A new tag" for the upgrade: the same image under a second name.
    cluster
        .load_image(&archive, Some("edge-hierarchy-operator:upgrade"))
        .await?;
    let logs = cluster.pod_logs_dir().context("the node's log folder")?;
    let mut env = World::start(cluster, &[]).await?;
    env.read_operator_log_with(move || pod_logs(&logs));
    env.namespace("iot").await?;

    // Install: the CRD from the chart, two replicas, one of them leading.
    let chart = workspace_root().join("charts/edge-hierarchy-operator");
    let chart = chart.to_str().context("chart path")?;
    let mut install = vec![
        "install",
        RELEASE,
        chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
    ];
    // A free loopback port of the node for EST (the Pods share the node's network).
    let est_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dev = values(&env.cluster, "dev", est_port)?;
    install.extend(dev.iter().map(String::as_str));
    helm(&kubeconfig, &install)?;
    let took = rolled_out(&env, 2).await?;
    eprintln!("helm install: Deployment Available with 2/2 Ready after {took:?}");
    let terms = record_terms(env.client.clone(), NAMESPACE, LEASE);
    let first = wait_holder(&env, |_| true).await?;
    ensure!(
        first.starts_with(&format!("{RELEASE}-")),
        "the Lease holder {first:?} is not one of the Pods"
    );
    let took = est_routes_to(&env, est_port, &first).await?;
    eprintln!(
        "EST: Service {EST_SERVICE} routes to the leader {first} ({EST_ENDPOINT_IP}:{est_port}), which answers on loopback; {took:?}"
    );

    // The in-cluster operator brings the tutorial to Ready against the emulator.
    let started = Instant::now();
    env.apply("iot", &tutorial("")).await?;
    env.wait_condition("iot", "tutorial", "Ready", "True")
        .await?;
    eprintln!(
        "tutorial Ready {:?} after apply, led by {first}",
        started.elapsed()
    );
    ensure!(
        env.hub.admin.device("lower-layer").await?.is_some(),
        "lower-layer is not in the hub"
    );

    // The leader's Pod force-deleted: the other replica takes the lease and reconciles a change.
    let deleted = Instant::now();
    let out = env.cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        &first,
        "--grace-period=0",
        "--force",
    ])?;
    ensure!(
        out.status.success(),
        "kubectl delete pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.apply(
        "iot",
        &tutorial("    - {id: after-failover, parent: lower-layer, type: Leaf}\n"),
    )
    .await?;
    env.wait_condition("iot", "tutorial", "Ready", "True")
        .await?;
    let next = wait_holder(&env, |h| h != first).await?;
    ensure!(
        env.hub.admin.device("after-failover").await?.is_some(),
        "the change made after the failover is not in the hub"
    );
    eprintln!(
        "leader {first} force-deleted: {next} leads, and the new device was Ready {:?} after the deletion",
        deleted.elapsed()
    );
    let took = est_routes_to(&env, est_port, &next).await?;
    eprintln!("EST: after the failover the Service routes to {next}, which answers; {took:?}");
    rolled_out(&env, 2).await?;

    // helm upgrade to a new tag: the replicas roll, one leader at a time.
    let mut upgrade = vec!["upgrade", RELEASE, chart, "--namespace", NAMESPACE];
    let new_tag = values(&env.cluster, "upgrade", est_port)?;
    upgrade.extend(new_tag.iter().map(String::as_str));
    helm(&kubeconfig, &upgrade)?;
    let took = rolled_out(&env, 2).await?;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), NAMESPACE);
    let image = deployments
        .get(RELEASE)
        .await?
        .spec
        .and_then(|s| s.template.spec?.containers.first()?.image.clone());
    ensure!(
        image.as_deref() == Some("edge-hierarchy-operator:upgrade"),
        "the upgrade did not change the image: {image:?}"
    );
    eprintln!("helm upgrade: rolled to the new tag in {took:?}");
    let upgraded_leader = wait_holder(&env, |h| h != first && h != next).await?;
    let took = est_routes_to(&env, est_port, &upgraded_leader).await?;
    eprintln!(
        "EST: after the upgrade the Service routes to {upgraded_leader}, which answers; {took:?}"
    );
    env.apply(
        "iot",
        &tutorial(
            "    - {id: after-failover, parent: lower-layer, type: Leaf}\n    - {id: after-upgrade, parent: lower-layer, type: Leaf}\n",
        ),
    )
    .await?;
    env.wait_condition("iot", "tutorial", "Ready", "True")
        .await?;
    ensure!(
        env.hub.admin.device("after-upgrade").await?.is_some(),
        "the change made after the upgrade is not in the hub"
    );
    let writes = operator_writes(&env).await?;
    let recorded = terms.lock().unwrap().clone();
    eprintln!(
        "{} hub writes over {} lease terms; the last leader is {upgraded_leader}",
        writes.len(),
        recorded.len()
    );
    ensure!(
        recorded.len() >= 3,
        "expected a term each for the first, failover and upgraded leaders: {recorded:?}"
    );
    check_no_overlap(&writes, &recorded)?;

    // helm test: its hook Pod checks that a replica holds the Lease.
    let out = helm(
        &kubeconfig,
        &["test", RELEASE, "--namespace", NAMESPACE, "--timeout", "3m"],
    )?;
    ensure!(out.contains("Succeeded"), "helm test: {out}");
    eprintln!("helm test passed");

    // Uninstall. A hierarchy deleted while the operator runs is cleaned up as its policy says
    // (Delete: its devices leave the hub); one still there afterwards keeps its hub devices.
    env.apply(
        "iot",
        &common::hierarchy_yaml("kept", "", "    - {id: kept-gw, type: Edge}\n"),
    )
    .await?;
    env.wait_condition("iot", "kept", "Ready", "True").await?;
    env.hierarchies("iot")
        .delete("tutorial", &Default::default())
        .await?;
    common::wait_until_gone(&env, "iot", "tutorial").await?;
    wait_until_absent(
        &env.hub.admin,
        &[
            "top-layer",
            "lower-layer",
            "after-failover",
            "after-upgrade",
        ],
    )
    .await?;
    helm(
        &kubeconfig,
        &["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"],
    )?;
    // The Pods go with the Deployment (the garbage collector deletes them after helm returns).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(env.client.clone(), NAMESPACE);
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        "the operator's Pods to be gone after helm uninstall",
        || async {
            let list = pods.list(&Default::default()).await.ok()?;
            list.items.is_empty().then_some(())
        },
    )
    .await?;
    ensure!(
        env.hub.admin.device("kept-gw").await?.is_some(),
        "helm uninstall removed the devices of a hierarchy that still exists"
    );
    ensure!(
        env.hierarchies("iot").get_opt("kept").await?.is_some(),
        "helm uninstall removed a hierarchy (the CRD and its objects stay)"
    );
    eprintln!(
        "helm uninstall: the deleted hierarchy's devices left the hub, the kept one's stayed"
    );
    Ok(())
}
