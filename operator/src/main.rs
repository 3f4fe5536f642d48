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
enum Command {
    /// Run the controller (kubeconfig from KUBECONFIG, ~/.kube/config, or in-cluster).
    Run {
        /// Log as JSON lines instead of text.
        #[arg(long, env = "LOG_JSON")]
        log_json: bool,
        /// Address of the /metrics, /healthz and /readyz endpoints (0.0.0.0:8080 in a cluster).
        #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:8080")]
        metrics_addr: std::net::SocketAddr,
        /// Hierarchies reconciled at once (1 to 1000). Each hierarchy waiting for its hub holds
        /// one, for at most one hub call's time budget when the hub does not answer.
        #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = edge_hierarchy_operator::reconcile::controller::DEFAULT_CONCURRENCY,
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        reconcile_concurrency: u16,
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
        /// Namespace of the EST CA Secret (the operator's own namespace in a cluster).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        est_namespace: String,
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
        Command::Run {
            log_json,
            metrics_addr,
            reconcile_concurrency,
            est_addr,
            est_url,
            est_ca_secret,
            est_namespace,
        } => {
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
            let est = match est_addr {
                Some(addr) => {
                    let options = edge_hierarchy_operator::est::EstOptions {
                        addr,
                        url: est_url,
                        ca_secret: est_ca_secret,
                        ca_namespace: est_namespace,
                    };
                    let state = edge_hierarchy_operator::est::prepare(
                        client.clone(),
                        counters.clone(),
                        est_metrics,
                        &options,
                    )
                    .await?;
                    let endpoint = state.endpoint.clone();
                    // Started with the controller; a deployment that elects a leader starts
                    // and stops `est::serve` with the lease instead.
                    tokio::spawn(async move {
                        if let Err(e) =
                            edge_hierarchy_operator::est::serve(addr, state, std::future::pending())
                                .await
                        {
                            tracing::error!(error = %e, "EST server unavailable");
                        }
                    });
                    Some(endpoint)
                }
                None => None,
            };
            // Metrics are secondary: if their port is taken, say so and keep reconciling.
            let served = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = edge_hierarchy_operator::metrics::serve(metrics_addr, served).await
                {
                    tracing::error!(error = %e, "metrics endpoint unavailable");
                }
            });
            edge_hierarchy_operator::reconcile::run(
                client,
                counters,
                metrics,
                reconcile_concurrency,
                est,
            )
            .await?;
        }
    }
    Ok(())
}
