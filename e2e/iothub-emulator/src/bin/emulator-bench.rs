//! `emulator-bench [--requests N] [--bulk-calls N] [--concurrency N]`: starts an emulator
//! in-process (quotas off) and prints requests per second for device GET and for bulk create
//! (100 devices per call), over real HTTPS with SAS tokens. A bounded number of requests; the
//! numbers describe this machine, nothing asserts them.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use iothub_emulator::auth::{build_token, encode_resource};
use iothub_emulator::{EmulatorOptions, start};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "emulator-bench")]
struct Cli {
    /// Device GET requests to send.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Bulk create calls to send (100 devices each).
    #[arg(long, default_value_t = 20)]
    bulk_calls: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

struct Target {
    client: reqwest::Client,
    base_url: String,
    token: String,
}

impl Target {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<u16> {
        let url = format!("{}{path}?api-version=2021-04-12", self.base_url);
        let mut request = self
            .client
            .request(method, url)
            .header("Authorization", &self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        response.bytes().await?;
        Ok(status)
    }
}

/// Runs `count` requests built by `make` with `concurrency` workers; returns requests per second.
async fn measure<F>(
    target: Arc<Target>,
    count: usize,
    concurrency: usize,
    make: F,
) -> anyhow::Result<f64>
where
    F: Fn(usize) -> (reqwest::Method, String, Option<Value>) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (target, make, next) = (target.clone(), make.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let (method, path, body) = make(i);
                let status = target.send(method, &path, body.as_ref()).await?;
                if status != 200 {
                    bail!("request {i} ({path}) answered {status}");
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("emulator-bench-{}", std::process::id()));
    let emulator = start(EmulatorOptions::new(&dir)).await?;
    let owner = emulator.policy("iothubowner").context("owner policy")?;
    let expiry = jiff::Timestamp::now().as_second() + 3600;
    let token = build_token(
        &encode_resource(emulator.host_name()),
        &owner.primary_key,
        Some("iothubowner"),
        expiry,
    );
    let ca = reqwest::Certificate::from_pem(emulator.ca_pem().as_bytes())?;
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()?;
    let target = Arc::new(Target {
        client,
        base_url: emulator.base_url(),
        token,
    });

    let bulk_rate = measure(target.clone(), cli.bulk_calls, cli.concurrency, |call| {
        let devices: Vec<Value> = (0..100)
            .map(|i| json!({"id": format!("bench-{call}-{i}"), "importMode": "create", "tags": {"bench": true}}))
            .collect();
        (reqwest::Method::POST, "/devices".to_string(), Some(Value::Array(devices)))
    })
    .await?;
    let devices = cli.bulk_calls * 100;
    let get_rate = measure(target.clone(), cli.requests, cli.concurrency, move |i| {
        let call = i % cli.bulk_calls.max(1);
        (
            reqwest::Method::GET,
            format!("/devices/bench-{call}-{}", i % 100),
            None,
        )
    })
    .await?;

    println!(
        "iothub-emulator bench ({} concurrent requests over HTTPS, quotas off)",
        cli.concurrency
    );
    println!(
        "device GET:            {get_rate:>9.0} requests/s ({} requests)",
        cli.requests
    );
    println!(
        "bulk create (100/call): {bulk_rate:>8.1} requests/s = {:.0} devices/s ({} calls, {devices} devices)",
        bulk_rate * 100.0,
        cli.bulk_calls
    );
    println!("ratio GET / bulk call:  {:>8.1}", get_rate / bulk_rate);
    emulator.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
