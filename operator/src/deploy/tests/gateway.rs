use serde_json::json;

use super::*;
use crate::deploy::fixtures::*;
use crate::deploy::manifest::resolve_manifests;

fn warnings_of(spec: &EdgeHierarchySpec) -> Vec<String> {
    let topology = crate::api::validate(spec).expect("valid spec");
    let manifests = resolve_manifests(spec, |_| None).unwrap_or_else(|e| panic!("{e:?}"));
    gateway_warnings(spec, &topology, &manifests)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn deployment_content<'a>(spec: &'a mut EdgeHierarchySpec, name: &str) -> &'a mut Value {
    spec.deployments
        .iter_mut()
        .find(|d| d.name == name)
        .and_then(|d| d.content.as_mut())
        .expect("inline deployment")
}

fn modules<'a>(
    spec: &'a mut EdgeHierarchySpec,
    deployment: &str,
) -> &'a mut serde_json::Map<String, Value> {
    at(deployment_content(spec, deployment), &agent("/modules"))
        .as_object_mut()
        .unwrap()
}

#[test]
fn the_examples_pass() {
    assert_eq!(warnings_of(&tutorial().spec), Vec::<String>::new());
    assert_eq!(warnings_of(&factory().spec), Vec::<String>::new());
}

#[test]
fn a_parent_without_api_proxy_is_named() {
    let mut spec = tutorial().spec;
    modules(&mut spec, "top-layer").remove("IoTEdgeAPIProxy");
    assert_eq!(
        warnings_of(&spec),
        [
            "device \"top-layer\" has Edge children but its deployment \"top-layer\" runs no API proxy (azureiotedge-api-proxy) on port 443; its children cannot pull images"
        ]
    );
}

#[test]
fn proxy_port_status_and_route_problems_are_named() {
    type Change = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "port",
            Box::new(|m| {
                m["IoTEdgeAPIProxy"]["env"]["NGINX_DEFAULT_PORT"] = json!({"value": "8000"})
            }),
            "runs its API proxy module \"IoTEdgeAPIProxy\" on port 8000 (NGINX_DEFAULT_PORT), not on the upstream port 443; set NGINX_DEFAULT_PORT to 443",
        ),
        (
            "bad port",
            Box::new(|m| {
                m["IoTEdgeAPIProxy"]["env"]["NGINX_DEFAULT_PORT"] = json!({"value": "https"})
            }),
            "sets NGINX_DEFAULT_PORT of its API proxy module \"IoTEdgeAPIProxy\" to https, which is not a port; set it to 443",
        ),
        (
            "stopped",
            Box::new(|m| m["IoTEdgeAPIProxy"]["status"] = json!("stopped")),
            "sets its API proxy module \"IoTEdgeAPIProxy\" to stopped; set its status to running",
        ),
        (
            "no registry",
            Box::new(|m| {
                m.remove("registry");
            }),
            "routes registry pulls of its API proxy \"IoTEdgeAPIProxy\" to \"registry:5000\" (DOCKER_REQUEST_ROUTE_ADDRESS), but runs no module \"registry\"; add a registry module named \"registry\" or correct the route",
        ),
        (
            "registry stopped",
            Box::new(|m| m["registry"]["status"] = json!("stopped")),
            "routes registry pulls of its API proxy \"IoTEdgeAPIProxy\" to module \"registry\", which it sets to stopped; set its status to running",
        ),
        (
            "no route",
            Box::new(|m| {
                m["IoTEdgeAPIProxy"]["env"]
                    .as_object_mut()
                    .unwrap()
                    .remove("DOCKER_REQUEST_ROUTE_ADDRESS");
            }),
            "sets no DOCKER_REQUEST_ROUTE_ADDRESS on its API proxy \"IoTEdgeAPIProxy\" and, as a top-layer device, has no parent to forward pulls to; run a registry module and set DOCKER_REQUEST_ROUTE_ADDRESS to <module>:<port>, for example registry:5000",
        ),
    ];
    for (name, change, why) in cases {
        let mut spec = tutorial().spec;
        change(modules(&mut spec, "top-layer"));
        assert_eq!(
            warnings_of(&spec),
            [format!(
                "device \"top-layer\" has Edge children but its deployment \"top-layer\" {why}; its children cannot pull images"
            )],
            "{name}"
        );
    }
}

#[test]
fn proxy_port_defaults_to_443_and_may_be_a_number() {
    let mut spec = tutorial().spec;
    modules(&mut spec, "top-layer")["IoTEdgeAPIProxy"]["env"]
        .as_object_mut()
        .unwrap()
        .remove("NGINX_DEFAULT_PORT");
    assert_eq!(warnings_of(&spec), Vec::<String>::new());
    spec.edge.upstream_port = 8443;
    modules(&mut spec, "top-layer")["IoTEdgeAPIProxy"]["env"]["NGINX_DEFAULT_PORT"] =
        json!({"value": 8443});
    assert_eq!(warnings_of(&spec), Vec::<String>::new());
}

#[test]
fn a_broken_chain_names_each_gateway_and_its_cause() {
    let mut spec = factory().spec;
    modules(&mut spec, "enterprise").remove("IoTEdgeAPIProxy");
    let warnings = warnings_of(&spec);
    assert_eq!(
        warnings[0],
        "device \"enterprise-gw\" has Edge children but its deployment \"enterprise\" runs no API proxy (azureiotedge-api-proxy) on port 443; its children cannot pull images"
    );
    assert_eq!(
        warnings[1],
        "device \"site1-gw\" has Edge children but its deployment \"gateway\" forwards registry pulls to its parent \"enterprise-gw\", whose deployment runs no API proxy (azureiotedge-api-proxy) on port 443; its children cannot pull images"
    );
    assert!(warnings.iter().any(|w| w.starts_with("device \"site1-area1-line1-gw\" has Edge children but its deployment \"gateway\" forwards registry pulls to its parent \"site1-area1-gw\", whose deployment forwards registry pulls to its parent \"site1-gw\"")));
    // Every gateway with Edge children is named once; cells (Leaf children only) are not.
    assert_eq!(warnings.len(), 1 + 2 + 4 + 8);
    assert!(warnings.iter().all(|w| !w.contains("cell1\" has")));
}

#[test]
fn a_lower_gateway_with_its_own_registry_route_is_named() {
    let mut spec = factory().spec;
    modules(&mut spec, "gateway")["IoTEdgeAPIProxy"]["env"]["DOCKER_REQUEST_ROUTE_ADDRESS"] =
        json!({"value": "IoTEdgeAPIProxy:443"});
    let warnings = warnings_of(&spec);
    assert_eq!(
        warnings.len(),
        2 + 4 + 8,
        "every lower gateway with Edge children"
    );
    assert_eq!(
        warnings[0],
        "device \"site1-gw\" has Edge children but its deployment \"gateway\" routes registry pulls of its API proxy \"IoTEdgeAPIProxy\" to its own module \"IoTEdgeAPIProxy\", but device \"site1-gw\" is in layer 2 and only a top-layer device reaches the cloud; remove DOCKER_REQUEST_ROUTE_ADDRESS so pulls go to its parent; its children cannot pull images"
    );
}

#[test]
fn lower_layer_images_from_unlisted_registries_are_named() {
    let mut spec = tutorial().spec;
    modules(&mut spec, "lower-layer")["SimulatedTemperatureSensor"]["settings"]["image"] =
        json!("contoso.azurecr.io/sensor:2");
    modules(&mut spec, "lower-layer").insert("cache".into(), json!({"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "redis:7"}}));
    assert_eq!(
        warnings_of(&spec),
        [
            "device \"lower-layer\" is in layer 2, but module \"SimulatedTemperatureSensor\" of its deployment \"lower-layer\" pulls image \"contoso.azurecr.io/sensor:2\" from contoso.azurecr.io, which is not in spec.edge.upstreamRegistries, so the device has no route to it; add \"contoso.azurecr.io\" to upstreamRegistries (and mirror it on the top layer)",
            "device \"lower-layer\" is in layer 2, but module \"cache\" of its deployment \"lower-layer\" pulls image \"redis:7\" from docker.io, which is not in spec.edge.upstreamRegistries, so the device has no route to it; add \"docker.io\" to upstreamRegistries (and mirror it on the top layer)",
        ]
    );
    // Listed, they are pulled through the parent.
    spec.edge
        .upstream_registries
        .extend(["contoso.azurecr.io".to_string(), "docker.io".to_string()]);
    assert_eq!(warnings_of(&spec), Vec::<String>::new());
}

#[test]
fn a_gateway_with_only_leaf_children_needs_no_proxy() {
    let mut spec = tutorial().spec;
    let mut leaf = spec.devices[1].clone();
    leaf.id = "plc".into();
    leaf.parent = Some("lower-layer".into());
    leaf.device_type = crate::api::DeviceType::Leaf;
    leaf.deployment = None;
    spec.devices.push(leaf);
    assert_eq!(warnings_of(&spec), Vec::<String>::new());
}

#[test]
fn an_unresolvable_manifest_is_reported_not_skipped() {
    let ex = tutorial();
    let mut manifests = ex.manifests.clone();
    manifests.remove("top-layer");
    let warnings = gateway_warnings(&ex.spec, &ex.topology, &manifests);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].device, "top-layer");
    assert!(
        warnings[0].message.starts_with(
            "device \"top-layer\": its manifest cannot be built (deployment \"top-layer\""
        ),
        "{}",
        warnings[0]
    );
    // Its Edge children's gateways would name it as the cause.
    let spec = factory().spec;
    let topology = crate::api::validate(&spec).unwrap();
    let mut manifests = resolve_manifests(&spec, |_| None).unwrap();
    manifests.remove("enterprise");
    let warnings = gateway_warnings(&spec, &topology, &manifests);
    assert_eq!(
        warnings[1].message,
        "device \"site1-gw\" has Edge children but its deployment \"gateway\" forwards registry pulls to its parent \"enterprise-gw\", whose deployment cannot be built; its children cannot pull images"
    );
}
