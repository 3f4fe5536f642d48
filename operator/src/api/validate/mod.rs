//! Whole-tree validation of an `EdgeHierarchySpec`: the rules a CRD schema cannot express because
//! they need every device at once. Pure; the operator runs it before it touches the hub, and the
//! `import` command runs it on converted configs.
//!
//! Every violation names the device (or deployment), the field and a fix, and all violations are
//! returned at once so a user fixes a spec in one round.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::duration::parse_duration;
use super::spec::{AuthenticationType, DeviceSpec, DeviceType, EdgeHierarchySpec, MAX_DEVICES};

/// Most children IoT Hub allows one parent.
pub const MAX_CHILDREN: usize = 100;
/// Most layers of Edge devices IoT Hub allows in a nested hierarchy (top layer is 1). Leaf
/// devices hang below any Edge layer and are not a layer of their own.
pub const MAX_EDGE_LAYERS: u32 = 5;
/// Longest Edge device id: its edge CA's common name `<id>.deviceca` must fit X.509's 64 characters.
pub const MAX_EDGE_ID_LEN: usize = 55;
/// Longest id that becomes a certificate common name as is (X509 identity certificates).
pub const MAX_CN_LEN: usize = 64;
/// Longest IoT Hub device id.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// One reason a spec cannot be reconciled.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Path of the offending field, for example `spec.devices[sensor-17].parent`.
    pub field: String,
    /// The device (or deployment) the violation is about.
    pub subject: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({}); fix: {}",
            self.subject, self.problem, self.field, self.fix
        )
    }
}

/// All violations of a spec, printable as one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the spec: ",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "[{}] {v}", i + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// The validated shape of the tree, which planning builds on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    /// Device ids with every parent before its children (layer by layer, ids sorted within a layer).
    pub order: Vec<String>,
    /// Layer of each device: a top device is 1, its children 2, and so on (Leaf devices included).
    pub layer: BTreeMap<String, u32>,
    /// Children of each device that has any, sorted.
    pub children: BTreeMap<String, Vec<String>>,
}

impl Topology {
    /// Layers, top first, each a sorted list of ids.
    pub fn layers(&self) -> Vec<Vec<&str>> {
        let mut layers: Vec<Vec<&str>> = Vec::new();
        for id in &self.order {
            let l = self.layer[id] as usize;
            if layers.len() < l {
                layers.resize_with(l, Vec::new);
            }
            layers[l - 1].push(id);
        }
        layers
    }

    /// Whether a device has children that are Edge devices (it then needs an API proxy).
    pub fn has_children(&self, id: &str) -> bool {
        self.children.get(id).is_some_and(|c| !c.is_empty())
    }
}

fn device_field(id: &str, field: &str) -> String {
    format!("spec.devices[{id}].{field}")
}

fn violation(field: String, subject: &str, problem: String, fix: impl Into<String>) -> Violation {
    Violation {
        field,
        subject: format!("device {subject:?}"),
        problem,
        fix: fix.into(),
    }
}

fn is_iothub_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-:.+%_#*?!(),=@$'".contains(c)
}

/// Checks the whole spec. Returns the topology when the spec is valid, every violation otherwise.
pub fn validate(spec: &EdgeHierarchySpec) -> Result<Topology, Violations> {
    let mut out = Vec::new();
    check_settings(spec, &mut out);
    check_deployments(spec, &mut out);
    let topology = check_tree(spec, &mut out);
    if out.is_empty() {
        Ok(topology)
    } else {
        out.sort();
        out.dedup();
        Err(Violations(out))
    }
}

fn check_settings(spec: &EdgeHierarchySpec, out: &mut Vec<Violation>) {
    let subject = |what: &str| format!("hierarchy {what}");
    let resync = &spec.policy.resync_interval;
    match parse_duration(resync) {
        Ok(d) if d.as_secs() < 10 => out.push(Violation {
            field: "spec.policy.resyncInterval".into(),
            subject: subject("policy"),
            problem: format!("resyncInterval {resync} is shorter than 10s and would exhaust the hub's query quota"),
            fix: "use 10s or more; 5m is the default".into(),
        }),
        Ok(_) => {}
        Err(e) => out.push(Violation {
            field: "spec.policy.resyncInterval".into(),
            subject: subject("policy"),
            problem: e,
            fix: "write a Go duration such as 5m".into(),
        }),
    }
    let certs = &spec.certificates;
    let duration = parse_duration(&certs.duration);
    let renew = parse_duration(&certs.renew_before);
    let overlap = parse_duration(&certs.root_rotation.overlap);
    for (field, parsed, value) in [
        ("duration", &duration, &certs.duration),
        ("renewBefore", &renew, &certs.renew_before),
        (
            "rootRotation.overlap",
            &overlap,
            &certs.root_rotation.overlap,
        ),
    ] {
        if let Err(e) = parsed {
            out.push(Violation {
                field: format!("spec.certificates.{field}"),
                subject: subject("certificates"),
                problem: format!("{value:?}: {e}"),
                fix: "write a Go duration such as 2160h".into(),
            });
        }
    }
    if let (Ok(d), Ok(r)) = (duration, renew) {
        if d.as_secs() < 60 {
            out.push(Violation {
                field: "spec.certificates.duration".into(),
                subject: subject("certificates"),
                problem: format!("duration {} is shorter than one minute", certs.duration),
                fix: "use at least 1m; 2160h (90 days) is the default".into(),
            });
        }
        if r >= d {
            out.push(Violation {
                field: "spec.certificates.renewBefore".into(),
                subject: subject("certificates"),
                problem: format!(
                    "renewBefore {} is not shorter than duration {}, so certificates would be renewed forever",
                    certs.renew_before, certs.duration
                ),
                fix: "make renewBefore shorter than duration, for example a third of it".into(),
            });
        }
    }
}

fn check_deployments(spec: &EdgeHierarchySpec, out: &mut Vec<Violation>) {
    let mut seen = BTreeSet::new();
    for d in &spec.deployments {
        let subject = format!("deployment {:?}", d.name);
        if !seen.insert(d.name.as_str()) {
            out.push(Violation {
                field: format!("spec.deployments[{}]", d.name),
                subject: subject.clone(),
                problem: "the name is used by more than one deployment".into(),
                fix: "give each deployment a unique name".into(),
            });
        }
        if d.content.is_some() == d.config_map_ref.is_some() {
            out.push(Violation {
                field: format!("spec.deployments[{}]", d.name),
                subject,
                problem: "a deployment needs exactly one of content and configMapRef".into(),
                fix: "keep either the inline content or the configMapRef".into(),
            });
        }
    }
}

fn check_tree(spec: &EdgeHierarchySpec, out: &mut Vec<Violation>) -> Topology {
    if spec.devices.len() > MAX_DEVICES {
        out.push(Violation {
            field: "spec.devices".into(),
            subject: "hierarchy devices".into(),
            problem: format!(
                "{} devices, more than the {MAX_DEVICES} one hierarchy holds",
                spec.devices.len()
            ),
            fix: "split the fleet into several hierarchies on the same hub".into(),
        });
    }
    let deployments: BTreeMap<&str, bool> = spec
        .deployments
        .iter()
        .map(|d| (d.name.as_str(), d.layered))
        .collect();

    // Index devices; a duplicate id makes the tree ambiguous, so only the first one counts.
    let mut by_id = BTreeMap::new();
    for d in &spec.devices {
        if by_id.insert(d.id.as_str(), d).is_some() {
            out.push(violation(
                device_field(&d.id, "id"),
                &d.id,
                "the id is used by more than one device".into(),
                "give each device a unique id",
            ));
        }
    }

    for d in by_id.values() {
        check_device_fields(spec, d, &deployments, out);
    }

    let mut children = parent_links(&by_id, out);
    let (layer, order) = layers(&by_id, &children, out);
    report_cycles(&by_id, &layer, out);
    for kids in children.values_mut() {
        kids.sort();
    }
    Topology {
        order,
        layer,
        children,
    }
}

/// Each device's parent checked, and the children of every parent that can have them.
fn parent_links(
    by_id: &BTreeMap<&str, &DeviceSpec>,
    out: &mut Vec<Violation>,
) -> BTreeMap<String, Vec<String>> {
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in by_id.values() {
        let Some(parent) = d.parent.as_deref() else {
            continue;
        };
        if parent == d.id {
            out.push(violation(
                device_field(&d.id, "parent"),
                &d.id,
                "the device is its own parent".into(),
                "name another Edge device as parent, or remove parent to make it a top-layer device",
            ));
            continue;
        }
        match by_id.get(parent) {
            None => out.push(violation(
                device_field(&d.id, "parent"),
                &d.id,
                format!("parent {parent:?} is not a device of this hierarchy"),
                "add the parent device to spec.devices or correct the id",
            )),
            Some(p) if p.device_type == DeviceType::Leaf => out.push(violation(
                device_field(&d.id, "parent"),
                &d.id,
                format!("parent {parent:?} is a Leaf device and cannot have children"),
                format!("make {parent:?} an Edge device or choose an Edge device as parent"),
            )),
            Some(_) => children
                .entry(parent.to_string())
                .or_default()
                .push(d.id.clone()),
        }
    }
    for (parent, kids) in &children {
        if kids.len() > MAX_CHILDREN {
            out.push(violation(
                format!("spec.devices[{parent}]"),
                parent,
                format!(
                    "{} children, more than the {MAX_CHILDREN} IoT Hub allows one parent",
                    kids.len()
                ),
                "move some children under another Edge device of the same layer",
            ));
        }
    }

    children
}

/// Layers, breadth first from the top devices, and the parents-first order; whatever is left
/// unreached sits on a cycle or below one. Edge devices too deep are reported.
fn layers(
    by_id: &BTreeMap<&str, &DeviceSpec>,
    children: &BTreeMap<String, Vec<String>>,
    out: &mut Vec<Violation>,
) -> (BTreeMap<String, u32>, Vec<String>) {
    let mut layer: BTreeMap<String, u32> = BTreeMap::new();
    let mut order = Vec::new();
    let mut current: Vec<String> = by_id
        .values()
        .filter(|d| d.parent.is_none())
        .map(|d| d.id.clone())
        .collect();
    let mut depth = 1;
    while !current.is_empty() {
        let mut next = Vec::new();
        for id in &current {
            layer.insert(id.clone(), depth);
            order.push(id.clone());
            if let Some(kids) = children.get(id) {
                next.extend(kids.iter().cloned());
            }
        }
        next.sort();
        current = next;
        depth += 1;
    }
    for (id, d) in by_id {
        let l = layer.get(*id).copied().unwrap_or(0);
        if d.device_type == DeviceType::Edge && l > MAX_EDGE_LAYERS {
            out.push(violation(
                device_field(id, "parent"),
                id,
                format!("the device is in layer {l}; IoT Hub nests Edge devices at most {MAX_EDGE_LAYERS} layers deep"),
                "attach it to a device closer to the top, or make it a Leaf device",
            ));
        }
    }
    (layer, order)
}

fn check_device_fields(
    spec: &EdgeHierarchySpec,
    d: &super::spec::DeviceSpec,
    deployments: &BTreeMap<&str, bool>,
    out: &mut Vec<Violation>,
) {
    let id = d.id.as_str();
    if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
        out.push(violation(
            device_field(id, "id"),
            id,
            format!(
                "the id has {} characters; IoT Hub allows 1 to {MAX_DEVICE_ID_LEN}",
                id.len()
            ),
            "shorten the id",
        ));
    }
    if let Some(bad) = id.chars().find(|c| !is_iothub_id_char(*c)) {
        out.push(violation(
            device_field(id, "id"),
            id,
            format!("the id contains {bad:?}, which IoT Hub does not allow"),
            "use only letters, digits and -:.+%_#*?!(),=@$'",
        ));
    }
    match d.device_type {
        DeviceType::Edge if id.len() > MAX_EDGE_ID_LEN => out.push(violation(
            device_field(id, "id"),
            id,
            format!(
                "the id has {} characters; an Edge device's edge CA common name \"<id>.deviceca\" allows at most {MAX_EDGE_ID_LEN}",
                id.len()
            ),
            format!("shorten the id to {MAX_EDGE_ID_LEN} characters or fewer"),
        )),
        DeviceType::Leaf
            if spec.authentication == AuthenticationType::X509 && id.len() > MAX_CN_LEN =>
        {
            out.push(violation(
                device_field(id, "id"),
                id,
                format!(
                    "the id has {} characters; with X509 authentication it becomes a certificate common name of at most {MAX_CN_LEN}",
                    id.len()
                ),
                format!("shorten the id to {MAX_CN_LEN} characters or fewer"),
            ))
        }
        _ => {}
    }
    // A Leaf may have no parent: it then talks to the hub itself (a top-layer sensor, or one
    // moved out from behind its gateway), which IoT Hub allows; the device step clears the
    // parent link it had.
    if d.device_type == DeviceType::Leaf
        && (d.deployment.is_some() || !d.layered_deployments.is_empty())
    {
        out.push(violation(
            device_field(id, "deployment"),
            id,
            "a Leaf device runs no modules but has a deployment".into(),
            "remove deployment and layeredDeployments, or make it an Edge device",
        ));
    }
    if let Some(name) = &d.deployment {
        match deployments.get(name.as_str()) {
            None => out.push(violation(
                device_field(id, "deployment"),
                id,
                format!("deployment {name:?} is not in spec.deployments"),
                "add the deployment or correct the name",
            )),
            Some(true) => out.push(violation(
                device_field(id, "deployment"),
                id,
                format!("deployment {name:?} is layered and cannot be a device's base deployment"),
                "list it in layeredDeployments, or set layered: false on it",
            )),
            Some(false) => {}
        }
    }
    for name in &d.layered_deployments {
        match deployments.get(name.as_str()) {
            None => out.push(violation(
                device_field(id, "layeredDeployments"),
                id,
                format!("layered deployment {name:?} is not in spec.deployments"),
                "add the deployment or correct the name",
            )),
            Some(false) => out.push(violation(
                device_field(id, "layeredDeployments"),
                id,
                format!("deployment {name:?} is not layered"),
                "set layered: true on it, or use it as the device's deployment",
            )),
            Some(true) => {}
        }
    }
}

/// Reports every parent cycle once, naming its members in order. Devices below a cycle are not
/// reported again: fixing the cycle fixes them.
fn report_cycles(
    by_id: &BTreeMap<&str, &super::spec::DeviceSpec>,
    layer: &BTreeMap<String, u32>,
    out: &mut Vec<Violation>,
) {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for &start in by_id.keys() {
        if layer.contains_key(start) || done.contains(start) {
            continue;
        }
        // Walk up the parent chain until it leaves the unreached set or repeats.
        let mut path: Vec<&str> = Vec::new();
        let mut position: BTreeMap<&str, usize> = BTreeMap::new();
        let mut cursor = Some(start);
        while let Some(id) = cursor {
            if done.contains(id) || layer.contains_key(id) {
                break;
            }
            if let Some(&at) = position.get(id) {
                let cycle = &path[at..];
                let first = *cycle.iter().min().expect("a cycle has members");
                let members = cycle.join(" -> ");
                out.push(violation(
                    device_field(first, "parent"),
                    first,
                    format!("parent links form a cycle: {members} -> {}", cycle[0]),
                    "break the cycle by making one of these devices a top-layer device or giving it a parent outside the cycle",
                ));
                break;
            }
            position.insert(id, path.len());
            path.push(id);
            cursor = by_id
                .get(id)
                .and_then(|d| d.parent.as_deref())
                .filter(|p| by_id.contains_key(p) && *p != id);
        }
        done.extend(path);
    }
}

#[cfg(test)]
mod tests;
