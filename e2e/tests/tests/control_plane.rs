//! No process the harness starts survives: not when the code holding a control plane panics,
//! not when the `control-plane` binary is killed with SIGKILL (the kernel's parent-death signal
//! takes its children down), and not when it is asked to stop with SIGTERM.
//!
//! The binary tests need `control-plane` built: `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use e2e_harness::process::{ManagedChild, children_of, is_running, log_tail};
use e2e_harness::{ControlPlane, ControlPlaneOptions, tools_bin_dir, wait_until, workspace_bin};

const COMPONENTS: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];
/// Upper bound for start-up and shutdown on a busy machine; not a speed assertion.
const TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_holding_a_control_plane_stops_its_processes() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let plane = ControlPlane::start(ControlPlaneOptions::default())
            .await
            .expect("the control plane starts");
        let processes = plane.processes();
        let all_running = processes.iter().all(|p| is_running(p.pid));
        seen_tx
            .send((processes, plane.dir().to_path_buf(), all_running))
            .expect("the test waits for the pids");
        panic!("deliberate panic while the control plane runs");
    });
    let joined: Result<(), _> = task.await;
    let (processes, dir, all_running) = seen_rx
        .await
        .context("the task ended before reporting its processes (start-up failed?)")?;
    ensure!(
        joined.as_ref().is_err_and(|e| e.is_panic()),
        "the task was meant to panic, it ended with {joined:?}"
    );
    ensure!(
        all_running,
        "not every component ran before the panic: {processes:?}"
    );

    let names: Vec<&str> = processes.iter().map(|p| p.name.as_str()).collect();
    ensure!(names == COMPONENTS, "the control plane ran {names:?}");
    // Drop ran during unwinding, before the join handle resolved: nothing may be left.
    let survivors: Vec<String> = processes
        .iter()
        .filter(|p| is_running(p.pid))
        .map(|p| format!("{} (pid {})", p.name, p.pid))
        .collect();
    ensure!(
        survivors.is_empty(),
        "still running after the panic: {survivors:?}"
    );
    ensure!(
        !dir.exists(),
        "the temporary folder {} was not removed",
        dir.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_control_plane_binary_takes_its_children_down() -> anyhow::Result<()> {
    let run = ControlPlaneBinary::start().await?;
    let children = run.component_pids()?;

    signal(run.pid(), libc::SIGKILL)?;
    let killed = wait_for_exit(&run.process, TIMEOUT).await?;
    use std::os::unix::process::ExitStatusExt;
    ensure!(
        killed.signal() == Some(libc::SIGKILL),
        "control-plane ended with {killed}, not by SIGKILL"
    );
    // Nobody ran its clean-up: the kernel's parent-death signal must do it.
    wait_until(
        Duration::from_secs(30),
        POLL,
        "etcd, kube-apiserver and kube-controller-manager to die with their SIGKILLed parent",
        || async {
            children
                .iter()
                .all(|(_, pid)| !is_running(*pid))
                .then_some(())
        },
    )
    .await
    .with_context(|| format!("survivors among {children:?}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_control_plane_binary_and_its_children_cleanly() -> anyhow::Result<()> {
    let run = ControlPlaneBinary::start().await?;
    let children = run.component_pids()?;

    signal(run.pid(), libc::SIGTERM)?;
    let status = wait_for_exit(&run.process, TIMEOUT).await?;
    ensure!(
        status.success(),
        "control-plane exited with {status} after SIGTERM; its stderr:\n{}",
        log_tail(&run.stderr, 30)
    );
    // It waited for its children, so they are not even zombies any more.
    let left: Vec<String> = children
        .iter()
        .filter(|(_, pid)| Path::new(&format!("/proc/{pid}")).exists())
        .map(|(name, pid)| format!("{name} (pid {pid})"))
        .collect();
    ensure!(left.is_empty(), "left behind after SIGTERM: {left:?}");
    let stdout = std::fs::read_to_string(&run.stdout)?;
    ensure!(
        stdout == run.expected_ready_line(),
        "stdout must hold exactly the ready line, it holds {stdout:?}"
    );
    ensure!(
        run.dir.join("kubeconfig").is_file(),
        "a given --dir is kept after stopping"
    );
    Ok(())
}

/// `control-plane up --dir DIR` started as a guarded child (so it cannot outlive this test
/// either), with stdout and stderr in separate files.
struct ControlPlaneBinary {
    process: std::sync::Mutex<ManagedChild>,
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    _scratch: tempfile::TempDir,
}

impl ControlPlaneBinary {
    async fn start() -> anyhow::Result<Self> {
        let binary = workspace_bin("control-plane")?;
        // Resolve (and if needed build) the tools once here rather than in every binary run.
        let tools = tokio::task::spawn_blocking(tools_bin_dir).await??;
        let scratch = tempfile::tempdir()?;
        let dir = scratch.path().join("plane");
        let stdout = scratch.path().join("stdout");
        let stderr = scratch.path().join("stderr");
        let mut command = Command::new(binary);
        command
            .args(["up", "--dir"])
            .arg(&dir)
            .env(e2e_harness::TOOLS_BIN_ENV, tools);
        let process =
            ManagedChild::spawn_command("control-plane", command, &stderr, Some(&stdout))?;
        let run = Self {
            process: std::sync::Mutex::new(process),
            dir,
            stdout,
            stderr,
            _scratch: scratch,
        };
        run.wait_for_ready_line().await?;
        Ok(run)
    }

    fn pid(&self) -> u32 {
        self.process.lock().expect("not poisoned").pid()
    }

    fn expected_ready_line(&self) -> String {
        format!("ready KUBECONFIG={}/kubeconfig\n", self.dir.display())
    }

    async fn wait_for_ready_line(&self) -> anyhow::Result<()> {
        let line = wait_until(
            TIMEOUT,
            POLL,
            "control-plane to print its ready line",
            || async {
                if let Some(status) = self.process.lock().expect("not poisoned").exit_status() {
                    return Some(Err(anyhow::anyhow!(
                        "control-plane exited with {status} before it was ready; its stderr:\n{}",
                        log_tail(&self.stderr, 30)
                    )));
                }
                let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
                out.contains('\n').then_some(Ok(out))
            },
        )
        .await??;
        ensure!(
            line == self.expected_ready_line(),
            "expected the line {:?}, control-plane printed {line:?}",
            self.expected_ready_line()
        );
        Ok(())
    }

    /// The component processes the binary started, checked by name.
    fn component_pids(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let children: Vec<(String, u32)> = children_of(self.pid())
            .into_iter()
            .map(|pid| (command_name(pid), pid))
            .collect();
        let mut names: Vec<&str> = children.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        ensure!(
            names == COMPONENTS,
            "control-plane's children are {children:?}, expected {COMPONENTS:?}"
        );
        Ok(children)
    }
}

/// The executable name of a process (from /proc/PID/exe, as /proc/PID/comm is cut at 15 bytes).
fn command_name(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".into())
}

fn signal(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        bail!(
            "signal {signal} to pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

async fn wait_for_exit(
    process: &std::sync::Mutex<ManagedChild>,
    timeout: Duration,
) -> anyhow::Result<ExitStatus> {
    wait_until(timeout, POLL, "control-plane to exit", || async {
        process.lock().expect("not poisoned").exit_status()
    })
    .await
}
