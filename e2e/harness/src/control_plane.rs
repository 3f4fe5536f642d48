//! A real, local Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager on
//! free loopback ports, with a throw-away PKI, RBAC on and an admin kubeconfig.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::kubeconfig;
use crate::node::{self, Node};
use crate::pki::Pki;
use crate::process::{ManagedChild, STOP_GRACE_PERIOD};
use crate::tools;

/// Controllers kube-controller-manager runs: ownerReference garbage collection and namespace
/// deletion, which the operator relies on. (Canonical names of Kubernetes >= 1.28.)
pub const DEFAULT_CONTROLLERS: [&str; 2] = ["garbage-collector-controller", "namespace-controller"];

/// How many times start-up is retried when a picked port was taken by someone else meanwhile.
const PORT_CONFLICT_ATTEMPTS: usize = 3;

/// How a [`ControlPlane`] is started.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Folder for the PKI, kubeconfigs, etcd data and logs. `None`: a fresh temporary folder,
    /// removed when the control plane stops. A given folder is kept; its `etcd` subfolder is
    /// wiped at start, so every control plane starts empty.
    pub dir: Option<PathBuf>,
    /// How long to wait for each component to come up (etcd's port, the apiserver's /readyz).
    pub startup_timeout: Duration,
    /// Controllers passed to kube-controller-manager's `--controllers` ([`NODE_CONTROLLERS`]
    /// are added when `node` is set).
    pub controllers: Vec<String>,
    /// Also run a real node ([`crate::node`]): kube-scheduler, containerd and a kubelet
    /// registered as the Node `e2e-node`; [`ControlPlane::start`] returns once it is Ready.
    /// The apiserver then also runs the Node authorizer, the ServiceAccount and NodeRestriction
    /// admission plugins, and kube-controller-manager publishes `kube-root-ca.crt`, so Pods get
    /// projected service-account tokens. Load images with [`ControlPlane::load_image`].
    pub node: bool,
}

impl ControlPlaneOptions {
    /// These options with a real node (see [`ControlPlaneOptions::node`]):
    /// `ControlPlane::start(ControlPlaneOptions::default().with_node())`.
    pub fn with_node(mut self) -> Self {
        self.node = true;
        self
    }
}

/// Controllers a node's workloads need besides [`DEFAULT_CONTROLLERS`]: Deployments and their
/// ReplicaSets, a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in every
/// namespace (both needed for projected tokens), the node lifecycle (it lifts the not-ready
/// taint a new Node starts with), and PodDisruptionBudgets.
pub const NODE_CONTROLLERS: [&str; 6] = [
    "deployment-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "node-lifecycle-controller",
    "disruption-controller",
];

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            dir: None,
            // A cold start on two busy cores takes tens of seconds; this bounds a hang, not speed.
            startup_timeout: Duration::from_secs(180),
            controllers: DEFAULT_CONTROLLERS.iter().map(|c| c.to_string()).collect(),
            node: false,
        }
    }
}

/// A running control plane. Dropping it (or calling [`ControlPlane::stop`]) stops every process
/// it started: kube-controller-manager, then kube-apiserver, then etcd.
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    kube_config: kube::Config,
    /// In start order (etcd, kube-apiserver, kube-controller-manager); stopped in reverse.
    children: Mutex<Vec<ManagedChild>>,
    /// How each component was started, so [`ControlPlane::restart`] can start it again the
    /// same way (same binary, flags, ports, data folder and certificates).
    commands: Vec<ComponentCommand>,
    startup_timeout: Duration,
    startup_time: Duration,
    /// The node, when started with [`ControlPlaneOptions::node`]; stopped before the rest.
    node: Mutex<Option<Node>>,
    /// Declared last so the folder is removed only after the children have stopped.
    _temp_dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.dir)
            .field("server", &self.server)
            .field("processes", &self.processes())
            .finish_non_exhaustive()
    }
}

/// A component process of the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentProcess {
    /// `etcd`, `kube-apiserver` or `kube-controller-manager`.
    pub name: String,
    /// Its process id (also its process group id).
    pub pid: u32,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
}

/// The command line a component was started with.
#[derive(Debug, Clone)]
struct ComponentCommand {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl ComponentCommand {
    fn spawn(&self) -> anyhow::Result<ManagedChild> {
        ManagedChild::spawn(&self.name, &self.program, &self.args, &self.log)
    }
}

struct Tools {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
    /// Only looked up for a node.
    scheduler: Option<PathBuf>,
}

/// A start attempt failed; `port_conflict` says whether retrying with other ports may help.
struct AttemptError {
    error: anyhow::Error,
    port_conflict: bool,
}

impl From<anyhow::Error> for AttemptError {
    fn from(error: anyhow::Error) -> Self {
        Self {
            error,
            port_conflict: false,
        }
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and returns once the apiserver's
    /// /readyz answers `ok` and the admin kubeconfig (`DIR/kubeconfig`) works.
    ///
    /// The tools come from [`tools::tools_bin_dir`] (built on first use). On failure the error
    /// carries the tail of the failing component's log, and nothing is left running.
    pub async fn start(options: ControlPlaneOptions) -> anyhow::Result<ControlPlane> {
        let started = Instant::now();
        let with_node = options.node;
        let tools = tokio::task::spawn_blocking(move || -> anyhow::Result<Tools> {
            Ok(Tools {
                etcd: tools::tool("etcd")?,
                apiserver: tools::tool("kube-apiserver")?,
                controller_manager: tools::tool("kube-controller-manager")?,
                scheduler: with_node
                    .then(|| tools::tool("kube-scheduler"))
                    .transpose()?,
            })
        })
        .await
        .context("the tools lookup task failed")??;

        let (dir, temp_dir) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("creating the control plane folder {}", dir.display())
                })?;
                (dir.canonicalize()?, None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("control-plane-")
                    .tempdir()
                    .context("creating a temporary folder for the control plane")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        std::fs::create_dir_all(dir.join("logs")).context("creating the logs folder")?;
        let pki = Pki::generate(&dir.join("pki"))?;

        let mut attempt = 1;
        let (children, commands, server, kube_config) = loop {
            match start_components(&dir, &pki, &tools, &options).await {
                Ok(started) => break started,
                Err(failed) if failed.port_conflict && attempt < PORT_CONFLICT_ATTEMPTS => {
                    attempt += 1;
                }
                Err(failed) => return Err(failed.error),
            }
        };
        // Held by a guard until the control plane is assembled: a failed node start stops the
        // components started so far.
        let components = StartedComponents(children);
        let node = if options.node {
            Some(Node::start(&dir, &pki, &server, &kube_config, options.startup_timeout).await?)
        } else {
            None
        };
        let children = components.into_vec();

        Ok(ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            server,
            kube_config,
            children: Mutex::new(children),
            commands,
            startup_timeout: options.startup_timeout,
            startup_time: started.elapsed(),
            node: Mutex::new(node),
            _temp_dir: temp_dir,
        })
    }

    /// The admin kubeconfig (`DIR/kubeconfig`; user `admin` in group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The folder holding the PKI, kubeconfigs, etcd data and logs (`DIR/logs/<component>.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// How long [`ControlPlane::start`] took, tool lookup included.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// How long the node took to start, to the Node being Ready (the node's share of
    /// [`ControlPlane::startup_time`]); `None` without a node.
    pub fn node_ready_time(&self) -> Option<Duration> {
        self.lock_node().as_ref().map(Node::ready_time)
    }

    /// The node's folder, `DIR/node` (see [`crate::node`]); `None` without a node.
    pub fn node_dir(&self) -> Option<PathBuf> {
        self.lock_node().as_ref().map(|n| n.dir().to_owned())
    }

    /// Where kubelet writes the containers' logs (`kubectl logs` cannot reach this node:
    /// it has no address); `None` without a node.
    pub fn pod_logs_dir(&self) -> Option<PathBuf> {
        self.lock_node().as_ref().map(Node::pod_logs_dir)
    }

    /// Imports a docker-archive or OCI tar into the node's containerd (namespace `k8s.io`, all
    /// platforms; Pods use it with `imagePullPolicy: Never` or `IfNotPresent`). With `tag` the
    /// image is also named `tag` (`NAME:TAG`, normalized like kubelet does). Returns the names
    /// the image is known by. Fails if the control plane has no node.
    pub async fn load_image(
        &self,
        archive: &Path,
        tag: Option<&str>,
    ) -> anyhow::Result<Vec<String>> {
        if self.lock_node().is_none() {
            bail!("this control plane has no node; start it with ControlPlaneOptions::with_node()");
        }
        let (dir, archive, tag) = (self.dir.clone(), archive.to_owned(), tag.map(str::to_owned));
        tokio::task::spawn_blocking(move || node::load_image(&dir, &archive, tag.as_deref()))
            .await
            .context("the image import task failed")?
    }

    /// A kube client authenticated as the admin. Must be called inside a tokio runtime (the
    /// client spawns its connection worker there), so tests running on several runtimes each
    /// get a client of their own.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config.clone())
            .expect("the admin kube config was already used successfully at start-up")
    }

    /// The processes of the control plane that have not been stopped.
    pub fn processes(&self) -> Vec<ComponentProcess> {
        self.lock_children()
            .iter()
            .map(|c| ComponentProcess {
                name: c.name().to_owned(),
                pid: c.pid(),
                log: c.log_path().to_owned(),
            })
            .collect()
    }

    /// Fails, naming the component and quoting its log, if a component has exited.
    pub fn check_running(&self) -> anyhow::Result<()> {
        if let Some(node) = self.lock_node().as_mut() {
            node.check_running()?;
        }
        let mut children = self.lock_children();
        for child in children.iter_mut() {
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

    /// Stops one component (`etcd`, `kube-apiserver` or `kube-controller-manager`) with SIGTERM
    /// (SIGKILL after the grace period), keeps it down for `downtime`, and starts it again in
    /// place: same binary and flags, so the same ports, etcd data folder and certificates, and
    /// clients (the other components, the operator, kubeconfigs) reconnect to what they knew.
    /// Returns once it serves again: etcd's client port, or the apiserver's `/readyz` (after an
    /// etcd restart too, so the cluster answers when this returns), or kube-controller-manager's
    /// "Started controller" log line (a new one).
    ///
    /// The new process is a [`ManagedChild`] held by the control plane like the first one, so
    /// it is stopped with the rest and cannot outlive the caller either.
    pub async fn restart(&self, component: &str, downtime: Duration) -> anyhow::Result<()> {
        let command = self
            .commands
            .iter()
            .find(|c| c.name == component)
            .cloned()
            .with_context(|| {
                format!(
                    "no control plane component named {component:?}; the components are \
                     etcd, kube-apiserver and kube-controller-manager (and kube-scheduler \
                     with a node)"
                )
            })?;
        let old = {
            let mut children = self.lock_children();
            let index = children
                .iter()
                .position(|c| c.name() == component)
                .with_context(|| format!("{component} has been stopped already"))?;
            children.remove(index)
        };
        // Stopping waits on the process: keep it off the async worker threads.
        tokio::task::spawn_blocking(move || {
            let mut old = old;
            old.stop(STOP_GRACE_PERIOD);
        })
        .await
        .context("the task stopping the component failed")?;
        tokio::time::sleep(downtime).await;
        // What the log held before, so a fresh "Started controller" line is waited for.
        let log_len = std::fs::metadata(&command.log).map_or(0, |m| m.len());
        let mut child = command.spawn()?;
        let ready = self
            .wait_restarted(&mut child, &command, log_len)
            .await
            .map_err(|e| e.error);
        // Held again (in start order) whether or not it came up: stop() and Drop stop it.
        {
            let mut children = self.lock_children();
            let order = |name: &str| self.commands.iter().position(|c| c.name == name);
            let at = children
                .iter()
                .position(|c| order(c.name()) > order(component))
                .unwrap_or(children.len());
            children.insert(at, child);
        }
        ready.with_context(|| format!("restarting {component}"))
    }

    async fn wait_restarted(
        &self,
        child: &mut ManagedChild,
        command: &ComponentCommand,
        log_len: u64,
    ) -> Result<(), AttemptError> {
        let timeout = self.startup_timeout;
        let one = std::slice::from_mut(child);
        match command.name.as_str() {
            "etcd" => {
                let port = self
                    .commands
                    .iter()
                    .find(|c| c.name == "etcd")
                    .and_then(|c| {
                        c.args
                            .iter()
                            .find_map(|a| a.strip_prefix("--listen-client-urls=http://127.0.0.1:"))
                    })
                    .and_then(|p| p.parse().ok())
                    .context("etcd's client port is not in its flags")?;
                wait_for_port(one, port, timeout).await?;
                self.wait_apiserver_ready(timeout).await
            }
            "kube-apiserver" => wait_for_readyz(one, &self.kube_config, timeout).await,
            // It has no serving endpoint and logs nothing fixed at start: running is all we know.
            "kube-scheduler" => fail_if_exited(one),
            _ => wait_for_new_log_line(one, KCM_STARTED_MARKER, log_len, timeout).await,
        }
    }

    /// Waits for the running apiserver's `/readyz`, failing if it has exited.
    async fn wait_apiserver_ready(&self, timeout: Duration) -> Result<(), AttemptError> {
        let client = kube::Client::try_from(self.kube_config.clone())
            .context("building a kube client from the admin kubeconfig")?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a static request is valid");
            let answer =
                tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await;
            if matches!(&answer, Ok(Ok(body)) if body.trim() == "ok") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "kube-apiserver did not become ready within {timeout:?} after etcd restarted"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `kubectl` (from PATH) with `KUBECONFIG` set to the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running kubectl {}; is kubectl on PATH?", args.join(" ")))
    }

    /// Runs `kubectl apply -f -` with `yaml` on stdin.
    pub fn kubectl_apply_stdin(&self, yaml: &str) -> anyhow::Result<Output> {
        use std::io::Write;
        let mut child = std::process::Command::new("kubectl")
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl apply -f -; is kubectl on PATH?")?;
        let mut stdin = child.stdin.take().context("kubectl's stdin")?;
        // Write from a thread: a large manifest could fill the pipe while kubectl already
        // writes output we are not yet reading.
        let yaml = yaml.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(yaml.as_bytes()));
        let output = child
            .wait_with_output()
            .context("waiting for kubectl apply")?;
        writer
            .join()
            .map_err(|_| anyhow!("the thread feeding kubectl's stdin panicked"))?
            .context("writing the manifest to kubectl's stdin")?;
        Ok(output)
    }

    /// Stops every component (SIGTERM, SIGKILL after a grace period) in reverse start order, and
    /// removes a temporary folder. Dropping the control plane does the same.
    pub async fn stop(self) {
        let node = self.lock_node().take();
        let children = std::mem::take(&mut *self.lock_children());
        // Stopping waits on processes: keep it off the async worker threads.
        let _ = tokio::task::spawn_blocking(move || {
            drop(node);
            stop_all(children)
        })
        .await;
    }

    fn lock_node(&self) -> std::sync::MutexGuard<'_, Option<Node>> {
        self.node
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, Vec<ManagedChild>> {
        // A panic while holding the lock leaves the list intact; keep using it so that Drop
        // still stops everything.
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        drop(self.lock_node().take());
        let children = std::mem::take(&mut *self.lock_children());
        stop_all(children);
    }
}

/// The components of one start attempt. If the attempt fails (or its future is dropped), they
/// are stopped newest first: the apiserver must not outlive etcd, or it spends its whole grace
/// period retrying etcd.
#[derive(Default)]
struct StartedComponents(Vec<ManagedChild>);

impl StartedComponents {
    fn into_vec(mut self) -> Vec<ManagedChild> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for StartedComponents {
    fn drop(&mut self) {
        stop_all(std::mem::take(&mut self.0));
    }
}

/// Stops the children newest first.
fn stop_all(mut children: Vec<ManagedChild>) {
    while let Some(mut child) = children.pop() {
        child.stop(STOP_GRACE_PERIOD);
    }
}

/// Three distinct free loopback ports. The listeners are held until all three are picked so the
/// kernel cannot hand out one port twice.
fn free_ports() -> anyhow::Result<[u16; 3]> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    let mut ports = [0u16; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

async fn start_components(
    dir: &Path,
    pki: &Pki,
    tools: &Tools,
    options: &ControlPlaneOptions,
) -> Result<
    (
        Vec<ManagedChild>,
        Vec<ComponentCommand>,
        String,
        kube::Config,
    ),
    AttemptError,
> {
    let [etcd_port, peer_port, apiserver_port] = free_ports()?;
    let logs = dir.join("logs");
    let mut started = StartedComponents::default();
    let children = &mut started.0;
    let mut commands = Vec::new();
    let mut spawn = |children: &mut Vec<ManagedChild>,
                     name: &str,
                     program: &Path,
                     args: Vec<String>|
     -> anyhow::Result<()> {
        let command = ComponentCommand {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            log: logs.join(format!("{name}.log")),
        };
        children.push(command.spawn()?);
        commands.push(command);
        Ok(())
    };

    // etcd
    let etcd_dir = dir.join("etcd");
    if etcd_dir.exists() {
        std::fs::remove_dir_all(&etcd_dir)
            .with_context(|| format!("removing old etcd data in {}", etcd_dir.display()))?;
    }
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let etcd_args = vec![
        "--name=e2e".to_owned(),
        format!("--data-dir={}", etcd_dir.display()),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=e2e={peer_url}"),
        // Test data need not survive a power cut; fsync dominates etcd latency on busy disks.
        "--unsafe-no-fsync=true".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    spawn(children, "etcd", &tools.etcd, etcd_args)?;
    wait_for_port(children, etcd_port, options.startup_timeout).await?;

    // kube-apiserver
    let server = format!("https://127.0.0.1:{apiserver_port}");
    let files = &pki.files;
    let apiserver_args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".to_owned(),
        // Without a default route the apiserver cannot pick an address to advertise itself.
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={apiserver_port}"),
        format!("--cert-dir={}", dir.join("pki").display()),
        format!("--tls-cert-file={}", files.serving_cert.display()),
        format!("--tls-private-key-file={}", files.serving_key.display()),
        format!("--client-ca-file={}", files.ca_cert.display()),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        format!("--service-account-issuer={server}"),
        format!(
            "--service-account-key-file={}",
            files.sa_public_key.display()
        ),
        format!(
            "--service-account-signing-key-file={}",
            files.sa_private_key.display()
        ),
        "--allow-privileged=true".to_owned(),
    ];
    let mut apiserver_args = apiserver_args;
    if options.node {
        apiserver_args.extend([
            // The kubelet's identity is system:node:e2e-node; the Node authorizer lets it see
            // what its Pods need, NodeRestriction keeps it to its own Node.
            "--authorization-mode=Node,RBAC".to_owned(),
            "--enable-admission-plugins=NodeRestriction".to_owned(),
            format!(
                "--kubelet-client-certificate={}",
                files.apiserver_kubelet_client_cert.display()
            ),
            format!(
                "--kubelet-client-key={}",
                files.apiserver_kubelet_client_key.display()
            ),
        ]);
    } else {
        apiserver_args.extend([
            "--authorization-mode=RBAC".to_owned(),
            // No serviceaccount controller runs, so namespaces have no default ServiceAccount.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
        ]);
    }
    spawn(children, "kube-apiserver", &tools.apiserver, apiserver_args)?;

    let admin_kubeconfig = kubeconfig::render(&server, &pki.ca_cert_pem, "admin", &pki.admin);
    kubeconfig::write(&dir.join("kubeconfig"), &admin_kubeconfig)?;
    let kube_config = kube_config_from(&admin_kubeconfig).await?;
    wait_for_readyz(children, &kube_config, options.startup_timeout).await?;

    // kube-controller-manager
    let kcm_kubeconfig = dir.join("kube-controller-manager.kubeconfig");
    kubeconfig::write(
        &kcm_kubeconfig,
        &kubeconfig::render(
            &server,
            &pki.ca_cert_pem,
            "kube-controller-manager",
            &pki.controller_manager,
        ),
    )?;
    let mut controllers = options.controllers.clone();
    if options.node {
        controllers.extend(NODE_CONTROLLERS.iter().map(|c| c.to_string()));
    }
    let mut kcm_args = vec![
        format!("--kubeconfig={}", kcm_kubeconfig.display()),
        format!("--controllers={}", controllers.join(",")),
        "--leader-elect=false".to_owned(),
        // No serving endpoint: nothing scrapes it, and it would need a port of its own.
        "--secure-port=0".to_owned(),
        "--use-service-account-credentials=false".to_owned(),
    ];
    if options.node {
        // What the root-ca publisher puts into every namespace's kube-root-ca.crt.
        kcm_args.push(format!("--root-ca-file={}", files.ca_cert.display()));
    }
    spawn(
        children,
        "kube-controller-manager",
        &tools.controller_manager,
        kcm_args,
    )?;
    // With --secure-port=0 kube-controller-manager has no health endpoint; its log is the
    // only sign that the controllers run (so that tests relying on them need not guess).
    wait_for_log_line(children, KCM_STARTED_MARKER, options.startup_timeout).await?;

    // kube-scheduler, for a node: Deployments' Pods need one to be bound. Not awaited: the
    // Node becoming Ready takes longer, and a dead scheduler fails the health checks.
    if let Some(scheduler) = &tools.scheduler {
        let scheduler_kubeconfig = dir.join("kube-scheduler.kubeconfig");
        kubeconfig::write(
            &scheduler_kubeconfig,
            &kubeconfig::render(&server, &pki.ca_cert_pem, "kube-scheduler", &pki.scheduler),
        )?;
        let scheduler_args = vec![
            format!("--kubeconfig={}", scheduler_kubeconfig.display()),
            format!(
                "--authentication-kubeconfig={}",
                scheduler_kubeconfig.display()
            ),
            format!(
                "--authorization-kubeconfig={}",
                scheduler_kubeconfig.display()
            ),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
        ];
        spawn(children, "kube-scheduler", scheduler, scheduler_args)?;
    }

    Ok((started.into_vec(), commands, server, kube_config))
}

async fn kube_config_from(kubeconfig_yaml: &str) -> anyhow::Result<kube::Config> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml)
        .context("parsing the generated kubeconfig")?;
    kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
        .await
        .context("loading the generated kubeconfig")
}

/// Fails if a child has exited, with its log tail; flags port conflicts for a retry.
fn fail_if_exited(children: &mut [ManagedChild]) -> Result<(), AttemptError> {
    for child in children.iter_mut() {
        if let Some(status) = child.exit_status() {
            let tail = child.log_tail(40);
            return Err(AttemptError {
                port_conflict: tail.contains("address already in use"),
                error: anyhow!(
                    "{} exited during start-up ({status}); last lines of {}:\n{tail}",
                    child.name(),
                    child.log_path().display()
                ),
            });
        }
    }
    Ok(())
}

/// What kube-controller-manager logs once it has started a controller (Kubernetes 1.2x-1.34).
const KCM_STARTED_MARKER: &str = "\"Started controller\"";

/// Waits until the last started child's log contains `marker`.
async fn wait_for_log_line(
    children: &mut [ManagedChild],
    marker: &str,
    timeout: Duration,
) -> Result<(), AttemptError> {
    wait_for_new_log_line(children, marker, 0, timeout).await
}

/// Waits until the last started child's log has `marker` after its first `skip` bytes (what an
/// earlier run of the same component wrote).
async fn wait_for_new_log_line(
    children: &mut [ManagedChild],
    marker: &str,
    skip: u64,
    timeout: Duration,
) -> Result<(), AttemptError> {
    let deadline = Instant::now() + timeout;
    loop {
        fail_if_exited(children)?;
        let last = children.last().expect("a child was started");
        let log = std::fs::read(last.log_path()).unwrap_or_default();
        let new = log.get(skip as usize..).unwrap_or_default();
        if String::from_utf8_lossy(new).contains(marker) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let after = if skip > 0 { " after its restart" } else { "" };
            return Err(anyhow!(
                "{} did not log {marker} within {timeout:?}{after}; last lines of {}:\n{}",
                last.name(),
                last.log_path().display(),
                last.log_tail(40)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_port(
    children: &mut [ManagedChild],
    port: u16,
    timeout: Duration,
) -> Result<(), AttemptError> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        fail_if_exited(children)?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let last = children.last().expect("a child was started");
            return Err(anyhow!(
                "{} did not listen on 127.0.0.1:{port} within {timeout:?}; last lines of {}:\n{}",
                last.name(),
                last.log_path().display(),
                last.log_tail(40)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_readyz(
    children: &mut [ManagedChild],
    config: &kube::Config,
    timeout: Duration,
) -> Result<(), AttemptError> {
    let client = kube::Client::try_from(config.clone())
        .context("building a kube client from the generated kubeconfig")?;
    let deadline = Instant::now() + timeout;
    loop {
        fail_if_exited(children)?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a static request is valid");
        let last_answer = match tokio::time::timeout(
            Duration::from_secs(5),
            client.request_text(request),
        )
        .await
        {
            Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
            Ok(Ok(body)) => body,
            Ok(Err(err)) => err.to_string(),
            Err(_) => "no answer within 5s".into(),
        };
        if Instant::now() >= deadline {
            let apiserver = children
                .iter()
                .find(|c| c.name() == "kube-apiserver")
                .expect("the apiserver was started");
            return Err(anyhow!(
                "kube-apiserver did not become ready within {timeout:?} (last /readyz answer: \
                 {last_answer}); last lines of {}:\n{}",
                apiserver.log_path().display(),
                apiserver.log_tail(40)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
