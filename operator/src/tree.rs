//! Renders a hierarchy as a tree from its spec and status, for `kubectl edgehierarchy tree` and
//! `make demo`. Pure: input is the resource as read from the apiserver.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::api::{DeviceStatus, DeviceType, EdgeHierarchy, condition_type};

/// The tree, one line per device, children indented below their parent, followed by the Ready
/// condition and the summary.
pub fn render(hierarchy: &EdgeHierarchy) -> String {
    let status = hierarchy.status.clone().unwrap_or_default();
    let by_id: BTreeMap<&str, &DeviceStatus> =
        status.devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&crate::api::DeviceSpec>> = BTreeMap::new();
    for d in &hierarchy.spec.devices {
        children.entry(d.parent.as_deref()).or_default().push(d);
    }
    let mut out = String::new();
    let name = hierarchy.metadata.name.as_deref().unwrap_or("?");
    let namespace = hierarchy.metadata.namespace.as_deref().unwrap_or("?");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY);
    let _ = writeln!(
        out,
        "{namespace}/{name}  Ready={} {}",
        ready.map_or("-", |c| c.status.as_str()),
        ready.map_or(String::new(), |c| format!("({}: {})", c.reason, c.message)),
    );
    let _ = writeln!(
        out,
        "{:<44} {:>5}  {:<9} {:<9} {:<12} SCOPE",
        "DEVICE", "LAYER", "STATE", "MODULES", "CERT EXPIRY"
    );
    let mut stack: Vec<(&crate::api::DeviceSpec, String, bool)> = Vec::new();
    let roots = children.get(&None).cloned().unwrap_or_default();
    for (i, root) in roots.iter().enumerate().rev() {
        stack.push((root, String::new(), i + 1 == roots.len()));
    }
    let mut seen = 0;
    while let Some((device, prefix, last)) = stack.pop() {
        seen += 1;
        let branch = if prefix.is_empty() && device.parent.is_none() {
            String::new()
        } else if last {
            format!("{prefix}└─ ")
        } else {
            format!("{prefix}├─ ")
        };
        let label = match device.device_type {
            DeviceType::Edge => device.id.clone(),
            DeviceType::Leaf => format!("{} (leaf)", device.id),
        };
        let s = by_id.get(device.id.as_str());
        let modules = s
            .and_then(|s| s.modules.as_ref())
            .map_or("-".to_string(), |m| format!("{}/{}", m.running, m.desired));
        let expiry = s
            .and_then(|s| s.certificate.as_ref())
            .and_then(|c| c.not_after.as_ref())
            .map_or("-".to_string(), |t| t.0.strftime("%Y-%m-%d").to_string());
        let _ = writeln!(
            out,
            "{:<44} {:>5}  {:<9} {:<9} {:<12} {}",
            format!("{branch}{label}"),
            s.and_then(|s| s.layer)
                .map_or("-".to_string(), |l| l.to_string()),
            s.map_or("Unknown".to_string(), |s| format!("{:?}", s.state)),
            modules,
            expiry,
            s.and_then(|s| s.device_scope.as_deref()).unwrap_or("-"),
        );
        // Problems and children are indented below this device's own branch.
        let child_prefix = if device.parent.is_none() {
            String::new()
        } else if last {
            format!("{prefix}   ")
        } else {
            format!("{prefix}│  ")
        };
        if let Some(s) = s {
            for item in s
                .drift
                .iter()
                .chain(s.modules.iter().flat_map(|m| m.failing.iter()))
                .chain(s.modules.iter().flat_map(|m| m.pending.iter()))
            {
                let _ = writeln!(out, "{child_prefix}   ! {item}");
            }
            if let Some(m) = &s.message
                && s.state != crate::api::DeviceState::Ready
            {
                let _ = writeln!(out, "{child_prefix}   ({m})");
            }
        }
        let kids = children
            .get(&Some(device.id.as_str()))
            .cloned()
            .unwrap_or_default();
        for (i, kid) in kids.iter().enumerate().rev() {
            stack.push((kid, child_prefix.clone(), i + 1 == kids.len()));
        }
    }
    if seen < hierarchy.spec.devices.len() {
        let _ = writeln!(
            out,
            "({} devices are not reachable from a top-layer device; see the Ready condition)",
            hierarchy.spec.devices.len() - seen
        );
    }
    if let Some(summary) = &status.summary {
        let _ = writeln!(
            out,
            "devices {}  registered {}  parented {}  deployed {}  healthy {}  drifted {}",
            summary.devices,
            summary.registered,
            summary.parented,
            summary.deployed,
            summary.healthy,
            summary.drifted
        );
    }
    if let Some(omitted) = status.details_omitted {
        let _ = writeln!(
            out,
            "(texts of {omitted} devices left out of the status to keep it within its size budget; \
             `kubectl edgehierarchy status {name} DEVICE -n {namespace}` shows a device's Events)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeviceState, EdgeHierarchyStatus, ModulesStatus};

    #[test]
    fn renders_parents_above_children_with_state_and_problems() {
        let yaml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/tutorial.yaml"
        ))
        .unwrap();
        let mut h: EdgeHierarchy = serde_yaml::from_str(&yaml).unwrap();
        h.metadata.namespace = Some("iot".into());
        h.status = Some(EdgeHierarchyStatus {
            devices: vec![
                DeviceStatus {
                    id: "top-layer".into(),
                    layer: Some(1),
                    state: DeviceState::Ready,
                    device_scope: Some("ms-azure-iot-edge://top-layer-1".into()),
                    ..Default::default()
                },
                DeviceStatus {
                    id: "lower-layer".into(),
                    layer: Some(2),
                    state: DeviceState::Drifted,
                    modules: Some(ModulesStatus {
                        desired: 3,
                        running: 2,
                        failing: vec!["SimulatedTemperatureSensor: backoff".into()],
                        pending: Vec::new(),
                    }),
                    drift: vec![
                        "device is disabled in the hub; not corrected (reconcile: Observe)".into(),
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let text = render(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("iot/tutorial  Ready=-"), "{text}");
        assert!(
            lines[2].starts_with("top-layer ")
                && lines[2].contains("Ready")
                && lines[2].contains("top-layer-1"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("└─ lower-layer")
                && lines[3].contains("Drifted")
                && lines[3].contains("2/3"),
            "{text}"
        );
        assert!(text.contains("! device is disabled"), "{text}");
        assert!(
            text.contains("! SimulatedTemperatureSensor: backoff"),
            "{text}"
        );
        assert!(!text.contains("left out"), "{text}");
        h.status.as_mut().unwrap().details_omitted = Some(940);
        let text = render(&h);
        assert!(
            text.lines().last().unwrap().starts_with(
                "(texts of 940 devices left out of the status to keep it within its size budget"
            ),
            "{text}"
        );
    }

    #[test]
    fn factory_tree_lists_every_device_once() {
        let yaml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/factory.yaml"
        ))
        .unwrap();
        let h: EdgeHierarchy = serde_yaml::from_str(&yaml).unwrap();
        let text = render(&h);
        let names: Vec<&str> = text
            .lines()
            .skip(2)
            .filter_map(|line| {
                line.trim_start_matches(['│', '├', '└', '─', ' '])
                    .split(' ')
                    .next()
            })
            .filter(|name| !name.is_empty() && *name != "!" && *name != "devices")
            .collect();
        let mut expected: Vec<&str> = h.spec.devices.iter().map(|d| d.id.as_str()).collect();
        let mut got = names.clone();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "{text}");
        assert!(!text.contains("not reachable"));
    }
}
