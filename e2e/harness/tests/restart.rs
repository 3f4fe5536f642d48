//! Restarting a component in place: etcd keeps its data, kube-apiserver its port and
//! certificates, so the same kubeconfig and client keep working; the restarted processes are
//! the control plane's like the first ones, and none outlives it. (Its own test binary: it
//! counts this process's children.)

use std::time::Duration;

use e2e_harness::process::{children_of, is_running};
use e2e_harness::{ControlPlane, ControlPlaneOptions};

fn pid_of(cluster: &ControlPlane, name: &str) -> u32 {
    cluster
        .processes()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} is not running"))
        .pid
}

fn kubectl_ok(cluster: &ControlPlane, args: &[&str]) -> String {
    let out = cluster.kubectl(args).unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_restart_in_place_and_nothing_survives() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let before = children_of(std::process::id());
    let cluster = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .unwrap();
    let server = cluster.server_url().to_owned();
    kubectl_ok(
        &cluster,
        &["create", "configmap", "kept", "--from-literal=k=v"],
    );
    let mut old_pids = Vec::new();
    for component in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        let old = pid_of(&cluster, component);
        cluster
            .restart(component, Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("restarting {component}: {e:#}"));
        let new = pid_of(&cluster, component);
        assert_ne!(old, new, "{component} is a new process");
        assert!(!is_running(old), "the old {component} was stopped");
        old_pids.push(old);
        // Same data, same URL, same kubeconfig.
        let value = kubectl_ok(
            &cluster,
            &["get", "configmap", "kept", "-o", "jsonpath={.data.k}"],
        );
        assert_eq!(value, "v", "after restarting {component}");
        assert_eq!(cluster.server_url(), server);
    }
    let names: Vec<String> = cluster.processes().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["etcd", "kube-apiserver", "kube-controller-manager"],
        "kept in start order, so they stop in reverse"
    );
    let err = cluster
        .restart("kubelet", Duration::ZERO)
        .await
        .expect_err("no such component");
    assert!(
        format!("{err:#}").contains("etcd, kube-apiserver"),
        "{err:#}"
    );
    cluster.stop().await;
    assert_eq!(
        children_of(std::process::id()),
        before,
        "a restarted component outlived the control plane"
    );
}
