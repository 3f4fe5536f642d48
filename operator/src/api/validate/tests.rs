use super::*;
use crate::api::spec::*;

/// A minimal valid spec with the given devices and a base + layered deployment.
fn spec(devices: Vec<DeviceSpec>) -> EdgeHierarchySpec {
    EdgeHierarchySpec {
        iot_hub: IotHubSpec {
            connection_string_secret_ref: SecretKeyRef {
                name: "hub".into(),
                key: "connectionString".into(),
            },
            ca_secret_ref: None,
            rate_limits: None,
        },
        policy: PolicySpec::default(),
        authentication: AuthenticationType::SymmetricKey,
        certificates: CertificatesSpec::default(),
        edge: EdgeRuntimeSpec::default(),
        deployment_mode: DeploymentMode::Automatic,
        deployments: vec![deployment("base", false), deployment("monitoring", true)],
        devices,
    }
}

fn deployment(name: &str, layered: bool) -> DeploymentSpec {
    DeploymentSpec {
        name: name.into(),
        priority: 10,
        layered,
        content: Some(serde_json::json!({"modulesContent": {}})),
        config_map_ref: None,
        registry_credentials: Vec::new(),
    }
}

fn edge(id: &str, parent: Option<&str>) -> DeviceSpec {
    DeviceSpec {
        id: id.into(),
        parent: parent.map(Into::into),
        device_type: DeviceType::Edge,
        deployment: Some("base".into()),
        layered_deployments: vec![],
        hostname: None,
    }
}

fn leaf(id: &str, parent: &str) -> DeviceSpec {
    DeviceSpec {
        id: id.into(),
        parent: Some(parent.into()),
        device_type: DeviceType::Leaf,
        deployment: None,
        layered_deployments: vec![],
        hostname: None,
    }
}

/// A chain top -> d2 -> ... -> d<n> of Edge devices.
fn chain(n: usize) -> Vec<DeviceSpec> {
    (1..=n)
        .map(|i| {
            let parent = (i > 1).then(|| format!("d{}", i - 1));
            edge(&format!("d{i}"), parent.as_deref())
        })
        .collect()
}

fn violations(spec: &EdgeHierarchySpec) -> Vec<Violation> {
    validate(spec).expect_err("the spec should be rejected").0
}

/// Asserts exactly one violation, on `field`, whose problem contains `needle`.
fn assert_single(spec: &EdgeHierarchySpec, field: &str, needle: &str) -> Violation {
    let all = violations(spec);
    assert_eq!(all.len(), 1, "expected one violation, got {all:#?}");
    let v = all.into_iter().next().unwrap();
    assert_eq!(v.field, field, "{v}");
    assert!(v.problem.contains(needle), "{needle:?} not in {v}");
    assert!(!v.fix.is_empty(), "{v} has no fix");
    v
}

#[test]
fn tutorial_shape_is_valid_and_layered() {
    let s = spec(vec![
        edge("top-layer", None),
        edge("lower-layer", Some("top-layer")),
    ]);
    let t = validate(&s).unwrap();
    assert_eq!(t.order, ["top-layer", "lower-layer"]);
    assert_eq!(t.layer["top-layer"], 1);
    assert_eq!(t.layer["lower-layer"], 2);
    assert_eq!(t.children["top-layer"], ["lower-layer"]);
    assert!(t.has_children("top-layer"));
    assert!(!t.has_children("lower-layer"));
    assert_eq!(t.layers(), vec![vec!["top-layer"], vec!["lower-layer"]]);
}

#[test]
fn empty_spec_is_valid() {
    let t = validate(&spec(vec![])).unwrap();
    assert!(t.order.is_empty());
}

#[test]
fn thousand_devices_in_five_layers_validate_in_parent_first_order() {
    // 10 top devices, each layer fanning out, leaves at the bottom: 1,000 devices in total.
    let mut devices = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    let widths = [10, 40, 150, 300, 300];
    for (layer, width) in widths.iter().enumerate() {
        let mut current = Vec::new();
        for i in 0..*width {
            let id = format!("l{}-{i:03}", layer + 1);
            let parent = (layer > 0).then(|| previous[i % previous.len()].clone());
            devices.push(edge(&id, parent.as_deref()));
            current.push(id);
        }
        previous = current;
    }
    for i in 0..200 {
        devices.push(leaf(
            &format!("sensor-{i:03}"),
            &previous[i % previous.len()],
        ));
    }
    assert_eq!(devices.len(), 1000);
    // Leaves below layer 5 form layer 6, which is allowed. Order in the spec must not matter.
    devices.reverse();
    let t = validate(&spec(devices)).unwrap();
    assert_eq!(t.order.len(), 1000);
    let position: BTreeMap<&str, usize> = t
        .order
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    for (parent, kids) in &t.children {
        for kid in kids {
            assert!(
                position[parent.as_str()] < position[kid.as_str()],
                "{parent} after {kid}"
            );
            assert_eq!(t.layer[kid], t.layer[parent] + 1);
        }
    }
    assert_eq!(
        t.layers().iter().map(Vec::len).collect::<Vec<_>>(),
        [10, 40, 150, 300, 300, 200]
    );
}

#[test]
fn more_than_a_thousand_devices_is_rejected() {
    let devices = (0..1001).map(|i| edge(&format!("d{i}"), None)).collect();
    assert_single(&spec(devices), "spec.devices", "1001 devices");
}

#[test]
fn missing_parent_names_device_and_field() {
    let s = spec(vec![edge("top", None), edge("child", Some("nowhere"))]);
    let v = assert_single(
        &s,
        "spec.devices[child].parent",
        "\"nowhere\" is not a device",
    );
    assert_eq!(v.subject, "device \"child\"");
    assert!(v.to_string().contains("child") && v.to_string().contains("fix:"));
}

#[test]
fn self_parent_is_rejected() {
    let s = spec(vec![edge("top", None), edge("me", Some("me"))]);
    assert_single(&s, "spec.devices[me].parent", "its own parent");
}

#[test]
fn cycles_of_every_length_are_reported_once() {
    for n in 2..=12 {
        // d1 <- d2 <- ... <- dn and d1's parent is dn: a cycle of length n, plus a valid top.
        let mut devices = chain(n);
        devices[0].parent = Some(format!("d{n}"));
        devices.push(edge("top", None));
        let all = violations(&spec(devices));
        assert_eq!(all.len(), 1, "n={n}: {all:#?}");
        assert!(all[0].problem.contains("cycle"), "{}", all[0]);
        for i in 1..=n {
            assert!(
                all[0].problem.contains(&format!("d{i}")),
                "n={n}: {}",
                all[0]
            );
        }
    }
}

#[test]
fn devices_below_a_cycle_are_not_reported_twice() {
    let mut devices = chain(3);
    devices[0].parent = Some("d3".into());
    devices.push(edge("below", Some("d2")));
    let all = violations(&spec(devices));
    assert_eq!(all.len(), 1, "{all:#?}");
}

#[test]
fn two_separate_cycles_are_both_reported() {
    let devices = vec![
        edge("a", Some("b")),
        edge("b", Some("a")),
        edge("x", Some("y")),
        edge("y", Some("z")),
        edge("z", Some("x")),
    ];
    let all = violations(&spec(devices));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().all(|v| v.problem.contains("cycle")));
}

#[test]
fn leaf_parent_is_rejected() {
    let s = spec(vec![
        edge("top", None),
        leaf("sensor", "top"),
        leaf("child", "sensor"),
    ]);
    assert_single(&s, "spec.devices[child].parent", "is a Leaf device");
}

#[test]
fn hundred_children_are_fine_and_one_more_is_not() {
    let mut devices = vec![edge("top", None)];
    devices.extend((0..100).map(|i| leaf(&format!("s{i}"), "top")));
    assert!(validate(&spec(devices.clone())).is_ok());
    devices.push(leaf("s100", "top"));
    assert_single(&spec(devices), "spec.devices[top]", "101 children");
}

#[test]
fn five_edge_layers_are_fine_and_six_are_not() {
    let mut five = chain(5);
    five.push(leaf("sensor", "d5"));
    assert!(validate(&spec(five)).is_ok());
    let v = assert_single(&spec(chain(6)), "spec.devices[d6].parent", "layer 6");
    assert_eq!(v.subject, "device \"d6\"");
}

#[test]
fn deep_chains_report_every_device_too_deep() {
    let all = violations(&spec(chain(9)));
    let ids: Vec<&str> = all.iter().map(|v| v.subject.as_str()).collect();
    assert_eq!(
        ids,
        [
            "device \"d6\"",
            "device \"d7\"",
            "device \"d8\"",
            "device \"d9\""
        ]
    );
}

#[test]
fn unknown_deployment_names_are_rejected() {
    let mut d = edge("top", None);
    d.deployment = Some("nope".into());
    assert_single(
        &spec(vec![d]),
        "spec.devices[top].deployment",
        "\"nope\" is not in spec.deployments",
    );

    let mut d = edge("top", None);
    d.layered_deployments = vec!["missing".into()];
    assert_single(
        &spec(vec![d]),
        "spec.devices[top].layeredDeployments",
        "\"missing\"",
    );
}

#[test]
fn base_and_layered_deployments_cannot_swap_roles() {
    let mut d = edge("top", None);
    d.deployment = Some("monitoring".into());
    assert_single(&spec(vec![d]), "spec.devices[top].deployment", "is layered");

    let mut d = edge("top", None);
    d.layered_deployments = vec!["base".into()];
    assert_single(
        &spec(vec![d]),
        "spec.devices[top].layeredDeployments",
        "not layered",
    );

    let mut d = edge("top", None);
    d.layered_deployments = vec!["monitoring".into()];
    assert!(validate(&spec(vec![d])).is_ok());
}

#[test]
fn leaf_with_deployment_is_rejected_and_one_without_parent_talks_to_the_hub() {
    let mut l = leaf("sensor", "top");
    l.deployment = Some("base".into());
    assert_single(
        &spec(vec![edge("top", None), l]),
        "spec.devices[sensor].deployment",
        "Leaf",
    );

    // Moved out from behind its gateway: a device of the top layer, valid as IoT Hub has it.
    let mut l = leaf("sensor", "top");
    l.parent = None;
    let topology = validate(&spec(vec![edge("top", None), l])).unwrap();
    assert_eq!(topology.layer["sensor"], 1);
}

#[test]
fn id_rules() {
    assert!(validate(&spec(vec![edge(&"e".repeat(55), None)])).is_ok());
    assert_single(
        &spec(vec![edge(&"e".repeat(56), None)]),
        &format!("spec.devices[{}].id", "e".repeat(56)),
        "deviceca",
    );
    assert_single(
        &spec(vec![edge("top/1", None)]),
        "spec.devices[top/1].id",
        "'/'",
    );
    assert_single(
        &spec(vec![edge("a b", None)]),
        "spec.devices[a b].id",
        "' '",
    );
    assert!(
        validate(&spec(vec![edge(
            "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p$q'r",
            None
        )]))
        .is_ok()
    );

    // Leaf ids may be longer, up to the hub's 128, unless they become X509 common names.
    let long_leaf = "s".repeat(128);
    let s = spec(vec![edge("top", None), leaf(&long_leaf, "top")]);
    assert!(validate(&s).is_ok());
    let mut x509 = s.clone();
    x509.authentication = AuthenticationType::X509;
    assert_single(
        &x509,
        &format!("spec.devices[{long_leaf}].id"),
        "common name",
    );
    let s = spec(vec![edge("top", None), leaf(&"s".repeat(129), "top")]);
    assert_single(
        &s,
        &format!("spec.devices[{}].id", "s".repeat(129)),
        "1 to 128",
    );
}

#[test]
fn duplicate_ids_and_deployment_names_are_rejected() {
    let s = spec(vec![edge("top", None), edge("top", None)]);
    assert_single(&s, "spec.devices[top].id", "more than one device");

    let mut s = spec(vec![edge("top", None)]);
    s.deployments.push(deployment("base", false));
    assert_single(&s, "spec.deployments[base]", "more than one deployment");
}

#[test]
fn deployment_needs_exactly_one_source() {
    let mut s = spec(vec![]);
    s.deployments[0].content = None;
    assert_single(&s, "spec.deployments[base]", "exactly one");
    s.deployments[0].config_map_ref = Some(ConfigMapKeyRef {
        name: "cm".into(),
        key: "k".into(),
    });
    s.deployments[0].content = Some(serde_json::json!({}));
    assert_single(&s, "spec.deployments[base]", "exactly one");
}

#[test]
fn durations_are_checked() {
    let mut s = spec(vec![]);
    s.policy.resync_interval = "5 minutes".into();
    assert_single(&s, "spec.policy.resyncInterval", "5 minutes");
    s.policy.resync_interval = "1s".into();
    assert_single(&s, "spec.policy.resyncInterval", "shorter than 10s");

    let mut s = spec(vec![]);
    s.certificates.renew_before = "2160h".into();
    assert_single(
        &s,
        "spec.certificates.renewBefore",
        "not shorter than duration",
    );
    s.certificates.renew_before = "1y".into();
    assert_single(&s, "spec.certificates.renewBefore", "unknown unit");
    let mut s = spec(vec![]);
    s.certificates.duration = "30s".into();
    s.certificates.renew_before = "10s".into();
    assert_single(&s, "spec.certificates.duration", "shorter than one minute");
    s.certificates.duration = "2m".into();
    s.certificates.renew_before = "1m".into();
    assert!(validate(&s).is_ok());

    let mut s = spec(vec![]);
    s.certificates.root_rotation.overlap = "30 days".into();
    assert_single(&s, "spec.certificates.rootRotation.overlap", "30 days");
    s.certificates.root_rotation.overlap = "0s".into();
    assert!(validate(&s).is_ok(), "0s completes a rotation at once");
}

#[test]
fn all_rules_combined_are_reported_together_and_sorted() {
    let mut bad_deployment = edge("top2", None);
    bad_deployment.deployment = Some("ghost".into());
    let mut devices = vec![
        edge("top", None),
        edge("orphan", Some("missing")),
        edge("me", Some("me")),
        leaf("sensor", "top"),
        leaf("under-leaf", "sensor"),
        edge("a", Some("b")),
        edge("b", Some("a")),
        bad_deployment,
    ];
    devices.extend((0..101).map(|i| leaf(&format!("kid{i}"), "top2")));
    let mut chain = chain(6);
    for d in &mut chain {
        d.id = format!("c{}", d.id);
        d.parent = d.parent.as_ref().map(|p| format!("c{p}"));
    }
    devices.extend(chain);
    let all = violations(&spec(devices));
    let fields: Vec<&str> = all.iter().map(|v| v.field.as_str()).collect();
    for expected in [
        "spec.devices[orphan].parent",
        "spec.devices[me].parent",
        "spec.devices[under-leaf].parent",
        "spec.devices[a].parent",
        "spec.devices[top2]",
        "spec.devices[top2].deployment",
        "spec.devices[cd6].parent",
    ] {
        assert!(
            fields.contains(&expected),
            "{expected} missing from {fields:#?}"
        );
    }
    assert_eq!(all.len(), 7, "{all:#?}");
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    let message = Violations(all).to_string();
    assert!(
        message.starts_with("7 problems in the spec: [1] "),
        "{message}"
    );
}
