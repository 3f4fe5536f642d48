//! Simulated IoT Edge runtimes (e2e/edge-sim) for a hierarchy, and examples made quick to
//! re-read module health.

use std::process::Command;

use e2e_harness::process::ManagedChild;

use super::{Env, example};

/// The example with a 10 s resync, so module health is re-read quickly.
pub fn fast(name: &str) -> String {
    example(name).replace(
        "  devices:\n",
        "  policy: {resyncInterval: 10s}\n  devices:\n",
    )
}

pub fn start_sim(env: &Env, namespace: &str, hierarchy: &str) -> anyhow::Result<ManagedChild> {
    let mut command = Command::new(e2e_harness::workspace_bin("edge-sim")?);
    command
        .args([
            "run",
            "--namespace",
            namespace,
            "--hierarchy",
            hierarchy,
            "--interval-ms",
            "500",
        ])
        .arg("--emulator-dir")
        .arg(&env.hub.emulator.dir)
        .arg("--state-dir")
        .arg(env.dir.path().join(format!("sim-{namespace}")))
        .env("KUBECONFIG", env.cluster.kubeconfig_path());
    let log = env.dir.path().join(format!("edge-sim-{namespace}.log"));
    ManagedChild::spawn_command("edge-sim", command, &log, None)
}

pub fn sim_log(env: &Env, namespace: &str) -> String {
    e2e_harness::process::log_tail(
        &env.dir.path().join(format!("edge-sim-{namespace}.log")),
        25,
    )
}
