//! The device step (docs/architecture.md, "Devices"): IoT Hub identities, parent links and
//! ownership tags. It runs in rounds, because a child needs the `deviceScope` the hub gives its
//! parent on creation: observe ([`hub::observe`]), plan ([`plan::plan`], pure), apply
//! ([`hub::apply`]), until a round has nothing left to do.

pub mod hub;
pub mod model;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};

pub use model::{DesiredAuth, DesiredDevice, HubDevice, SasKeys, desired_devices};
pub use plan::{Action, DeviceReport, Plan, PlanInput};

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

/// Observes, plans and applies until the plan is empty, a round writes nothing (every write
/// failed per device: retrying now would fail the same way), or [`MAX_ROUNDS`] pass. An empty
/// `desired` removes the hierarchy's devices (when the policy lets it).
pub async fn converge(
    hub: &HubClient,
    identity: &HierarchyIdentity,
    policy: &PolicySpec,
    desired: &[DesiredDevice],
    previously_registered: &BTreeSet<String>,
) -> Result<Rounds, HubError> {
    let mut rounds = Rounds::default();
    for _ in 0..MAX_ROUNDS {
        rounds.observed =
            hub::observe(hub, identity, desired.iter().map(|d| d.id.as_str())).await?;
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
            break;
        }
        let applied = hub::apply(hub, &rounds.last.actions).await?;
        rounds.failures = applied.failures.clone();
        let stuck = applied.writes() == 0;
        rounds.applied.merge(applied);
        if stuck {
            break;
        }
    }
    rounds.drift.retain(|_, d| !d.is_empty());
    Ok(rounds)
}
