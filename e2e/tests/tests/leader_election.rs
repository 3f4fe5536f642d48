//! Several operator processes against one real control plane and the emulator: with
//! `--leader-election` exactly one holds the Lease and reconciles; SIGKILL of the leader hands
//! over after the lease duration, SIGTERM at once (the Lease is released); the emulator's write
//! log and the Lease's history show no interval in which two replicas wrote. Shards
//! (`--shard-selector`, one Lease each) reconcile only their hierarchies, and an operator with
//! `--watch-namespaces` works as a ServiceAccount that has Roles in its namespaces only.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use common::leases::{Write, check_no_overlap, operator_writes, record_terms};
use common::{World, hierarchy_yaml, wait_for};
use e2e_harness::process::ManagedChild;
use e2e_harness::{
    Checks, ControlPlane, ControlPlaneOptions, Operator, install_crd, wait_until, workspace_bin,
};
use kube::Api;
use kube::api::{Patch, PatchParams};

const LEASE: &str = "eho";
const LEASE_NAMESPACE: &str = "default";
/// Short, so the SIGKILL case waits seconds, not the default 15.
const LEASE_DURATION: &str = "6";
const RUST_LOG: &str = "info,edge_hierarchy_operator=debug,kube=warn";

/// One operator process with its name (`POD_NAME`, so its holder identity and User-Agent).
struct Replica {
    name: String,
    operator: Operator,
    addr_file: PathBuf,
}

fn start_replica(
    dir: &Path,
    kubeconfig: &Path,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<Replica> {
    let log = dir.join(format!("{name}.log"));
    let addr_file = dir.join(format!("{name}.addr"));
    let mut command = std::process::Command::new(workspace_bin("edge-hierarchy-operator")?);
    command
        .arg("run")
        .args(["--metrics-addr", "127.0.0.1:0", "--metrics-addr-file"])
        .arg(&addr_file)
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", name)
        .env("RUST_LOG", RUST_LOG)
        .env("NO_COLOR", "1");
    let process = ManagedChild::spawn_command(name, command, &log, None)?;
    Ok(Replica {
        name: name.to_string(),
        operator: Operator { process, log },
        addr_file,
    })
}

fn elected(dir: &Path, kubeconfig: &Path, name: &str) -> anyhow::Result<Replica> {
    start_replica(
        dir,
        kubeconfig,
        name,
        &[
            "--leader-election",
            "--lease-name",
            LEASE,
            "--lease-namespace",
            LEASE_NAMESPACE,
            "--lease-duration",
            LEASE_DURATION,
        ],
    )
}

/// Runs `edge-hierarchy-operator probe ARGS...`: (exit 0, stdout + stderr).
fn probe(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = std::process::Command::new(workspace_bin("edge-hierarchy-operator")?)
        .arg("probe")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `/readyz` of a replica, through `probe http --addr-file` (as the chart's exec probe runs it).
async fn readyz(kubeconfig: &Path, replica: &Replica) -> anyhow::Result<String> {
    let file = replica.addr_file.display().to_string();
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(300),
        &format!("{}'s /readyz to answer 200", replica.name),
        || async {
            let (ok, text) = probe(kubeconfig, &["http", "/readyz", "--addr-file", &file]).ok()?;
            ok.then_some(text)
        },
    )
    .await
}

async fn metrics(replica: &Replica) -> anyhow::Result<String> {
    let addr = std::fs::read_to_string(&replica.addr_file)?;
    Ok(reqwest::get(format!("http://{}/metrics", addr.trim()))
        .await?
        .text()
        .await?)
}

/// The holder `probe lease` reports (it exits 0 only for a live holder).
fn probed_holder(kubeconfig: &Path, lease: &str, namespace: &str) -> Option<String> {
    let (ok, text) = probe(
        kubeconfig,
        &[
            "lease",
            "--lease-name",
            lease,
            "--lease-namespace",
            namespace,
        ],
    )
    .ok()?;
    let holder = text.strip_prefix("holder: ")?.split_whitespace().next()?;
    ok.then(|| holder.to_string())
}

async fn wait_holder(
    kubeconfig: &Path,
    lease: &str,
    namespace: &str,
    pick: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    wait_until(
        Duration::from_secs(90),
        Duration::from_millis(200),
        &format!("a holder of Lease {namespace}/{lease}"),
        || async { probed_holder(kubeconfig, lease, namespace).filter(|h| pick(h)) },
    )
    .await
}

fn small_hierarchy(name: &str, prefix: &str, leaves: usize) -> String {
    let mut devices = format!("    - {{id: {prefix}-gw}}\n");
    for i in 0..leaves {
        devices.push_str(&format!(
            "    - {{id: {prefix}-leaf-{i}, parent: {prefix}-gw, type: Leaf}}\n"
        ));
    }
    hierarchy_yaml(name, "", &devices)
}

fn with_labels(yaml: &str, name: &str, labels: &str) -> String {
    yaml.replace(
        &format!("metadata:\n  name: {name}\n"),
        &format!("metadata:\n  name: {name}\n  labels: {{{labels}}}\n"),
    )
}

/// Waits for Ready=True of the current generation and returns how long it took.
async fn ready_in(env: &World, namespace: &str, name: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    env.wait_condition(namespace, name, "Ready", "True").await?;
    Ok(started.elapsed())
}

/// The replica's log has a `reconciled` line for hierarchy `namespace/name`.
fn reconciled(replica: &Replica, namespace: &str, name: &str) -> bool {
    replica
        .operator
        .output()
        .lines()
        .any(|l| l.contains("reconciled") && l.contains(&format!("/{name}.{namespace}")))
}

async fn one_leader_reconciles(
    env: &World,
    kubeconfig: &Path,
    replicas: &[&Replica],
) -> anyhow::Result<String> {
    let holder = wait_holder(kubeconfig, LEASE, LEASE_NAMESPACE, |_| true).await?;
    ensure!(
        replicas.iter().any(|r| r.name == holder),
        "holder {holder} is none of the replicas"
    );
    env.namespace("elect").await?;
    env.apply("elect", &small_hierarchy("plant", "el", 2))
        .await?;
    let took = ready_in(env, "elect", "plant").await?;
    eprintln!("the leader {holder} brought elect/plant to Ready in {took:.1?}");
    for r in replicas {
        let body = readyz(kubeconfig, r).await?;
        let text = metrics(r).await?;
        if r.name == holder {
            ensure!(body.trim() == "leader", "{}: /readyz {body:?}", r.name);
            ensure!(
                text.contains(&format!(
                    "edge_hierarchy_operator_leader{{lease=\"{LEASE}\"}} 1"
                )),
                "{}: leader gauge not 1:\n{text}",
                r.name
            );
        } else {
            ensure!(
                body.trim() == format!("standby (holder: {holder})"),
                "{}: /readyz {body:?}",
                r.name
            );
            ensure!(
                text.contains(&format!(
                    "edge_hierarchy_operator_leader{{lease=\"{LEASE}\"}} 0"
                )),
                "{}: leader gauge not 0:\n{text}",
                r.name
            );
            ensure!(
                !reconciled(r, "elect", "plant"),
                "the standby {} reconciled",
                r.name
            );
        }
    }
    let writes = operator_writes(env).await?;
    ensure!(!writes.is_empty(), "the leader wrote nothing to the hub");
    let others: Vec<&Write> = writes.iter().filter(|w| w.replica != holder).collect();
    ensure!(others.is_empty(), "writes by standbys: {others:?}");
    Ok(holder)
}

async fn add_leaf(env: &World, namespace: &str, name: &str, id: &str) -> anyhow::Result<()> {
    let api = env.hierarchies(namespace);
    let h = api.get(name).await?;
    let mut devices = serde_json::to_value(&h.spec.devices)?;
    devices
        .as_array_mut()
        .context("devices")?
        .push(serde_json::json!({"id": id, "parent": h.spec.devices[0].id, "type": "Leaf"}));
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"devices": devices}})),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_shards_and_namespaced_mode() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cluster = ControlPlane::start(ControlPlaneOptions::default()).await?;
    install_crd(&cluster)?;
    let kubeconfig = cluster.kubeconfig_path().to_path_buf();
    // Every replica of this test is started here, none by the World.
    let env = World::start(cluster, &[]).await?;
    let terms = record_terms(env.client.clone(), LEASE_NAMESPACE, LEASE);
    let a = elected(env.dir.path(), &kubeconfig, "op-a")?;
    let b = elected(env.dir.path(), &kubeconfig, "op-b")?;
    // A replica that is never elected: an invalid selector ends it at once.
    let mut bad = start_replica(
        env.dir.path(),
        &kubeconfig,
        "bad-selector",
        &["--shard-selector", "shard in (a"],
    )?;
    let mut checks = Checks::new();

    checks
        .run(
            "an invalid shard selector stops the operator with a clear error",
            async {
                let deadline = Instant::now() + Duration::from_secs(30);
                let status = loop {
                    if let Some(status) = bad.operator.process.exit_status() {
                        break status;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "the operator with a bad selector still runs"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                ensure!(!status.success(), "it exited {status}");
                let log = bad.operator.output();
                ensure!(
                    log.contains("--shard-selector \"shard in (a\"")
                        && log.contains("without its ')'"),
                    "log: {log}"
                );
                Ok(())
            },
        )
        .await;

    let mut holder = String::new();
    let leader_ok = checks
        .run(
            "exactly one replica holds the lease and reconciles",
            async {
                holder = one_leader_reconciles(&env, &kubeconfig, &[&a, &b]).await?;
                Ok(())
            },
        )
        .await;
    if !leader_ok {
        return checks.finish();
    }
    let (mut leader, standby) = if holder == a.name { (a, b) } else { (b, a) };

    checks
        .run("after SIGKILL of the leader the standby takes over and reconciles", async {
            let killed = Instant::now();
            leader.operator.kill_hard();
            add_leaf(&env, "elect", "plant", "el-after-kill").await?;
            let taken = wait_holder(&kubeconfig, LEASE, LEASE_NAMESPACE, |h| h == standby.name).await?;
            eprintln!("{taken} took the lease {:.1?} after the SIGKILL (lease duration {LEASE_DURATION} s)", killed.elapsed());
            env.wait_condition("elect", "plant", "Ready", "True").await?;
            eprintln!(
                "SIGKILL of the leader to the spec change Ready: {:.1?}",
                killed.elapsed()
            );
            let body = readyz(&kubeconfig, &standby).await?;
            ensure!(body.trim() == "leader", "{}: /readyz {body:?}", standby.name);
            Ok(())
        })
        .await;
    let mut current = standby;

    let c = elected(env.dir.path(), &kubeconfig, "op-c")?;
    checks
        .run(
            "after SIGTERM the leader releases the lease and hands over at once",
            async {
                let body = readyz(&kubeconfig, &c).await?;
                ensure!(
                    body.trim() == format!("standby (holder: {})", current.name),
                    "op-c: /readyz {body:?}"
                );
                let stopped = Instant::now();
                let status = current
                    .operator
                    .process
                    .stop(Duration::from_secs(30))
                    .context("the leader had exited already")?;
                eprintln!(
                    "{} stopped on SIGTERM in {:.1?} ({status})",
                    current.name,
                    stopped.elapsed()
                );
                ensure!(status.success(), "{} exited {status}", current.name);
                ensure!(
                    current.operator.output().contains("lease released"),
                    "{} did not release the lease",
                    current.name
                );
                wait_holder(&kubeconfig, LEASE, LEASE_NAMESPACE, |h| h == "op-c").await?;
                eprintln!(
                    "op-c took the released lease {:.1?} after the SIGTERM",
                    stopped.elapsed()
                );
                add_leaf(&env, "elect", "plant", "el-after-term").await?;
                let took = ready_in(&env, "elect", "plant").await?;
                eprintln!("op-c brought the next spec change to Ready in {took:.1?}");
                Ok(())
            },
        )
        .await;

    checks
        .run("the write log and the lease history show no two replicas writing at once", async {
            let writes = operator_writes(&env).await?;
            let recorded = terms.lock().unwrap().clone();
            ensure!(
                recorded.len() >= 3,
                "expected three terms (first leader, after SIGKILL, after SIGTERM): {recorded:?}"
            );
            let writers: std::collections::BTreeSet<&str> =
                writes.iter().map(|w| w.replica.as_str()).collect();
            ensure!(writers.len() >= 3, "writes by {writers:?} only");
            ensure!(
                writes.iter().all(|w| !w.path.is_empty()),
                "a write without a path"
            );
            check_no_overlap(&writes, &recorded)
        })
        .await;
    drop(c);

    checks
        .run(
            "two shards with their own leases reconcile only their hierarchies",
            async {
                env.namespace("shards").await?;
                let kc = kubeconfig.as_path();
                let shard = |name: &str, selector: &str, lease: &str| {
                    start_replica(
                        env.dir.path(),
                        kc,
                        name,
                        &[
                            "--leader-election",
                            "--lease-name",
                            lease,
                            "--lease-namespace",
                            LEASE_NAMESPACE,
                            "--lease-duration",
                            LEASE_DURATION,
                            "--shard-selector",
                            selector,
                        ],
                    )
                };
                let sa = shard("shard-a", "shard=a", "eho-shard-a")?;
                let sb = shard("shard-b", "shard in (b)", "eho-shard-b")?;
                let yaml = |name: &str, prefix: &str, labels: &str| {
                    with_labels(&small_hierarchy(name, prefix, 1), name, labels)
                };
                env.apply("shards", &yaml("line-a", "sha", "shard: a"))
                    .await?;
                env.apply("shards", &yaml("line-b", "shb", "shard: b"))
                    .await?;
                env.apply("shards", &yaml("line-c", "shc", "shard: c"))
                    .await?;
                ready_in(&env, "shards", "line-a").await?;
                ready_in(&env, "shards", "line-b").await?;
                ensure!(
                    probed_holder(kc, "eho-shard-a", LEASE_NAMESPACE).as_deref() == Some("shard-a")
                );
                ensure!(
                    probed_holder(kc, "eho-shard-b", LEASE_NAMESPACE).as_deref() == Some("shard-b")
                );
                // One more resync of each, so a shard that watched the other's hierarchy would
                // have had the time to show it.
                env.resync("shards", "line-a").await?;
                env.resync("shards", "line-b").await?;
                ensure!(
                    reconciled(&sa, "shards", "line-a") && !reconciled(&sa, "shards", "line-b"),
                    "shard-a reconciled line-b"
                );
                ensure!(
                    reconciled(&sb, "shards", "line-b") && !reconciled(&sb, "shards", "line-a"),
                    "shard-b reconciled line-a"
                );
                let c = env.hierarchies("shards").get("line-c").await?;
                ensure!(
                    c.status.is_none() && c.metadata.finalizers.unwrap_or_default().is_empty(),
                    "line-c (shard c) was touched by a shard that does not select it"
                );
                Ok(())
            },
        )
        .await;

    checks
        .run(
            "with --watch-namespaces the operator needs Roles in its namespaces only",
            async { namespaced_mode(&env, &kubeconfig).await },
        )
        .await;

    checks.finish()
}

/// A ServiceAccount with Roles in `tenant` only (no ClusterRole): the operator watching
/// `tenant` reconciles its hierarchy there, deletes it again, and leaves `outside` alone.
async fn namespaced_mode(env: &World, kubeconfig: &Path) -> anyhow::Result<()> {
    env.namespace("tenant").await?;
    env.namespace("outside").await?;
    let rbac = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: eho, namespace: tenant}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: eho, namespace: tenant}
rules:
  - apiGroups: [edgehierarchy.dev]
    resources: [edgehierarchies]
    verbs: [get, list, watch, patch, update]
  - apiGroups: [edgehierarchy.dev]
    resources: [edgehierarchies/status]
    verbs: [get, patch, update]
  - apiGroups: [edgehierarchy.dev]
    resources: [edgehierarchies/finalizers]
    verbs: [update]
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get, list, watch, create, patch, update, delete]
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list, watch]
  - apiGroups: [events.k8s.io]
    resources: [events]
    verbs: [create, patch]
  - apiGroups: [""]
    resources: [namespaces]
    verbs: [get]
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [get, list, watch, create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: eho, namespace: tenant}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: eho}
subjects: [{kind: ServiceAccount, name: eho, namespace: tenant}]
"#;
    let out = env.cluster.kubectl_apply_stdin(rbac)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env
        .cluster
        .kubectl(&["-n", "tenant", "create", "token", "eho", "--duration=2h"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    config["users"][0]["user"] = serde_yaml::to_value(BTreeMap::from([("token", token)]))?;
    let restricted = env.dir.path().join("tenant-kubeconfig");
    e2e_harness::kubeconfig::write(&restricted, &serde_yaml::to_string(&config)?)?;
    let sa = "system:serviceaccount:tenant:eho";
    for (verb, resource, scope) in [
        ("list", "secrets", "--all-namespaces"),
        ("list", "secrets", "--namespace=outside"),
        (
            "watch",
            "edgehierarchies.edgehierarchy.dev",
            "--all-namespaces",
        ),
    ] {
        let out = env
            .cluster
            .kubectl(&["auth", "can-i", verb, resource, scope, "--as", sa])?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(
            answer == "no",
            "{sa} can {verb} {resource} {scope}: {answer}"
        );
    }
    let replica = start_replica(
        env.dir.path(),
        &restricted,
        "tenant-op",
        &[
            "--watch-namespaces",
            "tenant",
            "--leader-election",
            "--lease-name",
            "eho-tenant",
            "--lease-namespace",
            "tenant",
            "--lease-duration",
            LEASE_DURATION,
        ],
    )?;
    env.apply("tenant", &small_hierarchy("inside", "tn", 1))
        .await?;
    env.apply("outside", &small_hierarchy("elsewhere", "ou", 1))
        .await?;
    let took = ready_in(env, "tenant", "inside").await?;
    eprintln!("the namespaced operator brought tenant/inside to Ready in {took:.1?}");
    env.resync("tenant", "inside").await?;
    let elsewhere = env.hierarchies("outside").get("elsewhere").await?;
    ensure!(
        elsewhere.status.is_none() && elsewhere.metadata.finalizers.unwrap_or_default().is_empty(),
        "the hierarchy outside the watched namespaces was touched"
    );
    // The namespace read of the cleanup is authorised in the namespace itself: the Role in
    // `tenant` grants it there, and nowhere else.
    let kubeconfig = kube::config::Kubeconfig::read_from(&restricted)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
        Api::all(kube::Client::try_from(config)?);
    namespaces
        .get("tenant")
        .await
        .context("the ServiceAccount reads its own namespace")?;
    match namespaces.get("outside").await {
        Err(kube::Error::Api(status)) if status.is_forbidden() => {}
        other => bail!("reading namespace outside: {other:?}"),
    }
    // The cleanup behind the finalizer runs under the Roles too.
    env.hierarchies("tenant")
        .delete("inside", &Default::default())
        .await?;
    wait_for(env, "tenant/inside to be deleted", || async {
        matches!(env.hierarchies("tenant").get_opt("inside").await, Ok(None)).then_some(())
    })
    .await?;
    let log = replica.operator.output();
    let forbidden: Vec<&str> = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .collect();
    ensure!(
        forbidden.is_empty(),
        "the namespaced operator was refused something:\n{}",
        forbidden.join("\n")
    );
    if !reconciled(&replica, "tenant", "inside") {
        bail!("the namespaced operator logged no reconcile of tenant/inside");
    }
    Ok(())
}
