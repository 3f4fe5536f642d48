//! `edge-sim run`: simulates every IoT Edge device of a hierarchy from its bundle Secrets (or
//! from a folder of unpacked bundles) until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_sim::{BundleSource, DirSource, EdgeSim, KubeSecretSource, SimOptions};

#[derive(Parser)]
#[command(
    name = "edge-sim",
    version,
    about = "Simulated IoT Edge devices of an EdgeHierarchy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate every device of a hierarchy until SIGTERM/SIGINT.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespace of the EdgeHierarchy (kubeconfig from KUBECONFIG or in-cluster).
    #[arg(long, short = 'n', required_unless_present = "bundles_dir")]
    namespace: Option<String>,
    /// Name of the EdgeHierarchy whose bundle Secrets to simulate.
    #[arg(long, required_unless_present = "bundles_dir")]
    hierarchy: Option<String>,
    /// Instead of Kubernetes: a folder with one sub-folder per device (named by the device id)
    /// holding its unpacked bundle.
    #[arg(long, conflicts_with_all = ["namespace", "hierarchy"])]
    bundles_dir: Option<PathBuf>,
    /// The IoT Hub emulator's --dir (ca.crt, port, connection-string).
    #[arg(long)]
    emulator_dir: PathBuf,
    /// Where devices are installed (one folder per device); a temporary folder by default.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Poll period in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..))]
    interval_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "edge_sim=info".into()),
        )
        .init();
    let Command::Run(args) = Cli::parse().command;
    let source: Arc<dyn BundleSource> = match (&args.bundles_dir, &args.namespace, &args.hierarchy)
    {
        (Some(dir), _, _) => Arc::new(DirSource::new(dir)),
        (None, Some(namespace), Some(hierarchy)) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to Kubernetes (set KUBECONFIG)")?;
            Arc::new(KubeSecretSource::new(client, namespace, hierarchy))
        }
        _ => anyhow::bail!("give --namespace and --hierarchy, or --bundles-dir"),
    };
    let mut options = SimOptions::new(source, &args.emulator_dir);
    options.state_dir = args.state_dir.clone();
    options.interval = Duration::from_millis(args.interval_ms);
    let sim = EdgeSim::start(options).await?;
    println!("ready state-dir={}", sim.state_dir().display());
    wait_for_signal().await?;
    tracing::info!("edge-sim: stopping");
    sim.stop().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
