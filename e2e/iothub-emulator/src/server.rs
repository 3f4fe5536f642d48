//! Starting the emulator: certificates, policies, the files in DIR, the TLS listener.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::auth::{AccessPolicy, default_policies};
use crate::clock::{Clock, SystemClock};
use crate::hub::{Hub, HubSettings};
use crate::meter::Meter;
use crate::pki;
use crate::realism::Realism;
use crate::service::{Shared, handle};
use crate::stats::Stats;
use crate::throttle::{Sku, Throttle, limits_for};

/// How to run the emulator.
#[derive(Clone)]
pub struct EmulatorOptions {
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Where `ca.crt`, `connection-string`, `connection-strings.json` and `port` are written.
    pub dir: PathBuf,
    /// Hub name: the certificate also covers `<hub>.azure-devices.net`.
    pub hub_name: String,
    /// SKU and units whose quotas apply; `None` turns quotas off.
    pub quotas: Option<(Sku, u64)>,
    /// Delay added to every service request.
    pub latency_ms: u64,
    /// Share of requests answered with an injected 500 or 503 (0..=1).
    pub fault_rate: f64,
    /// Reject what Azure accepts but the documentation forbids, and bodies off the swagger.
    pub strict: bool,
    /// Behaviours of the real hub beyond the swagger (query lag, evaluation interval, ...).
    pub realism: Realism,
    /// Time source (tests inject a manual clock).
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for EmulatorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorOptions")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("hub_name", &self.hub_name)
            .field("quotas", &self.quotas)
            .field("latency_ms", &self.latency_ms)
            .field("fault_rate", &self.fault_rate)
            .field("strict", &self.strict)
            .field("realism", &self.realism)
            .finish()
    }
}

impl EmulatorOptions {
    /// Defaults for embedding in tests: free port, hub `emulator`, no quotas, no latency, no
    /// faults, lenient, and [`Realism::default`] (Azure's rules, immediate timing). The command
    /// line starts from Azure's timing instead.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            port: 0,
            dir: dir.into(),
            hub_name: "emulator".into(),
            quotas: None,
            latency_ms: 0,
            fault_rate: 0.0,
            strict: false,
            realism: Realism::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A running emulator. Dropping it stops accepting connections.
pub struct Emulator {
    port: u16,
    host_name: String,
    dir: PathBuf,
    ca_pem: String,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("port", &self.port)
            .field("host_name", &self.host_name)
            .field("dir", &self.dir)
            .finish()
    }
}

/// `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` of a policy.
fn connection_string(host_name: &str, policy: &AccessPolicy) -> String {
    format!(
        "HostName={host_name};SharedAccessKeyName={};SharedAccessKey={}",
        policy.name, policy.primary_key
    )
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

impl Emulator {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `localhost:<port>`: the `HostName` of its connection strings.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// `https://localhost:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.host_name)
    }

    /// PEM of the CA clients must trust (also in `DIR/ca.crt`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory its files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A shared access policy by name.
    pub fn policy(&self, name: &str) -> Option<&AccessPolicy> {
        self.shared.policies.iter().find(|p| p.name == name)
    }

    /// The connection string of a policy (`iothubowner`, `registryRead`, ...).
    pub fn connection_string(&self, policy: &str) -> Option<String> {
        self.policy(policy)
            .map(|p| connection_string(&self.host_name, p))
    }

    /// The stats JSON (same as `GET /_emulator/stats`).
    pub fn stats(&self) -> Value {
        self.shared.stats_snapshot()
    }

    /// Changes the injected fault rate at run time.
    pub fn set_fault_rate(&self, rate: f64) {
        self.shared.set_fault_rate(rate);
    }

    /// Stops accepting connections.
    pub fn shutdown(self) {
        self.accept_loop.abort();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Listens on 127.0.0.1:`port` again after an outage, retrying for up to a minute (the old
/// socket may linger for a moment); `None` (logged) if the port stays taken.
async fn rebind(port: u16) -> Option<TcpListener> {
    for _ in 0..600 {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return Some(listener),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    tracing::error!(port, "after the outage the port could not be bound again");
    None
}

/// Serves one connection: TLS (with an optional client certificate), then HTTP/1 or HTTP/2.
async fn serve(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let thumbprints: Arc<Vec<String>> = Arc::new(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| pki::thumbprints(cert).to_vec())
            .unwrap_or_default(),
    );
    let service = service_fn(move |request| {
        let shared = shared.clone();
        let thumbprints = thumbprints.clone();
        async move { Ok::<_, Infallible>(handle(&shared, request, &thumbprints).await) }
    });
    if let Err(error) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Starts an emulator: generates its CA and policies, writes its files, listens on 127.0.0.1.
pub async fn start(options: EmulatorOptions) -> anyhow::Result<Emulator> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    std::fs::create_dir_all(&options.dir)
        .map_err(|e| anyhow::anyhow!("cannot create --dir {}: {e}", options.dir.display()))?;
    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{}: {e}", options.port))?;
    let port = listener.local_addr()?.port();
    let host_name = format!("localhost:{port}");
    let hub_host = format!(
        "{}.azure-devices.net",
        options.hub_name.to_ascii_lowercase()
    );
    let pki = pki::generate(&hub_host)?;
    let acceptor = TlsAcceptor::from(Arc::new(pki.server_config()?));
    let policies = default_policies();

    let dir = &options.dir;
    std::fs::write(dir.join("ca.crt"), &pki.ca_pem)?;
    let owner = policies
        .iter()
        .find(|p| p.name == "iothubowner")
        .expect("default policies include iothubowner");
    write_private(
        &dir.join("connection-string"),
        &connection_string(&host_name, owner),
    )?;
    let all: serde_json::Map<String, Value> = policies
        .iter()
        .map(|p| {
            let rights: Vec<&str> = p.rights.list().iter().map(|r| r.name()).collect();
            (
                p.name.clone(),
                json!({
                    "connectionString": connection_string(&host_name, p),
                    "primaryKey": p.primary_key,
                    "secondaryKey": p.secondary_key,
                    "rights": rights,
                }),
            )
        })
        .collect();
    write_private(
        &dir.join("connection-strings.json"),
        &serde_json::to_string_pretty(&all)?,
    )?;
    std::fs::write(dir.join("port"), port.to_string())?;

    let hosts = vec![
        host_name.clone(),
        format!("127.0.0.1:{port}"),
        hub_host.clone(),
        format!("{hub_host}:{port}"),
    ];
    let throttle = match options.quotas {
        Some((sku, units)) => Throttle::new(limits_for(sku, units)),
        None => Throttle::unlimited(),
    };
    let realism = options.realism.clone();
    let shared = Arc::new(Shared {
        hub: Mutex::new(Hub::new(
            HubSettings {
                strict: options.strict,
                realism: realism.clone(),
            },
            options.clock.now_millis(),
        )),
        stats: Stats::default(),
        throttle,
        clock: options.clock.clone(),
        policies,
        hosts,
        latency_ms: AtomicU64::new(options.latency_ms),
        fault_ppm: AtomicU64::new(0),
        throttle_ppm: AtomicU64::new(0),
        down: tokio::sync::watch::Sender::new(false),
        strict: options.strict,
        meter: Meter::new(realism.daily_message_quota),
        throttle_shaping_ms: realism.throttle_shaping_ms,
        retry_after: realism.retry_after,
        writes: Default::default(),
    });
    shared.set_fault_rate(options.fault_rate);

    let loop_shared = shared.clone();
    let accept_loop = tokio::spawn(async move {
        let mut down = loop_shared.down.subscribe();
        let mut listener = Some(listener);
        loop {
            if *down.borrow_and_update() {
                // An outage: refuse connections (no listener) until it is over, then listen on
                // the same port again.
                listener = None;
                let _ = down.wait_for(|d| !*d).await;
                continue;
            }
            let Some(bound) = &listener else {
                match rebind(port).await {
                    Some(bound) => listener = Some(bound),
                    None => return,
                }
                continue;
            };
            let accepted = tokio::select! {
                accepted = bound.accept() => accepted,
                _ = down.changed() => continue,
            };
            let Ok((tcp, _)) = accepted else {
                continue;
            };
            let acceptor = acceptor.clone();
            let shared = loop_shared.clone();
            let mut cut = loop_shared.down.subscribe();
            tokio::spawn(async move {
                let serve = serve(tcp, acceptor, shared);
                // An outage drops open connections too, as a hub that goes away would.
                tokio::select! {
                    _ = serve => {}
                    _ = cut.wait_for(|d| *d) => {}
                }
            });
        }
    });
    Ok(Emulator {
        port,
        host_name,
        dir: options.dir,
        ca_pem: pki.ca_pem,
        shared,
        accept_loop,
    })
}
