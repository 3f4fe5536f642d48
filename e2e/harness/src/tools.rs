//! Finding the binaries tests run: the Go-built tools of `e2e/tools` and this workspace's own
//! binaries in the cargo target folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// Environment variable naming a folder that already holds etcd, kube-apiserver,
/// kube-controller-manager and helm (and for a test node kube-scheduler, kubelet and pause);
/// when set, `e2e/tools/build.sh` is not run.
pub const TOOLS_BIN_ENV: &str = "EHO_TOOLS_BIN";

/// The Go-built tools the control plane needs.
pub const CONTROL_PLANE_TOOLS: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// The workspace root.
///
/// Taken first from the `CARGO_MANIFEST_DIR` cargo sets when it runs a test or bench of a crate
/// in `<root>/e2e/<crate>`, because the cargo target folder is shared between clones and a
/// cached build of this crate remembers the clone it was compiled in. Otherwise the folder this
/// crate was compiled in (`<root>/e2e/harness`).
pub fn workspace_root() -> PathBuf {
    let at_run_time = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| dir.ancestors().nth(2).map(Path::to_path_buf))
        .filter(|root| root.join("e2e/tools/build.sh").is_file());
    at_run_time.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .expect("e2e/harness has two parent folders")
            .to_path_buf()
    })
}

/// The folder holding etcd, kube-apiserver, kube-controller-manager and helm.
///
/// Taken from `EHO_TOOLS_BIN` when set; otherwise `e2e/tools/build.sh` is run once per process,
/// which reuses its cache or builds the pinned versions (minutes on a cold machine; its progress
/// goes to stderr). Never skips: a missing Go or a failed build is an error saying so.
pub fn tools_bin_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| locate_tools().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Path of one tool in [`tools_bin_dir`], checked to exist.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = tools_bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{name} is missing from the tools folder {}; run e2e/tools/build.sh (or unset {TOOLS_BIN_ENV})",
            path.parent().unwrap_or(Path::new("")).display()
        );
    }
    Ok(path)
}

fn locate_tools() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os(TOOLS_BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => run_build_script()?,
    };
    check_tools_dir(dir)
}

/// `dir` if it holds every control plane tool; otherwise an error naming the missing ones.
fn check_tools_dir(dir: PathBuf) -> anyhow::Result<PathBuf> {
    let missing: Vec<&str> = CONTROL_PLANE_TOOLS
        .iter()
        .copied()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the tools folder {} lacks {}; build them with e2e/tools/build.sh \
             (or point {TOOLS_BIN_ENV} at a folder that has them)",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(dir)
}

fn run_build_script() -> anyhow::Result<PathBuf> {
    let script = workspace_root().join("e2e/tools/build.sh");
    if !script.is_file() {
        bail!(
            "{} not found; set {TOOLS_BIN_ENV} to a folder with etcd, kube-apiserver and kube-controller-manager",
            script.display()
        );
    }
    run_printing_path(
        &script,
        "The e2e tests need etcd, kube-apiserver and kube-controller-manager built from the \
         pinned Go modules (Go and the Go module proxy must be reachable for the first build)",
        "bin folder",
    )
}

/// Runs a build script of `e2e/tools` (its progress and Go's errors stay visible on stderr) and
/// returns the path it prints last. `why` follows a failure; `printed` names what it prints.
fn run_printing_path(script: &Path, why: &str, printed: &str) -> anyhow::Result<PathBuf> {
    let output = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); its error output is above. {why}",
            script.display(),
            output.status
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(|line| PathBuf::from(line.trim()))
        .with_context(|| format!("{} printed no {printed}", script.display()))
}

/// A tool that has its own pinned Go module and build script under `e2e/tools` (for example
/// `gitops-health/build.sh`, `promtool/build.sh`): the script is run once per process; it
/// reuses its cache or builds, and prints the binary's path last. Never skips: a failed build
/// is an error saying which script failed.
pub fn script_built_tool(script: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
        OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.get(script) {
        return Ok(path.clone());
    }
    let path = workspace_root().join("e2e/tools").join(script);
    let binary = run_printing_path(
        &path,
        "Go and the Go module proxy must be reachable for the first build",
        "binary path",
    )?;
    if !binary.is_file() {
        bail!(
            "{} printed {}, which is not a file",
            path.display(),
            binary.display()
        );
    }
    built.insert(script.to_string(), binary.clone());
    Ok(binary)
}

/// A binary of this workspace, from the cargo target folder the running test was built into
/// (`target/<profile>/<name>`, next to the `deps` folder of the test executable).
///
/// Integration tests only get `CARGO_BIN_EXE_*` for their own package's binaries, so other
/// crates' binaries are found here; they must have been built first.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut searched = Vec::new();
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(dir.display().to_string());
    }
    bail!(
        "binary `{name}` not found in {}; run `cargo build --workspace --bins` first",
        searched.join(" or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_tools_script() {
        assert!(workspace_root().join("e2e/tools/build.sh").is_file());
        assert!(workspace_root().join("Cargo.toml").is_file());
    }

    #[test]
    fn a_tools_folder_without_the_tools_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etcd"), "").unwrap();
        let err = check_tools_dir(dir.path().to_owned())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kube-apiserver, kube-controller-manager"),
            "{err}"
        );
        assert!(!err.contains("etcd,"), "etcd is there: {err}");
        assert!(err.contains("e2e/tools/build.sh"), "{err}");
    }

    #[test]
    fn a_missing_workspace_binary_names_the_build_command() {
        let err = workspace_bin("no-such-binary-e2e-harness")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-binary-e2e-harness"), "{err}");
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
    }
}
