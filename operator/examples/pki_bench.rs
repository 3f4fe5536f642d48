//! Certificates issued per second for each key algorithm: key generation plus signing of an
//! edge CA by a root, the work the operator does per device. Run with
//! `cargo run --release -p edge-hierarchy-operator --example pki_bench [SECONDS_PER_ALGORITHM]`.
//! Each algorithm runs for the given time (default 3 s) on a pool as wide as the machine;
//! the output is rates and ratios, never a pass/fail on time.

use std::time::{Duration, Instant};

use edge_hierarchy_operator::api::KeyAlgorithm;
use edge_hierarchy_operator::pki::{CryptoPool, generate_key, generate_root_ca, issue_edge_ca};
use jiff::Timestamp;

#[tokio::main]
async fn main() {
    let budget = std::env::args()
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64);
    let pool = CryptoPool::with_available_parallelism();
    let now = Timestamp::now();
    let root_key = generate_key(KeyAlgorithm::EcdsaP256).expect("root key");
    let root = generate_root_ca("bench", &root_key, Duration::from_secs(86400), now).expect("root");
    println!(
        "pki_bench: edge CAs issued (key generation + signing), {:.1}s per algorithm, {} parallel",
        budget.as_secs_f64(),
        pool.parallelism()
    );

    let mut baseline = None;
    for algorithm in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa4096,
    ] {
        let started = Instant::now();
        let mut issued = 0usize;
        // Batches as wide as the pool; at least one batch, so slow algorithms still report.
        while issued == 0 || started.elapsed() < budget {
            let batch = (0..pool.parallelism()).map(|i| {
                let (pool, root) = (pool.clone(), root.clone());
                async move {
                    pool.run(move || {
                        let key = generate_key(algorithm)?;
                        issue_edge_ca(
                            &root,
                            &format!("device-{i}"),
                            &key,
                            Duration::from_secs(3600),
                            now,
                        )
                    })
                    .await
                }
            });
            for result in futures::future::join_all(batch).await {
                result.expect("issue edge CA");
                issued += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let rate = issued as f64 / elapsed;
        let slower = baseline.map_or(1.0, |b: f64| b / rate);
        baseline.get_or_insert(rate);
        println!(
            "  {algorithm:?}: {issued} certificates in {elapsed:.2}s = {rate:.1}/s, {:.2} ms each, {slower:.0}x the time of EcdsaP256",
            1000.0 / rate
        );
    }
}
