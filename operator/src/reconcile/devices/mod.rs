//! The device step (docs/architecture.md, "Devices"): IoT Hub identities, parent links and
//! ownership tags. It runs in rounds, because a child needs the `deviceScope` the hub gives its
//! parent on creation: observe ([`hub::observe`]), plan ([`plan::plan`], pure), apply
//! ([`hub::apply`]), until a round has nothing left to do.

pub mod hub;
pub mod model;
pub mod plan;
pub mod read_back;

use std::collections::{BTreeMap, BTreeSet};

pub use model::{
    DesiredAuth, DesiredDevice, HubDevice, SasKeys, created_keys, desired_devices, new_leaf_keys,
};
pub use plan::{Action, DeviceReport, Plan, PlanInput};
pub use read_back::ReadBacks;

use crate::api::PolicySpec;
use crate::iothub::{HubClient, HubError};
use crate::ownership::{HierarchyIdentity, Ownership};

/// Most observe-plan-apply rounds in one reconcile. A tree is at most five Edge layers plus a
/// Leaf layer deep, so six creation rounds and one confirming round converge any valid spec.
pub const MAX_ROUNDS: usize = 8;

/// What the rounds found and did.
#[derive(Debug, Default)]
pub struct Rounds {
    /// The last round's plan: final device states.
    pub last: Plan,
    /// Drift found in any round, per device (a corrected drift is gone from the last round).
    pub drift: BTreeMap<String, Vec<String>>,
    /// Device-level write failures of the last applied round.
    pub failures: BTreeMap<String, String>,
    /// Every write of every round.
    pub applied: hub::Applied,
    /// The hub's devices as the last round saw them.
    pub observed: BTreeMap<String, HubDevice>,
}

impl Rounds {
    /// The observed devices that are this hierarchy's by tag.
    pub fn owned(&self, identity: &HierarchyIdentity) -> BTreeMap<String, HubDevice> {
        self.observed
            .iter()
            .filter(|(_, d)| d.ownership(identity) == Ownership::Ours)
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect()
    }

    /// Nothing is left to do and nothing failed.
    pub fn converged(&self) -> bool {
        self.last.is_converged() && self.failures.is_empty()
    }
}

/// What the rounds have registered so far: the hierarchy's devices in the hub and those this
/// reconcile created. Published after each round that created devices, so the bundles of the
/// layers already in the hub are written while the next layers are created.
#[derive(Debug, Clone, Default)]
pub struct Registered {
    pub owned: BTreeMap<String, HubDevice>,
    pub created: Vec<String>,
}

/// Where [`converge`] publishes [`Registered`]; dropped (closed) when the rounds end.
pub type Progress = tokio::sync::watch::Sender<Registered>;

/// Observes, plans and applies until the plan is empty, a round writes nothing and fails on the
/// same devices as the round before (retrying now would fail the same way), or [`MAX_ROUNDS`]
/// pass. Every device a round writes is read back before the next one plans, so a round never
/// plans from a query that does not show the last round's writes yet. An empty `desired`
/// removes the hierarchy's devices (when the policy lets it).
pub async fn converge(
    hub: &HubClient,
    identity: &HierarchyIdentity,
    policy: &PolicySpec,
    desired: &[DesiredDevice],
    previously_registered: &BTreeSet<String>,
    read_backs: &mut ReadBacks,
    progress: Option<Progress>,
) -> Result<Rounds, HubError> {
    let mut rounds = Rounds::default();
    read_backs.expire(std::time::Instant::now());
    let mut created_before = 0;
    for _ in 0..MAX_ROUNDS {
        rounds.observed = hub::observe(
            hub,
            identity,
            desired.iter().map(|d| d.id.as_str()),
            previously_registered,
            read_backs,
        )
        .await?;
        if let Some(progress) = &progress
            && rounds.applied.created.len() > created_before
        {
            created_before = rounds.applied.created.len();
            progress.send_replace(Registered {
                owned: rounds.owned(identity),
                created: rounds.applied.created.clone(),
            });
        }
        rounds.last = plan::plan(&PlanInput {
            identity,
            policy,
            desired,
            observed: &rounds.observed,
            previously_registered,
        });
        for (id, report) in &rounds.last.devices {
            let seen = rounds.drift.entry(id.clone()).or_default();
            for d in &report.drift {
                if !seen.contains(d) {
                    seen.push(d.clone());
                }
            }
        }
        if rounds.last.is_converged() {
            // Nothing is left to do, so what failed in an earlier round has come right.
            rounds.failures.clear();
            break;
        }
        let applied = hub::apply(hub, &rounds.last.actions).await?;
        hub::read_back_writes(hub, &applied, &rounds.observed, read_backs).await?;
        // A write that failed on a stale view (409 on a create, 412 on an etag) succeeds once
        // the round plans from the read-back; the same failures twice in a row will not.
        let stuck = applied.writes() == 0 && applied.failures.keys().eq(rounds.failures.keys());
        rounds.failures = applied.failures.clone();
        rounds.applied.merge(applied);
        if stuck {
            break;
        }
    }
    rounds.drift.retain(|_, d| !d.is_empty());
    // A write that failed and came right in a later round is no failure to report: after a
    // crash, a create the killed process had sent is refused (the device exists), read back,
    // and found to be ours.
    let outstanding = &rounds.failures;
    rounds
        .applied
        .failures
        .retain(|id, _| outstanding.contains_key(id));
    Ok(rounds)
}
