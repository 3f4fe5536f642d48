//! `iothub-emulator --port P --dir DIR [--hub NAME] [--sku S1|S2|S3 --units N] [--latency-ms X]
//! [--fault-rate F] [--strict]`: runs a local IoT Hub until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use iothub_emulator::clock::SystemClock;
use iothub_emulator::{EmulatorOptions, Sku, start};

/// A local Azure IoT Hub service (REST API 2021-04-12) over HTTPS.
#[derive(Debug, Parser)]
#[command(name = "iothub-emulator", version)]
struct Cli {
    /// TCP port on 127.0.0.1 (0 picks a free one; it is printed and written to DIR/port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Directory for ca.crt, connection-string, connection-strings.json and port.
    #[arg(long)]
    dir: PathBuf,
    /// Hub name; the serving certificate also covers <hub>.azure-devices.net.
    #[arg(long, default_value = "emulator")]
    hub: String,
    /// Apply the quotas of this SKU (S1, S2 or S3); without it nothing is throttled.
    #[arg(long)]
    sku: Option<Sku>,
    /// Number of units of the SKU.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=200))]
    units: u64,
    /// Delay added to every service request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share (0 to 1) of service requests answered with an injected 500 or 503.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fault_rate: f64,
    /// Enforce documented limits Azure does not check (parent rules, configuration ids) and
    /// reject request bodies that do not match the swagger models.
    #[arg(long)]
    strict: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("'{text}' is not a number from 0 to 1")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "iothub_emulator=info".into()),
        )
        .init();
    let cli = Cli::parse();
    let options = EmulatorOptions {
        port: cli.port,
        dir: cli.dir.clone(),
        hub_name: cli.hub.clone(),
        quotas: cli.sku.map(|sku| (sku, cli.units)),
        latency_ms: cli.latency_ms,
        fault_rate: cli.fault_rate,
        strict: cli.strict,
        clock: Arc::new(SystemClock),
    };
    let emulator = start(options).await?;
    eprintln!(
        "iothub-emulator: hub {} on {} (CA {}, quotas {}, strict {})",
        cli.hub,
        emulator.base_url(),
        cli.dir.join("ca.crt").display(),
        cli.sku
            .map_or("off".to_string(), |s| format!("{s:?} x{}", cli.units)),
        cli.strict,
    );
    println!(
        "ready port={} connection-string={}",
        emulator.port(),
        cli.dir.join("connection-string").display()
    );
    wait_for_stop().await;
    emulator.shutdown();
    Ok(())
}

async fn wait_for_stop() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
