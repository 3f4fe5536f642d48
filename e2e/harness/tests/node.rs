//! The test node: `ControlPlaneOptions::with_node()` (and `control-plane up --node`) starts a
//! real containerd and kubelet whose Node gets Ready; an image built here and loaded with
//! `load_image` runs as a hostNetwork Pod of a Deployment that authenticates to the apiserver
//! with its projected service-account token; and after the stop no process or mount of the
//! node is left, even after a SIGKILL (the next start sweeps it). The tests run at the same time,
//! so several nodes run side by side.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_harness::node::{mounts_below, processes_naming};
use e2e_harness::process::is_running;
use e2e_harness::{
    ControlPlane, ControlPlaneOptions, script_built_tool, wait_until, workspace_root,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

const NAMESPACE: &str = "probe";
const PROBE_IMAGE: &str = "e2e-node-probe:1";
/// The name `load_image` adds with its tag option; the Deployment runs the image by it.
const PROBE_RETAG: &str = "e2e-node-probe:2";

/// Builds e2e/tools/node-probe into a one-file image archive (docker-archive) in `dir`.
fn build_probe_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("probe-rootfs");
    // /tmp is where the probe marks itself ready; the image has nothing else.
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
    }
    let status = Command::new("go")
        .args(["build", "-trimpath", "-o"])
        .arg(rootfs.join("node-probe"))
        .arg(".")
        .current_dir(workspace_root().join("e2e/tools/node-probe"))
        .env("CGO_ENABLED", "0")
        .status()
        .expect("running go build (is Go on PATH?)");
    assert!(status.success(), "go build of node-probe failed");
    let imagebuild = script_built_tool("imagebuild/build.sh").unwrap();
    let archive = dir.join("probe.tar");
    let status = Command::new(imagebuild)
        .arg("-rootfs")
        .arg(&rootfs)
        .args(["-tag", PROBE_IMAGE, "-entrypoint", "/node-probe", "-out"])
        .arg(&archive)
        .status()
        .unwrap();
    assert!(status.success(), "imagebuild failed");
    archive
}

fn probe_objects(apiserver_port: u16) -> (Namespace, ServiceAccount, Deployment) {
    let namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
    }))
    .unwrap();
    let account = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "node-probe", "namespace": NAMESPACE}
    }))
    .unwrap();
    let deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "node-probe", "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "node-probe"}},
            "template": {
                "metadata": {"labels": {"app": "node-probe"}},
                "spec": {
                    "serviceAccountName": "node-probe",
                    "hostNetwork": true,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "probe",
                        "image": PROBE_RETAG,
                        "imagePullPolicy": "Never",
                        // No kube-proxy: the apiserver is reached where it listens.
                        "env": [
                            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                            {"name": "KUBERNETES_SERVICE_PORT", "value": apiserver_port.to_string()},
                        ],
                        "readinessProbe": {
                            "exec": {"command": ["/node-probe", "-ready"]},
                            "periodSeconds": 1,
                        },
                    }],
                },
            },
        },
    }))
    .unwrap();
    (namespace, account, deployment)
}

fn port_of(server_url: &str) -> u16 {
    server_url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Live processes whose command name is `comm`.
fn pids_named(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter(|&pid| is_running(pid))
        .collect()
}

/// What the probe's container logged, from kubelet's log files.
fn probe_log(pod_logs: &Path) -> String {
    let mut text = String::new();
    for pod in std::fs::read_dir(pod_logs).into_iter().flatten().flatten() {
        if !pod
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{NAMESPACE}_"))
        {
            continue;
        }
        for file in std::fs::read_dir(pod.path().join("probe"))
            .into_iter()
            .flatten()
            .flatten()
        {
            text += &std::fs::read_to_string(file.path()).unwrap_or_default();
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_on_the_node_and_nothing_of_the_node_survives() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cluster");
    let started = Instant::now();
    let cluster = ControlPlane::start(ControlPlaneOptions {
        dir: Some(dir.clone()),
        ..ControlPlaneOptions::default().with_node()
    })
    .await
    .unwrap();
    let node_dir = cluster.node_dir().expect("started with a node");
    println!(
        "control plane with node up in {:.1}s; the node's part (containerd, pause image, \
         kubelet to Node Ready) {:.1}s",
        started.elapsed().as_secs_f64(),
        cluster.node_ready_time().unwrap().as_secs_f64()
    );
    let client = cluster.client();
    let node = Api::<Node>::all(client.clone())
        .get("e2e-node")
        .await
        .unwrap();
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("the Node has a Ready condition");
    assert_eq!(ready.status, "True", "{ready:?}");

    let archive = build_probe_image(work.path());
    let names = cluster
        .load_image(&archive, Some(PROBE_RETAG))
        .await
        .unwrap();
    assert_eq!(
        names,
        [
            format!("docker.io/library/{PROBE_IMAGE}"),
            format!("docker.io/library/{PROBE_RETAG}")
        ]
    );

    let (namespace, account, deployment) = probe_objects(port_of(cluster.server_url()));
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(&pp, &namespace)
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .create(&pp, &account)
        .await
        .unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    deployments.create(&pp, &deployment).await.unwrap();
    let created = Instant::now();
    let pod_logs = cluster.pod_logs_dir().unwrap();
    let available = wait_until(
        Duration::from_secs(180),
        Duration::from_millis(250),
        "Deployment node-probe to be Available with its replica Ready",
        || async {
            let d = deployments.get("node-probe").await.ok()?;
            let status = d.status?;
            let available = status
                .conditions?
                .into_iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available && status.ready_replicas == Some(1)).then_some(())
        },
    )
    .await;
    if let Err(err) = available {
        panic!(
            "{err:#}\nprobe log:\n{}\nkubelet log (end):\n{}",
            probe_log(&pod_logs),
            e2e_harness::process::log_tail(&dir.join("logs/kubelet.log"), 40)
        );
    }
    println!(
        "Deployment Available {:.1}s after it was created",
        created.elapsed().as_secs_f64()
    );
    let log = probe_log(&pod_logs);
    assert!(
        log.contains(&format!(
            "authenticated as system:serviceaccount:{NAMESPACE}:node-probe"
        )),
        "the Pod did not authenticate with its projected token; its log:\n{log}"
    );
    let probe_pids = pids_named("node-probe");
    assert!(
        !probe_pids.is_empty(),
        "the probe's container process is not in /proc"
    );
    assert!(!processes_naming(&node_dir).is_empty());
    assert!(
        !mounts_below(&dir).is_empty(),
        "the Pod's rootfs and token volume are mounted below the folder"
    );

    cluster.stop().await;
    let left = processes_naming(&node_dir);
    assert!(
        left.is_empty(),
        "node processes outlived the stop: {left:?}"
    );
    for pid in probe_pids {
        assert!(
            !is_running(pid),
            "the probe's container {pid} outlived the stop"
        );
    }
    let mounts = mounts_below(&dir);
    assert!(mounts.is_empty(), "mounts outlived the stop: {mounts:?}");
}

#[test]
fn the_cli_prints_the_ready_line_once_the_node_is_ready_and_cleans_up_on_sigterm() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cli");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(["up", "--node", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let dir = dir.canonicalize().unwrap();
    assert_eq!(
        line,
        format!("ready KUBECONFIG={}/kubeconfig\n", dir.display())
    );
    println!(
        "`control-plane up --node` printed its ready line after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The Node is Ready by the time the line is printed.
    let out = Command::new("kubectl")
        .args([
            "get",
            "node",
            "e2e-node",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True", "{out:?}");

    // load-image by CLI: prints the names, with --tag the extra one.
    let archive = build_probe_image(work.path());
    let out = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(["load-image", "--tag", "example.test/retagged:v2", "--dir"])
        .arg(&dir)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("docker.io/library/{PROBE_IMAGE}\nexample.test/retagged:v2\n")
    );

    // SIGTERM: exit 0, the node gone.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let left = processes_naming(&dir.join("node"));
    assert!(left.is_empty(), "node processes outlived SIGTERM: {left:?}");
    let mounts = mounts_below(&dir);
    assert!(mounts.is_empty(), "mounts outlived SIGTERM: {mounts:?}");

    // Without a node, load-image says how to get one.
    let out = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(["load-image", "--dir"])
        .arg(work.path())
        .arg(&archive)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--node"), "{err}");
}

/// A `control-plane up --node` killed with SIGKILL cannot clean up: its containers and their
/// shims (started detached by containerd) stay. The next start in the same folder sweeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_sweeps_what_a_killed_node_left() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(["up", "--node", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready "), "{line:?}");
    let dir = dir.canonicalize().unwrap();
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", dir.join("kubeconfig"))
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {out:?}");
    };
    kubectl(&[
        "run",
        "sleeper",
        "--image=e2e.local/pause:1",
        "--image-pull-policy=Never",
        "--overrides={\"spec\":{\"hostNetwork\":true}}",
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/sleeper",
        "--timeout=120s",
    ]);
    let node_dir = dir.join("node");
    child.kill().unwrap();
    child.wait().unwrap();
    let shims = processes_naming(&node_dir);
    assert!(
        !shims.is_empty(),
        "a SIGKILLed node leaves its shims (if this fails, the sweep below proves nothing)"
    );
    assert!(!mounts_below(&node_dir).is_empty());

    let cluster = ControlPlane::start(ControlPlaneOptions {
        dir: Some(dir.clone()),
        ..ControlPlaneOptions::default().with_node()
    })
    .await
    .unwrap();
    for pid in &shims {
        assert!(!is_running(*pid), "leftover {pid} survived the new start");
    }
    cluster.stop().await;
    assert!(processes_naming(&node_dir).is_empty());
    assert!(mounts_below(&dir).is_empty());
}
