//! `edge-hierarchy-operator import` and `kubectl edgehierarchy import` against a real
//! kube-apiserver: what they print for the tutorial's iotedge_config.yaml, a three-level X509
//! tree, the az format in YAML and JSON, and a config with its own root CA passes
//! `kubectl apply --dry-run=server --validate=strict` with the generated CRD installed, nothing
//! of it is dropped, and the `kubectl create secret tls` command its comment gives works. A config
//! that cannot convert prints nothing on stdout and names the line on stderr.
//!
//! One control plane serves every check; each works in its own namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use e2e_harness::{Checks, ControlPlane, ControlPlaneOptions, workspace_bin, workspace_root};
use edge_hierarchy_operator::api::EdgeHierarchy;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde::Deserialize;
use serde_json::{Value, json};

const CRD_NAME: &str = "edgehierarchies.edgehierarchy.dev";
/// Upper bound for the apiserver to establish the CRD; not a speed assertion.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_configs_pass_the_apiservers_validation() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let mut checks = Checks::new();
    if !checks
        .run("CRD installs and becomes Established", install_crd(&plane))
        .await
    {
        return checks.finish();
    }
    for (what, fixture, namespace) in [
        (
            "the tutorial's iotedge_config.yaml",
            "tutorial/iotedge_config.yaml",
            "im-tutorial",
        ),
        (
            "a three-level X509 tree",
            "three-levels/iotedge_config.yaml",
            "im-three",
        ),
        (
            "an az --cfg file in YAML",
            "az/devices_config.yaml",
            "im-az-yaml",
        ),
        (
            "an az --cfg file in JSON",
            "az/devices_config.json",
            "im-az-json",
        ),
    ] {
        checks
            .run(
                &format!("import of {what} passes server-side dry-run"),
                fixture_passes(&plane, fixture, namespace),
            )
            .await;
    }
    checks
        .run(
            "kubectl edgehierarchy import --adopt -n prints the same, with the namespace",
            plugin_matches(&plane, "im-plugin"),
        )
        .await;
    checks
        .run(
            "a config with its own root CA: output and the Secret command pass dry-run",
            root_ca_passes(&plane, "im-root"),
        )
        .await;
    checks
        .run(
            "a config that cannot convert prints nothing and names the line",
            bad_config_fails(),
        )
        .await;
    plane.stop().await;
    checks.finish()
}

fn fixture(path: &str) -> PathBuf {
    workspace_root()
        .join("operator/src/import/fixtures")
        .join(path)
}

/// Runs a binary of the workspace with `args`; the working directory is `dir`.
fn run(bin: &str, args: &[&str], dir: &Path) -> anyhow::Result<Output> {
    let program = workspace_bin(bin)?;
    Command::new(&program)
        .args(args)
        .current_dir(dir)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))
}

/// The YAML `import` prints for `config`; fails with its stderr when it exits non-zero.
fn import_output(bin: &str, config: &Path, extra: &[&str]) -> anyhow::Result<String> {
    let dir = config.parent().context("config without a folder")?;
    let name = config.file_name().context("config without a name")?;
    let mut args = vec!["import", name.to_str().context("config name")?];
    args.extend_from_slice(extra);
    let out = run(bin, &args, dir)?;
    ensure!(
        out.status.success(),
        "{bin} import {} failed ({}): {}",
        config.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs kubectl with the admin kubeconfig, `input` on stdin.
fn kubectl_stdin(plane: &ControlPlane, args: &[&str], input: &str) -> anyhow::Result<Output> {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", plane.kubeconfig_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl; is it on PATH?")?;
    let mut stdin = child.stdin.take().context("kubectl's stdin")?;
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the stdin writer panicked"))??;
    Ok(out)
}

fn ok(out: Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn install_crd(plane: &ControlPlane) -> anyhow::Result<()> {
    let crd = std::fs::read_to_string(workspace_root().join("crds/edgehierarchy.yaml"))?;
    ok(
        kubectl_stdin(plane, &["apply", "-f", "-"], &crd)?,
        "kubectl apply of the CRD",
    )?;
    let crds: Api<CustomResourceDefinition> = Api::all(plane.client());
    tokio::time::timeout(
        SETTLE_TIMEOUT,
        await_condition(crds, CRD_NAME, conditions::is_crd_established()),
    )
    .await
    .with_context(|| format!("CRD {CRD_NAME} not Established within {SETTLE_TIMEOUT:?}"))??;
    // The apiserver serves a new CRD's resource a moment after it is Established.
    for _ in 0..50 {
        let out = kubectl_stdin(plane, &["get", "edgehierarchies", "-A"], "")?;
        if out.status.success() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the edgehierarchies resource is not served")
}

async fn create_namespace(plane: &ControlPlane, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(plane.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    Ok(())
}

fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).context("parsing a YAML document"))
        .collect()
}

/// Applies `yaml` with server-side dry-run and strict field validation, and checks that what the
/// apiserver would store holds every device, deployment and ConfigMap key of the file.
fn dry_run_keeps_everything(
    plane: &ControlPlane,
    yaml: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    let out = kubectl_stdin(
        plane,
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            namespace,
            "-o",
            "json",
            "-f",
            "-",
        ],
        yaml,
    )?;
    let stored: Value = serde_json::from_str(&ok(out, "kubectl apply --dry-run=server")?)?;
    let items = match stored["kind"].as_str() {
        Some("List") => stored["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![stored],
    };
    let declared = documents(yaml)?;
    ensure!(
        items.len() == declared.len(),
        "{} documents printed, {} accepted",
        declared.len(),
        items.len()
    );
    for (want, got) in declared.iter().zip(&items) {
        match want["kind"].as_str() {
            Some("EdgeHierarchy") => {
                let want: EdgeHierarchy = serde_json::from_value(want.clone())?;
                let got: EdgeHierarchy = serde_json::from_value(got.clone())
                    .context("the stored EdgeHierarchy does not read back")?;
                ensure!(
                    want.spec == got.spec,
                    "the apiserver changed the spec:\nprinted {:?}\nstored  {:?}",
                    want.spec,
                    got.spec
                );
                ensure!(!want.spec.devices.is_empty(), "no devices were imported");
            }
            Some("ConfigMap") => {
                let want: ConfigMap = serde_json::from_value(want.clone())?;
                let got: ConfigMap = serde_json::from_value(got.clone())?;
                ensure!(
                    want.data == got.data && want.data.as_ref().is_some_and(|d| d.len() == 1),
                    "ConfigMap {:?} lost its manifest",
                    want.metadata.name
                );
            }
            other => bail!("unexpected document kind {other:?}"),
        }
    }
    Ok(())
}

async fn fixture_passes(plane: &ControlPlane, path: &str, namespace: &str) -> anyhow::Result<()> {
    create_namespace(plane, namespace).await?;
    let yaml = import_output("edge-hierarchy-operator", &fixture(path), &[])?;
    dry_run_keeps_everything(plane, &yaml, namespace)
}

async fn plugin_matches(plane: &ControlPlane, namespace: &str) -> anyhow::Result<()> {
    create_namespace(plane, namespace).await?;
    let config = fixture("tutorial/iotedge_config.yaml");
    let plugin = import_output(
        "kubectl-edgehierarchy",
        &config,
        &["--adopt", "-n", namespace],
    )?;
    let operator = import_output("edge-hierarchy-operator", &config, &["--adopt"])?;
    let docs = documents(&plugin)?;
    for doc in &docs {
        ensure!(
            doc["metadata"]["namespace"] == namespace,
            "{} without namespace {namespace}",
            doc["kind"]
        );
    }
    ensure!(
        docs[0]["spec"]["policy"]["adoptExisting"] == true,
        "--adopt did not set adoptExisting"
    );
    // Apart from the namespace, the two commands print the same objects.
    let strip = |yaml: &str| -> anyhow::Result<Vec<Value>> {
        let mut docs = documents(yaml)?;
        for d in &mut docs {
            if let Some(m) = d["metadata"].as_object_mut() {
                m.remove("namespace");
            }
        }
        Ok(docs)
    };
    ensure!(
        strip(&plugin)? == strip(&operator)?,
        "the plugin and the operator binary print different objects"
    );
    // With the namespace in the objects, no -n is needed.
    let out = kubectl_stdin(
        plane,
        &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
        &plugin,
    )?;
    ok(out, "kubectl apply --dry-run=server of the plugin's output")?;
    Ok(())
}

async fn root_ca_passes(plane: &ControlPlane, namespace: &str) -> anyhow::Result<()> {
    create_namespace(plane, namespace).await?;
    let dir = tempfile::tempdir()?;
    // A root CA as a user would bring one (the az extension makes the same kind).
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Imported test root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let root = params.self_signed(&key)?;
    std::fs::create_dir_all(dir.path().join("certs"))?;
    std::fs::write(dir.path().join("certs/root.cert.pem"), root.pem())?;
    std::fs::write(dir.path().join("certs/root.key.pem"), key.serialize_pem())?;
    std::fs::copy(
        fixture("az/gatewayDeployment.json"),
        dir.path().join("gateway.json"),
    )?;
    std::fs::write(
        dir.path().join("devices.yaml"),
        "configVersion: \"1.0\"\n\
         iotHub:\n  authenticationMethod: x509Certificate\n\
         certificates:\n  rootCACertPath: certs/root.cert.pem\n  rootCACertKeyPath: certs/root.key.pem\n\
         edgeConfiguration:\n  defaultEdgeAgent: mcr.microsoft.com/azureiotedge-agent:1.5\n\
         edgeDevices:\n  - deviceId: plant-gateway\n    deployment: gateway.json\n    children:\n      - deviceId: cell-1\n",
    )?;
    let yaml = import_output(
        "edge-hierarchy-operator",
        &dir.path().join("devices.yaml"),
        &[],
    )?;
    ensure!(
        !yaml.contains("PRIVATE KEY"),
        "the root CA's key was printed"
    );
    let create = yaml
        .lines()
        .find_map(|l| l.strip_prefix("#   kubectl create secret tls "))
        .context("no `kubectl create secret tls` command in the output")?;
    // The command's paths are as seen from where the import ran (the config's folder here).
    let mut args = vec!["create", "secret", "tls"];
    args.extend(create.split_whitespace());
    args.extend(["-n", namespace, "--dry-run=server"]);
    let out = Command::new("kubectl")
        .args(&args)
        .current_dir(dir.path())
        .env("KUBECONFIG", plane.kubeconfig_path())
        .output()?;
    ok(out, &format!("kubectl {}", args.join(" ")))?;
    dry_run_keeps_everything(plane, &yaml, namespace)?;
    let docs = documents(&yaml)?;
    ensure!(
        docs[0]["spec"]["certificates"]["rootCA"]["secretRef"]["name"]
            == "devices-imported-root-ca",
        "the hierarchy does not name the root CA Secret: {}",
        docs[0]["spec"]
    );
    Ok(())
}

async fn bad_config_fails() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("iotedge_config.yaml"),
        "config_version: \"1.0\"\niothub:\n  authentication_method: symmetric_key\nedgedevices:\n  device_id: top\n  deployment: ./missing.json\n",
    )?;
    let out = run(
        "edge-hierarchy-operator",
        &["import", "iotedge_config.yaml"],
        dir.path(),
    )?;
    ensure!(!out.status.success(), "the import succeeded");
    ensure!(out.stdout.is_empty(), "the import printed YAML");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("iotedge_config.yaml:6: error: edgedevices.deployment: "),
        "stderr does not name line and field:\n{stderr}"
    );
    Ok(())
}
