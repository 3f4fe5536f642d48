//! Certificates and bundles (issue 5) with the operator as its own process: issuance checked
//! with openssl, bundles downloaded with the kubectl plugin, renewal with an Event and a new
//! revision, X509 devices keeping access to the emulator across a rotation, bad root CAs, the
//! root surviving restarts, garbage collection under Delete and release under Detach, and no
//! private key anywhere it should not be.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use base64::Engine;
use common::leaks::{LeakScan, check_haystacks, has_private_key_header, pem_body_lines};
use common::{Env, hierarchy_yaml};
use e2e_harness::{Checks, wait_until, workspace_bin};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;

/// A top device and its child; each test uses its own prefix (two hierarchies cannot claim one id).
fn two(prefix: &str) -> String {
    format!("    - {{id: {prefix}-top}}\n    - {{id: {prefix}-low, parent: {prefix}-top}}\n")
}

fn with_certificates(yaml: &str, certificates: &str) -> String {
    format!("{yaml}  certificates: {{{certificates}}}\n")
}

async fn secrets_of(
    env: &Env,
    namespace: &str,
    hierarchy: &str,
    component: &str,
) -> anyhow::Result<BTreeMap<String, Secret>> {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), namespace);
    let selector =
        format!("edgehierarchy.dev/hierarchy={hierarchy},edgehierarchy.dev/component={component}");
    let list = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|s| {
            Some((
                s.metadata
                    .annotations
                    .as_ref()?
                    .get("edgehierarchy.dev/device-id")?
                    .clone(),
                s,
            ))
        })
        .collect())
}

fn data(secret: &Secret, key: &str) -> anyhow::Result<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("no {key}"))?;
    Ok(String::from_utf8(bytes.0.clone())?)
}

fn openssl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (make test installs it)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn issued_verified_and_downloadable(env: &Env) -> anyhow::Result<()> {
    env.namespace("certs").await?;
    env.apply("certs", &hierarchy_yaml("plant", "", &two("c")))
        .await?;
    env.wait_condition("certs", "plant", "CertificatesReady", "True")
        .await?;
    let h = env
        .wait_condition("certs", "plant", "Ready", "True")
        .await?;
    let status = h.status.unwrap();
    let root_secret = status
        .root_ca
        .as_ref()
        .context("status.rootCA")?
        .secret_name
        .clone();
    ensure!(root_secret == "plant-root-ca", "{root_secret}");
    let dir = env.dir.path().join("certs-check");
    std::fs::create_dir_all(&dir)?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "certs");
    let root = secrets.get(&root_secret).await?;
    std::fs::write(dir.join("root.pem"), data(&root, "tls.crt")?)?;
    let certs = secrets_of(env, "certs", "plant", "certs").await?;
    for id in ["c-top", "c-low"] {
        let secret = certs
            .get(id)
            .with_context(|| format!("no certificate Secret for {id}"))?;
        ensure!(
            secret.type_.as_deref() == Some("kubernetes.io/tls"),
            "{id}: type {:?}",
            secret.type_
        );
        let owner = secret.metadata.owner_references.clone().unwrap_or_default();
        ensure!(
            owner
                .iter()
                .any(|o| o.kind == "EdgeHierarchy" && o.name == "plant"),
            "{id}: not owned by the hierarchy"
        );
        let chain = data(secret, "tls.crt")?;
        let leaf = dir.join(format!("{id}.pem"));
        std::fs::write(&leaf, &chain)?;
        let verified = openssl(&[
            "verify",
            "-CAfile",
            &dir.join("root.pem").display().to_string(),
            &leaf.display().to_string(),
        ])?;
        ensure!(verified.contains(": OK"), "{id}: {verified}");
        let text = openssl(&[
            "x509",
            "-in",
            &leaf.display().to_string(),
            "-noout",
            "-text",
        ])?;
        ensure!(
            text.contains(&format!("CN = {id}.deviceca"))
                || text.contains(&format!("CN={id}.deviceca")),
            "{id}: subject: {text}"
        );
        ensure!(
            text.contains("CA:TRUE, pathlen:0"),
            "{id}: basic constraints: {text}"
        );
        ensure!(text.contains("Certificate Sign"), "{id}: key usage: {text}");
        let device = status
            .devices
            .iter()
            .find(|d| d.id == id)
            .context("device status")?;
        let cert = device.certificate.as_ref().context("certificate status")?;
        ensure!(
            cert.revision == 1 && cert.not_after.is_some() && status.next_renewal_time.is_some(),
            "{id}: {cert:?}"
        );
        ensure!(
            device.bundle.as_ref().is_some_and(|b| b.revision == 1),
            "{id}: bundle {:?}",
            device.bundle
        );
    }

    // The kubectl plugin writes the archive with its files and 0600 on keys.
    for (ext, list) in [
        ("zip", vec!["unzip", "-Z", "-l"]),
        ("tar.gz", vec!["tar", "-tvzf"]),
    ] {
        let out = dir.join(format!("c-low.{ext}"));
        let run = Command::new(workspace_bin("kubectl-edgehierarchy")?)
            .args([
                "bundle",
                "plant",
                "c-low",
                "-n",
                "certs",
                "-o",
                &out.display().to_string(),
            ])
            .env("KUBECONFIG", env.cluster.kubeconfig_path())
            .output()?;
        ensure!(
            run.status.success(),
            "bundle: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out)?.permissions())
            & 0o777;
        ensure!(mode == 0o600, "{ext} archive has mode {mode:o}");
        let mut cmd = Command::new(list[0]);
        cmd.args(&list[1..]).arg(&out);
        let listing = String::from_utf8_lossy(&cmd.output()?.stdout).into_owned();
        for file in [
            "config.toml",
            "install.sh",
            "README.md",
            "iotedge_config_cli_root.pem",
            "c-low.full-chain.cert.pem",
            "c-low.key.pem",
        ] {
            ensure!(listing.contains(file), "{ext}: {file} missing:\n{listing}");
        }
        let key_line = listing
            .lines()
            .find(|l| l.contains("c-low.key.pem"))
            .unwrap_or_default();
        ensure!(
            key_line.contains("-rw-------"),
            "{ext}: key is not 0600: {key_line}"
        );
    }
    let bundles = secrets_of(env, "certs", "plant", "bundle").await?;
    let config = data(
        bundles.get("c-low").context("bundle Secret")?,
        "config.toml",
    )?;
    let parsed: toml::Value = toml::from_str(&config).context("config.toml parses")?;
    ensure!(
        parsed.get("parent_hostname").is_some(),
        "lower layer without parent_hostname"
    );
    ensure!(
        parsed["agent"]["config"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("$upstream:443/")),
        "agent image: {config}"
    );
    let connection = parsed["provisioning"]["connection_string"]
        .as_str()
        .unwrap_or_default();
    let key = env
        .hub
        .admin
        .device_keys("c-low")
        .await?
        .into_iter()
        .next()
        .context("device key")?;
    ensure!(
        connection.ends_with(&format!("SharedAccessKey={key}")),
        "the bundle's key is not the device's"
    );
    Ok(())
}

async fn renewal_bumps_revision_and_bundle(env: &Env) -> anyhow::Result<()> {
    env.namespace("renew").await?;
    env.apply(
        "renew",
        &with_certificates(
            &hierarchy_yaml("plant", "", &two("n")),
            "duration: 2m, renewBefore: 1m",
        ),
    )
    .await?;
    env.wait_condition("renew", "plant", "Ready", "True")
        .await?;
    let first = secrets_of(env, "renew", "plant", "certs").await?;
    let first_cert = data(first.get("n-top").context("cert")?, "tls.crt")?;
    let status = env
        .wait_status("renew", "plant", "n-top's certificate at revision 2", |s| {
            s.devices.iter().any(|d| {
                d.id == "n-top"
                    && d.certificate.as_ref().is_some_and(|c| c.revision >= 2)
                    && d.bundle.as_ref().is_some_and(|b| b.revision >= 2)
            })
        })
        .await?;
    let second = secrets_of(env, "renew", "plant", "certs").await?;
    ensure!(
        data(second.get("n-top").context("cert")?, "tls.crt")? != first_cert,
        "the certificate did not change"
    );
    let bundle = secrets_of(env, "renew", "plant", "bundle").await?;
    let full_chain = data(
        bundle.get("n-top").context("bundle")?,
        "n-top.full-chain.cert.pem",
    )?;
    ensure!(
        full_chain == data(second.get("n-top").unwrap(), "tls.crt")?,
        "the bundle does not carry the renewed certificate"
    );
    env.wait_event("renew", "plant", "CertificateRenewed", "n-top")
        .await?;
    ensure!(status.root_ca.is_some());
    Ok(())
}

/// Runs the kubectl plugin against the test cluster.
fn plugin(env: &Env, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(workspace_bin("kubectl-edgehierarchy")?)
        .args(args)
        .env("KUBECONFIG", env.cluster.kubeconfig_path())
        .output()?)
}

/// `renew` re-issues one device's certificates once, `status` shows the new revision and the
/// Event, and the plugin's errors are one kubectl-like line.
async fn plugin_renews_and_reports_one_device(env: &Env) -> anyhow::Result<()> {
    let revision = |certs: &BTreeMap<String, Secret>, id: &str| -> anyhow::Result<String> {
        certs
            .get(id)
            .and_then(|s| {
                s.metadata
                    .annotations
                    .as_ref()?
                    .get("edgehierarchy.dev/revision")
                    .cloned()
            })
            .with_context(|| format!("{id}: no revision annotation"))
    };
    let before = secrets_of(env, "certs", "plant", "certs").await?;
    let (low, top) = (revision(&before, "c-low")?, revision(&before, "c-top")?);
    let run = plugin(
        env,
        &["renew", "plant", "c-low", "-n", "certs", "--wait", "120"],
    )?;
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    ensure!(
        run.status.success(),
        "renew: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let after = secrets_of(env, "certs", "plant", "certs").await?;
    let renewed = revision(&after, "c-low")?;
    ensure!(
        renewed.parse::<u32>()? == low.parse::<u32>()? + 1,
        "c-low went from revision {low} to {renewed}"
    );
    ensure!(
        stdout.contains(&format!("re-issued: certificate revision {renewed}")),
        "{stdout}"
    );
    ensure!(
        data(after.get("c-low").context("cert")?, "tls.crt")?
            != data(before.get("c-low").context("cert")?, "tls.crt")?,
        "the certificate did not change"
    );
    // Only the device asked for, and only once: the request stays on the Secret but names the
    // revision it replaced.
    env.wait_condition("certs", "plant", "Ready", "True")
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = secrets_of(env, "certs", "plant", "certs").await?;
    ensure!(
        revision(&settled, "c-low")? == renewed && revision(&settled, "c-top")? == top,
        "renewal repeated or spread: c-low {} c-top {} (was {renewed}, {top})",
        revision(&settled, "c-low")?,
        revision(&settled, "c-top")?
    );
    env.wait_event("certs", "plant", "CertificateRenewed", "c-low")
        .await?;
    let run = plugin(env, &["status", "plant", "c-low", "-n", "certs"])?;
    let report = String::from_utf8_lossy(&run.stdout).into_owned();
    ensure!(
        run.status.success(),
        "status: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    for part in [
        "Device c-low (Edge) of certs/plant".to_string(),
        "State:        Ready".to_string(),
        "Layer:        2 (parent c-top)".to_string(),
        format!("revision {renewed}"),
        "CertificateRenewed".to_string(),
    ] {
        ensure!(
            report.contains(&part),
            "status lacks {part:?}:
{report}"
        );
    }
    let cases: [(&[&str], &str); 4] = [
        (
            &["tree", "nope", "-n", "certs"],
            "error: edgehierarchy \"nope\" not found in namespace \"certs\"; list them with `kubectl get edgehierarchies -n certs`\n",
        ),
        (
            &["status", "nope", "c-low", "-n", "certs"],
            "error: edgehierarchy \"nope\" not found in namespace \"certs\"; list them with `kubectl get edgehierarchies -n certs`\n",
        ),
        (
            &["status", "plant", "nope", "-n", "certs"],
            "error: edgehierarchy \"plant\" in namespace \"certs\" has no device \"nope\"; list its devices with `kubectl edgehierarchy tree plant -n certs`\n",
        ),
        (
            &["renew", "plant", "nope", "-n", "certs"],
            "error: edgehierarchy \"plant\" in namespace \"certs\" has no device \"nope\"; list its devices with `kubectl edgehierarchy tree plant -n certs`\n",
        ),
    ];
    for (args, expected) in cases {
        let run = plugin(env, args)?;
        let stderr = String::from_utf8_lossy(&run.stderr);
        ensure!(
            run.status.code() == Some(1) && stderr == expected && run.stdout.is_empty(),
            "{args:?}: exit {:?}, stderr {stderr:?}",
            run.status.code()
        );
    }
    Ok(())
}

/// A client certificate identity for the emulator's device endpoint.
async fn device_twin_with_cert(
    env: &Env,
    device: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<u16> {
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}\n{key_pem}").as_bytes())?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(
            env.hub.emulator.ca_pem.as_bytes(),
        )?)
        .identity(identity)
        .build()?;
    let url = format!(
        "https://{}/devices/{device}/modules/%24edgeAgent/twin?api-version=2021-04-12",
        env.hub.admin.host()
    );
    Ok(http.get(url).send().await?.status().as_u16())
}

async fn x509_devices_keep_access_across_rotation(env: &Env) -> anyhow::Result<()> {
    env.namespace("x509").await?;
    let yaml = hierarchy_yaml("plant", "", &two("x"))
        .replace("  policy:", "  authentication: X509\n  policy:");
    env.apply(
        "x509",
        &with_certificates(&yaml, "duration: 2m, renewBefore: 1m"),
    )
    .await?;
    env.wait_condition("x509", "plant", "Ready", "True").await?;
    let before = secrets_of(env, "x509", "plant", "certs").await?;
    let old = before.get("x-low").context("cert Secret")?;
    let (old_cert, old_key) = (data(old, "identity.crt")?, data(old, "identity.key")?);
    let device = env.hub.admin.device("x-low").await?.context("device")?;
    ensure!(
        device["authentication"]["type"] == "selfSigned",
        "{}",
        device["authentication"]
    );
    let status = device_twin_with_cert(env, "x-low", &old_cert, &old_key).await?;
    ensure!(
        status == 200,
        "the identity certificate is refused before rotation: {status}"
    );
    let leaf = env.dir.path().join("x509-identity.pem");
    std::fs::write(&leaf, &old_cert)?;
    let root = Api::<Secret>::namespaced(env.client.clone(), "x509")
        .get("plant-root-ca")
        .await?;
    let root_path = env.dir.path().join("x509-root.pem");
    std::fs::write(&root_path, data(&root, "tls.crt")?)?;
    let verified = openssl(&[
        "verify",
        "-CAfile",
        &root_path.display().to_string(),
        &leaf.display().to_string(),
    ])?;
    ensure!(
        verified.contains(": OK"),
        "identity certificate: {verified}"
    );

    // Keep authenticating with whatever the device holds while the operator rotates.
    let mut refused = 0;
    let rotated = wait_until(
        Duration::from_secs(240),
        Duration::from_millis(500),
        "the identity certificate of x-low to rotate",
        || {
            let (old_cert, old_key) = (old_cert.clone(), old_key.clone());
            async move {
                let now = secrets_of(env, "x509", "plant", "certs").await.ok()?;
                let secret = now.get("x-low")?;
                let cert = data(secret, "identity.crt").ok()?;
                if cert == old_cert {
                    // Still the old one: it must work.
                    return match device_twin_with_cert(env, "x-low", &old_cert, &old_key).await {
                        Ok(200) => None,
                        other => Some(Err(anyhow::anyhow!(
                            "old certificate refused before rotation completed: {other:?}"
                        ))),
                    };
                }
                Some(Ok((cert, data(secret, "identity.key").ok()?)))
            }
        },
    )
    .await??;
    let (new_cert, new_key) = rotated;
    // Right after the rotation both the old and the new certificate are accepted.
    for attempt in 0..20 {
        let old_ok = device_twin_with_cert(env, "x-low", &old_cert, &old_key).await? == 200;
        let new_ok = device_twin_with_cert(env, "x-low", &new_cert, &new_key).await? == 200;
        if old_ok && new_ok {
            return Ok(());
        }
        if !old_ok {
            refused += 1;
        }
        if attempt == 19 {
            bail!(
                "after rotation: old accepted {old_ok}, new accepted {new_ok} ({refused} refusals of the old one)"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

fn rcgen_ca(name: &str, is_ca: bool, expired: bool) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
    }
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

async fn bad_root_cas_stall_and_nothing_is_issued(env: &Env) -> anyhow::Result<()> {
    env.namespace("badroot").await?;
    let (good_cert, _) = rcgen_ca("good root", true, false)?;
    let (_, other_key) = rcgen_ca("other", true, false)?;
    let (leaf_cert, leaf_key) = rcgen_ca("not a ca", false, false)?;
    let (old_cert, old_key) = rcgen_ca("expired root", true, true)?;
    let (ca_cert, ca_key) = rcgen_ca("encrypted root", true, false)?;
    let key_file = env.dir.path().join("plain.key");
    std::fs::write(&key_file, &ca_key)?;
    let encrypted = openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        &key_file.display().to_string(),
        "-passout",
        "pass:secret",
    ])?;
    let cases: [(&str, &str, Option<&str>, &str); 5] = [
        (
            "mismatch",
            &good_cert,
            Some(&other_key),
            "does not belong to tls.crt",
        ),
        (
            "notca",
            &leaf_cert,
            Some(&leaf_key),
            "is not a CA certificate",
        ),
        ("expired", &old_cert, Some(&old_key), "expired"),
        ("encrypted", &ca_cert, Some(&encrypted), "encrypted"),
        ("nokey", &ca_cert, None, "has no tls.key"),
    ];
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "badroot");
    for (name, cert, key, _) in &cases {
        let mut data = BTreeMap::from([(
            "tls.crt".to_string(),
            base64::engine::general_purpose::STANDARD.encode(cert),
        )]);
        if let Some(key) = key {
            data.insert(
                "tls.key".into(),
                base64::engine::general_purpose::STANDARD.encode(key),
            );
        }
        let secret: Secret = serde_json::from_value(
            serde_json::json!({"metadata": {"name": format!("root-{name}")}, "type": "Opaque", "data": data}),
        )?;
        secrets.create(&Default::default(), &secret).await?;
        let yaml = hierarchy_yaml(name, "", "    - {id: r-top}\n");
        env.apply(
            "badroot",
            &with_certificates(
                &yaml,
                &format!("rootCA: {{secretRef: {{name: root-{name}}}}}"),
            ),
        )
        .await?;
    }
    for (name, _, _, needle) in &cases {
        let h = env
            .wait_condition("badroot", name, "Stalled", "True")
            .await?;
        let stalled = common::condition(&h, "Stalled")?;
        ensure!(stalled.reason == "InvalidRootCA", "{name}: {stalled:?}");
        ensure!(
            stalled.message.contains(&format!("root-{name}")) && stalled.message.contains(needle),
            "{name}: {}",
            stalled.message
        );
        ensure!(
            secrets_of(env, "badroot", name, "certs").await?.is_empty(),
            "{name}: certificates were issued"
        );
        ensure!(
            secrets.get_opt(&format!("{name}-root-ca")).await?.is_none(),
            "{name}: a root was generated instead"
        );
        ensure!(
            env.hub.admin.device("r-top").await?.is_none(),
            "{name}: the hub was written to"
        );
    }
    Ok(())
}

/// A user-supplied root CA is used as given. Replacing it with `rootRotation.overlap: 0s` (how a
/// person forces a rotation to complete; the staged rollout is e2e/tests/tests/root_rotation.rs)
/// re-issues every edge CA under the new root at once, and the bundles trust only the new root.
async fn user_root_is_used_and_rotated(env: &Env) -> anyhow::Result<()> {
    env.namespace("userroot").await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "userroot");
    let put_root = |cert: String, key: String| {
        let secrets = secrets.clone();
        async move {
            let data = BTreeMap::from([
                (
                    "tls.crt".to_string(),
                    base64::engine::general_purpose::STANDARD.encode(cert),
                ),
                (
                    "tls.key".to_string(),
                    base64::engine::general_purpose::STANDARD.encode(key),
                ),
            ]);
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "factory-root"}, "type": "kubernetes.io/tls", "data": data,
            }))?;
            secrets
                .patch(
                    "factory-root",
                    &kube::api::PatchParams::apply("e2e-test").force(),
                    &kube::api::Patch::Apply(&secret),
                )
                .await?;
            anyhow::Ok(())
        }
    };
    let (first_cert, first_key) = rcgen_ca("plant root 1", true, false)?;
    put_root(first_cert.clone(), first_key).await?;
    let yaml = with_certificates(
        &hierarchy_yaml("plant", "", &two("u")),
        "rootCA: {secretRef: {name: factory-root}}, rootRotation: {overlap: 0s}",
    );
    env.apply("userroot", &yaml).await?;
    env.wait_condition("userroot", "plant", "Ready", "True")
        .await?;
    let verify = |root: &str, id: &str, chain: &str| -> anyhow::Result<()> {
        let dir = env.dir.path().join("userroot");
        std::fs::create_dir_all(&dir)?;
        let (root_path, leaf_path) = (dir.join("root.pem"), dir.join(format!("{id}.pem")));
        std::fs::write(&root_path, root)?;
        std::fs::write(&leaf_path, chain)?;
        let out = openssl(&[
            "verify",
            "-CAfile",
            &root_path.display().to_string(),
            &leaf_path.display().to_string(),
        ])?;
        ensure!(out.contains(": OK"), "{id}: {out}");
        Ok(())
    };
    let certs = secrets_of(env, "userroot", "plant", "certs").await?;
    for id in ["u-top", "u-low"] {
        verify(
            &first_cert,
            id,
            &data(certs.get(id).context("cert Secret")?, "tls.crt")?,
        )?;
    }
    let status = env.status("userroot", "plant").await?;
    ensure!(
        status
            .root_ca
            .as_ref()
            .is_some_and(|r| r.secret_name == "factory-root"),
        "{:?}",
        status.root_ca
    );
    ensure!(
        secrets.get_opt("plant-root-ca").await?.is_none(),
        "a root was generated beside the user's"
    );

    // A new root: the Secret watch reconciles at once; with no overlap every edge CA is
    // re-issued under it in one reconcile.
    let (second_cert, second_key) = rcgen_ca("plant root 2", true, false)?;
    put_root(second_cert.clone(), second_key).await?;
    env.wait_status(
        "userroot",
        "plant",
        "edge CAs re-issued under the new root",
        |s| {
            s.devices
                .iter()
                .all(|d| d.certificate.as_ref().is_some_and(|c| c.revision >= 2))
        },
    )
    .await?;
    let certs = secrets_of(env, "userroot", "plant", "certs").await?;
    for id in ["u-top", "u-low"] {
        verify(
            &second_cert,
            id,
            &data(certs.get(id).context("cert Secret")?, "tls.crt")?,
        )?;
    }
    let bundles = secrets_of(env, "userroot", "plant", "bundle").await?;
    let trust = data(
        bundles.get("u-low").context("bundle")?,
        "iotedge_config_cli_root.pem",
    )?;
    ensure!(
        trust.contains(second_cert.trim()),
        "the bundle does not trust the new root"
    );
    ensure!(
        !trust.contains(first_cert.trim()),
        "the old root is still trusted after a forced rotation"
    );
    env.wait_event("userroot", "plant", "CertificateRenewed", "u-top")
        .await?;
    env.wait_event("userroot", "plant", "RootRotationForced", "overlap")
        .await?;
    let status = env.status("userroot", "plant").await?;
    ensure!(
        status
            .root_ca
            .as_ref()
            .is_some_and(|r| r.rotation.is_none()),
        "a forced rotation is still shown: {:?}",
        status.root_ca
    );
    Ok(())
}

async fn root_survives_restart_and_updates(env: &mut Env) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "certs");
    let before = data(&secrets.get("plant-root-ca").await?, "tls.crt")?;
    env.operator.kill_hard();
    env.restart_operator()?;
    let three = format!("{}    - {{id: c-third, parent: c-top}}\n", two("c"));
    env.apply("certs", &hierarchy_yaml("plant", "", &three))
        .await?;
    env.wait_status("certs", "plant", "c-third registered with a bundle", |s| {
        s.devices
            .iter()
            .any(|d| d.id == "c-third" && d.bundle.is_some())
    })
    .await?;
    env.wait_condition("certs", "plant", "Ready", "True")
        .await?;
    let after = data(&secrets.get("plant-root-ca").await?, "tls.crt")?;
    ensure!(
        before == after,
        "the root CA changed across a restart and an update"
    );
    Ok(())
}

async fn secrets_go_with_the_hierarchy_unless_detached(env: &Env) -> anyhow::Result<()> {
    env.namespace("gc").await?;
    env.apply("gc", &hierarchy_yaml("gone", "", "    - {id: g-top}\n"))
        .await?;
    env.apply(
        "gc",
        &hierarchy_yaml("kept", ", deletion: Detach", "    - {id: k-top}\n"),
    )
    .await?;
    env.wait_condition("gc", "gone", "Ready", "True").await?;
    env.wait_condition("gc", "kept", "Ready", "True").await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "gc");
    env.hierarchies("gc")
        .delete("gone", &Default::default())
        .await?;
    env.hierarchies("gc")
        .delete("kept", &Default::default())
        .await?;
    // The garbage collector notices a new resource type on its 30 s discovery sync.
    wait_until(
        Duration::from_secs(180),
        Duration::from_secs(1),
        "gc/gone's Secrets to be garbage-collected",
        || async {
            let left = secrets
                .list(&ListParams::default().labels("edgehierarchy.dev/hierarchy=gone"))
                .await
                .ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await?;
    let kept = secrets
        .list(&ListParams::default().labels("edgehierarchy.dev/hierarchy=kept"))
        .await?;
    let names: Vec<String> = kept
        .items
        .iter()
        .map(|s| s.metadata.name.clone().unwrap_or_default())
        .collect();
    ensure!(
        names.iter().any(|n| n == "kept-root-ca") && names.len() >= 3,
        "Detach did not keep the Secrets: {names:?}"
    );
    ensure!(
        kept.items.iter().all(|s| s
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|o| o.is_empty())),
        "kept Secrets still have owners"
    );
    Ok(())
}

async fn no_private_key_leaks(env: &Env) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    for (ns, h) in [("certs", "plant"), ("renew", "plant"), ("x509", "plant")] {
        for secret in secrets_of(env, ns, h, "certs").await?.values() {
            for k in ["tls.key", "identity.key"] {
                if let Ok(pem) = data(secret, k) {
                    keys.extend(pem_body_lines(&pem));
                }
            }
        }
    }
    ensure!(!keys.is_empty(), "no keys found to look for");
    LeakScan::new(env)
        .look_for("private key material", keys)
        .run(&["certs", "renew", "x509", "badroot"])
}

#[test]
fn private_key_headers_are_recognised() {
    assert!(has_private_key_header("x -----BEGIN EC PRIVATE KEY----- y"));
    assert!(has_private_key_header("-----BEGIN PRIVATE KEY-----"));
    assert!(!has_private_key_header(
        "no -----BEGIN ... PRIVATE KEY----- block"
    ));
    assert!(!has_private_key_header("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn the_leak_scan_names_each_kind_of_finding() {
    let key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIc3lNQf4Vv1gHkqtu1cQ7xN8b0x7yWqvI5r0bJ0d8p1oAoGCCqGSM49\n-----END EC PRIVATE KEY-----\n";
    let body: Vec<String> = pem_body_lines(key).collect();
    assert_eq!(body.len(), 1, "{body:?}");
    let needles = [
        ("a key", "cG9saWN5LWtleQ==".to_string()),
        ("private key material", body[0].clone()),
    ];
    let scan = |place: &str, text: &str| {
        check_haystacks(&[(place.to_string(), text.to_string())], &needles)
            .map_err(|e| e.to_string())
    };
    assert_eq!(scan("operator output", "reconciled plant"), Ok(()));
    assert_eq!(scan("events and status in certs", ""), Ok(()));
    let found = [
        ("operator output", "", "operator output is empty"),
        (
            "operator output",
            key,
            "a private key PEM block appears in operator output",
        ),
        (
            "events and status in certs",
            "sig=SharedAccessSignature sr=x",
            "a SAS token appears in events and status in certs",
        ),
        (
            "operator output",
            "key cG9saWN5LWtleQ==",
            "a key appears in operator output",
        ),
        (
            "operator output",
            &format!("leaked {}", body[0]),
            "private key material appears in operator output",
        ),
    ];
    for (place, text, message) in found {
        assert_eq!(scan(place, text), Err(message.to_string()), "{text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_manages_certificates_and_bundles() -> anyhow::Result<()> {
    let mut env = Env::start(&["--strict"]).await?;
    let mut checks = Checks::new();
    let issued = checks
        .run(
            "certificates are issued, verified and downloadable",
            issued_verified_and_downloadable(&env),
        )
        .await;
    if issued {
        checks
            .run(
                "the plugin renews one device on request and reports it",
                plugin_renews_and_reports_one_device(&env),
            )
            .await;
    }
    checks
        .run(
            "renewal bumps the revision, the bundle and emits an Event",
            renewal_bumps_revision_and_bundle(&env),
        )
        .await;
    checks
        .run(
            "X509 devices keep access across rotation",
            x509_devices_keep_access_across_rotation(&env),
        )
        .await;
    checks
        .run(
            "bad root CAs stall and nothing is issued",
            bad_root_cas_stall_and_nothing_is_issued(&env),
        )
        .await;
    checks
        .run(
            "a user-supplied root is used and can be rotated",
            user_root_is_used_and_rotated(&env),
        )
        .await;
    if issued {
        checks
            .run(
                "the root CA survives restarts and updates",
                root_survives_restart_and_updates(&mut env),
            )
            .await;
    }
    checks
        .run(
            "Secrets go with the hierarchy unless Detach",
            secrets_go_with_the_hierarchy_unless_detached(&env),
        )
        .await;
    checks
        .run(
            "no private key in logs, Events or status",
            no_private_key_leaks(&env),
        )
        .await;
    checks.finish()
}
