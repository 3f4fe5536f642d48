//! The Helm chart: lints, renders, is accepted by a real apiserver, and its RBAC lets the
//! operator's service account do what the operator does (checked with `kubectl auth can-i`).

use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use e2e_harness::{Checks, ControlPlane, ControlPlaneOptions, tools_bin_dir, workspace_root};

fn helm(args: &[&str]) -> anyhow::Result<String> {
    let helm = tools_bin_dir()?.join("helm");
    let out = Command::new(&helm)
        .args(args)
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

fn chart() -> String {
    workspace_root()
        .join("charts/edge-hierarchy-operator")
        .display()
        .to_string()
}

async fn installs_and_grants_what_the_operator_needs(cluster: &ControlPlane) -> anyhow::Result<()> {
    let rendered = helm(&[
        "template",
        "eho",
        &chart(),
        "--namespace",
        "eho-system",
        "--include-crds",
        "--kube-version",
        "1.34.4",
    ])?;
    ensure!(
        rendered.contains("kind: CustomResourceDefinition")
            && rendered.contains("kind: Deployment"),
        "render is missing objects"
    );
    let out = cluster.kubectl(&["create", "namespace", "eho-system"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster.kubectl_apply_stdin(&rendered)?;
    ensure!(
        out.status.success(),
        "the apiserver refused the chart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sa = "system:serviceaccount:eho-system:eho-edge-hierarchy-operator";
    let needed = [
        ("list", "edgehierarchies.edgehierarchy.dev", "-A"),
        ("watch", "edgehierarchies.edgehierarchy.dev", "-A"),
        ("patch", "edgehierarchies.edgehierarchy.dev", "-A"),
        ("patch", "edgehierarchies.edgehierarchy.dev/status", "-A"),
        (
            "update",
            "edgehierarchies.edgehierarchy.dev/finalizers",
            "-A",
        ),
        ("watch", "secrets", "-A"),
        ("create", "secrets", "-A"),
        ("patch", "secrets", "-A"),
        ("delete", "secrets", "-A"),
        ("get", "configmaps", "-A"),
        ("create", "events.events.k8s.io", "-A"),
        ("patch", "events.events.k8s.io", "-A"),
    ];
    for (verb, resource, scope) in needed {
        let out = cluster.kubectl(&["auth", "can-i", verb, resource, scope, "--as", sa])?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(
            answer == "yes",
            "the chart's RBAC does not allow {verb} {resource}: {answer}"
        );
    }
    // And nothing it does not need.
    for (verb, resource) in [
        ("delete", "edgehierarchies.edgehierarchy.dev"),
        ("create", "pods"),
        ("get", "nodes"),
    ] {
        let out = cluster.kubectl(&["auth", "can-i", verb, resource, "-A", "--as", sa])?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == "no",
            "the chart's RBAC allows {verb} {resource}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart() -> anyhow::Result<()> {
    let mut checks = Checks::new();
    checks
        .run("helm lint passes", async {
            helm(&["lint", "--strict", &chart()]).map(|_| ())
        })
        .await;
    let cluster = ControlPlane::start(ControlPlaneOptions::default()).await?;
    checks
        .run(
            "the chart installs and its RBAC covers the operator",
            installs_and_grants_what_the_operator_needs(&cluster),
        )
        .await;
    checks.finish()
}
