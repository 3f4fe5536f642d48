//! `control-plane up --dir DIR`: runs a local Kubernetes control plane in the foreground.
//!
//! Prints exactly one line to stdout, `ready KUBECONFIG=DIR/kubeconfig`, once the apiserver is
//! ready; everything else goes to stderr. Runs until SIGTERM or SIGINT, then stops every
//! component and exits 0. Exits 1 if start-up fails or a component dies.

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
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Command::Up {
        dir,
        startup_timeout,
    } = Cli::parse().command;
    match up(dir, Duration::from_secs(startup_timeout)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("control-plane: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(dir: PathBuf, startup_timeout: Duration) -> anyhow::Result<()> {
    // Installed before start-up so a signal during start-up also ends in a clean stop.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let options = ControlPlaneOptions {
        dir: Some(dir),
        startup_timeout,
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
