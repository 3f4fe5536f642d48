//! GitOps health of the live EdgeHierarchy, judged by the code Flux and Argo CD run (issue 15):
//! Flux's kstatus (`status.Compute` of github.com/fluxcd/cli-utils) and the Argo CD health check
//! deploy/argocd/edgehierarchy.dev/EdgeHierarchy/health.lua run by gopher-lua as Argo runs it,
//! both through e2e/tools/gitops-health.
//!
//! Every version of the tutorial hierarchy the apiserver hands a watch is judged, from creation
//! through converging, Ready, modules failing, Stalled, a spec change and deletion.
//!
//! With `EHO_CAPTURE_ARGO_TESTDATA=DIR` the first object seen in each state is also written to
//! `DIR/<state>.yaml`: that is how the Argo test cases' inputs were captured.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail, ensure};
use common::sim::{fast, sim_log, start_sim};
use common::{Env, without_api_proxy};
use e2e_harness::{script_built_tool, workspace_root};
use edge_hierarchy_operator::api::EdgeHierarchy;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

const NAMESPACE: &str = "gitops";
const NAME: &str = "tutorial";

/// What the operator has written, as the rules of kstatus and the Argo check tell states apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    /// Created, no status yet.
    NoStatus,
    /// The status is for an older generation.
    GenerationBehind,
    /// Ready is Unknown or False, nothing stalled.
    Converging,
    /// Stalled=True: a person must act.
    Stalled,
    /// Ready=True, modules failing.
    ModulesFailing,
    /// Ready=True, modules not reported or not created yet.
    ModulesPending,
    /// Ready=True, deployments not ready yet (modules not failing).
    DeploymentsPending,
    /// Ready=True and nothing else wrong.
    Healthy,
    /// deletionTimestamp set, the finalizer still holding it.
    Terminating,
}

impl State {
    fn file(self) -> &'static str {
        match self {
            State::NoStatus => "no-status",
            State::GenerationBehind => "generation-behind",
            State::Converging => "progressing",
            State::Stalled => "stalled",
            State::ModulesFailing => "modules-failing",
            State::ModulesPending => "modules-pending",
            State::DeploymentsPending => "deployments-pending",
            State::Healthy => "healthy",
            State::Terminating => "terminating",
        }
    }

    /// What kstatus and the Argo check must say: `None` where the tool's answer is not ours to
    /// require (Argo shows deletion itself and never asks the check).
    fn expected(self) -> (&'static str, Option<&'static str>) {
        match self {
            // kstatus counts an object without status as Current; docs/gitops.md says so.
            State::NoStatus => ("Current", Some("Progressing")),
            State::GenerationBehind | State::Converging => ("InProgress", Some("Progressing")),
            State::Stalled => ("Failed", Some("Degraded")),
            State::ModulesFailing => ("Current", Some("Degraded")),
            State::ModulesPending => ("Current", Some("Progressing")),
            State::DeploymentsPending => ("Current", Some("Progressing")),
            State::Healthy => ("Current", Some("Healthy")),
            State::Terminating => ("Terminating", None),
        }
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a str> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

fn state_of(object: &Value) -> State {
    if object["metadata"]["deletionTimestamp"].is_string() {
        return State::Terminating;
    }
    if object["status"].is_null() {
        return State::NoStatus;
    }
    // The first reconcile writes Ready=Unknown before it has observed a generation.
    let observed = &object["status"]["observedGeneration"];
    if !observed.is_null() && *observed != object["metadata"]["generation"] {
        return State::GenerationBehind;
    }
    if condition(object, "Stalled") == Some("True") {
        return State::Stalled;
    }
    if condition(object, "Ready") != Some("True") {
        return State::Converging;
    }
    match condition(object, "ModulesHealthy") {
        Some("False") => return State::ModulesFailing,
        Some("Unknown") => return State::ModulesPending,
        _ => {}
    }
    if condition(object, "DeploymentsReady") == Some("False") {
        return State::DeploymentsPending;
    }
    State::Healthy
}

/// Runs `gitops-health ARGS` with `object` on stdin; returns the status it printed.
fn judge(
    tool: &std::path::Path,
    args: &[&str],
    object: &Value,
) -> anyhow::Result<(String, String)> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(serde_json::to_string(object)?.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "gitops-health {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let answer: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "gitops-health {args:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok((
        answer["status"].as_str().unwrap_or_default().to_string(),
        answer["message"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Every version of the hierarchy a watch delivers, in order, and the task that watches (abort
/// it before the control plane goes, or it retries against nothing). Returns once the watch
/// has listed, so that every later change, the creation included, reaches it.
async fn record_versions(
    env: &Env,
) -> anyhow::Result<(Arc<Mutex<Vec<Value>>>, tokio::task::JoinHandle<()>)> {
    let versions = Arc::new(Mutex::new(Vec::new()));
    let resource = ApiResource::erase::<EdgeHierarchy>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), NAMESPACE, &resource);
    let sink = versions.clone();
    let (listed, started) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut listed = Some(listed);
        while let Some(event) = stream.next().await {
            let object = match event {
                Ok(watcher::Event::InitDone) => {
                    if let Some(listed) = listed.take() {
                        let _ = listed.send(());
                    }
                    continue;
                }
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::Delete(o)) => o,
                _ => continue,
            };
            if let Ok(value) = serde_json::to_value(&object) {
                sink.lock().unwrap().push(value);
            }
        }
    });
    tokio::time::timeout(std::time::Duration::from_secs(60), started)
        .await
        .context("the watch did not list within 60 s")?
        .context("the watch ended before it listed")?;
    Ok((versions, task))
}

/// The object as a test case input: what Argo CD would be handed, without server bookkeeping.
fn as_test_input(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object["metadata"].as_object_mut() {
        for key in ["managedFields", "resourceVersion", "uid", "selfLink"] {
            metadata.remove(key);
        }
    }
    object
}

async fn drive_through_the_lifecycle(env: &Env) -> anyhow::Result<()> {
    let yaml = fast("tutorial.yaml");
    env.apply(NAMESPACE, &yaml).await?;
    env.wait_condition(NAMESPACE, NAME, "Ready", "True").await?;
    let _sim = start_sim(env, NAMESPACE, NAME)?;
    env.wait_condition(NAMESPACE, NAME, "ModulesHealthy", "True")
        .await
        .with_context(|| sim_log(env, NAMESPACE))?;
    // Modules fail without the top layer's API proxy, then recover.
    env.apply(NAMESPACE, &without_api_proxy(&yaml)?).await?;
    env.wait_condition(NAMESPACE, NAME, "ModulesHealthy", "False")
        .await
        .with_context(|| sim_log(env, NAMESPACE))?;
    env.apply(NAMESPACE, &yaml).await?;
    env.wait_condition(NAMESPACE, NAME, "ModulesHealthy", "True")
        .await
        .with_context(|| sim_log(env, NAMESPACE))?;
    // Unusable credentials stall it; the fix recovers it.
    let good = env.hub.emulator.connection_string.clone();
    env.put_secret(
        NAMESPACE,
        "iothub-service",
        "connectionString",
        "HostName=only-a-host",
    )
    .await?;
    env.poke(NAMESPACE, NAME).await?;
    env.wait_condition(NAMESPACE, NAME, "Stalled", "True")
        .await?;
    env.put_secret(NAMESPACE, "iothub-service", "connectionString", &good)
        .await?;
    env.wait_condition(NAMESPACE, NAME, "Ready", "True").await?;
    // A spec change: a new generation the status has not caught up with yet.
    env.apply(
        NAMESPACE,
        &yaml.replace("resyncInterval: 10s", "resyncInterval: 11s"),
    )
    .await?;
    env.wait_condition(NAMESPACE, NAME, "Ready", "True").await?;
    env.hierarchies(NAMESPACE)
        .delete(NAME, &Default::default())
        .await?;
    common::wait_until_gone(env, NAMESPACE, NAME).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_and_argo_cd_judge_the_live_hierarchy() -> anyhow::Result<()> {
    let tool = script_built_tool("gitops-health/build.sh")?;
    let lua = workspace_root().join("deploy/argocd/edgehierarchy.dev/EdgeHierarchy/health.lua");
    let env = Env::start(&["--strict"]).await?;
    env.namespace(NAMESPACE).await?;
    let (versions, watch) = record_versions(&env).await?;
    let driven = drive_through_the_lifecycle(&env).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    watch.abort();
    driven?;
    let versions = versions.lock().unwrap().clone();
    let capture = std::env::var_os("EHO_CAPTURE_ARGO_TESTDATA").map(std::path::PathBuf::from);

    let mut seen: BTreeMap<State, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut last = None;
    for object in &versions {
        let state = state_of(object);
        let (kstatus, kstatus_message) = judge(&tool, &["kstatus"], object)?;
        let (argo, argo_message) =
            judge(&tool, &["argo-check", &lua.display().to_string()], object)?;
        let (want_kstatus, want_argo) = state.expected();
        if kstatus != want_kstatus || want_argo.is_some_and(|a| a != argo) {
            wrong.push(format!(
                "generation {} observed {} as {state:?}: kstatus {kstatus} ({kstatus_message}), \
                 Argo {argo} ({argo_message}); want {want_kstatus} and {want_argo:?}",
                object["metadata"]["generation"], object["status"]["observedGeneration"]
            ));
        }
        if last != Some((state, kstatus.clone(), argo.clone())) {
            eprintln!("{state:?}: kstatus {kstatus} | Argo {argo}: {argo_message}");
            last = Some((state, kstatus, argo));
        }
        let count = seen.entry(state).or_default();
        if *count == 0
            && let Some(dir) = &capture
        {
            let path = dir.join(format!("{}.yaml", state.file()));
            std::fs::write(&path, serde_yaml::to_string(&as_test_input(object))?)?;
            eprintln!("captured {}", path.display());
        }
        *count += 1;
    }
    eprintln!("versions seen by state: {seen:?}");
    ensure!(
        wrong.is_empty(),
        "{} versions judged wrongly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let required = [
        State::NoStatus,
        State::Converging,
        State::ModulesPending,
        State::Healthy,
        State::ModulesFailing,
        State::Stalled,
        State::GenerationBehind,
        State::Terminating,
    ];
    let missing: Vec<&State> = required.iter().filter(|s| !seen.contains_key(s)).collect();
    ensure!(
        missing.is_empty(),
        "the watch never saw {missing:?} among {} versions",
        versions.len()
    );
    Ok(())
}

/// Argo's own convention for a health check: health_test.yaml over the captured inputs.
#[test]
fn argo_cd_health_test_cases_pass_in_gopher_lua() -> anyhow::Result<()> {
    let tool = script_built_tool("gitops-health/build.sh")?;
    let dir = workspace_root().join("deploy/argocd/edgehierarchy.dev/EdgeHierarchy");
    let out = Command::new(&tool).arg("argo-test").arg(&dir).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "argo-test failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = text.lines().filter(|l| l.starts_with("ok ")).count();
    ensure!(cases >= 8, "only {cases} cases ran:\n{text}");
    Ok(())
}
