//! A real kubelet node for the test control plane: containerd (Debian's, with runc and the CNI
//! `loopback` plugin) and kubelet (built from the pinned Kubernetes module), registered as the
//! Node [`NODE_NAME`]. Started by [`crate::ControlPlane::start`] when
//! [`crate::ControlPlaneOptions::node`] is set.
//!
//! Everything the node keeps is below `DIR/node`: containerd's root, state and sockets, runc's
//! root, the CNI configuration, kubelet's root-dir, certificates and Pod logs (the shims use
//! abstract sockets named by a hash of our containerd socket). So two control planes with nodes
//! run side by side; kubelet, its healthz endpoint and containerd's streaming server take free loopback
//! ports.
//!
//! Networking: traffic stays on loopback. Pods must run with `hostNetwork: true`; they
//! reach the apiserver on `127.0.0.1:<port>` through `KUBERNETES_SERVICE_HOST`/`_PORT` in their
//! environment (no kube-proxy, no Service routing). containerd reports the network ready only
//! with a CNI configuration; ours has the loopback plugin alone, so no bridge, route or address
//! outside is ever made, and a Pod without hostNetwork does not start (containerd 1.6 wants an
//! `eth0` in the CNI result: "failed to find network info for sandbox"). kubelet refuses a
//! loopback node IP, so the Node has no addresses and its Pods no IPs; `kubectl logs` (which
//! needs a node address) does not work: read the files below [`Node::pod_logs_dir`] instead.
//!
//! Images are never pulled: load them with [`load_image`] (or `control-plane load-image`) and use
//! `imagePullPolicy: Never` (or `IfNotPresent`). The sandbox image is built here from
//! `e2e/tools/pause` and imported at start.
//!
//! Nothing outlives the node: [`Node`]'s drop stops kubelet, force-deletes every runc container
//! (processes and cgroups), stops containerd, kills the shims and lazily unmounts whatever is
//! still mounted below `DIR/node` (rootfs overlays, `/dev/shm` of the sandboxes, the Pods'
//! projected volumes, network namespaces). A start sweeps the same leftovers of an earlier run
//! that was killed without unwinding.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::Node as NodeObject;

use crate::kubeconfig;
use crate::pki::{NODE_NAME, Pki};
use crate::process::{ManagedChild, STOP_GRACE_PERIOD};
use crate::tools;

/// The name the sandbox image is imported under (and containerd's `sandbox_image`).
pub const PAUSE_IMAGE: &str = "e2e.local/pause:1";

/// The runc binary containerd is configured with (Debian's `runc` package).
const RUNC: &str = "/usr/sbin/runc";
/// Where Debian's `containernetworking-plugins` puts the CNI plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// A running test node: containerd and kubelet. Dropping it (or [`Node::stop`]) removes every
/// trace of it (see the module documentation).
pub struct Node {
    dir: PathBuf,
    /// containerd, then kubelet; stopped in reverse.
    children: Vec<ManagedChild>,
    ready_time: Duration,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("dir", &self.dir)
            .field("ready_time", &self.ready_time)
            .finish_non_exhaustive()
    }
}

/// The paths of the node below its folder (`DIR/node`).
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(control_plane_dir: &Path) -> Self {
        Self {
            dir: control_plane_dir.join("node"),
        }
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
    fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    fn pod_logs(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
}

impl Node {
    /// Starts containerd, imports the sandbox image, starts kubelet and waits (up to `timeout`)
    /// until the Node is Ready. `logs` is the control plane's logs folder.
    pub(crate) async fn start(
        control_plane_dir: &Path,
        pki: &Pki,
        server: &str,
        kube_config: &kube::Config,
        timeout: Duration,
    ) -> anyhow::Result<Node> {
        let started = Instant::now();
        let layout = Layout::new(control_plane_dir);
        let logs = control_plane_dir.join("logs");
        let (kubelet_bin, pause_bin, imagebuild) = tokio::task::spawn_blocking(|| {
            anyhow::Ok((
                tools::tool("kubelet")?,
                tools::tool("pause")?,
                tools::script_built_tool("imagebuild/build.sh")?,
            ))
        })
        .await
        .context("the tools lookup task failed")??;
        check_host_tools()?;

        // A node starts empty, like etcd: sweep what a killed earlier run left, then wipe.
        let dir = layout.dir.clone();
        tokio::task::spawn_blocking(move || sweep(&dir))
            .await
            .context("the sweep task failed")??;
        if layout.dir.exists() {
            std::fs::remove_dir_all(&layout.dir).with_context(|| {
                format!("removing the old node folder {}", layout.dir.display())
            })?;
        }
        for sub in [
            layout.cni_conf_dir(),
            layout.kubelet_root(),
            layout.pod_logs(),
        ] {
            std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        std::fs::write(
            layout.cni_conf_dir().join("10-loopback.conflist"),
            CNI_LOOPBACK_CONFIG,
        )
        .context("writing the CNI configuration")?;
        let containerd_config = layout.dir.join("containerd.toml");
        std::fs::write(&containerd_config, containerd_config_toml(&layout))
            .context("writing the containerd configuration")?;

        let mut node = Node {
            dir: layout.dir.clone(),
            children: Vec::new(),
            ready_time: Duration::ZERO,
        };
        node.children.push(ManagedChild::spawn(
            "containerd",
            Path::new("containerd"),
            &[format!("--config={}", containerd_config.display())],
            &logs.join("containerd.log"),
        )?);
        node.wait_containerd(&layout, timeout).await?;

        // The sandbox image, built from our own pause program: nothing is pulled.
        let pause_rootfs = layout.dir.join("pause-rootfs");
        std::fs::create_dir_all(&pause_rootfs)?;
        std::fs::copy(&pause_bin, pause_rootfs.join("pause"))
            .context("copying pause into its image folder")?;
        let pause_tar = layout.dir.join("pause.tar");
        run_checked(
            Command::new(&imagebuild)
                .arg("-rootfs")
                .arg(&pause_rootfs)
                .args(["-tag", PAUSE_IMAGE, "-entrypoint", "/pause", "-out"])
                .arg(&pause_tar),
            "building the pause image",
        )?;
        load_image(control_plane_dir, &pause_tar, None)?;

        let [kubelet_port, healthz_port] = free_ports()?;
        let kubelet_kubeconfig = layout.dir.join("kubelet.kubeconfig");
        kubeconfig::write(
            &kubelet_kubeconfig,
            &kubeconfig::render(server, &pki.ca_cert_pem, NODE_NAME, &pki.kubelet),
        )?;
        let kubelet_config = layout.dir.join("kubelet.yaml");
        std::fs::write(
            &kubelet_config,
            kubelet_config_yaml(&layout, &pki.files.ca_cert, kubelet_port, healthz_port),
        )
        .context("writing the kubelet configuration")?;
        node.children.push(ManagedChild::spawn(
            "kubelet",
            &kubelet_bin,
            &[
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", kubelet_kubeconfig.display()),
                format!("--root-dir={}", layout.kubelet_root().display()),
                format!("--cert-dir={}", layout.dir.join("kubelet-pki").display()),
                format!("--hostname-override={NODE_NAME}"),
                // Keeps kubelet from advertising a non-loopback address; kubelet rejects this
                // one for the Node's addresses (logged every status update), see the module docs.
                "--node-ip=127.0.0.1".to_owned(),
                "--v=1".to_owned(),
            ],
            &logs.join("kubelet.log"),
        )?);
        node.wait_ready(kube_config, timeout).await?;
        node.ready_time = started.elapsed();
        Ok(node)
    }

    /// The node's folder, `DIR/node`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's socket (for `ctr --address`).
    pub fn containerd_socket(&self) -> PathBuf {
        Layout {
            dir: self.dir.clone(),
        }
        .socket()
    }

    /// Where kubelet writes the containers' logs:
    /// `<namespace>_<pod>_<uid>/<container>/<restart>.log`.
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }

    /// How long the start took, from the tools lookup to the Node being Ready.
    pub fn ready_time(&self) -> Duration {
        self.ready_time
    }

    /// Fails, naming the process and quoting its log, if containerd or kubelet has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.exit_status() {
                bail!(
                    "{} exited unexpectedly ({status}); last lines of {}:\n{}",
                    child.name(),
                    child.log_path().display(),
                    child.log_tail(30)
                );
            }
        }
        Ok(())
    }

    /// Stops the node and removes its containers, processes and mounts (what drop does).
    /// Blocking. Errors of the sweep are printed to stderr, since drop cannot return them.
    pub fn stop(&mut self) {
        // kubelet first, so it starts no container while the others are removed.
        while let Some(mut child) = self.children.pop() {
            if child.name() == "containerd" {
                // Containers go before containerd, while their shims still answer it.
                if let Err(err) = delete_containers(&Layout {
                    dir: self.dir.clone(),
                }) {
                    eprintln!("node: {err:#}");
                }
            }
            child.stop(STOP_GRACE_PERIOD);
        }
        if let Err(err) = sweep(&self.dir) {
            eprintln!("node: {err:#}");
        }
    }

    async fn wait_containerd(&mut self, layout: &Layout, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.fail_if_exited()?;
            if layout.socket().exists() {
                let version = ctr(layout)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if version.is_ok_and(|s| s.success()) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not answer on {} within {timeout:?}; last lines of its log:\n{}",
                    layout.socket().display(),
                    self.children[0].log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_ready(&mut self, config: &kube::Config, timeout: Duration) -> anyhow::Result<()> {
        let client = kube::Client::try_from(config.clone())
            .context("building a kube client from the admin kubeconfig")?;
        let nodes: kube::Api<NodeObject> = kube::Api::all(client);
        let deadline = Instant::now() + timeout;
        let mut last = "not registered".to_owned();
        loop {
            self.fail_if_exited()?;
            match nodes.get_opt(NODE_NAME).await {
                Ok(Some(node)) => {
                    let ready = node
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .into_iter()
                        .find(|c| c.type_ == "Ready");
                    match ready {
                        Some(c) if c.status == "True" => return Ok(()),
                        Some(c) => {
                            last = format!(
                                "Ready={} ({}: {})",
                                c.status,
                                c.reason.unwrap_or_default(),
                                c.message.unwrap_or_default()
                            )
                        }
                        None => last = "registered, no Ready condition yet".to_owned(),
                    }
                }
                Ok(None) => {}
                Err(err) => last = format!("reading the Node failed: {err}"),
            }
            if Instant::now() >= deadline {
                let kubelet = self.children.last().expect("kubelet was started");
                bail!(
                    "Node {NODE_NAME} did not become Ready within {timeout:?} (last seen: {last}); \
                     last lines of {}:\n{}",
                    kubelet.log_path().display(),
                    kubelet.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn fail_if_exited(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.exit_status() {
                bail!(
                    "{} exited during start-up ({status}); last lines of {}:\n{}",
                    child.name(),
                    child.log_path().display(),
                    child.log_tail(40)
                );
            }
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Imports a docker-archive or OCI tar into the node of the control plane in
/// `control_plane_dir` (containerd namespace `k8s.io`, all platforms), and with `tag` also
/// names the imported image `tag` (normalized as kubelet does: `name:v2` becomes
/// `docker.io/library/name:v2`). Returns the names the image is now known by.
///
/// The node must be running (`control-plane up --dir DIR --node`). Blocking: it runs `ctr`.
pub fn load_image(
    control_plane_dir: &Path,
    archive: &Path,
    tag: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let layout = Layout::new(control_plane_dir);
    if !layout.socket().exists() {
        bail!(
            "no node runs in {}: {} is missing; start one with `control-plane up --dir {} --node`",
            control_plane_dir.display(),
            layout.socket().display(),
            control_plane_dir.display()
        );
    }
    if !archive.is_file() {
        bail!("the image archive {} does not exist", archive.display());
    }
    let output = run_checked(
        ctr(&layout)
            .args(["-n", "k8s.io", "images", "import", "--all-platforms"])
            .arg(archive),
        &format!("importing {}", archive.display()),
    )?;
    // ctr prints `unpacking NAME (sha256:...)...done` for each image of the archive.
    let mut names: Vec<String> = output
        .lines()
        .filter_map(|line| line.strip_prefix("unpacking "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        bail!(
            "{} holds no tagged image (ctr printed: {output:?}); tag it when building it",
            archive.display()
        );
    }
    if let Some(tag) = tag {
        if names.len() != 1 {
            bail!(
                "--tag needs an archive with one image; {} holds {}",
                archive.display(),
                names.join(", ")
            );
        }
        let target = normalize_image_name(tag)?;
        // Re-tagging to a name that exists already would fail: replace it.
        let _ = ctr(&layout)
            .args(["-n", "k8s.io", "images", "rm", &target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        run_checked(
            ctr(&layout).args(["-n", "k8s.io", "images", "tag", &names[0], &target]),
            &format!("tagging {} as {target}", names[0]),
        )?;
        names.push(target);
    }
    Ok(names)
}

/// `NAME:TAG` as containerd's CRI plugin looks it up: a name without a registry is on
/// docker.io, and a one-part docker.io name is under `library/`.
fn normalize_image_name(name: &str) -> anyhow::Result<String> {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.is_empty() || !last.contains(':') || name.contains('@') || name.contains(' ') {
        bail!("--tag {name:?} is not NAME:TAG (for example edge-hierarchy-operator:v2)");
    }
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let has_registry =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    Ok(match (has_registry, first.is_empty()) {
        (true, _) => name.to_owned(),
        (false, true) => format!("docker.io/library/{rest}"),
        (false, false) => format!("docker.io/{name}"),
    })
}

fn ctr(layout: &Layout) -> Command {
    let mut command = Command::new("ctr");
    command.arg("--address").arg(layout.socket());
    command.stdin(Stdio::null());
    command
}

/// Runs `command` and returns its stdout, or fails with `what`, its status and output.
fn run_checked(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: starting {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The Debian packages the node runs, with the fix when one is missing.
fn check_host_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("containerd", "/usr/bin/containerd"),
        ("ctr", "/usr/bin/ctr"),
        (
            "containerd-shim-runc-v2",
            "/usr/bin/containerd-shim-runc-v2",
        ),
        ("runc", RUNC),
        ("the CNI loopback plugin", "/usr/lib/cni/loopback"),
    ]
    .into_iter()
    .filter(|(_, path)| !Path::new(path).is_file())
    .map(|(name, _)| name)
    .collect();
    if !missing.is_empty() {
        bail!(
            "the test node needs {} (Debian packages containerd, runc, \
             containernetworking-plugins); run scripts/install-deps.sh as root",
            missing.join(", ")
        );
    }
    Ok(())
}

fn free_ports() -> anyhow::Result<[u16; 2]> {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok([a.local_addr()?.port(), b.local_addr()?.port()])
}

/// Only the loopback plugin: enough for containerd to report the network ready, and a Pod
/// without hostNetwork gets a namespace with `lo` up and nothing else.
const CNI_LOOPBACK_CONFIG: &str =
    r#"{"cniVersion": "1.0.0", "name": "e2e-loopback", "plugins": [{"type": "loopback"}]}"#;

fn containerd_config_toml(layout: &Layout) -> String {
    let d = layout.dir.display();
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"# Generated by the e2e harness: a containerd of its own for one test node.
version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"

[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Port 0: the streaming server (exec, attach, port-forward) takes a free loopback port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_tcp_service = true
  # Root here lacks CAP_SYS_RESOURCE: never lower a container's OOM score below ours.
  restrict_oom_score_adj = true
  # The Pods' network namespaces are mounted below our state folder, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{runc}"
        SystemdCgroup = false
"#,
        cni = layout.cni_conf_dir().display(),
        runc = layout.runc_root().display(),
    )
}

fn kubelet_config_yaml(layout: &Layout, ca: &Path, port: u16, healthz_port: u16) -> String {
    format!(
        r#"# Generated by the e2e harness: a kubelet for one test node on cgroup v1.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
containerRuntimeEndpoint: unix://{socket}
podLogsDir: {pod_logs}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
# cgroup v1 without systemd; no QoS or allocatable cgroups (we may not set every limit).
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# Root here lacks CAP_SYS_RESOURCE, so kubelet cannot lower its own OOM score.
oomScoreAdj: 0
# Imported images cannot be pulled back: never garbage-collect them, and evict only when
# the disk is all but full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
"#,
        socket = layout.socket().display(),
        pod_logs = layout.pod_logs().display(),
        ca = ca.display(),
    )
}

/// Removes every runc container of the node (SIGKILL to its processes, then its cgroups and
/// state), in every containerd namespace.
fn delete_containers(layout: &Layout) -> anyhow::Result<()> {
    let root = layout.runc_root();
    let Ok(namespaces) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    for namespace in namespaces.flatten() {
        let ns_root = namespace.path();
        let Ok(containers) = std::fs::read_dir(&ns_root) else {
            continue;
        };
        for container in containers.flatten() {
            if !container.path().is_dir() {
                continue;
            }
            let id = container.file_name().to_string_lossy().into_owned();
            let status = Command::new(RUNC)
                .arg("--root")
                .arg(&ns_root)
                .args(["delete", "--force", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !status.is_ok_and(|s| s.success()) && container.path().exists() {
                errors.push(id);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "runc could not delete the containers {} of {}",
            errors.join(", "),
            root.display()
        ))
    }
}

/// Removes what a node in `node_dir` may have left: its runc containers, any process whose
/// command line names a path below `node_dir` (containerd, kubelet, the shims, which name our
/// containerd socket), and every mount below `node_dir`.
fn sweep(node_dir: &Path) -> anyhow::Result<()> {
    delete_containers(&Layout {
        dir: node_dir.to_owned(),
    })?;
    let leftover = processes_naming(node_dir);
    for &pid in &leftover {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while leftover.iter().any(|&pid| crate::process::is_running(pid)) {
        if Instant::now() >= deadline {
            bail!(
                "processes {leftover:?} of the node in {} did not die",
                node_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unmount_below(node_dir)
}

/// Live processes (not us) with an argument that is, or is below, `dir`.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let prefix = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && crate::process::is_running(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&b| b == 0)
                    .map(String::from_utf8_lossy)
                    .any(|arg| names_path_below(&arg, &prefix))
            })
        })
        .collect()
}

/// Whether a command-line argument (`PATH`, `--flag=PATH`, `unix://PATH`) names `prefix` or a
/// path below it.
fn names_path_below(arg: &str, prefix: &str) -> bool {
    arg.match_indices(prefix).any(|(at, _)| {
        let after = &arg[at + prefix.len()..];
        after.is_empty() || after.starts_with('/')
    })
}

/// Mount points at or below `dir` in our mount namespace, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mount_point(point)))
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mount_point(point: &str) -> String {
    let bytes = point.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(code) = u8::from_str_radix(&point[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_below(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // A few rounds: a detached mount can uncover one mounted beneath it at the same point.
    for _ in 0..5 {
        let mounts = mounts_below(dir);
        if mounts.is_empty() {
            return Ok(());
        }
        for point in mounts {
            let Ok(c_path) = std::ffi::CString::new(point.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
            unsafe {
                libc::umount2(c_path.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    let left = mounts_below(dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("could not unmount {left:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_normalized_as_the_cri_plugin_looks_them_up() {
        let n = |s| normalize_image_name(s).unwrap();
        assert_eq!(
            n("edge-hierarchy-operator:v2"),
            "docker.io/library/edge-hierarchy-operator:v2"
        );
        assert_eq!(n("acme/operator:v2"), "docker.io/acme/operator:v2");
        assert_eq!(n("e2e.local/pause:1"), "e2e.local/pause:1");
        assert_eq!(n("localhost:5000/op:1"), "localhost:5000/op:1");
        assert_eq!(n("localhost/op:1"), "localhost/op:1");
        let err = normalize_image_name("edge-hierarchy-operator")
            .unwrap_err()
            .to_string();
        assert!(err.contains("NAME:TAG"), "{err}");
        assert!(normalize_image_name("localhost:5000/op").is_err());
    }

    #[test]
    fn an_argument_names_a_path_only_at_a_component_boundary() {
        assert!(names_path_below("--config=/d/node/kubelet.yaml", "/d/node"));
        assert!(names_path_below("/d/node", "/d/node"));
        assert!(names_path_below(
            "unix:///d/node/containerd.sock",
            "/d/node"
        ));
        assert!(!names_path_below("/d/node2/containerd.sock", "/d/node"));
        assert!(!names_path_below("--dir=/d", "/d/node"));
    }

    #[test]
    fn mount_points_with_escapes_are_read_back() {
        assert_eq!(unescape_mount_point(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_point("/plain"), "/plain");
        assert_eq!(unescape_mount_point(r"/end\04"), r"/end\04");
    }
}
