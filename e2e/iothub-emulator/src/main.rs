//! `iothub-emulator --port P --dir DIR [--hub NAME] [--sku S1|S2|S3 --units N] [--latency-ms X]
//! [--fault-rate F] [--strict] [--azure] [realism flags]`: runs a local IoT Hub until SIGTERM or
//! Ctrl-C. The README's flag table explains every flag.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use iothub_emulator::clock::SystemClock;
use iothub_emulator::{EmulatorOptions, Realism, RegisteredWithoutTwin, Sku, start};

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
    /// An S1 hub unless --sku says otherwise (the realism flags already default to Azure's
    /// values; they override single values).
    #[arg(long)]
    azure: bool,
    /// Twin queries see writes only this many milliseconds later (GET sees them at once).
    #[arg(long, value_name = "MS")]
    query_lag_ms: Option<u64>,
    /// Evaluate automatic configurations at creation and then every N seconds (0: on every
    /// change).
    #[arg(long, value_name = "SECS")]
    config_eval_interval_secs: Option<u64>,
    /// Configuration labels: at most 128 ASCII letters, digits and -:.+%_#*?!(),=@;'
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    check_labels: Option<bool>,
    /// Longest query expression in characters (0: no limit; Azure: 8192).
    #[arg(long, value_name = "CHARS")]
    max_query_length: Option<usize>,
    /// Azure's string literals: only \' \" \\ \uXXXX escapes in queries; single quotes,
    /// doubled, and no backslash in target conditions.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    check_literals: Option<bool>,
    /// Twin keys without '#' too, and configuration content checked with the twin key rules.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    check_twin_keys: Option<bool>,
    /// Billed messages (4 KB chunks) per UTC day before requests get 403 (0: unlimited).
    #[arg(long, value_name = "N")]
    daily_message_quota: Option<u64>,
    /// A request over a throttle waits up to this long for the next window before 429.
    #[arg(long, value_name = "MS")]
    throttle_shaping_ms: Option<u64>,
    /// Answer 429 without a Retry-After header.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    no_retry_after: Option<bool>,
    /// Configurations (layered deployments included) one hub may hold.
    #[arg(long, value_name = "N")]
    max_configurations: Option<usize>,
    /// Custom modules one edge deployment may carry (0: no limit).
    #[arg(long, value_name = "N")]
    max_modules_per_deployment: Option<usize>,
    /// Bulk creates answer DeviceRegisteredWithoutTwin (twin not stored) for this share of
    /// devices (0 to 1) or for these ids (comma-separated).
    #[arg(long, value_name = "RATE|IDS", value_parser = RegisteredWithoutTwin::parse)]
    inject_registered_without_twin: Option<RegisteredWithoutTwin>,
}

impl Cli {
    /// The SKU in force: `--sku`, or S1 under `--azure`.
    fn sku(&self) -> Option<Sku> {
        self.sku.or(self.azure.then_some(Sku::S1))
    }

    /// Azure's behaviour for the SKU in force, then every flag given explicitly.
    fn realism(&self) -> Realism {
        let mut realism = Realism::azure(self.sku(), self.units);
        if let Some(v) = self.query_lag_ms {
            realism.query_lag_ms = v;
        }
        if let Some(v) = self.config_eval_interval_secs {
            realism.config_eval_interval_secs = v;
        }
        if let Some(v) = self.check_labels {
            realism.check_labels = v;
        }
        if let Some(v) = self.max_query_length {
            realism.max_query_length = v;
        }
        if let Some(v) = self.check_literals {
            realism.check_literals = v;
        }
        if let Some(v) = self.check_twin_keys {
            realism.check_twin_keys = v;
        }
        if let Some(v) = self.daily_message_quota {
            realism.daily_message_quota = (v > 0).then_some(v);
        }
        if let Some(v) = self.throttle_shaping_ms {
            realism.throttle_shaping_ms = v;
        }
        if let Some(v) = self.no_retry_after {
            realism.retry_after = !v;
        }
        if let Some(v) = self.max_configurations {
            realism.max_configurations = v;
        }
        if let Some(v) = self.max_modules_per_deployment {
            realism.max_modules_per_deployment = v;
        }
        if let Some(v) = &self.inject_registered_without_twin {
            realism.registered_without_twin = v.clone();
        }
        realism
    }
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
    let sku = cli.sku();
    let realism = cli.realism();
    let options = EmulatorOptions {
        port: cli.port,
        dir: cli.dir.clone(),
        hub_name: cli.hub.clone(),
        quotas: sku.map(|sku| (sku, cli.units)),
        latency_ms: cli.latency_ms,
        fault_rate: cli.fault_rate,
        strict: cli.strict,
        realism: realism.clone(),
        clock: Arc::new(SystemClock),
    };
    let emulator = start(options).await?;
    eprintln!(
        "iothub-emulator: hub {} on {} (CA {}, quotas {}, strict {}, {realism:?})",
        cli.hub,
        emulator.base_url(),
        cli.dir.join("ca.crt").display(),
        sku.map_or("off".to_string(), |s| format!("{s:?} x{}", cli.units)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["iothub-emulator", "--dir", "/tmp/x"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_follow_azure() {
        let plain = cli(&[]);
        assert_eq!(plain.realism(), Realism::azure(None, 1));
        assert_eq!(plain.realism().query_lag_ms, 3_000);
        assert_eq!(plain.realism().config_eval_interval_secs, 300);
        assert!(!plain.realism().retry_after);
        assert_eq!(plain.sku(), None);
        let s2 = cli(&["--sku", "S2", "--units", "2"]);
        assert_eq!(s2.realism().daily_message_quota, Some(12_000_000));
    }

    #[test]
    fn azure_preset_with_explicit_overrides() {
        let azure = cli(&["--azure"]);
        assert_eq!(azure.sku(), Some(Sku::S1));
        assert_eq!(azure.realism(), Realism::azure(Some(Sku::S1), 1));
        let tuned = cli(&[
            "--azure",
            "--sku",
            "S3",
            "--units",
            "2",
            "--query-lag-ms",
            "200",
            "--config-eval-interval-secs",
            "0",
            "--check-labels=false",
            "--no-retry-after=false",
            "--daily-message-quota",
            "0",
        ]);
        let realism = tuned.realism();
        assert_eq!(realism.query_lag_ms, 200);
        assert_eq!(realism.config_eval_interval_secs, 0);
        assert!(!realism.check_labels);
        assert!(realism.retry_after);
        assert_eq!(realism.daily_message_quota, None);
        assert_eq!(realism.max_query_length, 8192);
        assert_eq!(
            cli(&["--azure", "--sku", "S2", "--units", "3"])
                .realism()
                .daily_message_quota,
            Some(18_000_000)
        );
    }

    #[test]
    fn single_flags() {
        let realism = cli(&[
            "--check-labels",
            "--no-retry-after",
            "--check-twin-keys=false",
            "--max-query-length",
            "8192",
            "--throttle-shaping-ms",
            "1500",
            "--max-modules-per-deployment",
            "3",
            "--max-configurations",
            "7",
            "--inject-registered-without-twin",
            "d1,d2",
        ])
        .realism();
        assert!(realism.check_labels && !realism.retry_after && !realism.check_twin_keys);
        assert_eq!(realism.max_query_length, 8192);
        assert_eq!(realism.throttle_shaping_ms, 1500);
        assert_eq!(realism.max_modules_per_deployment, 3);
        assert_eq!(realism.max_configurations, 7);
        assert!(realism.registered_without_twin.hits("d2"));
        assert!(
            Cli::try_parse_from(["x", "--dir", "/d", "--inject-registered-without-twin", "2"])
                .is_err()
        );
    }
}
