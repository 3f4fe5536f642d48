//! `edge-hierarchy-operator`: runs the controller, prints the CRD, and imports the configs of the
//! tools people come from.

use clap::{Parser, Subcommand};
use edge_hierarchy_operator::api::EdgeHierarchy;
use kube::CustomResourceExt;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps hierarchies of Azure IoT Edge devices equal to EdgeHierarchy resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start: the size of `Run` costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the controller (kubeconfig from KUBECONFIG, ~/.kube/config, or in-cluster).
    Run {
        /// Log as JSON lines instead of text.
        #[arg(long, env = "LOG_JSON")]
        log_json: bool,
        /// Address of the /metrics, /healthz and /readyz endpoints (0.0.0.0:8080 in a cluster;
        /// port 0 picks a free port, for replicas sharing a host network).
        #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:8080")]
        metrics_addr: std::net::SocketAddr,
        /// Write the address the metrics endpoints bound to this file (for `probe http
        /// --addr-file` when the port is 0).
        #[arg(long, env = "METRICS_ADDR_FILE")]
        metrics_addr_file: Option<std::path::PathBuf>,
        /// Hierarchies reconciled at once (1 to 1000). Each hierarchy waiting for its hub holds
        /// one, for at most one hub call's time budget when the hub does not answer.
        #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = edge_hierarchy_operator::reconcile::controller::DEFAULT_CONCURRENCY,
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        reconcile_concurrency: u16,
        #[command(flatten)]
        election: Election,
        /// Reconcile only the EdgeHierarchy objects matching this label selector (one shard of
        /// several operators, each with its own --lease-name), e.g. `shard=a` or
        /// `shard in (a,b)`.
        #[arg(long, env = "SHARD_SELECTOR")]
        shard_selector: Option<String>,
        /// Watch and read only in these namespaces (comma-separated), with no cluster-scoped list
        /// or watch, so Roles in them suffice. Unset: every namespace.
        #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
        watch_namespaces: Vec<String>,
        /// Serve EST (RFC 7030) for `spec.certificates.issuance: Est` on this address, under
        /// https://HOST:PORT/.well-known/est (docs/est.md). Off when unset.
        #[arg(long, env = "EST_ADDR")]
        est_addr: Option<std::net::SocketAddr>,
        /// The EST URL devices use, when it differs from https://<est-addr>/.well-known/est
        /// (a Service, a load balancer, a parent's API proxy). Its host is the server
        /// certificate's name.
        #[arg(long, env = "EST_URL")]
        est_url: Option<url::Url>,
        /// The Secret holding the operator's EST CA (generated once when missing).
        #[arg(
            long,
            env = "EST_CA_SECRET",
            default_value = "edge-hierarchy-operator-est-ca"
        )]
        est_ca_secret: String,
        /// Namespace of the EST CA Secret and of `--est-service` (the operator's own namespace
        /// in a cluster).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        est_namespace: String,
        /// A Service without a selector in --est-namespace that the leader routes to itself: at
        /// the start of each term it applies the Service's EndpointSlice with --est-endpoint-ip
        /// and the port of --est-addr (only the leader serves EST). Needs --est-addr.
        #[arg(long, env = "EST_SERVICE")]
        est_service: Option<String>,
        /// The address --est-service routes to: this replica's Pod IP (read only with
        /// --est-service; not loopback, link-local or unspecified).
        #[arg(long, env = "POD_IP")]
        est_endpoint_ip: Option<std::net::IpAddr>,
    },
    /// Exit 0 if the operator answers, for exec probes (the image has no shell or curl).
    Probe {
        #[command(subcommand)]
        what: Probe,
    },
    /// Print the EdgeHierarchy CustomResourceDefinition as YAML.
    Crd,
    /// Convert iotedge_config_cli's iotedge_config.yaml, or an `az iot edge devices create --cfg`
    /// file, to an EdgeHierarchy with ConfigMaps for its deployments (multi-document YAML on
    /// stdout; warnings on stderr).
    Import {
        /// The config file (YAML, or JSON for the az format). Paths in it are read relative to it.
        file: std::path::PathBuf,
        /// Take over hub devices the tool already created (spec.policy.adoptExisting: true).
        #[arg(long)]
        adopt: bool,
    },
}

/// Leader election: of the replicas sharing a Lease only its holder reconciles.
#[derive(clap::Args)]
struct Election {
    /// Reconcile only while holding the Lease (run several replicas; one leads).
    #[arg(long, env = "LEADER_ELECTION")]
    leader_election: bool,
    #[command(flatten)]
    lease: LeaseName,
    /// Seconds a holder that stops renewing keeps the Lease (3 to 3600); it renews a third of
    /// this before its term ends.
    #[arg(long, env = "LEASE_DURATION", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    lease_duration: u64,
}

#[derive(clap::Args)]
struct LeaseName {
    /// Name of the Lease (one per shard).
    #[arg(long, env = "LEASE_NAME", default_value = "edge-hierarchy-operator")]
    lease_name: String,
    /// Namespace of the Lease [default: $POD_NAMESPACE, else `default`].
    #[arg(long, env = "LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
}

impl LeaseName {
    fn namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".into())
    }
}

#[derive(Subcommand)]
enum Probe {
    /// GET http://ADDR/PATH; exit 0 on 200 (e.g. `probe http /readyz --addr-file /tmp/metrics-addr`).
    Http {
        /// The path, e.g. /healthz or /readyz.
        path: String,
        /// HOST:PORT of the metrics endpoints.
        #[arg(
            long,
            conflicts_with = "addr_file",
            required_unless_present = "addr_file"
        )]
        addr: Option<String>,
        /// A file holding HOST:PORT, as `run --metrics-addr-file` writes it.
        #[arg(long)]
        addr_file: Option<std::path::PathBuf>,
    },
    /// Exit 0 when the Lease has a holder whose term has not ended, printing the holder
    /// (kubeconfig from KUBECONFIG, ~/.kube/config, or in-cluster).
    Lease {
        #[command(flatten)]
        lease: LeaseName,
    },
}

/// Where `probe http` connects: the address as given, with an unspecified host (0.0.0.0, [::])
/// replaced by loopback.
fn probe_target(addr: &str) -> String {
    let addr = addr.trim();
    if let Some(port) = addr.strip_prefix("0.0.0.0:") {
        return format!("127.0.0.1:{port}");
    }
    if let Some(port) = addr.strip_prefix("[::]:") {
        return format!("[::1]:{port}");
    }
    addr.to_string()
}

async fn probe(what: Probe) -> anyhow::Result<()> {
    match what {
        Probe::Http {
            path,
            addr,
            addr_file,
        } => {
            let addr = match (addr, addr_file) {
                (Some(addr), _) => addr,
                (None, Some(file)) => std::fs::read_to_string(&file).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read {}: {e} (has the operator bound its port yet?)",
                        file.display()
                    )
                })?,
                (None, None) => anyhow::bail!("give --addr or --addr-file"),
            };
            let url = format!(
                "http://{}/{}",
                probe_target(&addr),
                path.trim_start_matches('/')
            );
            let response = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()?
                .get(&url)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            print!("{body}");
            anyhow::ensure!(
                status == reqwest::StatusCode::OK,
                "GET {url} answered {status}"
            );
        }
        Probe::Lease { lease } => {
            let namespace = lease.namespace();
            use k8s_openapi::api::coordination::v1::Lease;
            let client = kube::Client::try_default().await?;
            let api: kube::Api<Lease> = kube::Api::namespaced(client, &namespace);
            let found = api.get(&lease.lease_name).await.map_err(|e| {
                anyhow::anyhow!("cannot read Lease {namespace}/{}: {e}", lease.lease_name)
            })?;
            let view = edge_hierarchy_operator::leadership::LeaseView::of(&found);
            let now = std::time::SystemTime::now();
            let holder = view.live_holder(now).ok_or_else(|| {
                anyhow::anyhow!(
                    "Lease {namespace}/{} has no live holder (holder {:?}, term ended or never renewed)",
                    lease.lease_name,
                    view.holder
                )
            })?;
            let left = view
                .expiry()
                .and_then(|e| e.duration_since(now).ok())
                .unwrap_or_default();
            println!(
                "holder: {holder} (term ends in {:.1} s)",
                left.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// `edge-hierarchy-operator/<version> (<identity>)`, with the identity cut to what a header
/// value may hold.
fn user_agent(identity: &str) -> String {
    let identity: String = identity
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .collect();
    format!(
        "edge-hierarchy-operator/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    )
}

/// What the leader publishes for `--est-service`, checked: `None` without it.
fn est_service(
    est_addr: Option<std::net::SocketAddr>,
    service: Option<String>,
    ip: Option<std::net::IpAddr>,
    namespace: &str,
) -> anyhow::Result<Option<edge_hierarchy_operator::est::endpoint::EstService>> {
    let Some(name) = service.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let Some(addr) = est_addr else {
        anyhow::bail!(
            "--est-service {name} routes to the EST server, which runs only with --est-addr: set --est-addr or drop --est-service"
        );
    };
    let Some(ip) = ip else {
        anyhow::bail!(
            "--est-service {name} needs the address to publish: set --est-endpoint-ip (or POD_IP, from the downward API status.podIP)"
        );
    };
    edge_hierarchy_operator::est::endpoint::check_endpoint_ip(ip)?;
    Ok(Some(edge_hierarchy_operator::est::endpoint::EstService {
        name,
        namespace: namespace.to_string(),
        ip,
        port: addr.port(),
        pod: std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()),
    }))
}

/// The namespaces of `--watch-namespaces`, checked; `None` when unset (every namespace).
fn watch_namespaces(given: Vec<String>) -> anyhow::Result<Option<Vec<String>>> {
    let mut namespaces: Vec<String> = given
        .into_iter()
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    for ns in &namespaces {
        let valid = ns.len() <= 63
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        anyhow::ensure!(
            valid,
            "--watch-namespaces: {ns:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
        );
    }
    Ok((!namespaces.is_empty()).then_some(namespaces))
}

fn init_tracing(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", serde_yaml::to_string(&EdgeHierarchy::crd())?),
        Command::Import { file, adopt } => {
            let options = edge_hierarchy_operator::import::ImportOptions {
                adopt,
                namespace: None,
            };
            edge_hierarchy_operator::import::cli::run(&file, &options)?;
        }
        Command::Probe { what } => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            probe(what).await?;
        }
        Command::Run {
            log_json,
            metrics_addr,
            metrics_addr_file,
            reconcile_concurrency,
            election,
            shard_selector,
            watch_namespaces: namespaces,
            est_addr,
            est_url,
            est_ca_secret,
            est_namespace,
            est_service: est_service_name,
            est_endpoint_ip,
        } => {
            let published =
                est_service(est_addr, est_service_name, est_endpoint_ip, &est_namespace)?;
            if let Some(selector) = &shard_selector {
                edge_hierarchy_operator::reconcile::controller::check_label_selector(selector)
                    .map_err(|e| anyhow::anyhow!("--shard-selector {selector:?}: {e}"))?;
            }
            let namespaces = watch_namespaces(namespaces)?;
            init_tracing(log_json);
            // kube, reqwest and rcgen all use aws-lc-rs; installing it process-wide up front
            // means no TLS set-up has to guess which provider to use.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let client = kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach Kubernetes ({e}); set KUBECONFIG or run inside a cluster"
                )
            })?;
            let counters =
                std::sync::Arc::new(edge_hierarchy_operator::iothub::HubCallCounters::new());
            let est_metrics =
                std::sync::Arc::new(edge_hierarchy_operator::est::EstMetrics::default());
            let metrics = std::sync::Arc::new(
                edge_hierarchy_operator::metrics::Metrics::new(&counters).with_est(&est_metrics),
            );
            let watched = edge_hierarchy_operator::reconcile::controller::Watched {
                namespaces,
                shard_selector,
            };
            let est_server = match est_addr {
                Some(addr) => {
                    let options = edge_hierarchy_operator::est::EstOptions {
                        addr,
                        url: est_url,
                        ca_secret: est_ca_secret,
                        ca_namespace: est_namespace,
                        user_agent: user_agent(&edge_hierarchy_operator::leadership::identity()),
                        watched: watched.clone(),
                    };
                    let state = edge_hierarchy_operator::est::prepare(
                        client.clone(),
                        counters.clone(),
                        est_metrics,
                        &options,
                    )
                    .await?;
                    Some(EstServer {
                        addr,
                        state,
                        published,
                    })
                }
                None => None,
            };
            // Metrics are secondary: if their port is taken, say so and keep reconciling.
            let served = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    edge_hierarchy_operator::metrics::serve(metrics_addr, metrics_addr_file, served)
                        .await
                {
                    tracing::error!(error = %e, "metrics endpoint unavailable");
                }
            });
            let identity = edge_hierarchy_operator::leadership::identity();
            let options = edge_hierarchy_operator::reconcile::controller::Options {
                concurrency: reconcile_concurrency,
                watched,
                user_agent: user_agent(&identity),
                est: est_server.as_ref().map(|est| est.state.endpoint.clone()),
            };
            if !election.leader_election {
                let stop = Box::pin(edge_hierarchy_operator::leadership::shutdown_signal());
                serve_term(client, counters, metrics, options, est_server, stop).await?;
                return Ok(());
            }
            let lease = edge_hierarchy_operator::leadership::LeaseConfig {
                namespace: election.lease.namespace(),
                name: election.lease.lease_name,
                identity,
                duration_secs: election.lease_duration,
            };
            let for_terms = client.clone();
            edge_hierarchy_operator::leadership::run(client, lease, metrics.clone(), move |stop| {
                serve_term(
                    for_terms.clone(),
                    counters.clone(),
                    metrics.clone(),
                    options.clone(),
                    est_server.clone(),
                    stop,
                )
            })
            .await?;
        }
    }
    Ok(())
}

/// The EST server of `--est-addr`, and what its leader publishes for `--est-service`.
#[derive(Clone)]
struct EstServer {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<edge_hierarchy_operator::est::EstState>,
    published: Option<edge_hierarchy_operator::est::endpoint::EstService>,
}

/// One term of work until `stop`: the controller, and the EST server when `--est-addr` is set.
/// Both write (the EST server registers thumbprints on the hub), so under leader election both
/// run only while this replica leads, and both end before its lease could pass to another.
/// With `--est-service` the term starts by routing that Service to this replica.
async fn serve_term(
    client: kube::Client,
    counters: std::sync::Arc<edge_hierarchy_operator::iothub::HubCallCounters>,
    metrics: std::sync::Arc<edge_hierarchy_operator::metrics::Metrics>,
    options: edge_hierarchy_operator::reconcile::controller::Options,
    est_server: Option<EstServer>,
    stop: edge_hierarchy_operator::leadership::StopSignal,
) -> anyhow::Result<()> {
    use futures::FutureExt as _;
    let stop = stop.shared();
    let (est_server, published) = match est_server {
        Some(EstServer {
            addr,
            state,
            published,
        }) => (Some((addr, state)), published),
        None => (None, None),
    };
    let est = async {
        match est_server {
            Some((addr, state)) => {
                edge_hierarchy_operator::est::serve(addr, state, stop.clone()).await
            }
            None => Ok(()),
        }
    };
    let for_publish = client.clone();
    let publish = async {
        if let Some(service) = published {
            edge_hierarchy_operator::est::endpoint::publish(for_publish, service, stop.clone())
                .await;
        }
    };
    let controller = edge_hierarchy_operator::reconcile::run(
        client,
        counters,
        metrics,
        options,
        stop.clone().boxed(),
    );
    // A failed EST listener (its port taken) is reported and the controller keeps running.
    let (est, (), controller) = tokio::join!(est, publish, controller);
    if let Err(e) = est {
        tracing::error!(error = %e, "EST server unavailable");
    }
    controller
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_reach_an_unspecified_address_on_loopback() {
        assert_eq!(probe_target("0.0.0.0:8080\n"), "127.0.0.1:8080");
        assert_eq!(probe_target("[::]:9"), "[::1]:9");
        assert_eq!(probe_target("127.0.0.1:41234"), "127.0.0.1:41234");
        assert_eq!(probe_target("localhost:1"), "localhost:1");
    }

    #[test]
    fn the_user_agent_names_the_version_and_the_replica() {
        assert_eq!(
            user_agent("op-7d9f-x"),
            format!(
                "edge-hierarchy-operator/{} (op-7d9f-x)",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(user_agent("a (b)\n").ends_with("(ab)"));
    }

    #[test]
    fn watched_namespaces_are_checked_and_deduplicated() {
        assert_eq!(watch_namespaces(vec![]).unwrap(), None);
        assert_eq!(watch_namespaces(vec![String::new()]).unwrap(), None);
        assert_eq!(
            watch_namespaces(vec!["b".into(), " a".into(), "b".into()]).unwrap(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        let error = watch_namespaces(vec!["Plant_1".into()]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("\"Plant_1\" is not a namespace name"),
            "{error}"
        );
    }

    #[test]
    fn the_est_service_needs_the_est_server_and_a_routable_address() {
        let addr = Some("0.0.0.0:8443".parse().unwrap());
        let address: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let ip = Some(address);
        assert_eq!(est_service(addr, None, ip, "ns").unwrap(), None);
        let published = est_service(addr, Some("eho-est".into()), ip, "ns")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                published.name.as_str(),
                published.namespace.as_str(),
                published.port
            ),
            ("eho-est", "ns", 8443)
        );
        assert_eq!(published.ip, address);
        let error = est_service(None, Some("eho-est".into()), ip, "ns").unwrap_err();
        assert!(
            error.to_string().contains("runs only with --est-addr"),
            "{error}"
        );
        let error = est_service(addr, Some("eho-est".into()), None, "ns").unwrap_err();
        assert!(
            error.to_string().contains("set --est-endpoint-ip"),
            "{error}"
        );
        let loopback = Some("127.0.0.1".parse().unwrap());
        let error = est_service(addr, Some("eho-est".into()), loopback, "ns").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("--est-endpoint-ip 127.0.0.1 is a loopback address"),
            "{error}"
        );
        let cli = Cli::try_parse_from([
            "op",
            "run",
            "--est-addr",
            "0.0.0.0:8443",
            "--est-service",
            "eho-est",
            "--est-endpoint-ip",
            "fd00::7",
        ])
        .unwrap();
        let Command::Run {
            est_service,
            est_endpoint_ip,
            ..
        } = cli.command
        else {
            panic!("run")
        };
        assert_eq!(est_service.as_deref(), Some("eho-est"));
        assert_eq!(est_endpoint_ip, Some("fd00::7".parse().unwrap()));
    }

    #[test]
    fn the_flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["op", "run", "--leader-election"]).unwrap();
        let Command::Run { election, .. } = cli.command else {
            panic!("run")
        };
        assert!(election.leader_election);
        assert_eq!(election.lease.lease_name, "edge-hierarchy-operator");
        assert_eq!(election.lease_duration, 15);
        assert!(Cli::try_parse_from(["op", "run", "--lease-duration", "2"]).is_err());
        let cli = Cli::try_parse_from(["op", "run", "--watch-namespaces", "a,b"]).unwrap();
        let Command::Run {
            watch_namespaces, ..
        } = cli.command
        else {
            panic!("run")
        };
        assert_eq!(watch_namespaces, ["a", "b"]);
        assert!(
            Cli::try_parse_from(["op", "probe", "http", "/readyz"]).is_err(),
            "needs an address"
        );
        assert!(
            Cli::try_parse_from(["op", "probe", "http", "/readyz", "--addr-file", "f"]).is_ok()
        );
    }
}
