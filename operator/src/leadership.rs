//! Leader election over a Kubernetes Lease (`run --leader-election`): of the replicas that share
//! a Lease, only its holder runs the controller. docs/leader-election.md explains the timing.
//!
//! kube-lease-manager takes and renews the Lease. On top of it, this replica watches the Lease
//! itself and runs its controller only while both agree that it holds the Lease and the term it
//! last renewed has more than [`LeaseConfig::stop_before`] left by its own clock. A standby takes
//! the Lease only after that term has ended by its clock, so a holder that cannot renew (API
//! server unreachable, process paused) has stopped writing before anyone else starts.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::metrics::Metrics;

/// How long reconciles in flight at SIGTERM may take to finish before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long releasing the Lease at shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The Lease this replica competes for, and who it is.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// `holderIdentity` when it leads: the Pod's name in a cluster.
    pub identity: String,
    /// `leaseDurationSeconds`: a holder that stops renewing is replaced after this long.
    pub duration_secs: u64,
}

impl LeaseConfig {
    /// How long before its term ends the holder renews it (kube-lease-manager's `grace`): a
    /// third of the term, at least one second.
    pub fn renew_before(&self) -> u64 {
        (self.duration_secs / 3).max(1)
    }

    /// How long before its term ends, by its own clock, a holder that has not renewed stops its
    /// controller: half of the renewal window, so a renewal has the other half to succeed.
    /// Clock skew between replicas, and the time a hub takes to answer a call already sent,
    /// must stay below it.
    pub fn stop_before(&self) -> Duration {
        Duration::from_millis(self.renew_before() * 500)
    }

    /// The field manager of this replica's Lease writes. One per replica, so two standbys that
    /// try to take a free Lease at once conflict instead of both seeing their own apply succeed.
    fn field_manager(&self) -> String {
        let mut manager = format!("{}/{}", crate::names::MANAGER, self.identity);
        manager.truncate(128);
        manager
    }
}

/// The identity of this replica: `POD_NAME` (set from the Pod's name by the chart), else the
/// host name.
pub fn identity() -> String {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    from_env("POD_NAME")
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .or_else(|| from_env("HOSTNAME"))
        .unwrap_or_else(|| "unknown".into())
}

/// What a replica knows of the Lease from its last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// `renewTime`: written by the holder, by its own clock.
    pub renewed: Option<SystemTime>,
    pub duration: Option<Duration>,
}

impl LeaseView {
    pub fn of(lease: &Lease) -> Self {
        let Some(spec) = &lease.spec else {
            return Self::default();
        };
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renewed: spec.renew_time.as_ref().map(|t| SystemTime::from(t.0)),
            duration: spec
                .lease_duration_seconds
                .and_then(|d| u64::try_from(d).ok())
                .map(Duration::from_secs),
        }
    }

    /// When the holder's term ends: `renewTime + leaseDurationSeconds`.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.holder.as_ref()?;
        Some(self.renewed? + self.duration?)
    }

    /// The holder, if its term has not ended at `now`.
    pub fn live_holder(&self, now: SystemTime) -> Option<&str> {
        (self.expiry()? > now)
            .then_some(self.holder.as_deref())
            .flatten()
    }
}

/// Until when `identity` may run its controller: while kube-lease-manager says it leads and the
/// Lease as last seen names it, up to [`LeaseConfig::stop_before`] before its term ends. `None`
/// when it may not lead at all.
pub fn lead_until(
    manager_says_leader: bool,
    view: &LeaseView,
    identity: &str,
    stop_before: Duration,
) -> Option<SystemTime> {
    if !manager_says_leader || view.holder.as_deref() != Some(identity) {
        return None;
    }
    view.expiry()?.checked_sub(stop_before)
}

/// What `/readyz` says of a replica under leader election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Still setting up (the Lease not read yet).
    Starting,
    Leader,
    Standby {
        holder: Option<String>,
    },
}

/// A running kube-lease-manager: its state channel and its task.
struct Manager {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

async fn start_manager(client: &Client, config: &LeaseConfig) -> anyhow::Result<Manager> {
    let manager = LeaseManagerBuilder::new(client.clone(), &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_field_manager(config.field_manager())
        .with_duration(config.duration_secs)
        .with_grace(config.renew_before())
        .build()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot use Lease {}/{} ({e}); the operator needs get, create, patch, list and watch on leases in namespace {:?}",
                config.namespace,
                config.name,
                config.namespace
            )
        })?;
    let (leading, task) = manager.watch().await;
    Ok(Manager { leading, task })
}

/// The controller of one term, and the sender that asks it to stop gracefully.
struct Term {
    task: JoinHandle<anyhow::Result<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Term {
    /// Drops the controller and every reconcile in flight at once.
    async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A future that resolves when the controller should stop taking new work.
pub type StopSignal = futures::future::BoxFuture<'static, ()>;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("Ctrl-C received"),
    }
}

/// Competes for the Lease and runs `controller` while this replica leads, until SIGTERM (then
/// the controller stops and the Lease is released, so a standby takes over at once). Returns
/// an error when a term is lost: the process then exits and comes back as a standby, with
/// nothing of the lost term left in memory.
pub async fn run<C, F>(
    client: Client,
    config: LeaseConfig,
    metrics: Arc<Metrics>,
    controller: C,
) -> anyhow::Result<()>
where
    C: Fn(StopSignal) -> F,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let identity = config.identity.clone();
    let stop_before = config.stop_before();
    metrics.set_role(&config.name, Role::Starting);
    let mut manager = start_manager(&client, &config).await?;
    info!(lease = %config.name, namespace = %config.namespace, %identity,
          duration_secs = config.duration_secs, "competing for the lease");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let mut lease_events = watcher(
        leases,
        watcher::Config::default().fields(&format!("metadata.name={}", config.name)),
    )
    .default_backoff()
    .boxed();
    let mut view: Option<LeaseView> = None;
    let mut term: Option<Term> = None;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let now = SystemTime::now();
        let manager_says = *manager.leading.borrow();
        let until = view
            .as_ref()
            .and_then(|v| lead_until(manager_says, v, &identity, stop_before))
            .filter(|until| *until > now);
        match (until, term.is_some()) {
            (Some(until), false) => {
                info!(%identity, lease = %config.name, stops_at = %jiff_time(until), "leading: starting the controller");
                let (stop, stopped) = oneshot::channel::<()>();
                let signal: StopSignal = stopped.map(|_| ()).boxed();
                term = Some(Term {
                    task: tokio::spawn(controller(signal)),
                    stop: Some(stop),
                });
                metrics.set_role(&config.name, Role::Leader);
            }
            (None, true) => {
                let lost = term.take().expect("a running term");
                lost.abort().await;
                metrics.set_ready(false);
                metrics.set_role(
                    &config.name,
                    Role::Standby {
                        holder: view
                            .as_ref()
                            .and_then(|v| v.live_holder(now))
                            .map(str::to_string),
                    },
                );
                error!(%identity, lease = %config.name, "lost the lease (not renewed in time, or taken over): the controller stopped; exiting so this replica restarts as a standby");
                anyhow::bail!(
                    "lost Lease {}/{}; the controller was stopped",
                    config.namespace,
                    config.name
                );
            }
            _ => {}
        }
        if term.is_none() && view.is_some() {
            let holder = view
                .as_ref()
                .and_then(|v| v.live_holder(now))
                .map(str::to_string);
            metrics.set_role(&config.name, Role::Standby { holder });
        }
        // Wake at the end of the term (to stop), or at the holder's expiry (to update /readyz).
        let wake = until
            .or_else(|| view.as_ref().and_then(LeaseView::expiry))
            .and_then(|t| t.duration_since(now).ok())
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = &mut shutdown => break,
            changed = manager.leading.changed() => {
                if changed.is_err() {
                    let ended = (&mut manager.task).await;
                    anyhow::bail!("the lease manager stopped: {ended:?}");
                }
            }
            event = lease_events.next() => match event {
                Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) => {
                    let next = LeaseView::of(&lease);
                    let freed = view.as_ref().is_some_and(|v| v.holder.is_some()) && next.holder.is_none();
                    if next.holder != view.as_ref().and_then(|v| v.holder.clone()) {
                        info!(holder = next.holder.as_deref().unwrap_or("none"), lease = %config.name, "lease holder changed");
                    }
                    view = Some(next);
                    if freed && term.is_none() && !*manager.leading.borrow() {
                        // kube-lease-manager waits out the old term before it looks again; a
                        // fresh one tries at once, so a released Lease is taken in a moment.
                        manager.task.abort();
                        manager = start_manager(&client, &config).await?;
                    }
                }
                Some(Ok(watcher::Event::Delete(_))) => view = Some(LeaseView::default()),
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {
                    view.get_or_insert_with(LeaseView::default);
                }
                Some(Err(e)) => warn!(error = %e, "watch of the lease failed; retrying"),
                None => anyhow::bail!("the watch of the lease ended"),
            },
            _ = tokio::time::sleep(wake) => {}
            ended = async { (&mut term.as_mut().expect("checked").task).await }, if term.is_some() => {
                return match ended {
                    Ok(result) => result.and_then(|()| Err(anyhow::anyhow!("the controller stopped by itself"))),
                    Err(e) => Err(anyhow::anyhow!("the controller failed: {e}")),
                };
            }
        }
    }
    // SIGTERM: stop taking work, give reconciles in flight a moment (never past the term), then
    // release the Lease so a standby takes over without waiting for it to expire.
    if let Some(mut running) = term.take() {
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(());
        }
        let left = view
            .as_ref()
            .and_then(|v| lead_until(true, v, &identity, stop_before))
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
            .min(SHUTDOWN_GRACE);
        if tokio::time::timeout(left, &mut running.task).await.is_err() {
            warn!("reconciles still running at shutdown were dropped");
            running.abort().await;
        }
        metrics.set_ready(false);
        info!("controller stopped");
    }
    let leading = *manager.leading.borrow();
    if leading {
        // Dropping the channel makes kube-lease-manager release the Lease and end.
        drop(manager.leading);
        match tokio::time::timeout(RELEASE_TIMEOUT, manager.task).await {
            Ok(Ok(Ok(_))) => info!(lease = %config.name, "lease released"),
            other => {
                warn!(lease = %config.name, "could not release the lease ({other:?}); a standby takes over when it expires")
            }
        }
    } else {
        manager.task.abort();
    }
    metrics.set_role(&config.name, Role::Standby { holder: None });
    Ok(())
}

/// RFC 3339 text of a time, for logs.
pub fn jiff_time(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| format!("{time:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn view(holder: Option<&str>, renewed: u64, duration: u64) -> LeaseView {
        LeaseView {
            holder: holder.map(str::to_string),
            renewed: Some(at(renewed)),
            duration: Some(Duration::from_secs(duration)),
        }
    }

    fn config(duration_secs: u64) -> LeaseConfig {
        LeaseConfig {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "a".into(),
            duration_secs,
        }
    }

    #[test]
    fn the_holder_renews_a_third_before_the_end_and_stops_half_of_that_before() {
        let c = config(15);
        assert_eq!(c.renew_before(), 5);
        assert_eq!(c.stop_before(), Duration::from_millis(2500));
        assert_eq!(config(3).renew_before(), 1);
        assert_eq!(config(3).stop_before(), Duration::from_millis(500));
        assert_eq!(config(60).stop_before(), Duration::from_secs(10));
        // The renewal happens before the stop, which happens before the term ends.
        for d in [3, 4, 15, 60, 3600] {
            let c = config(d);
            assert!(
                Duration::from_secs(c.renew_before()) > c.stop_before(),
                "{d}"
            );
            assert!(c.renew_before() < d, "{d}");
        }
    }

    #[test]
    fn a_replica_leads_only_while_both_the_manager_and_the_lease_say_so() {
        let stop = Duration::from_millis(2500);
        let mine = view(Some("a"), 100, 15);
        assert_eq!(
            lead_until(true, &mine, "a", stop),
            Some(at(115) - Duration::from_millis(2500))
        );
        assert_eq!(lead_until(false, &mine, "a", stop), None, "manager says no");
        assert_eq!(
            lead_until(true, &view(Some("b"), 100, 15), "a", stop),
            None,
            "the lease names another holder"
        );
        assert_eq!(lead_until(true, &view(None, 100, 15), "a", stop), None);
        let no_renewal = LeaseView {
            renewed: None,
            ..mine.clone()
        };
        assert_eq!(lead_until(true, &no_renewal, "a", stop), None);
    }

    #[test]
    fn a_holder_counts_only_until_its_term_ends() {
        let v = view(Some("b"), 100, 15);
        assert_eq!(v.live_holder(at(110)), Some("b"));
        assert_eq!(v.live_holder(at(115)), None);
        assert_eq!(view(None, 100, 15).live_holder(at(101)), None);
        assert_eq!(LeaseView::default().expiry(), None);
    }

    #[test]
    fn a_released_lease_has_no_holder() {
        let released = Lease {
            spec: Some(LeaseSpec {
                holder_identity: None,
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(LeaseView::of(&released), LeaseView::default());
        let held = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("a".into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(
                    jiff::Timestamp::from_second(1_800_000_100).unwrap(),
                )),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(LeaseView::of(&held), view(Some("a"), 100, 15));
    }
}
