//! What the operator runs against, as child processes of the caller (they die with it): the IoT
//! Hub emulator, the operator binary, and the EdgeHierarchy CRD installed into a control plane.
//!
//! The e2e tests and the benchmark both start these; each passes its own binaries, flags and log
//! files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::control_plane::ControlPlane;
use crate::process::{ManagedChild, log_tail};
use crate::tools::workspace_root;
use crate::wait::wait_until;

/// The CRD manifest, relative to the workspace root.
pub const CRD_MANIFEST: &str = "crds/edgehierarchy.yaml";
/// The CRD's name, as `kubectl wait` addresses it.
pub const CRD_NAME: &str = "edgehierarchies.edgehierarchy.dev";
/// How long the emulator may take to print its ready line.
pub const EMULATOR_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running IoT Hub emulator and the files it wrote.
pub struct Emulator {
    /// The process (stopped on drop).
    pub process: ManagedChild,
    /// Its --dir: connection-string, ca.crt; its log is `emulator.log` in it.
    pub dir: PathBuf,
    /// The port it listens on (localhost).
    pub port: u16,
    /// The owner policy's connection string.
    pub connection_string: String,
    /// Its CA certificate (PEM).
    pub ca_pem: String,
}

/// The port of an emulator's `ready port=P connection-string=...` line.
pub fn ready_port(log: &str) -> Option<u16> {
    log.lines()
        .filter_map(|line| line.strip_prefix("ready "))
        .flat_map(str::split_whitespace)
        .find_map(|field| field.strip_prefix("port=")?.parse().ok())
}

impl Emulator {
    /// Starts `binary --port 0 --dir DIR args...`, logging to `DIR/emulator.log`, waits (up to
    /// [`EMULATOR_READY_TIMEOUT`]) for its ready line and reads the files it wrote.
    pub async fn start<S: AsRef<str>>(
        binary: &Path,
        dir: &Path,
        args: &[S],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut all = vec![
            "--port".to_string(),
            "0".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        let log = dir.join("emulator.log");
        let process = ManagedChild::spawn("iothub-emulator", binary, &all, &log)?;
        let port = wait_until(
            EMULATOR_READY_TIMEOUT,
            Duration::from_millis(100),
            "the emulator's ready line",
            || async { ready_port(&std::fs::read_to_string(&log).unwrap_or_default()) },
        )
        .await
        .with_context(|| log_tail(&log, 20))?;
        let connection_string = std::fs::read_to_string(dir.join("connection-string"))
            .with_context(|| format!("reading {}/connection-string", dir.display()))?
            .trim()
            .to_string();
        let ca_pem = std::fs::read_to_string(dir.join("ca.crt"))
            .with_context(|| format!("reading {}/ca.crt", dir.display()))?;
        Ok(Self {
            process,
            dir: dir.to_owned(),
            port,
            connection_string,
            ca_pem,
        })
    }
}

/// How to run the operator: what follows `run` on its command line, and its `RUST_LOG`.
#[derive(Clone, Copy, Debug)]
pub struct OperatorFlags<'a> {
    /// Arguments after `run`.
    pub args: &'a [&'a str],
    /// The `RUST_LOG` filter.
    pub rust_log: &'a str,
}

/// The operator binary as its own process.
pub struct Operator {
    /// The process (stopped on drop).
    pub process: ManagedChild,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Operator {
    /// Starts `binary run flags.args...` against the cluster of `kubeconfig`, with stdout and
    /// stderr appended to `log` and colours off.
    pub fn start(
        binary: &Path,
        kubeconfig: &Path,
        log: &Path,
        flags: OperatorFlags<'_>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg("run")
            .args(flags.args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", flags.rust_log)
            .env("NO_COLOR", "1");
        let process = ManagedChild::spawn_command("edge-hierarchy-operator", command, log, None)?;
        Ok(Self {
            process,
            log: log.to_owned(),
        })
    }

    /// SIGKILL, as a crash or an OOM kill would end it.
    pub fn kill_hard(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.process.pid() as i32, libc::SIGKILL);
        }
        let _ = self.process.stop(Duration::from_secs(5));
    }

    /// Everything it has logged so far (empty when the log is unreadable).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Applies the EdgeHierarchy CRD of this workspace and waits (up to 60 s) until it is
/// established.
pub fn install_crd(cluster: &ControlPlane) -> anyhow::Result<()> {
    let crd = workspace_root().join(CRD_MANIFEST);
    let out = cluster.kubectl(&["apply", "-f", &crd.display().to_string()])?;
    if !out.status.success() {
        bail!(
            "installing the CRD {} failed: {}",
            crd.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cluster.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        &format!("crd/{CRD_NAME}"),
    ])?;
    if !out.status.success() {
        bail!(
            "the CRD did not become established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_of_the_ready_line() {
        let log = "iothub-emulator: hub emulator on https://localhost:38145\nready port=38145 connection-string=/tmp/x/connection-string\n";
        assert_eq!(ready_port(log), Some(38145));
        assert_eq!(ready_port("starting\n"), None);
        assert_eq!(ready_port("ready port=notanumber\n"), None);
        assert_eq!(ready_port("not ready port=1\n"), None);
    }

    #[test]
    fn the_crd_manifest_is_in_the_workspace() {
        let text = std::fs::read_to_string(workspace_root().join(CRD_MANIFEST)).unwrap();
        assert!(text.contains(&format!("name: {CRD_NAME}")), "{CRD_NAME}");
    }

    #[tokio::test]
    async fn an_emulator_is_ready_with_the_port_and_files_it_wrote() {
        // Stands for the emulator: `SCRIPT --port 0 --dir DIR --strict` writes its files into DIR
        // ($4) and prints the ready line.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-emulator");
        std::fs::write(
            &script,
            "#!/bin/sh\nprintf 'HostName=h;SharedAccessKey=k\\n' > \"$4/connection-string\"\nprintf 'PEM' > \"$4/ca.crt\"\necho \"args: $*\"\necho \"ready port=4242 connection-string=$4/connection-string\"\nexec sleep 600\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hub = dir.path().join("hub");
        let mut emulator = Emulator::start(&script, &hub, &["--strict"]).await.unwrap();
        assert_eq!(emulator.port, 4242);
        assert_eq!(emulator.connection_string, "HostName=h;SharedAccessKey=k");
        assert_eq!(emulator.ca_pem, "PEM");
        assert_eq!(emulator.dir, hub);
        let log = std::fs::read_to_string(hub.join("emulator.log")).unwrap();
        let args = format!("args: --port 0 --dir {} --strict", hub.display());
        assert!(log.contains(&args), "{log}");
        emulator.process.stop(Duration::from_secs(5));
    }
}
