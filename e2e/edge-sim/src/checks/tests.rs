use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::config::fill_placeholders;
use crate::fixtures::{BundleSpec, TestAuth, bundle, edge_ca, identity, root_ca};
use crate::install::{install_files, plan_install};

fn spec(device_id: &str, parent: bool) -> BundleSpec {
    let root = root_ca("test root");
    BundleSpec {
        device_id: device_id.into(),
        hub_host: "localhost:8443".into(),
        hostname: None,
        parent_hostname: parent.then_some(None),
        auth: TestAuth::Sas("c2VjcmV0LWtleS1ieXRlcw==".into()),
        trust_bundle_pem: root.cert_pem.clone(),
        edge_ca: edge_ca(&root, device_id, 90, true),
        root_pem: root.cert_pem,
        upstream_port: 443,
    }
}

struct Installed {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    text: String,
}

fn install(spec: &BundleSpec, hostname: &str, parent: Option<&str>) -> Installed {
    let b = bundle(spec);
    let text = fill_placeholders(
        std::str::from_utf8(&b.files["config.toml"]).unwrap(),
        hostname,
        parent,
    );
    let config = crate::config::parse_config(&text).unwrap();
    let planned = plan_install(&config, &b.files).unwrap();
    let dir = tempfile::tempdir().unwrap();
    install_files(dir.path(), &text, &planned, &b.files).unwrap();
    Installed {
        root: dir.path().to_path_buf(),
        _dir: dir,
        text,
    }
}

fn checks_of(installed: &Installed, device_id: &str, has_parent: Option<bool>) -> CheckReport {
    run_checks(
        &installed.text,
        &CheckContext {
            device_id,
            root: &installed.root,
            has_parent_in_tree: has_parent,
            now: jiff::Timestamp::now().as_second(),
        },
    )
}

fn status(report: &CheckReport, id: &str) -> (CheckStatus, String) {
    let check = report
        .checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no check {id}: {:?}", report.checks));
    (check.status, check.detail.clone())
}

#[test]
fn a_good_child_bundle_passes_every_check() {
    let s = spec("lower-layer", true);
    let installed = install(&s, "lower-layer.edge.sim", Some("top-layer.edge.sim"));
    let report = checks_of(&installed, "lower-layer", Some(true));
    let ids: Vec<&str> = report.checks.iter().map(|c| c.id).collect();
    assert_eq!(ids, CHECK_IDS.to_vec());
    for check in &report.checks {
        assert_eq!(check.status, CheckStatus::Passed, "{check:?}");
    }
    let material = report.material.expect("material");
    assert_eq!(material.hostname, "lower-layer.edge.sim");
    assert_eq!(
        material.parent_hostname.as_deref(),
        Some("top-layer.edge.sim")
    );
    assert_eq!(
        material.server_identity.chain.len(),
        3,
        "leaf, edge CA, root"
    );
    assert!(!format!("{material:?}").contains("c2VjcmV0"));
}

#[test]
fn install_modes_and_paths_follow_install_sh() {
    let s = spec("lower-layer", true);
    let installed = install(&s, "a.edge.sim", Some("b.edge.sim"));
    let mode = |p: &str| {
        std::fs::metadata(installed.root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("etc/aziot/config.toml"), 0o600);
    assert_eq!(mode("var/aziot/certs/iotedge_config_cli_root.pem"), 0o644);
    assert_eq!(
        mode("var/aziot/certs/lower-layer.full-chain.cert.pem"),
        0o644
    );
    assert_eq!(mode("var/aziot/secrets/lower-layer.key.pem"), 0o600);
    assert_eq!(mode("var/aziot/secrets"), 0o700);
    let config = std::fs::read_to_string(installed.root.join("etc/aziot/config.toml")).unwrap();
    assert!(
        config.contains("hostname = \"a.edge.sim\"")
            && config.contains("parent_hostname = \"b.edge.sim\"")
    );
}

#[test]
fn a_missing_bundle_file_is_named() {
    let s = spec("lower-layer", true);
    let mut b = bundle(&s);
    b.files.remove("lower-layer.key.pem");
    let config = crate::config::parse_config(&fill_placeholders(
        std::str::from_utf8(&b.files["config.toml"]).unwrap(),
        "a",
        Some("b"),
    ))
    .unwrap();
    let error = plan_install(&config, &b.files).unwrap_err();
    assert!(
        error.starts_with(
            "edge_ca.pk names \"lower-layer.key.pem\", which the bundle does not contain"
        ),
        "{error}"
    );
}

#[test]
fn a_trust_bundle_without_the_signing_root_fails_the_chain() {
    let mut s = spec("top-layer", false);
    s.trust_bundle_pem = root_ca("another root").cert_pem;
    let report = checks_of(&install(&s, "top.edge.sim", None), "top-layer", Some(false));
    let (st, detail) = status(&report, "edge-ca-chain");
    assert_eq!(st, CheckStatus::Failed);
    assert!(
        detail.contains("does not verify against the trust bundle"),
        "{detail}"
    );
    assert!(report.material.is_none());
    assert!(
        report
            .first_failure()
            .unwrap()
            .starts_with("edge-ca-chain: ")
    );
}

#[test]
fn an_edge_ca_that_is_no_ca_fails() {
    let mut s = spec("top-layer", false);
    let root = root_ca("r");
    s.trust_bundle_pem = root.cert_pem.clone();
    s.root_pem = root.cert_pem.clone();
    s.edge_ca = edge_ca(&root, "top-layer", 90, false);
    let (st, detail) = status(
        &checks_of(&install(&s, "top.edge.sim", None), "top-layer", None),
        "edge-ca-chain",
    );
    assert_eq!(st, CheckStatus::Failed);
    assert!(detail.contains("is not a CA"), "{detail}");
}

#[test]
fn a_foreign_key_fails_the_key_check() {
    let mut s = spec("top-layer", false);
    s.edge_ca.key_pem = root_ca("x").key_pem;
    let report = checks_of(&install(&s, "top.edge.sim", None), "top-layer", None);
    let (st, detail) = status(&report, "edge-ca-key");
    assert_eq!(st, CheckStatus::Failed);
    assert!(
        detail.contains("is not the key of CN=top-layer.deviceca"),
        "{detail}"
    );
    assert_eq!(status(&report, "edge-ca-chain").0, CheckStatus::Skipped);
    assert!(!detail.contains("PRIVATE KEY"));
}

#[test]
fn expiry_fails_when_expired_and_warns_near_the_end() {
    let root = root_ca("r");
    let mut s = spec("top-layer", false);
    s.trust_bundle_pem = root.cert_pem.clone();
    s.root_pem = root.cert_pem.clone();
    s.edge_ca = edge_ca(&root, "top-layer", 3, true);
    let report = checks_of(&install(&s, "top.edge.sim", None), "top-layer", None);
    let (st, detail) = status(&report, "edge-ca-expiry");
    assert_eq!(st, CheckStatus::Warning, "{detail}");
    assert!(detail.contains("within 7 days"));
    assert!(
        report.material.is_some(),
        "a warning does not stop the runtime"
    );

    let installed = install(&s, "top.edge.sim", None);
    let later = run_checks(
        &installed.text,
        &CheckContext {
            device_id: "top-layer",
            root: &installed.root,
            has_parent_in_tree: None,
            now: jiff::Timestamp::now().as_second() + 10 * 24 * 3600,
        },
    );
    let (st, detail) = status(&later, "edge-ca-expiry");
    assert_eq!(st, CheckStatus::Failed);
    assert!(detail.contains("expired on"), "{detail}");
}

#[test]
fn hostname_rules() {
    assert_eq!(hostname_problem("top-layer.edge.sim"), None);
    assert_eq!(hostname_problem("10.0.0.4"), None);
    assert_eq!(hostname_problem("::1"), None);
    for (bad, why) in [
        ("", "empty"),
        ("{{HOSTNAME}}", "placeholder"),
        ("a_b", "contains '_'"),
        ("a..b", "empty label"),
        ("-a.b", "starting or ending"),
        (&"x".repeat(64), "fewer than 64"),
    ] {
        let problem = hostname_problem(bad).unwrap_or_default();
        assert!(problem.contains(why), "{bad}: {problem}");
    }
}

#[test]
fn unfilled_placeholder_and_missing_parent_hostname() {
    let s = spec("lower-layer", true);
    let b = bundle(&s);
    let text = std::str::from_utf8(&b.files["config.toml"])
        .unwrap()
        .to_string();
    let installed = install(&s, "lower.edge.sim", Some("top.edge.sim"));
    let report = run_checks(
        &text,
        &CheckContext {
            device_id: "lower-layer",
            root: &installed.root,
            has_parent_in_tree: Some(true),
            now: jiff::Timestamp::now().as_second(),
        },
    );
    assert!(
        status(&report, "hostname")
            .1
            .contains("still the placeholder")
    );
    assert!(
        status(&report, "parent-hostname")
            .1
            .contains("still the placeholder")
    );

    let top = spec("top-layer", false);
    let installed = install(&top, "top.edge.sim", None);
    let report = checks_of(&installed, "top-layer", Some(true));
    let (st, detail) = status(&report, "parent-hostname");
    assert_eq!(st, CheckStatus::Failed);
    assert!(
        detail.contains("has a parent in the hierarchy, but config.toml has no parent_hostname"),
        "{detail}"
    );
}

#[test]
fn agent_image_must_match_the_layer() {
    let s = spec("lower-layer", true);
    let installed = install(&s, "lower.edge.sim", Some("top.edge.sim"));
    let text = installed.text.replace(
        "$upstream:443/azureiotedge-agent:1.5",
        "mcr.microsoft.com/azureiotedge-agent:1.5",
    );
    let report = run_checks(
        &text,
        &CheckContext {
            device_id: "lower-layer",
            root: &installed.root,
            has_parent_in_tree: None,
            now: jiff::Timestamp::now().as_second(),
        },
    );
    assert!(
        status(&report, "agent-image")
            .1
            .contains("must be $upstream:<port>/azureiotedge-agent")
    );

    let top = spec("top-layer", false);
    let installed = install(&top, "top.edge.sim", None);
    let text = installed.text.replace(
        "mcr.microsoft.com/azureiotedge-agent:1.5",
        "$upstream:443/azureiotedge-agent:1.5",
    );
    let report = run_checks(
        &text,
        &CheckContext {
            device_id: "top-layer",
            root: &installed.root,
            has_parent_in_tree: None,
            now: jiff::Timestamp::now().as_second(),
        },
    );
    assert!(
        status(&report, "agent-image")
            .1
            .contains("a top-layer device has no parent")
    );
}

#[test]
fn connection_string_must_be_the_devices_and_base64() {
    let s = spec("top-layer", false);
    let installed = install(&s, "top.edge.sim", None);
    let report = checks_of(&installed, "someone-else", None);
    assert!(
        status(&report, "connection")
            .1
            .contains("provisions device \"top-layer\", but the bundle is for \"someone-else\"")
    );
    assert!(report.material.is_none());
    let text = installed
        .text
        .replace("c2VjcmV0LWtleS1ieXRlcw==", "not*base64");
    let report = run_checks(
        &text,
        &CheckContext {
            device_id: "top-layer",
            root: &installed.root,
            has_parent_in_tree: None,
            now: jiff::Timestamp::now().as_second(),
        },
    );
    let (st, detail) = status(&report, "connection");
    assert_eq!(st, CheckStatus::Failed);
    assert!(!detail.contains("not*base64"));
}

#[test]
fn x509_identity_is_checked() {
    let (id, _) = identity("lower-layer");
    let mut s = spec("lower-layer", true);
    s.auth = TestAuth::X509(id.clone());
    let report = checks_of(
        &install(&s, "l.edge.sim", Some("t.edge.sim")),
        "lower-layer",
        None,
    );
    let (st, detail) = status(&report, "identity-certificate");
    assert_eq!(st, CheckStatus::Passed, "{detail}");
    assert!(
        report
            .material
            .unwrap()
            .identity_pem
            .unwrap()
            .contains("PRIVATE KEY")
    );

    let (other, _) = identity("x");
    s.auth = TestAuth::X509(crate::fixtures::TestCa {
        cert_pem: id.cert_pem,
        key_pem: other.key_pem,
    });
    let report = checks_of(
        &install(&s, "l.edge.sim", Some("t.edge.sim")),
        "lower-layer",
        None,
    );
    let (st, detail) = status(&report, "identity-certificate");
    assert_eq!(st, CheckStatus::Failed);
    assert!(
        detail.contains("identity_pk is not the key of CN=lower-layer"),
        "{detail}"
    );
}

#[test]
fn unparsable_config_fails_first_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_checks(
        "hostname = [",
        &CheckContext {
            device_id: "d",
            root: dir.path(),
            has_parent_in_tree: None,
            now: 0,
        },
    );
    assert_eq!(report.checks[0].status, CheckStatus::Failed);
    assert!(
        report.checks[1..]
            .iter()
            .all(|c| c.status == CheckStatus::Skipped)
    );
    assert_eq!(report.checks.len(), CHECK_IDS.len());
}

#[test]
fn upstream_ports() {
    assert_eq!(
        upstream_port("$upstream:443/azureiotedge-agent:1.5"),
        Some(443)
    );
    assert_eq!(upstream_port("$upstream:8000/x"), Some(8000));
    assert_eq!(upstream_port("$upstream/x"), None);
    assert_eq!(upstream_port("$upstream:443/"), None);
    assert_eq!(upstream_port("mcr.microsoft.com/x"), None);
}

#[test]
fn a_world_readable_key_fails_bundle_files() {
    let s = spec("top-layer", false);
    let installed = install(&s, "top.edge.sim", None);
    let key = installed.root.join("var/aziot/secrets/top-layer.key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (st, detail) = status(&checks_of(&installed, "top-layer", None), "bundle-files");
    assert_eq!(st, CheckStatus::Failed);
    assert!(
        detail.contains("/var/aziot/secrets/top-layer.key.pem has mode 0644"),
        "{detail}"
    );
    std::fs::remove_file(&key).unwrap();
    let (st, detail) = status(&checks_of(&installed, "top-layer", None), "bundle-files");
    assert_eq!(st, CheckStatus::Failed);
    assert!(detail.contains("is not installed"), "{detail}");
}
