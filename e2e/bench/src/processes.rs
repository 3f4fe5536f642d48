//! What the benchmark reads about the operator's process: its peak resident memory (from /proc)
//! and the build profile of its binary. Starting the emulator and the operator is
//! `e2e_harness::operator_env`'s.

use std::path::Path;

use anyhow::{Context as _, bail};

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
