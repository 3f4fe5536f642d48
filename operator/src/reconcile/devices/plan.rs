//! `plan`: desired devices against hub devices, to ordered actions and a per-device report.
//! Pure: every rule about identities (docs/architecture.md, "Devices") lives here and is tested
//! with fixtures in `plan/tests.rs`.
//!
//! Planning runs in rounds: a child needs its parent's `deviceScope`, which the hub assigns on
//! creation, so each round creates the devices whose parents already exist; the reconciler
//! re-observes and plans again until a round has nothing to do.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::model::{DesiredAuth, DesiredDevice, HubDevice, SasKeys};
use crate::api::{DeviceState, PolicySpec, ReconcilePolicy};
use crate::iothub::AuthenticationType as HubAuth;
use crate::ownership::{HierarchyIdentity, Ownership, TAG, ownership_tags_patch};

/// Everything `plan` looks at.
pub struct PlanInput<'a> {
    pub identity: &'a HierarchyIdentity,
    pub policy: &'a PolicySpec,
    /// Devices of the spec, parents first. Empty when the hierarchy is being deleted.
    pub desired: &'a [DesiredDevice],
    /// Hub devices that are ours by tag, or carry a spec'd id.
    pub observed: &'a BTreeMap<String, HubDevice>,
    /// Devices this hierarchy registered before (from its status): one that comes back without
    /// tags was re-created out of band and is taken back rather than reported as a conflict.
    pub previously_registered: &'a BTreeSet<String>,
}

/// A device to create in one bulk call.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDevice {
    pub id: String,
    pub iot_edge: bool,
    /// The parent's scope: an Edge child lists it in `parentScopes`, a Leaf takes it as `deviceScope`.
    pub parent_scope: Option<String>,
    pub auth: NewAuth,
    pub owner_tags: Value,
}

/// Authentication of a new device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewAuth {
    /// SAS with the given keys, or keys the hub generates.
    Sas { keys: Option<SasKeys> },
    SelfSigned {
        primary: String,
        secondary: Option<String>,
    },
}

/// Corrections to an existing identity; `None` fields stay as they are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IdentityFix {
    pub iot_edge: Option<bool>,
    pub enable: bool,
    /// New `parentScopes` of an Edge device.
    pub parent_scopes: Option<Vec<String>>,
    /// New `deviceScope` of a Leaf device (empty: no parent).
    pub device_scope: Option<String>,
    pub auth: Option<NewAuth>,
}

/// One step of a plan. A plan's actions run in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create devices (bulk, at most 100 a call) with parent links and tags in the create.
    Create(Vec<NewDevice>),
    /// Correct a device identity (read-modify-write with the device etag).
    FixIdentity {
        id: String,
        etag: Option<String>,
        fix: IdentityFix,
    },
    /// Set `tags.edgeHierarchy` (twin patch with the twin etag).
    WriteOwnerTags {
        id: String,
        twin_etag: Option<String>,
        patch: Value,
    },
    /// Delete devices, children before parents.
    Delete(Vec<(String, Option<String>)>),
}

impl Action {
    /// Ids of the devices the action writes to.
    pub fn device_ids(&self) -> Vec<&str> {
        match self {
            Action::Create(devices) => devices.iter().map(|d| d.id.as_str()).collect(),
            Action::FixIdentity { id, .. } | Action::WriteOwnerTags { id, .. } => vec![id.as_str()],
            Action::Delete(devices) => devices.iter().map(|(id, _)| id.as_str()).collect(),
        }
    }
}

/// What the plan found about one device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceReport {
    pub state: DeviceState,
    pub layer: Option<u32>,
    pub parent: Option<String>,
    pub device_scope: Option<String>,
    /// Differences between hub and spec, each saying what was (or, under Observe, was not) done.
    pub drift: Vec<String>,
    pub message: Option<String>,
    /// The device exists in the hub and is ours.
    pub registered: bool,
    /// The device's parent link in the hub is right (a top device has none to be right).
    pub parented: bool,
}

/// The outcome of one planning round.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub devices: BTreeMap<String, DeviceReport>,
    /// Messages about ids another owner holds; each needs a person to act.
    pub conflicts: Vec<String>,
}

impl Plan {
    pub fn is_converged(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The `parentScopes` / `deviceScope` a device should have, if its parent's scope is known.
enum ParentScope {
    /// A top-layer device: no parent link.
    None,
    /// The parent exists in the hub with this scope.
    Known(String),
    /// The parent is not (yet) in the hub, or is not ours.
    Unknown(String),
}

/// Plans one round. See the module docs.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut round = Round {
        input,
        manage: input.policy.reconcile == ReconcilePolicy::Manage,
        out: Plan::default(),
        creates: Vec::new(),
        fixes: Vec::new(),
        tag_writes: Vec::new(),
        ours: BTreeSet::new(),
    };
    for want in input.desired {
        round.device(want);
    }
    round.finish()
}

/// One planning round in progress.
struct Round<'a> {
    input: &'a PlanInput<'a>,
    manage: bool,
    out: Plan,
    creates: Vec<NewDevice>,
    fixes: Vec<Action>,
    tag_writes: Vec<Action>,
    /// Devices treated as ours this round (owned, adopted or taken back): only their scopes can
    /// parent a child.
    ours: BTreeSet<&'a str>,
}

impl<'a> Round<'a> {
    fn device(&mut self, want: &'a DesiredDevice) {
        let input = self.input;
        let mut report = DeviceReport {
            layer: Some(want.layer),
            parent: want.parent.clone(),
            ..DeviceReport::default()
        };
        let parent_scope = self.parent_scope(want);
        let Some(have) = input.observed.get(&want.id) else {
            plan_missing(
                input,
                want,
                &parent_scope,
                self.manage,
                &mut report,
                &mut self.creates,
            );
            self.out.devices.insert(want.id.clone(), report);
            return;
        };
        // Ownership first: nothing is compared, let alone written, on a device that is not ours.
        match judge_ownership(input, want, have, self.manage) {
            Judgement::Conflict(message) => {
                conflict(&mut self.out, report, &want.id, message);
                return;
            }
            Judgement::Ours { adopted } => report.drift.extend(adopted),
        }
        self.ours.insert(want.id.as_str());
        report.registered = true;
        report.device_scope = have.device_scope.clone();

        let (fix, mut drift) = identity_drift(want, have, &parent_scope, &mut report);
        let owner_patch = owner_tags_patch(have.owner_tags.as_ref(), &want.owner_tags);
        // An adopted device gets its tags as part of the adoption, reported above.
        if owner_patch.is_some() && have.ownership(input.identity) == Ownership::Ours {
            drift.push("ownership tags differ from the spec".to_string());
        }
        let corrected = if self.manage {
            "; corrected"
        } else {
            "; not corrected (reconcile: Observe)"
        };
        report
            .drift
            .extend(drift.iter().map(|d| format!("{d}{corrected}")));
        if self.manage {
            if fix != IdentityFix::default() {
                self.fixes.push(Action::FixIdentity {
                    id: want.id.clone(),
                    etag: have.device_etag.clone(),
                    fix,
                });
            }
            if let Some(patch) = owner_patch {
                self.tag_writes.push(Action::WriteOwnerTags {
                    id: want.id.clone(),
                    twin_etag: have.twin_etag.clone(),
                    patch,
                });
            }
        }
        report.state = device_state(&report, self.manage, &parent_scope);
        self.out.devices.insert(want.id.clone(), report);
    }

    /// The parent link `want` should have, as far as this round knows its parent.
    fn parent_scope(&self, want: &DesiredDevice) -> ParentScope {
        match &want.parent {
            None => ParentScope::None,
            Some(p) => match self.input.observed.get(p) {
                Some(parent) if self.ours.contains(p.as_str()) && parent.device_scope.is_some() => {
                    ParentScope::Known(parent.device_scope.clone().unwrap_or_default())
                }
                _ => ParentScope::Unknown(p.clone()),
            },
        }
    }

    /// The actions in their order: creates, identity fixes, tag writes, deletes.
    fn finish(mut self) -> Plan {
        let deletes = plan_removals(self.input, &mut self.out);
        if !self.creates.is_empty() {
            self.out.actions.push(Action::Create(self.creates));
        }
        self.out.actions.extend(self.fixes);
        self.out.actions.extend(self.tag_writes);
        if !deletes.is_empty() {
            self.out.actions.push(Action::Delete(deletes));
        }
        self.out
    }
}

/// Whether an existing hub device may be managed as this hierarchy's.
enum Judgement {
    /// Ours; `adopted` says so when it was taken over (adoptExisting, or re-created untagged).
    Ours { adopted: Option<String> },
    /// Another owner's, or nobody's without adoption: reported, never written.
    Conflict(String),
}

fn judge_ownership(
    input: &PlanInput<'_>,
    want: &DesiredDevice,
    have: &HubDevice,
    manage: bool,
) -> Judgement {
    let taken_back = input.previously_registered.contains(&want.id);
    let adopted = |why: &str| Judgement::Ours {
        adopted: Some(if manage {
            why.to_string()
        } else {
            format!("{why} once reconcile is Manage (Observe: not written)")
        }),
    };
    match have.ownership(input.identity) {
        Ownership::Ours => Judgement::Ours { adopted: None },
        // Tags without the operator's proof are believed only when the hierarchy's own records
        // (its status) show the operator registered the device: written by a version from
        // before proofs, they get one now.
        Ownership::Unproven if taken_back => adopted(
            "ownership tags carried no valid proof; the device is in this hierarchy's records, \
             so the proof is written",
        ),
        Ownership::Unproven => Judgement::Conflict(unproven(&want.id, input.identity)),
        Ownership::Earlier { uid } => adopted(&format!(
            "created by an earlier hierarchy {} (uid {uid}) deleted with deletion: Detach; taken back",
            input.identity
        )),
        Ownership::Other { namespace, name }
            if namespace == input.identity.namespace && name == input.identity.name =>
        {
            Judgement::Conflict(format!(
                "device {:?} is tagged for an earlier hierarchy named {namespace}/{name}, but its \
                 ownership proof does not verify, so it is not taken back; if it is this \
                 hierarchy's, remove tags.edgeHierarchy from its twin and set \
                 spec.policy.adoptExisting: true",
                want.id
            ))
        }
        Ownership::Other { namespace, name } => Judgement::Conflict(format!(
            "device {:?} already exists in the hub and belongs to hierarchy {namespace}/{name}; \
             remove it from one of the two hierarchies",
            want.id
        )),
        Ownership::Unowned if input.policy.adopt_existing || taken_back => adopted(if taken_back {
            "re-created outside the operator without ownership tags; taken back"
        } else {
            "existed in the hub without an owner; adopted (policy.adoptExisting)"
        }),
        Ownership::Unowned => Judgement::Conflict(format!(
            "device {:?} already exists in the hub and no hierarchy owns it; set \
             spec.policy.adoptExisting: true to take it over, or rename the device in the spec",
            want.id
        )),
    }
}

/// The conflict message of a device tagged for this hierarchy without the operator's proof.
fn unproven(id: &str, identity: &HierarchyIdentity) -> String {
    format!(
        "device {id:?} carries ownership tags naming hierarchy {identity} without the operator's \
         proof (tags can be written by anyone with the hub's ServiceConnect right), so it is \
         left alone and never deleted; if it is this hierarchy's, remove tags.edgeHierarchy from \
         its twin and set spec.policy.adoptExisting: true"
    )
}

/// How an owned device's identity differs from the spec: the correction, and a sentence per
/// difference. Sets `report.parented`, or the waiting message when the parent is unknown.
fn identity_drift(
    want: &DesiredDevice,
    have: &HubDevice,
    parent_scope: &ParentScope,
    report: &mut DeviceReport,
) -> (IdentityFix, Vec<String>) {
    let mut fix = IdentityFix::default();
    let mut drift = Vec::new();
    if have.iot_edge != want.is_edge() {
        drift.push(format!(
            "edge capability is {} in the hub, the spec says {}",
            on_off(have.iot_edge),
            on_off(want.is_edge())
        ));
        fix.iot_edge = Some(want.is_edge());
    }
    if !have.enabled {
        drift.push("device is disabled in the hub".to_string());
        fix.enable = true;
    }
    if let Some((auth, what)) = auth_drift(want, have) {
        drift.push(what);
        fix.auth = Some(auth);
    }
    match parent_scope {
        ParentScope::None => {
            report.parented = true;
            if want.is_edge() && !have.parent_scopes.is_empty() {
                drift.push(format!(
                    "has parent link {:?} in the hub but is a top-layer device in the spec",
                    have.parent_scopes
                ));
                fix.parent_scopes = Some(Vec::new());
            } else if !want.is_edge() && have.device_scope.is_some() {
                // A Leaf's link is its deviceScope: moved to the top, it must be emptied.
                drift.push(format!(
                    "has parent link {:?} in the hub but is a top-layer device in the spec",
                    have.device_scope
                ));
                fix.device_scope = Some(String::new());
            }
        }
        ParentScope::Known(scope) => {
            if let Some(what) = link_drift(want, have, scope, &mut fix) {
                drift.push(what);
            } else {
                report.parented = true;
            }
        }
        ParentScope::Unknown(parent) => {
            report.message = Some(format!("waiting for parent {parent:?} to be registered"));
        }
    }
    (fix, drift)
}

/// The authentication to restore, with the sentence saying why, when the hub's differs.
fn auth_drift(want: &DesiredDevice, have: &HubDevice) -> Option<(NewAuth, String)> {
    match (&want.auth, have.auth) {
        (DesiredAuth::SymmetricKey { .. }, HubAuth::Sas) => None,
        (DesiredAuth::SymmetricKey { keys }, other) => Some((
            NewAuth::Sas { keys: keys.clone() },
            format!("authentication is {other:?} in the hub, the spec says SymmetricKey"),
        )),
        (DesiredAuth::X509 { thumbprints }, kind) => {
            let (primary, secondary) = thumbprints.as_ref()?;
            let registered = (have.thumbprints.0.as_ref(), have.thumbprints.1.as_ref());
            let wanted = (Some(primary), secondary.as_ref());
            (kind != HubAuth::SelfSigned || registered != wanted).then(|| {
                (
                    NewAuth::SelfSigned {
                        primary: primary.clone(),
                        secondary: secondary.clone(),
                    },
                    "X.509 thumbprints in the hub differ from the issued identity certificates"
                        .into(),
                )
            })
        }
    }
}

/// The sentence and the correction when a device's link to its known parent is wrong.
fn link_drift(
    want: &DesiredDevice,
    have: &HubDevice,
    scope: &str,
    fix: &mut IdentityFix,
) -> Option<String> {
    let linked = if want.is_edge() {
        have.parent_scopes == [scope.to_string()]
    } else {
        have.device_scope.as_deref() == Some(scope)
    };
    if linked {
        return None;
    }
    let now = if want.is_edge() {
        format!("{:?}", have.parent_scopes)
    } else {
        format!("{:?}", have.device_scope)
    };
    if want.is_edge() {
        fix.parent_scopes = Some(vec![scope.to_string()]);
    } else {
        fix.device_scope = Some(scope.to_string());
    }
    Some(format!(
        "parent link is {now} in the hub, the spec's parent {:?} has scope {scope:?}",
        want.parent.as_deref().unwrap_or_default()
    ))
}

/// An owned device's state after comparison: Pending while a correction or a parent is still
/// to come, Drifted when a difference stays (Observe), else Ready.
fn device_state(report: &DeviceReport, manage: bool, parent_scope: &ParentScope) -> DeviceState {
    if !report.drift.is_empty() {
        if manage {
            DeviceState::Pending
        } else {
            DeviceState::Drifted
        }
    } else if matches!(parent_scope, ParentScope::Unknown(_)) {
        DeviceState::Pending
    } else {
        DeviceState::Ready
    }
}

/// Records a device another owner holds: reported, never written.
fn conflict(out: &mut Plan, mut report: DeviceReport, id: &str, message: String) {
    report.state = DeviceState::Conflict;
    report.message = Some(message.clone());
    out.conflicts.push(message);
    out.devices.insert(id.to_string(), report);
}

fn plan_missing(
    input: &PlanInput<'_>,
    want: &DesiredDevice,
    parent_scope: &ParentScope,
    manage: bool,
    report: &mut DeviceReport,
    creates: &mut Vec<NewDevice>,
) {
    report.state = DeviceState::Pending;
    let was_ours = input.previously_registered.contains(&want.id);
    if was_ours {
        report.drift.push(if manage {
            "device was deleted from the hub outside the operator; re-created".to_string()
        } else {
            "device was deleted from the hub outside the operator; not re-created (reconcile: Observe)".to_string()
        });
        if !manage {
            report.state = DeviceState::Drifted;
        }
    }
    if !manage {
        report.message = Some("not in the hub; reconcile is Observe, so it is not created".into());
        return;
    }
    let auth = match &want.auth {
        DesiredAuth::SymmetricKey { keys } => NewAuth::Sas { keys: keys.clone() },
        DesiredAuth::X509 {
            thumbprints: Some((primary, secondary)),
        } => NewAuth::SelfSigned {
            primary: primary.clone(),
            secondary: secondary.clone(),
        },
        DesiredAuth::X509 { thumbprints: None } => {
            report.message = Some("waiting for its identity certificate".into());
            return;
        }
    };
    let scope = match parent_scope {
        ParentScope::None => None,
        ParentScope::Known(scope) => Some(scope.clone()),
        ParentScope::Unknown(parent) => {
            report.message = Some(format!("waiting for parent {parent:?} to be registered"));
            return;
        }
    };
    report.message = Some("creating".into());
    creates.push(NewDevice {
        id: want.id.clone(),
        iot_edge: want.is_edge(),
        parent_scope: scope,
        auth,
        owner_tags: want.owner_tags.clone(),
    });
}

/// Owned hub devices the spec no longer has: deleted children first under Delete, left alone
/// under Detach or Observe.
fn plan_removals(input: &PlanInput<'_>, out: &mut Plan) -> Vec<(String, Option<String>)> {
    let wanted: BTreeSet<&str> = input.desired.iter().map(|d| d.id.as_str()).collect();
    let gone = input
        .observed
        .values()
        .filter(|d| !wanted.contains(d.id.as_str()));
    // Deleted only with proof, or when the hierarchy's own records show the operator registered
    // it: tags alone can be forged.
    let mut removed = Vec::new();
    for d in gone {
        match d.ownership(input.identity) {
            Ownership::Ours => removed.push(d),
            Ownership::Unproven if input.previously_registered.contains(&d.id) => removed.push(d),
            Ownership::Unproven => out.conflicts.push(unproven(&d.id, input.identity)),
            _ => {}
        }
    }
    if removed.is_empty() || input.policy.leaves_removed_devices() {
        return Vec::new();
    }
    // Deepest first; the ownership tags record each device's layer.
    removed.sort_by(|a, b| {
        b.tagged_layer()
            .cmp(&a.tagged_layer())
            .then(a.id.cmp(&b.id))
    });
    for d in &removed {
        out.devices.insert(
            d.id.clone(),
            DeviceReport {
                state: DeviceState::Deleting,
                layer: Some(d.tagged_layer()),
                device_scope: d.device_scope.clone(),
                message: Some(
                    "removed from the spec; deleting from the hub (policy.deletion: Delete)".into(),
                ),
                registered: true,
                ..DeviceReport::default()
            },
        );
    }
    removed
        .into_iter()
        .map(|d| (d.id.clone(), d.device_etag.clone()))
        .collect()
}

/// The merge patch of `tags.edgeHierarchy` from what the hub has to what the spec wants, or
/// `None` when they agree (tags outside it are the user's and never part of the patch).
fn owner_tags_patch(have: Option<&Value>, want: &Value) -> Option<Value> {
    let wrap = |inner: Value| serde_json::json!({ TAG: inner });
    ownership_tags_patch(
        &wrap(have.cloned().unwrap_or(Value::Null)),
        &wrap(want.clone()),
    )
    .map(|mut patch| patch[TAG].take())
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

#[cfg(test)]
mod tests;
