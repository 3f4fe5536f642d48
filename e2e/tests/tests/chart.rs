//! The Helm chart: it lints in every mode, its schema and its own checks refuse bad values, the
//! rendered objects carry the chart's contract, it installs into a real apiserver, and its RBAC
//! is what the operator's code uses, no more (checked against operator/src and with
//! `kubectl auth can-i`). The control plane has no node, so Pods stay Pending: what is checked
//! is what the apiserver holds. The chart's README must list every value with its default.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use e2e_harness::{Checks, ControlPlane, ControlPlaneOptions, tools_bin_dir, workspace_root};
use serde::Deserialize as _;
use serde_yaml::Value;

const KUBE_VERSION: &str = "1.34.4";

fn chart() -> String {
    workspace_root()
        .join("charts/edge-hierarchy-operator")
        .display()
        .to_string()
}

/// Runs helm (from e2e/tools) against the cluster of `kubeconfig`, if any; Ok(stdout) when it
/// exits 0, Err(stdout + stderr) otherwise.
fn run_helm(kubeconfig: Option<&Path>, args: &[&str]) -> anyhow::Result<Result<String, String>> {
    let helm = tools_bin_dir()?.join("helm");
    let mut command = Command::new(&helm);
    command
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("eho-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("eho-helm-config"),
        );
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    let out = command.output().context("running helm")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text)
    })
}

fn helm(args: &[&str]) -> anyhow::Result<String> {
    run_helm(None, args)?.map_err(|e| anyhow::anyhow!("helm {args:?}: {e}"))
}

/// `helm template eho CHART -n eho-system` with `extra` (e.g. `--set`, `-f`), as YAML documents.
fn render(extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let chart = chart();
    let mut args = vec![
        "template",
        "eho",
        &chart,
        "--namespace",
        "eho-system",
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    let text = helm(&args)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).context("parsing helm's output")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn only<'a>(docs: &'a [Value], kind: &str) -> anyhow::Result<&'a Value> {
    let found: Vec<&Value> = docs.iter().filter(|d| kind_of(d) == kind).collect();
    ensure!(
        found.len() == 1,
        "expected one {kind}, the chart rendered {}",
        found.len()
    );
    Ok(found[0])
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| kind_of(d) == kind && name_of(d) == name)
}

/// The env of a container as name -> value (`valueFrom` as `fieldRef:PATH`).
fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| {
            let value = match e["value"].as_str() {
                Some(v) => v.to_string(),
                None => format!(
                    "fieldRef:{}",
                    e["valueFrom"]["fieldRef"]["fieldPath"]
                        .as_str()
                        .unwrap_or("?")
                ),
            };
            (e["name"].as_str().unwrap_or_default().to_string(), value)
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn lints_in_every_mode() -> anyhow::Result<()> {
    let chart = chart();
    let examples = format!("{chart}/examples/two-shards");
    let shard_a = format!("{examples}/shard-a.yaml");
    let shard_b = format!("{examples}/shard-b.yaml");
    let modes: [(&str, Vec<&str>); 8] = [
        ("default values", vec![]),
        (
            "namespaced",
            vec!["--set", "watchNamespaces={team-a,team-b}"],
        ),
        (
            "hostNetwork without kube-proxy",
            vec![
                "--set",
                "hostNetwork=true,apiServer.host=127.0.0.1,apiServer.port=6443",
            ],
        ),
        (
            "EST behind a load balancer",
            vec![
                "--set",
                "est.enabled=true,est.url=https://est.factory.example:8443/.well-known/est,est.service.type=LoadBalancer",
            ],
        ),
        (
            "EST on the node's loopback in hostNetwork",
            vec![
                "--set",
                "est.enabled=true,est.listenAddress=127.0.0.1,hostNetwork=true,apiServer.host=127.0.0.1,apiServer.port=6443",
            ],
        ),
        ("shard a of the example", vec!["-f", &shard_a]),
        ("shard b of the example", vec!["-f", &shard_b]),
        (
            "one replica without leader election, monitoring on",
            vec![
                "--set",
                "replicaCount=1,leaderElection.enabled=false,serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true",
            ],
        ),
    ];
    for (mode, extra) in modes {
        let mut args = vec!["lint", "--strict", &chart, "--kube-version", KUBE_VERSION];
        args.extend(extra);
        helm(&args).with_context(|| format!("helm lint --strict, {mode}"))?;
        println!("helm lint --strict passes: {mode}");
    }
    Ok(())
}

fn refuses_bad_values() -> anyhow::Result<()> {
    let chart = chart();
    // (values, what the error must say)
    let cases = [
        (
            "replicaCount=two",
            "at '/replicaCount': got string, want integer",
        ),
        (
            "image.pullPolicy=Sometimes",
            "at '/image/pullPolicy': value must be one of",
        ),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        (
            "hostNetwork=yes",
            "at '/hostNetwork': got string, want boolean",
        ),
        ("watchNamespaces[0]=Team_A", "at '/watchNamespaces/0'"),
        ("apiServer.port=70000", "at '/apiServer/port'"),
        (
            "leaderElection.leaseDuration=1",
            "at '/leaderElection/leaseDuration'",
        ),
        (
            "apiServer.host=192.0.2.1",
            "apiServer.host is set but apiServer.port is not",
        ),
        (
            "leaderElection.enabled=false",
            "replicaCount is 2 but leaderElection.enabled is false",
        ),
        (
            "hostNetwork=true,serviceMonitor.enabled=true",
            "serviceMonitor.enabled needs the metrics port, which hostNetwork: true does not publish",
        ),
        (
            "est.enabled=true",
            "est.enabled with est.listenAddress 0.0.0.0 needs est.url",
        ),
        ("est.port=0", "at '/est/port'"),
        ("est.service.type=ExternalName", "at '/est/service/type'"),
        ("est.url=http://est.example/", "at '/est/url'"),
    ];
    for (set, expected) in cases {
        let out = run_helm(
            None,
            &[
                "template",
                "eho",
                &chart,
                "--kube-version",
                KUBE_VERSION,
                "--set",
                set,
            ],
        )?;
        match out {
            Ok(_) => bail!("helm template --set {set} succeeded; the chart must refuse it"),
            Err(text) => ensure!(
                text.contains(expected),
                "helm template --set {set} failed without saying {expected:?}:\n{text}"
            ),
        }
        println!("refused --set {set}: {expected}");
    }
    Ok(())
}

/// The contract of the issue: replicas, image, hostNetwork, apiServer -> KUBERNETES_SERVICE_*,
/// the Lease in the release namespace with the Pod's name as holder identity.
fn renders_the_contract() -> anyhow::Result<()> {
    let docs = render(&[
        "--set",
        "image.repository=registry.example/eho,image.tag=t1,image.pullPolicy=Always",
    ])?;
    let deployment = only(&docs, "Deployment")?;
    ensure!(
        deployment["spec"]["replicas"].as_u64() == Some(2),
        "replicas: {:?}",
        deployment["spec"]["replicas"]
    );
    ensure!(
        deployment["spec"]["strategy"]["type"].as_str() == Some("RollingUpdate"),
        "strategy: {:?}",
        deployment["spec"]["strategy"]
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    ensure!(
        container["image"].as_str() == Some("registry.example/eho:t1"),
        "image: {:?}",
        container["image"]
    );
    ensure!(
        container["imagePullPolicy"].as_str() == Some("Always"),
        "pullPolicy"
    );
    ensure!(pod["hostNetwork"].is_null(), "hostNetwork is on by default");
    let args = strings(&container["args"]);
    for wanted in [
        "run",
        "--leader-election",
        "--lease-name=eho-edge-hierarchy-operator",
        "--lease-namespace=eho-system",
        "--lease-duration=15",
    ] {
        ensure!(
            args.iter().any(|a| a == wanted),
            "args {args:?} lack {wanted}"
        );
    }
    let env = env_of(container);
    ensure!(
        env.get("POD_NAME").map(String::as_str) == Some("fieldRef:metadata.name"),
        "POD_NAME: {env:?}"
    );
    ensure!(
        env.get("POD_NAMESPACE").map(String::as_str) == Some("fieldRef:metadata.namespace"),
        "POD_NAMESPACE: {env:?}"
    );
    ensure!(
        env.get("METRICS_ADDR").map(String::as_str) == Some("0.0.0.0:8080"),
        "METRICS_ADDR: {env:?}"
    );
    ensure!(
        !env.contains_key("KUBERNETES_SERVICE_HOST")
            && !env.contains_key("KUBERNETES_SERVICE_PORT"),
        "apiServer is unset but the env has {env:?}"
    );
    ensure!(
        container["ports"][0]["name"].as_str() == Some("metrics"),
        "ports: {:?}",
        container["ports"]
    );
    ensure!(
        container["readinessProbe"]["httpGet"]["port"].as_str() == Some("metrics"),
        "readiness probe"
    );
    ensure!(
        container["livenessProbe"]["httpGet"]["path"].as_str() == Some("/healthz"),
        "liveness probe"
    );
    let service = named(&docs, "Service", "eho-edge-hierarchy-operator-metrics")
        .context("no metrics Service by default")?;
    ensure!(
        service["spec"]["ports"][0]["targetPort"].as_str() == Some("metrics"),
        "Service ports"
    );
    let pdb = only(&docs, "PodDisruptionBudget")?;
    ensure!(
        pdb["spec"]["maxUnavailable"].as_u64() == Some(1),
        "PDB: {pdb:?}"
    );
    ensure!(
        named(&docs, "Role", "eho-edge-hierarchy-operator-leader-election").is_some(),
        "no Role for the Lease"
    );
    println!(
        "default render: 2 replicas, leader election on the release's Lease, httpGet probes, metrics Service, PDB"
    );

    // hostNetwork, without kube-proxy.
    let docs = render(&[
        "--set",
        "hostNetwork=true,apiServer.host=127.0.0.1,apiServer.port=6443,replicaCount=3",
    ])?;
    let deployment = only(&docs, "Deployment")?;
    ensure!(
        deployment["spec"]["replicas"].as_u64() == Some(3),
        "replicas"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    ensure!(
        pod["hostNetwork"].as_bool() == Some(true),
        "hostNetwork: {:?}",
        pod["hostNetwork"]
    );
    ensure!(
        pod["dnsPolicy"].as_str() == Some("ClusterFirstWithHostNet"),
        "dnsPolicy"
    );
    ensure!(
        container["ports"].is_null(),
        "hostNetwork Pods publish ports: {:?}",
        container["ports"]
    );
    let env = env_of(container);
    ensure!(
        env.get("KUBERNETES_SERVICE_HOST").map(String::as_str) == Some("127.0.0.1"),
        "env: {env:?}"
    );
    ensure!(
        env.get("KUBERNETES_SERVICE_PORT").map(String::as_str) == Some("6443"),
        "env: {env:?}"
    );
    ensure!(
        env.get("METRICS_ADDR").map(String::as_str) == Some("127.0.0.1:0"),
        "env: {env:?}"
    );
    let addr_file = env
        .get("METRICS_ADDR_FILE")
        .context("no METRICS_ADDR_FILE")?;
    let mount = container["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        !mount.is_empty() && addr_file.starts_with(&format!("{mount}/")),
        "{addr_file} is not in the mount {mount:?}"
    );
    ensure!(
        pod["volumes"][0]["emptyDir"].is_mapping(),
        "the address file's folder is no emptyDir"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let command = strings(&container[probe]["exec"]["command"]);
        ensure!(
            command
                == [
                    "/edge-hierarchy-operator",
                    "probe",
                    "http",
                    path,
                    "--addr-file",
                    addr_file.as_str()
                ],
            "{probe}: {command:?}"
        );
    }
    ensure!(
        !docs.iter().any(|d| kind_of(d) == "Service"),
        "a metrics Service is rendered with hostNetwork"
    );
    let test_pod =
        named(&docs, "Pod", "eho-edge-hierarchy-operator-test").context("no test Pod")?;
    ensure!(
        test_pod["spec"]["hostNetwork"].as_bool() == Some(true),
        "the test Pod ignores hostNetwork"
    );
    let test_env = env_of(&test_pod["spec"]["containers"][0]);
    ensure!(
        test_env.get("KUBERNETES_SERVICE_HOST").map(String::as_str) == Some("127.0.0.1")
            && test_env.get("KUBERNETES_SERVICE_PORT").map(String::as_str) == Some("6443"),
        "the test Pod ignores apiServer: {test_env:?}"
    );
    println!(
        "hostNetwork render: no ports, exec probes on the address file, apiServer env in both Pods, no Service"
    );

    renders_est()?;

    // One replica: no budget (it would block drains), and no leader election needs Recreate.
    let docs = render(&["--set", "replicaCount=1,leaderElection.enabled=false"])?;
    ensure!(
        !docs.iter().any(|d| kind_of(d) == "PodDisruptionBudget"),
        "a PDB for one replica"
    );
    let deployment = only(&docs, "Deployment")?;
    ensure!(
        deployment["spec"]["strategy"]["type"].as_str() == Some("Recreate"),
        "strategy without election"
    );
    let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
    ensure!(
        !args
            .iter()
            .any(|a| a.starts_with("--lease") || a == "--leader-election"),
        "args: {args:?}"
    );
    println!("one replica without election: Recreate, no PDB, no lease flags");
    Ok(())
}

const EST_SERVICE: &str = "eho-edge-hierarchy-operator-est";

/// `est.enabled`: the selectorless Service, the flags that make the leader write its
/// EndpointSlice, the Pod IP from the downward API (or `est.endpointIP`), the port `est`
/// (none with hostNetwork), and nothing of it by default.
fn renders_est() -> anyhow::Result<()> {
    let container_of = |docs: &[Value]| -> anyhow::Result<Value> {
        Ok(only(docs, "Deployment")?["spec"]["template"]["spec"]["containers"][0].clone())
    };
    let docs = render(&[])?;
    let container = container_of(&docs)?;
    ensure!(
        named(&docs, "Service", EST_SERVICE).is_none()
            && named(&docs, "Role", EST_SERVICE).is_none(),
        "EST objects rendered by default"
    );
    ensure!(
        !strings(&container["args"])
            .iter()
            .any(|a| a.starts_with("--est")),
        "EST flags by default"
    );
    ensure!(
        !env_of(&container).contains_key("POD_IP"),
        "POD_IP by default"
    );

    let url = "https://est.factory.example:8443/.well-known/est";
    let docs = render(&[
        "--set",
        &format!("est.enabled=true,est.url={url},est.caSecret=my-est-ca"),
    ])?;
    let service = named(&docs, "Service", EST_SERVICE).context("no EST Service")?;
    ensure!(
        service["spec"]["selector"].is_null(),
        "the EST Service selects Pods (standbys too): {:?}",
        service["spec"]["selector"]
    );
    let port = &service["spec"]["ports"][0];
    ensure!(
        port["name"].as_str() == Some("est")
            && port["port"].as_u64() == Some(8443)
            && port["targetPort"].as_u64() == Some(8443)
            && service["spec"]["type"].as_str() == Some("ClusterIP"),
        "EST Service: {service:?}"
    );
    let container = container_of(&docs)?;
    let args = strings(&container["args"]);
    for wanted in [
        "--est-addr=0.0.0.0:8443".to_string(),
        format!("--est-service={EST_SERVICE}"),
        format!("--est-url={url}"),
        "--est-ca-secret=my-est-ca".to_string(),
    ] {
        ensure!(args.contains(&wanted), "args {args:?} lack {wanted}");
    }
    let env = env_of(&container);
    ensure!(
        env.get("POD_IP").map(String::as_str) == Some("fieldRef:status.podIP"),
        "POD_IP: {env:?}"
    );
    let ports: Vec<(String, u64)> = container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["containerPort"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        ports.contains(&("est".to_string(), 8443)),
        "container ports: {ports:?}"
    );

    let docs = render(&[
        "--set",
        "est.enabled=true,est.listenAddress=127.0.0.1,est.port=9443,est.endpointIP=192.0.2.10,hostNetwork=true,apiServer.host=127.0.0.1,apiServer.port=6443",
    ])?;
    let container = container_of(&docs)?;
    let args = strings(&container["args"]);
    for wanted in ["--est-addr=127.0.0.1:9443", "--est-endpoint-ip=192.0.2.10"] {
        ensure!(
            args.iter().any(|a| a == wanted),
            "args {args:?} lack {wanted}"
        );
    }
    ensure!(
        !env_of(&container).contains_key("POD_IP"),
        "POD_IP next to est.endpointIP"
    );
    ensure!(
        container["ports"].is_null(),
        "hostNetwork Pods publish ports"
    );
    ensure!(
        named(&docs, "Service", EST_SERVICE).is_some(),
        "no EST Service with hostNetwork"
    );
    let docs = render(&["--set", "est.enabled=true,est.listenAddress=fd00::1"])?;
    let args = strings(&container_of(&docs)?["args"]);
    ensure!(
        args.iter().any(|a| a == "--est-addr=[fd00::1]:8443"),
        "IPv6 listen address: {args:?}"
    );
    println!(
        "EST render: selectorless Service on port est, --est-addr/--est-service/--est-url, POD_IP from status.podIP (or est.endpointIP), no port with hostNetwork"
    );
    Ok(())
}

/// Every Kubernetes API call of the operator (operator/src, not the kubectl plugin, which runs
/// with its user's credentials) and the permission it needs: (file, text of the call, apiGroup,
/// resource, verb). The check below fails when a call listed here is gone, when a file uses an
/// API of a resource without being listed, and when the chart grants anything else.
const OPERATOR_CALLS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "reconcile/controller.rs",
        "hierarchies.list(",
        "edgehierarchy.dev",
        "edgehierarchies",
        "list",
    ),
    (
        "reconcile/controller.rs",
        "watcher(hierarchies",
        "edgehierarchy.dev",
        "edgehierarchies",
        "watch",
    ),
    // kube's finalizer helper adds and removes the finalizer with a JSON patch.
    (
        "reconcile/controller.rs",
        "finalizer(&api",
        "edgehierarchy.dev",
        "edgehierarchies",
        "patch",
    ),
    (
        "reconcile/scope.rs",
        "api.patch_status(",
        "edgehierarchy.dev",
        "edgehierarchies/status",
        "patch",
    ),
    // Owner references with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
    (
        "reconcile/secrets.rs",
        "controller_owner_ref(",
        "edgehierarchy.dev",
        "edgehierarchies/finalizers",
        "update",
    ),
    (
        "reconcile/controller.rs",
        ".watches(secrets",
        "",
        "secrets",
        "list",
    ),
    (
        "reconcile/controller.rs",
        ".watches(secrets",
        "",
        "secrets",
        "watch",
    ),
    (
        "reconcile/secret_cache.rs",
        "watcher(api",
        "",
        "secrets",
        "watch",
    ),
    (
        "reconcile/secret_cache.rs",
        ".list(&ListParams",
        "",
        "secrets",
        "list",
    ),
    (
        "reconcile/secrets.rs",
        "self.api.get_opt(",
        "",
        "secrets",
        "get",
    ),
    (
        "reconcile/secrets.rs",
        ".create(&PostParams",
        "",
        "secrets",
        "create",
    ),
    ("reconcile/secrets.rs", ".patch(", "", "secrets", "patch"),
    (
        "reconcile/secrets.rs",
        "self.api.delete(",
        "",
        "secrets",
        "delete",
    ),
    (
        "reconcile/secrets.rs",
        ".list(&ListParams",
        "",
        "secrets",
        "list",
    ),
    (
        "reconcile/credentials.rs",
        ".get_opt(name)",
        "",
        "secrets",
        "get",
    ),
    (
        "reconcile/registry_auth.rs",
        "api.get_opt(name)",
        "",
        "secrets",
        "get",
    ),
    (
        "reconcile/proof_keys.rs",
        "api.get_opt(PROOF_KEY_SECRET)",
        "",
        "secrets",
        "get",
    ),
    (
        "reconcile/proof_keys.rs",
        "api.create(&PostParams",
        "",
        "secrets",
        "create",
    ),
    (
        "reconcile/controller.rs",
        ".watches(config_maps",
        "",
        "configmaps",
        "list",
    ),
    (
        "reconcile/controller.rs",
        ".watches(config_maps",
        "",
        "configmaps",
        "watch",
    ),
    (
        "reconcile/deployments/mod.rs",
        ".get_opt(&r.name)",
        "",
        "configmaps",
        "get",
    ),
    // kube's event Recorder creates an Event and patches it when the same one recurs.
    (
        "reconcile/events.rs",
        "Recorder::new(",
        "events.k8s.io",
        "events",
        "create",
    ),
    (
        "reconcile/events.rs",
        "Recorder::new(",
        "events.k8s.io",
        "events",
        "patch",
    ),
    (
        "reconcile/cleanup.rs",
        "api.get_opt(namespace)",
        "",
        "namespaces",
        "get",
    ),
    // The EST server: the roots of the hierarchies that issue over EST, its own CA, and the
    // enrollment records on the devices' certificate Secrets.
    (
        "est/trust.rs",
        ".apis::<EdgeHierarchy>(",
        "edgehierarchy.dev",
        "edgehierarchies",
        "list",
    ),
    ("est/trust.rs", "secrets.get_opt(", "", "secrets", "get"),
    ("est/tls.rs", "secrets.get_opt(", "", "secrets", "get"),
    ("est/tls.rs", "secrets.create(", "", "secrets", "create"),
    ("est/record.rs", ".patch(&name", "", "secrets", "patch"),
];

/// The calls of `--est-service` (the leader's EndpointSlice of the EST Service), granted only
/// with `est.enabled`, by a Role of their own in the release namespace: checked below against
/// the rendered Role, and with `kubectl auth can-i` after the install.
const EST_SERVICE_CALLS: &[(&str, &str, &str, &str, &str)] = &[
    ("est/endpoint.rs", "services.get(", "", "services", "get"),
    // A server-side apply creates the slice the first time.
    (
        "est/endpoint.rs",
        "Patch::Apply(&slice)",
        "discovery.k8s.io",
        "endpointslices",
        "create",
    ),
    (
        "est/endpoint.rs",
        "Patch::Apply(&slice)",
        "discovery.k8s.io",
        "endpointslices",
        "patch",
    ),
];

/// The Rust type of each resource the operator's RBAC covers, as `Api<T>` names it.
const RESOURCE_OF_TYPE: &[(&str, &str)] = &[
    ("EdgeHierarchy", "edgehierarchies"),
    ("Secret", "secrets"),
    ("ConfigMap", "configmaps"),
    ("Namespace", "namespaces"),
    ("Service", "services"),
    ("EndpointSlice", "endpointslices"),
];

/// Source files of the operator that run in the controller: not tests, not the kubectl plugin.
fn operator_sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() {
            if name != "tests" && name != "bin" && name != "fixtures" {
                operator_sources(&path, out)?;
            }
        } else if name.ends_with(".rs") && !name.ends_with("tests.rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The resource types a file's code (before its `#[cfg(test)]` module) builds an `Api` of.
fn api_types(code: &str) -> BTreeSet<String> {
    let code = code.split("#[cfg(test)]").next().unwrap_or_default();
    let mut types = BTreeSet::new();
    // `apis::<T>` is the controller's one Api per watched namespace (`Watched::apis`).
    for start in ["Api<", "Api::<", "apis::<"] {
        for (i, _) in code.match_indices(start) {
            let rest = &code[i + start.len()..];
            let rest = rest.strip_prefix("PartialObjectMeta<").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // A generic parameter (`Api<K>`) names no resource: its callers do.
            let generic = name.len() == 1 && name.chars().all(|c| c.is_ascii_uppercase());
            if !name.is_empty() && !generic {
                types.insert(name);
            }
        }
    }
    types
}

type Rule = (String, String, String);

/// (apiGroup, resource, verb) of every rule of a rendered Role or ClusterRole.
fn granted(role: &Value) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().into_iter().flatten() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

fn rbac_is_what_the_code_calls() -> anyhow::Result<()> {
    let src = workspace_root().join("operator/src");
    // 1. Every call listed is still in its file.
    for (file, call, ..) in OPERATOR_CALLS.iter().chain(EST_SERVICE_CALLS) {
        let code = std::fs::read_to_string(src.join(file))
            .with_context(|| format!("reading operator/src/{file}"))?;
        ensure!(
            code.contains(call),
            "operator/src/{file} no longer has `{call}`: update OPERATOR_CALLS and the chart's RBAC (charts/edge-hierarchy-operator/templates/rbac.yaml)"
        );
    }
    // 2. Every file that builds an Api of a resource is listed, and every resource is known.
    let mut files = Vec::new();
    operator_sources(&src, &mut files)?;
    let resources: BTreeMap<&str, &str> = RESOURCE_OF_TYPE.iter().copied().collect();
    let mut seen_types = 0;
    for path in &files {
        let code = std::fs::read_to_string(path)?;
        let relative = path.strip_prefix(&src)?.display().to_string();
        for ty in api_types(&code) {
            seen_types += 1;
            // The Lease of leader election: its Role is checked against the apiserver below.
            if ty == "Lease" {
                continue;
            }
            let resource = resources.get(ty.as_str()).with_context(|| {
                format!("operator/src/{relative} uses Api<{ty}>, a resource the chart's RBAC does not cover: add it to templates/rbac.yaml and its calls to OPERATOR_CALLS")
            })?;
            ensure!(
                OPERATOR_CALLS
                    .iter()
                    .chain(EST_SERVICE_CALLS)
                    .any(|(f, _, _, r, _)| *f == relative && r.starts_with(resource)),
                "operator/src/{relative} calls the API of {resource}, but OPERATOR_CALLS lists no call of it there: list its calls (and grant their verbs in templates/rbac.yaml)"
            );
        }
    }
    ensure!(
        seen_types >= 10,
        "found only {seen_types} Api uses in operator/src: the scan is broken"
    );
    // 3. The chart grants exactly those verbs, cluster-wide and in namespaced mode.
    let needed: BTreeSet<Rule> = OPERATOR_CALLS
        .iter()
        .map(|(_, _, g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let docs = render(&[])?;
    let cluster_role =
        named(&docs, "ClusterRole", "eho-edge-hierarchy-operator").context("no ClusterRole")?;
    let cluster = granted(cluster_role);
    ensure!(
        cluster == needed,
        "the ClusterRole grants {:?} beyond the code's calls and lacks {:?}",
        cluster.difference(&needed).collect::<Vec<_>>(),
        needed.difference(&cluster).collect::<Vec<_>>()
    );
    let docs = render(&["--set", "watchNamespaces={team-a,team-b}"])?;
    for ns in ["team-a", "team-b"] {
        let role = docs
            .iter()
            .find(|d| kind_of(d) == "Role" && d["metadata"]["namespace"].as_str() == Some(ns))
            .with_context(|| format!("no Role in {ns}"))?;
        ensure!(
            granted(role) == needed,
            "the Role in {ns} differs from the code's calls"
        );
    }
    // 4. The EST Role grants exactly the EndpointSlice calls (and, in namespaced mode, the EST
    // CA Secret of the release namespace, which no watched namespace's Role may cover).
    let est_needed: BTreeSet<Rule> = EST_SERVICE_CALLS
        .iter()
        .map(|(_, _, g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    ensure!(
        !cluster.iter().any(|rule| est_needed.contains(rule)),
        "the ClusterRole grants the EST Service's calls, which belong to the EST Role"
    );
    for (mode, set, extra) in [
        (
            "cluster-wide",
            "est.enabled=true,est.listenAddress=127.0.0.1",
            vec![],
        ),
        (
            "namespaced",
            "est.enabled=true,est.listenAddress=127.0.0.1,watchNamespaces={team-a}",
            vec![("", "secrets", "get"), ("", "secrets", "create")],
        ),
    ] {
        let docs = render(&["--set", set])?;
        let role = named(&docs, "Role", EST_SERVICE).context("no EST Role")?;
        ensure!(
            role["metadata"]["namespace"].as_str() == Some("eho-system"),
            "the EST Role is not in the release namespace"
        );
        let mut wanted = est_needed.clone();
        wanted.extend(
            extra
                .iter()
                .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string())),
        );
        let got = granted(role);
        ensure!(
            got == wanted,
            "the EST Role ({mode}) grants {:?} beyond the code's calls and lacks {:?}",
            got.difference(&wanted).collect::<Vec<_>>(),
            wanted.difference(&got).collect::<Vec<_>>()
        );
        // Everything but create is limited to the one Service, slice and Secret.
        for rule in role["rules"].as_sequence().into_iter().flatten() {
            let verbs = strings(&rule["verbs"]);
            let names = strings(&rule["resourceNames"]);
            let expected: Vec<String> = match strings(&rule["resources"]).as_slice() {
                [r] if r == "secrets" => vec!["edge-hierarchy-operator-est-ca".into()],
                _ => vec![EST_SERVICE.into()],
            };
            ensure!(
                verbs == ["create"] || names == expected,
                "EST Role rule {rule:?} is not limited to {expected:?}"
            );
        }
        let binding = named(&docs, "RoleBinding", EST_SERVICE).context("no EST RoleBinding")?;
        ensure!(
            binding["roleRef"]["name"].as_str() == Some(EST_SERVICE),
            "EST RoleBinding: {binding:?}"
        );
    }
    println!(
        "the chart grants exactly the {} (resource, verb) pairs of the operator's {} API calls, and the EST Role the {} of the EST Service's",
        needed.len(),
        OPERATOR_CALLS.len(),
        est_needed.len()
    );
    Ok(())
}

/// Each `| \`path\` | \`default\` | ... |` row of the chart README's value table.
fn readme_rows(readme: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut rows = BTreeMap::new();
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        ensure!(cells.len() >= 3, "README row without three cells: {line}");
        let key = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_string();
        let default = cells[1]
            .trim()
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'));
        let default = default
            .with_context(|| format!("README row {key}: the default is not in backticks"))?;
        let value: Value = serde_yaml::from_str(default)
            .with_context(|| format!("README row {key}: its default {default} is not YAML"))?;
        ensure!(
            rows.insert(key.clone(), value).is_none(),
            "README lists {key} twice"
        );
    }
    Ok(rows)
}

/// Walks values.yaml: a path the README lists is compared with the README's default; a mapping
/// it does not list is walked into; anything else is a value the README misses.
fn compare_values(
    value: &Value,
    path: &str,
    rows: &BTreeMap<String, Value>,
    seen: &mut BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    if let Some(documented) = rows.get(path) {
        seen.insert(path.to_string());
        if documented != value {
            problems.push(format!(
                "{path}: README says {documented:?}, values.yaml has {value:?}"
            ));
        }
        return;
    }
    match value.as_mapping() {
        Some(map) if !map.is_empty() => {
            for (k, v) in map {
                let k = k.as_str().unwrap_or_default();
                let child = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                compare_values(v, &child, rows, seen, problems);
            }
        }
        _ => problems.push(format!(
            "{path} is in values.yaml but not in the README's table"
        )),
    }
}

fn readme_lists_every_value() -> anyhow::Result<()> {
    let chart = workspace_root().join("charts/edge-hierarchy-operator");
    let values: Value = serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml"))?)?;
    let rows = readme_rows(&std::fs::read_to_string(chart.join("README.md"))?)?;
    ensure!(
        rows.len() > 20,
        "the README's value table has only {} rows",
        rows.len()
    );
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    compare_values(&values, "", &rows, &mut seen, &mut problems);
    for key in rows.keys().filter(|k| !seen.contains(*k)) {
        problems.push(format!(
            "the README lists {key}, which values.yaml does not have"
        ));
    }
    ensure!(
        problems.is_empty(),
        "charts/edge-hierarchy-operator/README.md and values.yaml differ:\n{}",
        problems.join("\n")
    );
    println!(
        "the README lists all {} values with their defaults",
        rows.len()
    );
    Ok(())
}

fn kubectl_ok(cluster: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    let out = cluster.kubectl(args)?;
    ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl auth can-i VERB RESOURCE [-n NS | -A] --as WHO`: "yes" or "no".
fn can_i(
    cluster: &ControlPlane,
    who: &str,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> anyhow::Result<bool> {
    // `TYPE/status` would ask about an object named "status": subresources go by flag.
    let (resource, subresource) = match resource.rsplit_once('/') {
        Some((r, sub @ ("status" | "finalizers"))) => (r, Some(sub)),
        _ => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "--as", who];
    if let Some(sub) = subresource {
        args.extend(["--subresource", sub]);
    }
    match namespace {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("-A"),
    }
    let out = cluster.kubectl(&args)?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!(
            "kubectl {}: {answer} {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn expect_can(
    cluster: &ControlPlane,
    who: &str,
    checks: &[(&str, &str, Option<&str>, bool)],
) -> anyhow::Result<()> {
    for (verb, resource, ns, allowed) in checks {
        let answer = can_i(cluster, who, verb, resource, *ns)?;
        ensure!(
            answer == *allowed,
            "{who} {} {verb} {resource} in {}",
            if answer { "may" } else { "may not" },
            ns.unwrap_or("every namespace")
        );
    }
    Ok(())
}

fn helm_install(
    cluster: &ControlPlane,
    release: &str,
    namespace: &str,
    extra: &[&str],
) -> anyhow::Result<String> {
    let chart = chart();
    let mut args = vec![
        "install",
        release,
        &chart,
        "--namespace",
        namespace,
        "--create-namespace",
    ];
    args.extend_from_slice(extra);
    run_helm(Some(cluster.kubeconfig_path()), &args)?
        .map_err(|e| anyhow::anyhow!("helm install {release}: {e}"))
}

const SA: &str = "system:serviceaccount:eho-system:eho-edge-hierarchy-operator";

/// The cluster-wide release serves EST on loopback (the operator run under its ServiceAccount
/// below publishes its EndpointSlice).
const EST_VALUES: &str = "est.enabled=true,est.listenAddress=127.0.0.1";

async fn installs_cluster_wide(cluster: &ControlPlane) -> anyhow::Result<()> {
    let out = helm_install(cluster, "eho", "eho-system", &["--set", EST_VALUES])?;
    for wanted in [
        "eho-system/eho-edge-hierarchy-operator",
        "helm test eho -n eho-system",
        "Service eho-edge-hierarchy-operator-metrics",
        "EST (docs/est.md): Service eho-edge-hierarchy-operator-est",
    ] {
        ensure!(out.contains(wanted), "NOTES lack {wanted:?}:\n{out}");
    }
    for (kind, name) in [
        ("deployment", "eho-edge-hierarchy-operator"),
        ("service", "eho-edge-hierarchy-operator-metrics"),
        ("poddisruptionbudget", "eho-edge-hierarchy-operator"),
        ("serviceaccount", "eho-edge-hierarchy-operator"),
        ("role", "eho-edge-hierarchy-operator-leader-election"),
        ("service", EST_SERVICE),
        ("role", EST_SERVICE),
        ("clusterrole", "eho-edge-hierarchy-operator"),
        ("crd", "edgehierarchies.edgehierarchy.dev"),
    ] {
        kubectl_ok(cluster, &["-n", "eho-system", "get", kind, name])?;
    }
    let replicas = kubectl_ok(
        cluster,
        &[
            "-n",
            "eho-system",
            "get",
            "deployment",
            "eho-edge-hierarchy-operator",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )?;
    ensure!(
        replicas == "2",
        "the Deployment in the apiserver has {replicas} replicas"
    );
    println!(
        "helm install eho: the apiserver holds the Deployment (2 replicas), Service, PDB, RBAC and CRD"
    );

    let mut checks: Vec<(&str, &str, Option<&str>, bool)> = OPERATOR_CALLS
        .iter()
        .map(|(_, _, group, resource, verb)| {
            let full: &'static str = match (*group, *resource) {
                ("", r) => r,
                ("edgehierarchy.dev", "edgehierarchies") => "edgehierarchies.edgehierarchy.dev",
                ("edgehierarchy.dev", "edgehierarchies/status") => {
                    "edgehierarchies.edgehierarchy.dev/status"
                }
                ("edgehierarchy.dev", "edgehierarchies/finalizers") => {
                    "edgehierarchies.edgehierarchy.dev/finalizers"
                }
                ("events.k8s.io", "events") => "events.events.k8s.io",
                other => panic!("no kubectl name for {other:?}"),
            };
            (*verb, full, None, true)
        })
        .collect();
    let est_slice = format!("endpointslices.discovery.k8s.io/{EST_SERVICE}");
    let est_service = format!("services/{EST_SERVICE}");
    checks.extend([
        // The EST Service's endpoint: that Service and that slice, in the release namespace.
        ("get", est_service.as_str(), Some("eho-system"), true),
        (
            "create",
            "endpointslices.discovery.k8s.io",
            Some("eho-system"),
            true,
        ),
        ("patch", est_slice.as_str(), Some("eho-system"), true),
        ("get", "services/kubernetes", Some("default"), false),
        ("get", "services/other", Some("eho-system"), false),
        (
            "patch",
            "endpointslices.discovery.k8s.io/other",
            Some("eho-system"),
            false,
        ),
        (
            "list",
            "endpointslices.discovery.k8s.io",
            Some("eho-system"),
            false,
        ),
        (
            "create",
            "endpointslices.discovery.k8s.io",
            Some("default"),
            false,
        ),
        ("delete", est_slice.as_str(), Some("eho-system"), false),
        // Nothing else.
        ("update", "secrets", None, false),
        ("delete", "edgehierarchies.edgehierarchy.dev", None, false),
        ("create", "pods", None, false),
        ("get", "nodes", None, false),
        // The Lease: in the release namespace, that one name.
        (
            "create",
            "leases.coordination.k8s.io",
            Some("eho-system"),
            true,
        ),
        (
            "get",
            "leases.coordination.k8s.io/eho-edge-hierarchy-operator",
            Some("eho-system"),
            true,
        ),
        (
            "update",
            "leases.coordination.k8s.io/eho-edge-hierarchy-operator",
            Some("eho-system"),
            true,
        ),
        (
            "patch",
            "leases.coordination.k8s.io/eho-edge-hierarchy-operator",
            Some("eho-system"),
            true,
        ),
        // The Lease's watch (a metadata.name field selector): that name only.
        (
            "watch",
            "leases.coordination.k8s.io/eho-edge-hierarchy-operator",
            Some("eho-system"),
            true,
        ),
        (
            "list",
            "leases.coordination.k8s.io",
            Some("eho-system"),
            false,
        ),
        (
            "get",
            "leases.coordination.k8s.io/someone-elses",
            Some("eho-system"),
            false,
        ),
        (
            "create",
            "leases.coordination.k8s.io",
            Some("default"),
            false,
        ),
    ]);
    let others = checks.iter().filter(|(_, _, _, allowed)| !allowed).count();
    expect_can(cluster, SA, &checks)?;
    println!(
        "the operator's ServiceAccount may do its {} calls' verbs, the EST Service's 3, and nothing of the {others} others asked",
        OPERATOR_CALLS.len()
    );
    Ok(())
}

async fn aggregates_into_view_and_edit(cluster: &ControlPlane) -> anyhow::Result<()> {
    kubectl_ok(cluster, &["create", "namespace", "team-view"])?;
    kubectl_ok(
        cluster,
        &[
            "-n",
            "team-view",
            "create",
            "rolebinding",
            "alice-view",
            "--clusterrole=view",
            "--user=alice",
        ],
    )?;
    kubectl_ok(
        cluster,
        &[
            "-n",
            "team-view",
            "create",
            "rolebinding",
            "bob-edit",
            "--clusterrole=edit",
            "--user=bob",
        ],
    )?;
    kubectl_ok(
        cluster,
        &[
            "-n",
            "team-view",
            "create",
            "rolebinding",
            "carol-admin",
            "--clusterrole=admin",
            "--user=carol",
        ],
    )?;
    let eh = "edgehierarchies.edgehierarchy.dev";
    // The aggregation controller folds the chart's rules into the built-in roles shortly after
    // the install; wait for that, then ask for everything.
    let started = std::time::Instant::now();
    while !can_i(cluster, "alice", "list", eh, Some("team-view"))? {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the built-in view role never gained edgehierarchies"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "view covers edgehierarchies {:?} after the install",
        started.elapsed()
    );
    let ns = Some("team-view");
    expect_can(
        cluster,
        "alice",
        &[
            ("get", eh, ns, true),
            ("list", eh, ns, true),
            ("watch", eh, ns, true),
            ("create", eh, ns, false),
            ("delete", eh, ns, false),
            ("list", eh, Some("default"), false),
        ],
    )?;
    expect_can(
        cluster,
        "bob",
        &[
            ("get", eh, ns, true),
            ("list", eh, ns, true),
            ("create", eh, ns, true),
            ("patch", eh, ns, true),
            ("delete", eh, ns, true),
        ],
    )?;
    expect_can(
        cluster,
        "carol",
        &[
            ("list", eh, ns, true),
            ("create", eh, ns, true),
            ("delete", eh, ns, true),
        ],
    )?;
    println!(
        "view reads EdgeHierarchies, edit and admin also change them, in their namespace only"
    );
    Ok(())
}

async fn namespaced_mode(cluster: &ControlPlane) -> anyhow::Result<()> {
    for ns in ["team-a", "team-b", "other-ns"] {
        kubectl_ok(cluster, &["create", "namespace", ns])?;
    }
    helm_install(
        cluster,
        "ehn",
        "eho-ns",
        &["--set", "watchNamespaces={team-a,team-b}"],
    )?;
    let sa = "system:serviceaccount:eho-ns:ehn-edge-hierarchy-operator";
    let args = kubectl_ok(
        cluster,
        &[
            "-n",
            "eho-ns",
            "get",
            "deployment",
            "ehn-edge-hierarchy-operator",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ],
    )?;
    ensure!(
        args.contains("--watch-namespaces=team-a,team-b"),
        "args: {args}"
    );
    expect_can(
        cluster,
        sa,
        &[
            ("get", "secrets", Some("other-ns"), false),
            ("list", "secrets", Some("other-ns"), false),
            ("get", "secrets", Some("default"), false),
            ("list", "secrets", None, false),
            ("list", "edgehierarchies.edgehierarchy.dev", None, false),
            ("get", "secrets", Some("team-a"), true),
            ("watch", "secrets", Some("team-b"), true),
            ("create", "secrets", Some("team-a"), true),
            (
                "list",
                "edgehierarchies.edgehierarchy.dev",
                Some("team-b"),
                true,
            ),
            (
                "patch",
                "edgehierarchies.edgehierarchy.dev/status",
                Some("team-a"),
                true,
            ),
            ("create", "events.events.k8s.io", Some("team-b"), true),
            // A Role reaches the Namespace object of its own namespace only.
            ("get", "namespaces/team-a", Some("team-a"), true),
            ("get", "namespaces/other-ns", Some("other-ns"), false),
            ("create", "leases.coordination.k8s.io", Some("eho-ns"), true),
        ],
    )?;
    // No cluster-wide grant names the ServiceAccount.
    let bindings: serde_json::Value = serde_json::from_str(&kubectl_ok(
        cluster,
        &["get", "clusterrolebindings", "-o", "json"],
    )?)?;
    let bound: Vec<&str> = bindings["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| {
            b["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "ServiceAccount" && s["namespace"] == "eho-ns")
        })
        .filter_map(|b| b["metadata"]["name"].as_str())
        .collect();
    ensure!(
        bound.is_empty(),
        "ClusterRoleBindings bind the namespaced operator: {bound:?}"
    );
    let out = cluster.kubectl(&["get", "clusterrole", "ehn-edge-hierarchy-operator"])?;
    ensure!(
        !out.status.success(),
        "namespaced mode made the ClusterRole ehn-edge-hierarchy-operator"
    );
    println!(
        "namespaced mode: Secrets readable in team-a and team-b only, no ClusterRoleBinding for its ServiceAccount"
    );
    Ok(())
}

/// `helm test` creates its hook objects; with no node its Pod cannot run, so the run times out,
/// and what it left in the apiserver is checked: the Pod's command and the test account's reach.
async fn helm_test_hook(cluster: &ControlPlane) -> anyhow::Result<()> {
    let out = run_helm(
        Some(cluster.kubeconfig_path()),
        &["test", "eho", "-n", "eho-system", "--timeout", "10s"],
    )?;
    ensure!(
        out.is_err(),
        "helm test passed on a control plane with no node: {out:?}"
    );
    let pod: serde_json::Value = serde_json::from_str(&kubectl_ok(
        cluster,
        &[
            "-n",
            "eho-system",
            "get",
            "pod",
            "eho-edge-hierarchy-operator-test",
            "-o",
            "json",
        ],
    )?)?;
    let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    ensure!(
        args == [
            "probe",
            "lease",
            "--lease-name=eho-edge-hierarchy-operator",
            "--lease-namespace=eho-system"
        ],
        "the test Pod runs {args:?}"
    );
    ensure!(
        pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
            .as_str()
            .is_some_and(|p| p.contains("hook-succeeded")),
        "no hook-delete-policy"
    );
    let tester = "system:serviceaccount:eho-system:eho-edge-hierarchy-operator-test";
    expect_can(
        cluster,
        tester,
        &[
            (
                "get",
                "leases.coordination.k8s.io/eho-edge-hierarchy-operator",
                Some("eho-system"),
                true,
            ),
            (
                "update",
                "leases.coordination.k8s.io/eho-edge-hierarchy-operator",
                Some("eho-system"),
                false,
            ),
            ("get", "secrets", Some("eho-system"), false),
        ],
    )?;
    println!(
        "helm test: its Pod runs `probe lease` on the release's Lease under an account that may only read it"
    );
    Ok(())
}

/// The operator binary run with the chart's ServiceAccount token instead of an admin identity:
/// it brings a hierarchy to Ready against the emulator and deletes it (finalizer, hub cleanup,
/// Secrets), so the trimmed RBAC is enough for a whole life cycle, not only on paper.
async fn operator_runs_under_its_service_account(cluster: &ControlPlane) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let token = kubectl_ok(
        cluster,
        &[
            "-n",
            "eho-system",
            "create",
            "token",
            "eho-edge-hierarchy-operator",
            "--duration=1h",
        ],
    )?;
    let mut config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(cluster.kubeconfig_path())?)?;
    config["users"][0]["user"] = serde_yaml::from_str(&format!("{{token: {}}}", token.trim()))?;
    let kubeconfig = dir.path().join("operator.kubeconfig");
    e2e_harness::kubeconfig::write(&kubeconfig, &serde_yaml::to_string(&config)?)?;
    let hub = common::Hub::start(&dir.path().join("hub"), &[]).await?;
    let ns = "sa-run";
    kubectl_ok(cluster, &["create", "namespace", ns])?;
    let connection = format!(
        "--from-literal=connectionString={}",
        hub.emulator.connection_string
    );
    kubectl_ok(
        cluster,
        &[
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "iothub-service",
            &connection,
        ],
    )?;
    let ca = format!(
        "--from-file=ca.crt={}",
        hub.emulator.dir.join("ca.crt").display()
    );
    kubectl_ok(
        cluster,
        &["-n", ns, "create", "secret", "generic", "iothub-ca", &ca],
    )?;
    let log = dir.path().join("operator.log");
    // With the flags the chart gives it for EST (on a free loopback port), so the EndpointSlice
    // write runs under the chart's Role too.
    let est_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let est_addr = format!("127.0.0.1:{est_port}");
    let mut args: Vec<&str> = common::OPERATOR_FLAGS.args.to_vec();
    args.extend([
        "--est-addr",
        est_addr.as_str(),
        "--est-service",
        EST_SERVICE,
        "--est-namespace",
        "eho-system",
        "--est-endpoint-ip",
        "192.0.2.10",
    ]);
    let operator = e2e_harness::Operator::start(
        &e2e_harness::workspace_bin("edge-hierarchy-operator")?,
        &kubeconfig,
        &log,
        e2e_harness::OperatorFlags {
            args: &args,
            ..common::OPERATOR_FLAGS
        },
    )?;
    let devices = "    - {id: sa-top}\n    - {id: sa-lower, parent: sa-top}\n";
    let out = cluster.kubectl_apply_stdin(&format!(
        "{}\n",
        common::hierarchy_yaml("sa-run", "", devices)
            .replace("metadata:\n", "metadata:\n  namespace: sa-run\n")
    ))?;
    ensure!(
        out.status.success(),
        "applying the hierarchy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = std::time::Instant::now();
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    loop {
        let status = kubectl_ok(
            cluster,
            &["-n", ns, "get", "edgehierarchy", "sa-run", "-o", ready],
        )?;
        if status == "True" {
            break;
        }
        ensure!(
            started.elapsed() < common::CONVERGE,
            "not Ready under the ServiceAccount (Ready={status:?}); operator log:\n{}",
            e2e_harness::process::log_tail(&log, 30)
        );
        tokio::time::sleep(common::POLL).await;
    }
    println!(
        "Ready under the chart's ServiceAccount after {:?}",
        started.elapsed()
    );
    let wanted = format!("192.0.2.10 {est_port} est {EST_SERVICE} {EST_SERVICE}");
    let slice = || {
        let out = cluster.kubectl(&[
            "-n",
            "eho-system",
            "get",
            "endpointslice",
            EST_SERVICE,
            "-o",
            "jsonpath={.endpoints[0].addresses[0]} {.ports[0].port} {.ports[0].name} {.metadata.labels.kubernetes\\.io/service-name} {.metadata.ownerReferences[0].name}",
        ]);
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let published = e2e_harness::wait_until(
        common::CONVERGE,
        common::POLL,
        &format!("the EST EndpointSlice to be {wanted:?}"),
        || async { slice().ok().filter(|got| *got == wanted) },
    )
    .await;
    if let Err(e) = published {
        let got = slice();
        anyhow::bail!(
            "{e}; it is {got:?}; operator log:\n{}",
            e2e_harness::process::log_tail(&log, 30)
        );
    }
    println!("the EST Service's EndpointSlice names the operator: {wanted}");
    ensure!(
        hub.admin.device("sa-lower").await?.is_some(),
        "sa-lower is not in the hub"
    );
    kubectl_ok(
        cluster,
        &[
            "-n",
            ns,
            "delete",
            "edgehierarchy",
            "sa-run",
            "--wait=true",
            "--timeout=180s",
        ],
    )?;
    common::wait_until_absent(&hub.admin, &["sa-top", "sa-lower"]).await?;
    let text = operator.output();
    ensure!(
        !text.contains("forbidden") && !text.contains("Forbidden"),
        "the operator was refused something under its ServiceAccount:\n{}",
        text.lines()
            .filter(|l| l.to_lowercase().contains("forbidden"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "deleted under the ServiceAccount: finalizer removed, devices gone from the hub, nothing forbidden"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart() -> anyhow::Result<()> {
    let mut checks = Checks::new();
    checks
        .run("helm lint --strict passes in every mode", async {
            lints_in_every_mode()
        })
        .await;
    checks
        .run("the chart refuses bad values, saying which", async {
            refuses_bad_values()
        })
        .await;
    checks
        .run("the rendered objects carry the contract", async {
            renders_the_contract()
        })
        .await;
    checks
        .run("the RBAC is exactly the verbs the code calls", async {
            rbac_is_what_the_code_calls()
        })
        .await;
    checks
        .run("the chart README lists every value", async {
            readme_lists_every_value()
        })
        .await;
    let mut options = ControlPlaneOptions::default();
    // Folds the chart's aggregated ClusterRoles into view, edit and admin.
    options
        .controllers
        .push("clusterrole-aggregation-controller".into());
    let cluster = ControlPlane::start(options).await?;
    if checks
        .run(
            "helm install, cluster-wide RBAC as the code needs",
            installs_cluster_wide(&cluster),
        )
        .await
    {
        checks
            .run(
                "view, edit and admin cover EdgeHierarchies",
                aggregates_into_view_and_edit(&cluster),
            )
            .await;
        checks
            .run(
                "helm test runs probe lease with a Lease reader",
                helm_test_hook(&cluster),
            )
            .await;
        checks
            .run(
                "the operator reconciles and deletes under the chart's ServiceAccount",
                operator_runs_under_its_service_account(&cluster),
            )
            .await;
    }
    checks
        .run(
            "namespaced mode keeps the operator in its namespaces",
            namespaced_mode(&cluster),
        )
        .await;
    checks.finish()
}
