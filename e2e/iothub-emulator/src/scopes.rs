//! Nested-edge parent rules, enforced only in `--strict` (Azure itself accepts leniently):
//! one parent, the parent is an IoT Edge device, at most 100 children per parent, at most five
//! generations below a top device, no cycles.

use std::collections::HashSet;

use crate::error::{ErrorCode, HubError};

/// Children one parent may have.
pub const MAX_CHILDREN: usize = 100;
/// Generations below the top device.
pub const MAX_GENERATIONS: usize = 5;

/// What the rules need to know about a registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Device id.
    pub id: String,
    /// `capabilities.iotEdge`.
    pub is_edge: bool,
    /// Its own scope (edge devices).
    pub scope: Option<String>,
    /// Its first parent scope, if any.
    pub parent_scope: Option<String>,
}

/// Read access to the registry's parent graph.
pub trait Topology {
    /// The edge device whose own scope is `scope`.
    fn by_scope(&self, scope: &str) -> Option<Node>;
    /// Devices whose parentScopes contain `scope`.
    fn children(&self, scope: &str) -> Vec<Node>;
}

/// The device id inside an edge scope (`ms-azure-iot-edge://{id}-{generationId}`): the part
/// before the last `-`, as the az CLI reads it.
pub fn device_id_of_scope(scope: &str) -> Option<&str> {
    let rest = scope.strip_prefix(crate::registry::EDGE_SCOPE_PREFIX)?;
    rest.rfind('-').map(|i| &rest[..i])
}

fn scope_error(message: String) -> HubError {
    HubError::new(ErrorCode::InvalidDeviceScope, message)
}

/// Number of ancestors of a node (0 for a top device).
fn depth(topology: &impl Topology, node: &Node) -> usize {
    let mut seen = HashSet::new();
    let mut current = node.clone();
    let mut depth = 0;
    while let Some(parent_scope) = current.parent_scope.clone() {
        if !seen.insert(parent_scope.clone()) {
            break;
        }
        match topology.by_scope(&parent_scope) {
            Some(parent) => {
                depth += 1;
                current = parent;
            }
            None => break,
        }
    }
    depth
}

/// Generations below a device (0 when it has no children).
fn height(topology: &impl Topology, scope: &str, seen: &mut HashSet<String>) -> usize {
    if !seen.insert(scope.to_string()) {
        return 0;
    }
    topology
        .children(scope)
        .iter()
        .map(|child| match &child.scope {
            Some(s) if child.is_edge => 1 + height(topology, s, seen),
            _ => 1,
        })
        .max()
        .unwrap_or(0)
}

/// Checks the parent a device is about to get. `own_scope` is the device's own scope when it
/// is an edge device (it may already have children).
pub fn check_parent_rules(
    topology: &impl Topology,
    device_id: &str,
    own_scope: Option<&str>,
    parent_scopes: &[String],
) -> Result<(), HubError> {
    if parent_scopes.len() > 1 {
        return Err(scope_error(format!(
            "device {device_id} lists {} parentScopes; a device can have only one parent",
            parent_scopes.len()
        )));
    }
    let Some(parent_scope) = parent_scopes.first() else {
        return Ok(());
    };
    let parent = topology.by_scope(parent_scope).ok_or_else(|| {
        scope_error(format!(
            "parent scope '{parent_scope}' of device {device_id} names no registered IoT Edge device; use the parent's deviceScope"
        ))
    })?;
    if !parent.is_edge {
        return Err(scope_error(format!(
            "device {} is not an IoT Edge device, so it cannot be the parent of {device_id}; only IoT Edge devices can have children",
            parent.id
        )));
    }
    if parent.id == device_id {
        return Err(scope_error(format!(
            "device {device_id} cannot be its own parent"
        )));
    }
    let siblings = topology
        .children(parent_scope)
        .into_iter()
        .filter(|c| c.id != device_id)
        .count();
    if siblings >= MAX_CHILDREN {
        return Err(scope_error(format!(
            "device {} already has {MAX_CHILDREN} children; a parent can have at most {MAX_CHILDREN}, so {device_id} needs another parent",
            parent.id
        )));
    }
    // Walking up from the parent must not reach the device itself.
    let mut seen = HashSet::new();
    let mut current = Some(parent.clone());
    while let Some(node) = current {
        if node.id == device_id {
            return Err(scope_error(format!(
                "making {} the parent of {device_id} would create a cycle",
                parent.id
            )));
        }
        current = node
            .parent_scope
            .filter(|s| seen.insert(s.clone()))
            .and_then(|s| topology.by_scope(&s));
    }
    let below = own_scope
        .map(|scope| height(topology, scope, &mut HashSet::new()))
        .unwrap_or(0);
    let generation = depth(topology, &parent) + 1;
    if generation + below > MAX_GENERATIONS {
        return Err(scope_error(format!(
            "device {device_id} would be in generation {generation} below the top device with {below} more generations under it; IoT Edge allows at most {MAX_GENERATIONS} generations below the top"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry graph for fixtures: (id, is_edge, parent id).
    struct Graph(Vec<(String, bool, Option<String>)>);

    fn scope(id: &str) -> String {
        format!("ms-azure-iot-edge://{id}-637000000000000000")
    }

    impl Graph {
        fn node(&self, id: &str) -> Option<Node> {
            self.0
                .iter()
                .find(|(i, ..)| i == id)
                .map(|(i, edge, parent)| Node {
                    id: i.clone(),
                    is_edge: *edge,
                    scope: edge.then(|| scope(i)),
                    parent_scope: parent.as_deref().map(scope),
                })
        }
    }

    impl Topology for Graph {
        fn by_scope(&self, s: &str) -> Option<Node> {
            self.node(device_id_of_scope(s)?)
                .filter(|n| n.scope.as_deref() == Some(s))
        }
        fn children(&self, s: &str) -> Vec<Node> {
            self.0
                .iter()
                .filter(|(_, _, p)| p.as_deref().map(scope).as_deref() == Some(s))
                .filter_map(|(i, ..)| self.node(i))
                .collect()
        }
    }

    fn chain(n: usize) -> Graph {
        Graph(
            (0..n)
                .map(|i| {
                    (
                        format!("e{i}"),
                        true,
                        (i > 0).then(|| format!("e{}", i - 1)),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn scope_device_id_splits_on_the_last_dash() {
        assert_eq!(
            device_id_of_scope("ms-azure-iot-edge://vm-gw-0002-637121074930370650"),
            Some("vm-gw-0002")
        );
        assert_eq!(device_id_of_scope("someScope"), None);
    }

    #[test]
    fn accepts_a_valid_parent_and_no_parent() {
        let graph = chain(2);
        assert!(check_parent_rules(&graph, "new", None, &[scope("e1")]).is_ok());
        assert!(check_parent_rules(&graph, "new", None, &[]).is_ok());
    }

    #[test]
    fn rejects_more_than_one_parent() {
        let graph = chain(2);
        let err = check_parent_rules(&graph, "x", None, &[scope("e0"), scope("e1")]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidDeviceScope);
        assert!(err.message.contains("only one parent"));
    }

    #[test]
    fn rejects_a_non_edge_or_unknown_parent() {
        let graph = Graph(vec![("leaf".into(), false, None)]);
        let fake_scope = scope("leaf");
        let err = check_parent_rules(&graph, "x", None, &[fake_scope]).unwrap_err();
        assert!(
            err.message.contains("names no registered"),
            "{}",
            err.message
        );
        let graph = Graph(vec![("gw".into(), true, None)]);
        let err = check_parent_rules(&graph, "x", None, &["someScope".into()]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidDeviceScope);
    }

    #[test]
    fn non_edge_parent_is_named() {
        struct LeafAsParent;
        impl Topology for LeafAsParent {
            fn by_scope(&self, _: &str) -> Option<Node> {
                Some(Node {
                    id: "sensor".into(),
                    is_edge: false,
                    scope: None,
                    parent_scope: None,
                })
            }
            fn children(&self, _: &str) -> Vec<Node> {
                vec![]
            }
        }
        let err = check_parent_rules(&LeafAsParent, "x", None, &["s".into()]).unwrap_err();
        assert!(
            err.message.contains("sensor is not an IoT Edge device"),
            "{}",
            err.message
        );
    }

    #[test]
    fn rejects_the_101st_child() {
        let mut nodes = vec![("gw".to_string(), true, None)];
        nodes.extend((0..100).map(|i| (format!("c{i}"), false, Some("gw".to_string()))));
        let graph = Graph(nodes);
        let err = check_parent_rules(&graph, "c100", None, &[scope("gw")]).unwrap_err();
        assert!(err.message.contains("100 children"));
        // An existing child re-stating its parent is not a new child.
        assert!(check_parent_rules(&graph, "c5", None, &[scope("gw")]).is_ok());
    }

    #[test]
    fn five_generations_below_the_top_at_most() {
        // e0 (top) .. e5 is five generations: e5 may exist, but not have a child.
        let graph = chain(6);
        assert!(check_parent_rules(&graph, "e5", Some(&scope("e5")), &[scope("e4")]).is_ok());
        let err = check_parent_rules(&graph, "x", None, &[scope("e5")]).unwrap_err();
        assert!(err.message.contains("generation 6"), "{}", err.message);
    }

    #[test]
    fn moving_a_subtree_counts_its_height() {
        // a0-a1-a2 and b0-b1-b2-b3: hanging a0 (height 2) under b3 (depth 3) makes 3+1+2 = 6.
        let mut nodes: Vec<_> = (0..3)
            .map(|i| {
                (
                    format!("a{i}"),
                    true,
                    (i > 0).then(|| format!("a{}", i - 1)),
                )
            })
            .collect();
        nodes.extend((0..4).map(|i| {
            (
                format!("b{i}"),
                true,
                (i > 0).then(|| format!("b{}", i - 1)),
            )
        }));
        let graph = Graph(nodes);
        assert!(check_parent_rules(&graph, "a0", Some(&scope("a0")), &[scope("b3")]).is_err());
        assert!(check_parent_rules(&graph, "a0", Some(&scope("a0")), &[scope("b2")]).is_ok());
    }

    #[test]
    fn rejects_cycles() {
        let graph = chain(3);
        let err = check_parent_rules(&graph, "e0", Some(&scope("e0")), &[scope("e2")]).unwrap_err();
        assert!(err.message.contains("cycle"));
        let err = check_parent_rules(&graph, "e1", Some(&scope("e1")), &[scope("e1")]).unwrap_err();
        assert!(err.message.contains("own parent") || err.message.contains("cycle"));
    }
}
