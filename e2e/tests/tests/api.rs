//! The EdgeHierarchy API against a real kube-apiserver (issue 2): the generated CRD installs,
//! the examples are accepted, `kubectl explain` and `kubectl get` show what users need, invalid
//! specs are rejected with messages that name the problem, and garbage collection deletes owned
//! objects.
//!
//! One control plane serves every check (a start costs seconds); each check works in its own
//! namespace, and all checks run even when one fails, so a run reports every broken behaviour.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use e2e_harness::{Checks, ControlPlane, ControlPlaneOptions, wait_until, workspace_root};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

const CRD_NAME: &str = "edgehierarchies.edgehierarchy.dev";
const API_VERSION: &str = "edgehierarchy.dev/v1alpha1";
const MAX_DEVICES: usize = 1000;
/// Upper bound for the apiserver and kube-controller-manager to act; not a speed assertion.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgehierarchy_api_on_a_real_apiserver() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    eprintln!(
        "control plane ready in {:.1}s at {}",
        plane.startup_time().as_secs_f64(),
        plane.server_url()
    );

    let mut checks = Checks::new();
    if !checks
        .run("CRD installs and becomes Established", crd_installs(&plane))
        .await
    {
        // Every other check needs the CRD.
        return checks.finish();
    }
    // kube-controller-manager's garbage collector learns about a new resource type only on its
    // next discovery sync (every 30s), so the EdgeHierarchy-owner case runs alongside the others.
    let gc_of_hierarchy = gc_of_hierarchy_owner(&plane);
    let the_others = async {
        checks
            .run(
                "kubectl explain shows the devices field docs",
                explain_shows_docs(&plane),
            )
            .await;
        checks
            .run(
                "examples/tutorial.yaml is accepted",
                example_is_accepted(&plane, "tutorial", "ex-tutorial"),
            )
            .await;
        checks
            .run(
                "examples/factory.yaml is accepted",
                example_is_accepted(&plane, "factory", "ex-factory"),
            )
            .await;
        checks
            .run(
                "kubectl get eh shows the printer columns",
                get_shows_columns(&plane),
            )
            .await;
        for case in rejection_cases() {
            let name = format!("rejected: {}", case.what);
            checks
                .run(&name, rejected_with_message(&plane, &case))
                .await;
        }
        checks
            .run(
                "a Secret owned by a ConfigMap is garbage-collected",
                gc_of_configmap_owner(&plane),
            )
            .await;
        checks
            .run(
                "a deleted namespace is emptied and removed",
                namespace_deletion(&plane),
            )
            .await;
        checks
    };
    let (gc_of_hierarchy, mut checks) = tokio::join!(gc_of_hierarchy, the_others);
    checks
        .run(
            "a Secret owned by an EdgeHierarchy is garbage-collected (ran alongside the others)",
            async { gc_of_hierarchy },
        )
        .await;

    plane.check_running()?;
    plane.stop().await;
    checks.finish()
}

// ---------------------------------------------------------------------------------------------
// checks

async fn crd_installs(plane: &ControlPlane) -> anyhow::Result<()> {
    let path = workspace_root().join("crds/edgehierarchy.yaml");
    ensure!(
        path.is_file(),
        "{} is missing; generate it with `cargo run -p edge-hierarchy-operator -- crd`",
        path.display()
    );
    kubectl_ok(plane, &["apply", "-f", &path.to_string_lossy()])?;
    let crds: Api<CustomResourceDefinition> = Api::all(plane.client());
    tokio::time::timeout(
        SETTLE_TIMEOUT,
        await_condition(crds.clone(), CRD_NAME, conditions::is_crd_established()),
    )
    .await
    .with_context(|| format!("CRD {CRD_NAME} not Established within {SETTLE_TIMEOUT:?}"))??;

    let crd = crds.get(CRD_NAME).await?;
    let names = &crd.spec.names;
    ensure!(
        names.short_names.as_deref() == Some(&["eh".to_owned()][..]),
        "short names are {:?}, expected [eh]",
        names.short_names
    );
    ensure!(
        names
            .categories
            .as_deref()
            .is_some_and(|c| c.iter().any(|c| c == "iotedge")),
        "categories are {:?}, expected to include iotedge",
        names.categories
    );
    Ok(())
}

async fn explain_shows_docs(plane: &ControlPlane) -> anyhow::Result<()> {
    let schema = crd_spec_schema()?;
    let devices = &schema["properties"]["devices"];
    let devices_doc = devices["description"]
        .as_str()
        .context("spec.devices has no description in the CRD")?;
    let id_doc = devices["items"]["properties"]["id"]["description"]
        .as_str()
        .context("spec.devices[].id has no description in the CRD")?;
    ensure!(
        devices_doc.len() > 20,
        "spec.devices' description is too short to help: {devices_doc:?}"
    );

    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let output = wait_until(
        SETTLE_TIMEOUT,
        Duration::from_millis(500),
        "kubectl explain to know edgehierarchy.spec.devices",
        || async {
            let out = plane
                .kubectl(&["explain", "edgehierarchy.spec.devices"])
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    )
    .await?;
    // kubectl re-wraps the text, so compare with whitespace collapsed.
    let shown = collapse_whitespace(&output);
    for (field, doc) in [("spec.devices", devices_doc), ("spec.devices[].id", id_doc)] {
        ensure!(
            shown.contains(&collapse_whitespace(doc)),
            "kubectl explain does not show the doc of {field} ({doc:?}); it printed:\n{output}"
        );
    }
    for field in ["id", "parent", "type", "deployment"] {
        ensure!(
            output.lines().any(|l| l.trim_start().starts_with(field)),
            "kubectl explain lists no field {field}:\n{output}"
        );
    }
    Ok(())
}

async fn example_is_accepted(
    plane: &ControlPlane,
    example: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    let path = workspace_root().join(format!("examples/{example}.yaml"));
    ensure!(path.is_file(), "{} is missing", path.display());
    create_namespace(plane, namespace).await?;
    let out = kubectl_ok(
        plane,
        &["apply", "-n", namespace, "-f", &path.to_string_lossy()],
    )?;
    ensure!(
        out.contains("edgehierarchy.edgehierarchy.dev/"),
        "kubectl apply created no EdgeHierarchy: {out}"
    );

    // Nothing the example declares may have been pruned as unknown.
    let file: Vec<Value> = yaml_documents(&std::fs::read_to_string(&path)?)?
        .into_iter()
        .filter(|d| d["kind"] == "EdgeHierarchy")
        .collect();
    ensure!(
        !file.is_empty(),
        "{} declares no EdgeHierarchy",
        path.display()
    );
    let api = hierarchies(plane, namespace);
    for declared in &file {
        let name = declared["metadata"]["name"]
            .as_str()
            .context("example without metadata.name")?;
        let stored = serde_json::to_value(api.get(name).await?)?;
        for list in ["devices", "deployments"] {
            let want = declared["spec"][list].as_array().map_or(0, Vec::len);
            let got = stored["spec"][list].as_array().map_or(0, Vec::len);
            ensure!(
                want == got,
                "{example}: {name} declares {want} {list} but {got} were stored"
            );
        }
        let stored_ids: Vec<&str> = stored["spec"]["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["id"].as_str())
            .collect();
        for device in declared["spec"]["devices"].as_array().into_iter().flatten() {
            let id = device["id"].as_str().unwrap_or_default();
            ensure!(
                stored_ids.contains(&id),
                "{example}: device {id} was not stored"
            );
        }
    }
    Ok(())
}

async fn get_shows_columns(plane: &ControlPlane) -> anyhow::Result<()> {
    let namespace = "columns";
    create_namespace(plane, namespace).await?;
    hierarchies(plane, namespace)
        .create(
            &PostParams::default(),
            &hierarchy("shown", json!([{"id": "gateway"}])),
        )
        .await?;
    let out = kubectl_ok(plane, &["get", "eh", "-n", namespace])?;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header == ["NAME", "READY", "DEVICES", "HEALTHY", "DRIFTED", "AGE"],
        "kubectl get eh printed the columns {header:?}:\n{out}"
    );
    ensure!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("shown")),
        "kubectl get eh did not list the hierarchy:\n{out}"
    );
    // The category lists it too (`kubectl get iotedge`).
    let by_category = kubectl_ok(plane, &["get", "iotedge", "-n", namespace])?;
    ensure!(
        by_category.contains("shown"),
        "kubectl get iotedge did not list the hierarchy:\n{by_category}"
    );
    Ok(())
}

struct RejectionCase {
    what: &'static str,
    /// The hierarchy's name; "invalid" when `None`.
    name: Option<String>,
    spec_devices: Value,
    spec_overrides: Value,
    /// Every fragment must appear in the apiserver's message.
    message_contains: Vec<String>,
}

fn rejection_cases() -> Vec<RejectionCase> {
    let long_id = "a".repeat(129);
    let too_many: Vec<Value> = (0..=MAX_DEVICES)
        .map(|i| json!({"id": format!("d{i}")}))
        .collect();
    vec![
        RejectionCase {
            what: "a duplicate device id",
            name: None,
            spec_devices: json!([{"id": "twin"}, {"id": "twin"}]),
            spec_overrides: json!({}),
            message_contains: vec![
                "spec.devices[1]".into(),
                "Duplicate value".into(),
                "twin".into(),
            ],
        },
        RejectionCase {
            what: "a device id with '/'",
            name: None,
            spec_devices: json!([{"id": "plant/line-1"}]),
            spec_overrides: json!({}),
            message_contains: vec!["spec.devices[0].id".into(), "plant/line-1".into()],
        },
        RejectionCase {
            what: "a device id with a space",
            name: None,
            spec_devices: json!([{"id": "line 1"}]),
            spec_overrides: json!({}),
            message_contains: vec!["spec.devices[0].id".into(), "line 1".into()],
        },
        RejectionCase {
            what: "a device id of 129 characters",
            name: None,
            spec_devices: json!([{"id": long_id}]),
            spec_overrides: json!({}),
            message_contains: vec!["spec.devices[0].id".into(), "128".into()],
        },
        RejectionCase {
            what: "a device that is its own parent",
            name: None,
            spec_devices: json!([{"id": "loop", "parent": "loop"}]),
            spec_overrides: json!({}),
            message_contains: vec!["spec.devices[0]".into(), "own parent".into()],
        },
        RejectionCase {
            what: "a Leaf device with a deployment",
            name: None,
            spec_devices: json!([
                {"id": "gateway", "deployment": "base"},
                {"id": "sensor", "parent": "gateway", "type": "Leaf", "deployment": "base"},
            ]),
            spec_overrides: json!({"deployments": [{"name": "base", "content": {"modulesContent": {}}}]}),
            message_contains: vec!["spec.devices[1]".into(), "Leaf".into(), "deployment".into()],
        },
        RejectionCase {
            what: "an unknown authentication value",
            name: None,
            spec_devices: json!([{"id": "gateway"}]),
            spec_overrides: json!({"authentication": "Certificate"}),
            message_contains: vec![
                "spec.authentication".into(),
                "Certificate".into(),
                "SymmetricKey".into(),
                "X509".into(),
            ],
        },
        RejectionCase {
            what: "a name of 64 characters",
            name: Some("n".repeat(64)),
            spec_devices: json!([{"id": "gateway"}]),
            spec_overrides: json!({}),
            message_contains: vec!["metadata.name must be at most 63 characters".into()],
        },
        RejectionCase {
            what: "a name with a dot",
            name: Some("plant.line-1".into()),
            spec_devices: json!([{"id": "gateway"}]),
            spec_overrides: json!({}),
            message_contains: vec![
                "metadata.name must be lowercase letters".into(),
                "dots are not allowed".into(),
            ],
        },
        RejectionCase {
            what: "1,001 devices",
            name: None,
            spec_devices: Value::Array(too_many),
            spec_overrides: json!({}),
            message_contains: vec!["spec.devices".into(), "1000".into()],
        },
    ]
}

async fn rejected_with_message(plane: &ControlPlane, case: &RejectionCase) -> anyhow::Result<()> {
    let namespace = "rejections";
    create_namespace(plane, namespace).await?;
    let name = case.name.as_deref().unwrap_or("invalid");
    let mut object = hierarchy(name, case.spec_devices.clone());
    if let Some(overrides) = case.spec_overrides.as_object() {
        for (key, value) in overrides {
            object.data["spec"][key] = value.clone();
        }
    }
    let api = hierarchies(plane, namespace);
    let status = match api.create(&PostParams::default(), &object).await {
        Ok(_) => {
            let _ = api.delete(name, &DeleteParams::default()).await;
            bail!("the apiserver accepted it");
        }
        Err(kube::Error::Api(status)) => status,
        Err(other) => bail!("the request failed without an apiserver verdict: {other}"),
    };
    ensure!(
        status.code == 422,
        "expected 422 Invalid, got {} {}: {}",
        status.code,
        status.reason,
        status.message
    );
    let missing: Vec<&String> = case
        .message_contains
        .iter()
        .filter(|fragment| !status.message.contains(fragment.as_str()))
        .collect();
    ensure!(
        missing.is_empty(),
        "the message lacks {missing:?}: {}",
        status.message
    );
    eprintln!("     apiserver said: {}", abbreviate(&status.message, 300));
    Ok(())
}

async fn gc_of_configmap_owner(plane: &ControlPlane) -> anyhow::Result<()> {
    let namespace = "gc-configmap";
    create_namespace(plane, namespace).await?;
    let owners: Api<ConfigMap> = Api::namespaced(plane.client(), namespace);
    let owner: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "owner"}, "data": {"k": "v"}}))?;
    let owner = owners.create(&PostParams::default(), &owner).await?;
    let uid = owner
        .metadata
        .uid
        .clone()
        .context("created ConfigMap without uid")?;
    let owner_ref = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid});
    assert_owned_secret_collected(plane, namespace, owner_ref, || async {
        owners
            .delete("owner", &DeleteParams::default())
            .await
            .map(|_| ())
    })
    .await
}

async fn gc_of_hierarchy_owner(plane: &ControlPlane) -> anyhow::Result<()> {
    let namespace = "gc-hierarchy";
    create_namespace(plane, namespace).await?;
    let api = hierarchies(plane, namespace);
    let owner = api
        .create(
            &PostParams::default(),
            &hierarchy("owner", json!([{"id": "gateway"}])),
        )
        .await?;
    let uid = owner
        .metadata
        .uid
        .clone()
        .context("created EdgeHierarchy without uid")?;
    let owner_ref = json!({
        "apiVersion": API_VERSION, "kind": "EdgeHierarchy", "name": "owner", "uid": uid,
        "controller": true, "blockOwnerDeletion": true,
    });
    assert_owned_secret_collected(plane, namespace, owner_ref, || async {
        api.delete("owner", &DeleteParams::default())
            .await
            .map(|_| ())
    })
    .await
}

/// Creates a Secret owned by `owner_ref`, checks it stays while the owner exists, deletes the
/// owner with `delete_owner`, and waits for kube-controller-manager to delete the Secret.
async fn assert_owned_secret_collected<F, Fut>(
    plane: &ControlPlane,
    namespace: &str,
    owner_ref: Value,
    delete_owner: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = kube::Result<()>>,
{
    let secrets: Api<Secret> = Api::namespaced(plane.client(), namespace);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [owner_ref]},
        "stringData": {"k": "v"},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    // A Secret whose owner exists must survive a garbage-collector pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        secrets.get_opt("owned").await?.is_some(),
        "the Secret was deleted while its owner still existed"
    );
    delete_owner().await.context("deleting the owner")?;
    wait_until(
        SETTLE_TIMEOUT,
        POLL,
        &format!("Secret {namespace}/owned to be garbage-collected after its owner was deleted"),
        || async { matches!(secrets.get_opt("owned").await, Ok(None)).then_some(()) },
    )
    .await
}

async fn namespace_deletion(plane: &ControlPlane) -> anyhow::Result<()> {
    let namespace = "doomed";
    create_namespace(plane, namespace).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(plane.client(), namespace);
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "content"}}))?,
        )
        .await?;
    hierarchies(plane, namespace)
        .create(
            &PostParams::default(),
            &hierarchy("content", json!([{"id": "gateway"}])),
        )
        .await?;
    let namespaces: Api<Namespace> = Api::all(plane.client());
    namespaces
        .delete(namespace, &DeleteParams::default())
        .await?;
    wait_until(
        SETTLE_TIMEOUT,
        POLL,
        &format!("namespace {namespace} to be emptied and removed"),
        || async { matches!(namespaces.get_opt(namespace).await, Ok(None)).then_some(()) },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// helpers

fn hierarchies(plane: &ControlPlane, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("edgehierarchy.dev", "v1alpha1", "EdgeHierarchy");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "edgehierarchies");
    Api::namespaced_with(plane.client(), namespace, &resource)
}

/// A minimal hierarchy with the given devices.
fn hierarchy(name: &str, devices: Value) -> DynamicObject {
    let gvk = GroupVersionKind::gvk("edgehierarchy.dev", "v1alpha1", "EdgeHierarchy");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "edgehierarchies");
    DynamicObject::new(name, &resource).data(json!({
        "spec": {
            "iotHub": {"connectionStringSecretRef": {"name": "iothub-service"}},
            "devices": devices,
        }
    }))
}

async fn create_namespace(plane: &ControlPlane, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(plane.client());
    if namespaces.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Runs kubectl and returns its stdout; fails with its stderr when it exits non-zero.
fn kubectl_ok(plane: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    let out = plane.kubectl(args)?;
    ensure!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CRD's openAPIV3Schema of `spec`, read from crds/edgehierarchy.yaml.
fn crd_spec_schema() -> anyhow::Result<Value> {
    let path: PathBuf = workspace_root().join("crds/edgehierarchy.yaml");
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    let schema =
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    ensure!(schema.is_object(), "{} has no spec schema", path.display());
    Ok(schema)
}

fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).context("parsing a YAML document"))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn abbreviate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
