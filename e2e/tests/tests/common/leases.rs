//! Leader election as the tests see it: the Lease's terms from a watch, the hub writes from the
//! emulator's write log (each names its replica in the User-Agent), and the check that no
//! replica wrote outside its own term.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, ensure};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::World;

/// One term as the Lease records it: the holder and the `acquireTime` it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub holder: String,
    pub acquired: SystemTime,
}

/// Records every new term of a Lease from a watch, for the life of the test.
pub fn record_terms(client: kube::Client, namespace: &str, name: &str) -> Arc<Mutex<Vec<Term>>> {
    let terms = Arc::new(Mutex::new(Vec::<Term>::new()));
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let recorded = terms.clone();
    tokio::spawn(
        watcher(api, config)
            .default_backoff()
            .applied_objects()
            .for_each(move |lease| {
                let recorded = recorded.clone();
                async move {
                    let Ok(lease) = lease else { return };
                    let Some(spec) = lease.spec else { return };
                    let (Some(holder), Some(acquired)) = (spec.holder_identity, spec.acquire_time)
                    else {
                        return;
                    };
                    let term = Term {
                        holder,
                        acquired: SystemTime::from(acquired.0),
                    };
                    let mut terms = recorded.lock().unwrap();
                    if terms.last() != Some(&term) {
                        eprintln!("lease term: {term:?}");
                        terms.push(term);
                    }
                }
            }),
    );
    terms
}

/// A write the emulator logged: when it arrived and which replica sent it (from its User-Agent).
#[derive(Debug, Clone)]
pub struct Write {
    pub at: SystemTime,
    pub replica: String,
    pub path: String,
}

pub async fn operator_writes(env: &World) -> anyhow::Result<Vec<Write>> {
    let log = env.hub.admin.get_emulator("writes").await?;
    let mut writes = Vec::new();
    for entry in log.as_array().context("the write log is a list")? {
        let agent = entry["userAgent"].as_str().unwrap_or_default();
        let Some(rest) = agent.strip_prefix("edge-hierarchy-operator/") else {
            continue;
        };
        let replica = rest
            .split_once(" (")
            .and_then(|(_, r)| r.strip_suffix(')'))
            .with_context(|| format!("no replica in the User-Agent {agent:?}"))?;
        let at: k8s_openapi::jiff::Timestamp = entry["time"]
            .as_str()
            .context("time")?
            .parse()
            .context("time is RFC 3339")?;
        writes.push(Write {
            at: SystemTime::from(at),
            replica: replica.to_string(),
            path: entry["path"].as_str().unwrap_or_default().to_string(),
        });
    }
    writes.sort_by_key(|w| w.at);
    Ok(writes)
}

/// Every write falls inside its sender's term: after the sender acquired the Lease and before
/// the next holder did. So no two replicas wrote in the same interval.
pub fn check_no_overlap(writes: &[Write], terms: &[Term]) -> anyhow::Result<()> {
    ensure!(!terms.is_empty(), "no term recorded");
    let mut blocks: Vec<(String, SystemTime, SystemTime, usize)> = Vec::new();
    for w in writes {
        match blocks.last_mut() {
            Some((replica, _, last, n)) if *replica == w.replica => {
                *last = w.at;
                *n += 1;
            }
            _ => blocks.push((w.replica.clone(), w.at, w.at, 1)),
        }
    }
    for (replica, first, last, n) in &blocks {
        eprintln!(
            "writes by {replica}: {n} from {} to {}",
            edge_hierarchy_operator::leadership::jiff_time(*first),
            edge_hierarchy_operator::leadership::jiff_time(*last)
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (replica, first, last, _) in &blocks {
        ensure!(
            seen.insert(replica.clone()),
            "{replica} wrote again after another replica had written: {blocks:?}"
        );
        let index = terms
            .iter()
            .rposition(|t| t.holder == *replica && t.acquired <= *first + Duration::from_millis(1))
            .with_context(|| {
                format!("{replica} wrote at {first:?} before it held the lease ({terms:?})")
            })?;
        if let Some(next) = terms.get(index + 1) {
            ensure!(
                *last < next.acquired,
                "{replica} wrote at {last:?}, after {} took the lease at {:?}",
                next.holder,
                next.acquired
            );
        }
    }
    Ok(())
}
