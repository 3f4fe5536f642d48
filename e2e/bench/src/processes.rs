//! The emulator and the operator as child processes of the benchmark (they die with it), and
//! the one number the benchmark reads from /proc: peak resident memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use e2e_harness::process::{ManagedChild, log_tail};
use e2e_harness::wait_until;

/// A running IoT Hub emulator.
pub struct Emulator {
    /// The process (stopped on drop).
    pub process: ManagedChild,
    /// Its --dir: connection-string, ca.crt.
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
    /// Starts `binary --port 0 --dir DIR args...` and waits for its ready line.
    pub async fn start(binary: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut all = vec![
            "--port".to_string(),
            "0".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        let log = dir.join("emulator.log");
        let process = ManagedChild::spawn("iothub-emulator", binary, &all, &log)?;
        let port = wait_until(
            Duration::from_secs(60),
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

/// Starts `edge-hierarchy-operator run` against the cluster of `kubeconfig`, logging to `log`.
pub fn start_operator(
    binary: &Path,
    kubeconfig: &Path,
    log: &Path,
) -> anyhow::Result<ManagedChild> {
    let mut command = Command::new(binary);
    command
        .arg("run")
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1");
    ManagedChild::spawn_command("edge-hierarchy-operator", command, log, None)
}

/// `VmHWM` (peak resident set size) in KiB from the text of /proc/<pid>/status.
pub fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut fields = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    (fields.next()? == "kB").then_some(value)
}

/// Peak resident set size of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}; has the process exited?"))?;
    match parse_vm_hwm_kib(&text) {
        Some(kib) => Ok(kib),
        None => bail!("{path} has no VmHWM line in kB"),
    }
}

/// "release build" or "debug build", from the cargo profile folder the binary sits in.
pub fn build_profile(binary: &Path) -> &'static str {
    match binary
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some("release") => "release build",
        Some("debug") => "debug build",
        _ => "build profile unknown",
    }
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
    fn reads_vm_hwm_in_kib() {
        let status = "Name:\tedge-hierarchy\nVmPeak:\t  900000 kB\nVmHWM:\t   48212 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(48212));
        assert_eq!(parse_vm_hwm_kib("VmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_vm_hwm_kib("VmHWM:\t 12 MB\n"), None);
        assert_eq!(parse_vm_hwm_kib("VmHWM:\n"), None);
    }

    #[test]
    fn our_own_peak_rss_is_readable() {
        assert!(peak_rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn names_the_build_profile_from_the_target_folder() {
        assert_eq!(
            build_profile(Path::new("/w/target/release/edge-hierarchy-operator")),
            "release build"
        );
        assert_eq!(
            build_profile(Path::new("/w/target/debug/edge-hierarchy-operator")),
            "debug build"
        );
        assert_eq!(
            build_profile(Path::new("/usr/bin/edge-hierarchy-operator")),
            "build profile unknown"
        );
    }
}
