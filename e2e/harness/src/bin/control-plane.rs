//! `control-plane up --dir DIR [--node]`: runs a local Kubernetes control plane in the foreground.
//!
//! Prints exactly one line to stdout, `ready KUBECONFIG=DIR/kubeconfig`, once the apiserver is
//! ready (with `--node`: once the Node `e2e-node` is Ready too); everything else goes to stderr.
//! Runs until SIGTERM or SIGINT, then stops every component (and the node's containers, shims
//! and mounts) and exits 0. Exits 1 if start-up fails or a component dies.
//!
//! `control-plane load-image --dir DIR FILE.tar [--tag NAME:TAG]`: imports an image archive
//! into the node of the control plane running in DIR, and prints the names it is known by.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use e2e_harness::{ControlPlane, ControlPlaneOptions};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    about = "A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the control plane and keep it running until SIGTERM or SIGINT.
    Up {
        /// Folder for the PKI, kubeconfig, etcd data and logs (created if missing; its etcd
        /// data is wiped at start).
        #[arg(long)]
        dir: PathBuf,
        /// Seconds to wait for each component to come up.
        #[arg(long, default_value_t = 180)]
        startup_timeout: u64,
        /// Also run kube-scheduler, containerd and a kubelet registered as the Node e2e-node
        /// (files below DIR/node); the ready line waits for the Node to be Ready.
        #[arg(long)]
        node: bool,
    },
    /// Import a docker-archive or OCI tar into the node of `up --dir DIR --node` (containerd
    /// namespace k8s.io, all platforms); Pods use it with imagePullPolicy Never or IfNotPresent.
    LoadImage {
        /// The folder the control plane runs in.
        #[arg(long)]
        dir: PathBuf,
        /// The image archive (what `docker save` or `make image` writes).
        archive: PathBuf,
        /// Also name the imported image NAME:TAG (a name without registry is docker.io/library/NAME).
        #[arg(long)]
        tag: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let result = match Cli::parse().command {
        Command::Up {
            dir,
            startup_timeout,
            node,
        } => up(dir, Duration::from_secs(startup_timeout), node).await,
        Command::LoadImage { dir, archive, tag } => {
            e2e_harness::node::load_image(&dir, &archive, tag.as_deref()).map(|names| {
                for name in names {
                    println!("{name}");
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("control-plane: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(dir: PathBuf, startup_timeout: Duration, node: bool) -> anyhow::Result<()> {
    // Installed before start-up so a signal during start-up also ends in a clean stop.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let options = ControlPlaneOptions {
        dir: Some(dir),
        startup_timeout,
        node,
        ..ControlPlaneOptions::default()
    };
    eprintln!(
        "control-plane: starting (logs in {}/logs)",
        options
            .dir
            .as_ref()
            .map_or(String::new(), |d| d.display().to_string())
    );

    let plane = tokio::select! {
        plane = ControlPlane::start(options) => plane?,
        // Dropping the start future stops whatever it had started.
        _ = sigterm.recv() => { eprintln!("control-plane: SIGTERM during start-up; stopped"); return Ok(()); }
        _ = sigint.recv() => { eprintln!("control-plane: SIGINT during start-up; stopped"); return Ok(()); }
    };
    eprintln!(
        "control-plane: apiserver {} ready after {:.1}s",
        plane.server_url(),
        plane.startup_time().as_secs_f64()
    );
    if let Some(ready) = plane.node_ready_time() {
        eprintln!(
            "control-plane: Node e2e-node Ready after {:.1}s of node start",
            ready.as_secs_f64()
        );
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "ready KUBECONFIG={}",
            plane.kubeconfig_path().display()
        )?;
        stdout.flush()?;
    }

    let mut health = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            _ = sigterm.recv() => break Ok("SIGTERM"),
            _ = sigint.recv() => break Ok("SIGINT"),
            _ = health.tick() => {
                if let Err(err) = plane.check_running() {
                    break Err(err);
                }
            }
        }
    };
    match &outcome {
        Ok(signal) => eprintln!("control-plane: {signal} received; stopping"),
        Err(_) => eprintln!("control-plane: a component died; stopping the others"),
    }
    plane.stop().await;
    outcome.map(|_| ())
}
