use serde_json::json;

use super::*;
use crate::deploy::fixtures::*;
use crate::deploy::manifest::resolve_manifests;

fn warnings_of(spec: &EdgeHierarchySpec) -> Vec<String> {
    warnings_with_est(spec, None)
}

fn warnings_with_est(spec: &EdgeHierarchySpec, est_port: Option<u16>) -> Vec<String> {
    let topology = crate::api::validate(spec).expect("valid spec");
    let manifests = resolve_manifests(spec, |_| None).unwrap_or_else(|e| panic!("{e:?}"));
    gateway_warnings(spec, &topology, &manifests, est_port)
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
    let warnings = gateway_warnings(&ex.spec, &ex.topology, &manifests, None);
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
    let warnings = gateway_warnings(&spec, &topology, &manifests, None);
    assert_eq!(
        warnings[1].message,
        "device \"site1-gw\" has Edge children but its deployment \"gateway\" forwards registry pulls to its parent \"enterprise-gw\", whose deployment cannot be built; its children cannot pull images"
    );
}

// EST relays (issuance: Est).

/// A relay as docs/est.md shows it: TCP on 8443 passed on unchanged, beside an HTTP server.
const RELAY: &str = "events { }\n\
    stream {\n\
        server {\n\
            listen 8443;\n\
            proxy_pass est.factory.example:8443;\n\
        }\n\
    }\n\
    http {\n\
        server {\n\
            listen ${NGINX_DEFAULT_PORT} ssl default_server;\n\
            location ~^/registry/(.*) { proxy_pass http://${DOCKER_REQUEST_ROUTE_ADDRESS}/$1; }\n\
        }\n\
    }\n";

fn est(mut spec: EdgeHierarchySpec) -> EdgeHierarchySpec {
    spec.certificates.issuance = crate::api::CertificateIssuance::Est;
    spec
}

/// Sets the API proxy's `proxy_config` (as given, not encoded) in a deployment.
fn set_proxy_config(spec: &mut EdgeHierarchySpec, deployment: &str, raw: Value) {
    let content = deployment_content(spec, deployment);
    content["modulesContent"]["IoTEdgeAPIProxy"] =
        json!({"properties.desired": {"proxy_config": raw}});
}

fn with_relay(spec: &mut EdgeHierarchySpec, deployment: &str, config: &str) {
    set_proxy_config(spec, deployment, json!(BASE64.encode(config)));
}

fn est_warning(device: &str, deployment: &str, why: &str) -> String {
    format!(
        "device \"{device}\" has Edge children that enroll over EST through it (spec.certificates.issuance: Est), but its deployment \"{deployment}\" {why}; its children cannot renew their certificates (docs/est.md, \"Lower layers\")"
    )
}

#[test]
fn under_bundle_issuance_nothing_about_est_is_checked() {
    assert_eq!(
        warnings_with_est(&tutorial().spec, Some(8443)),
        Vec::<String>::new()
    );
    assert_eq!(
        warnings_with_est(&factory().spec, Some(8443)),
        Vec::<String>::new()
    );
    // Not even a proxy_config that is not base64.
    let mut spec = tutorial().spec;
    set_proxy_config(&mut spec, "top-layer", json!("%%%"));
    assert_eq!(warnings_with_est(&spec, Some(8443)), Vec::<String>::new());
}

#[test]
fn under_est_a_parent_without_relay_is_named_and_a_relay_passes() {
    let mut spec = est(tutorial().spec);
    assert_eq!(
        warnings_with_est(&spec, Some(8443)),
        [est_warning(
            "top-layer",
            "top-layer",
            "gives its API proxy \"IoTEdgeAPIProxy\" no proxy_config (module twin desired property), and the proxy's default configuration does not relay EST; add a stream server that listens on port 8443 and passes connections to the EST server (proxy_pass)"
        )]
    );
    with_relay(&mut spec, "top-layer", RELAY);
    assert_eq!(warnings_with_est(&spec, Some(8443)), Vec::<String>::new());
    // Without --est-addr the port is unknown, and any relay does.
    assert_eq!(warnings_with_est(&spec, None), Vec::<String>::new());
    // The lower layer has no children: it needs no relay.
    assert!(
        !warnings_with_est(&spec, Some(8443))
            .iter()
            .any(|w| w.contains("\"lower-layer\""))
    );
}

#[test]
fn est_relay_problems_are_named() {
    let stream = |server: &str| format!("events {{ }}\nstream {{\n server {{\n{server}\n }}\n}}\n");
    let http_location = |location: &str| {
        format!(
            "events {{ }}\nhttp {{ server {{ listen 443 ssl; {location} {{ proxy_pass https://est.factory.example:8443; }} }} }}\n"
        )
    };
    let http_why = "relays /.well-known/est in an http location of its API proxy \"IoTEdgeAPIProxy\", which ends the devices' TLS at the proxy (aziot-certd trusts only the EST CA for EST, and the operator authenticates devices by their TLS client certificate); instead add a stream server that listens on port 8443 and passes connections to the EST server (proxy_pass), without ssl";
    let no_stream_why = "has no stream server in the proxy_config of its API proxy \"IoTEdgeAPIProxy\" that listens on port 8443 without ssl and passes connections on; add a stream server that listens on port 8443 and passes connections to the EST server (proxy_pass)";
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "not base64",
            json!("not base64!"),
            "sets proxy_config of its API proxy \"IoTEdgeAPIProxy\" to something that is not base64 of a text; encode the nginx configuration with base64",
        ),
        (
            "not a string",
            json!({"stream": {}}),
            "sets proxy_config of its API proxy \"IoTEdgeAPIProxy\" to something that is not base64 of a text; encode the nginx configuration with base64",
        ),
        (
            "unbalanced",
            json!(BASE64.encode("stream { server { listen 8443; }")),
            "sets a proxy_config on its API proxy \"IoTEdgeAPIProxy\" that is not an nginx configuration (the \"stream\" block is not closed)",
        ),
        (
            "http prefix location",
            json!(BASE64.encode(http_location("location /.well-known/est"))),
            http_why,
        ),
        (
            "http joined regex",
            json!(BASE64.encode(http_location("location ~^/\\.well-known/est/(.*)"))),
            http_why,
        ),
        (
            "http exact",
            json!(BASE64.encode(http_location("location = /.well-known/est/simpleenroll"))),
            http_why,
        ),
        (
            "http root",
            json!(BASE64.encode(http_location("location /"))),
            http_why,
        ),
        (
            "http elsewhere",
            json!(BASE64.encode(http_location("location /v2"))),
            no_stream_why,
        ),
        (
            "tls ended in stream",
            json!(BASE64.encode(stream("listen 8443 ssl; proxy_pass est:8443;"))),
            no_stream_why,
        ),
        (
            "other port",
            json!(BASE64.encode(stream("listen 9443; proxy_pass est:8443;"))),
            no_stream_why,
        ),
        (
            "no proxy_pass",
            json!(BASE64.encode(stream("listen 8443; return 503;"))),
            no_stream_why,
        ),
        (
            "commented out",
            json!(BASE64.encode(stream("# listen 8443;\n proxy_pass est:8443;"))),
            no_stream_why,
        ),
    ];
    for (name, raw, why) in cases {
        let mut spec = est(tutorial().spec);
        set_proxy_config(&mut spec, "top-layer", raw);
        assert_eq!(
            warnings_with_est(&spec, Some(8443)),
            [est_warning("top-layer", "top-layer", why)],
            "{name}"
        );
    }
}

#[test]
fn relay_listen_forms_and_proxy_variables_are_read_as_the_proxy_does() {
    for listen in ["8443", "0.0.0.0:8443", "*:8443", "[::]:8443"] {
        let mut spec = est(tutorial().spec);
        with_relay(
            &mut spec,
            "top-layer",
            &RELAY.replace("listen 8443", &format!("listen {listen}")),
        );
        assert_eq!(
            warnings_with_est(&spec, Some(8443)),
            Vec::<String>::new(),
            "{listen}"
        );
    }
    // A port from the module's env counts only when NGINX_CONFIG_ENV_VAR_LIST names it (the proxy
    // substitutes nothing else), and that list replaces the default one.
    let mut spec = est(tutorial().spec);
    with_relay(
        &mut spec,
        "top-layer",
        &RELAY.replace("listen 8443", "listen ${EST_RELAY_PORT}"),
    );
    modules(&mut spec, "top-layer")["IoTEdgeAPIProxy"]["env"]["EST_RELAY_PORT"] =
        json!({"value": 8443});
    let unlisted = warnings_with_est(&spec, Some(8443));
    assert_eq!(unlisted.len(), 1, "{unlisted:?}");
    assert!(unlisted[0].contains("has no stream server"), "{unlisted:?}");
    modules(&mut spec, "top-layer")["IoTEdgeAPIProxy"]["env"]["NGINX_CONFIG_ENV_VAR_LIST"] =
        json!({"value": "NGINX_DEFAULT_PORT,DOCKER_REQUEST_ROUTE_ADDRESS,EST_RELAY_PORT"});
    assert_eq!(warnings_with_est(&spec, Some(8443)), Vec::<String>::new());
}

#[test]
fn est_on_the_proxy_http_port_is_named() {
    let mut spec = est(tutorial().spec);
    with_relay(&mut spec, "top-layer", &RELAY.replace("8443", "443"));
    assert_eq!(
        warnings_with_est(&spec, Some(443)),
        [est_warning(
            "top-layer",
            "top-layer",
            "serves HTTP on port 443 with its API proxy \"IoTEdgeAPIProxy\" (NGINX_DEFAULT_PORT), the port devices reach EST on, so the proxy cannot also relay EST there; give --est-url another port"
        )]
    );
}

#[test]
fn a_missing_or_stopped_proxy_is_named_for_est_too() {
    let mut spec = est(tutorial().spec);
    with_relay(&mut spec, "top-layer", RELAY);
    modules(&mut spec, "top-layer")["IoTEdgeAPIProxy"]["status"] = json!("stopped");
    let warnings = warnings_with_est(&spec, Some(8443));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].ends_with("its children cannot pull images"),
        "{warnings:?}"
    );
    assert_eq!(
        warnings[1],
        est_warning(
            "top-layer",
            "top-layer",
            "sets its API proxy module \"IoTEdgeAPIProxy\" to stopped; set its status to running"
        )
    );
    let mut spec = est(tutorial().spec);
    modules(&mut spec, "top-layer").remove("IoTEdgeAPIProxy");
    let warnings = warnings_with_est(&spec, Some(8443));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(
        warnings[1],
        est_warning(
            "top-layer",
            "top-layer",
            "runs no API proxy (azureiotedge-api-proxy) to relay EST; add one with a proxy_config"
        )
    );
}

#[test]
fn a_lower_gateway_relays_only_when_its_parent_does() {
    let mut spec = est(factory().spec);
    with_relay(&mut spec, "gateway", RELAY);
    with_relay(&mut spec, "enterprise", RELAY);
    assert_eq!(warnings_with_est(&spec, Some(8443)), Vec::<String>::new());

    // The top layer does not relay: every gateway below it is named with the cause.
    deployment_content(&mut spec, "enterprise")["modulesContent"]
        .as_object_mut()
        .unwrap()
        .remove("IoTEdgeAPIProxy");
    let warnings = warnings_with_est(&spec, Some(8443));
    let no_config = "gives its API proxy \"IoTEdgeAPIProxy\" no proxy_config (module twin desired property), and the proxy's default configuration does not relay EST; add a stream server that listens on port 8443 and passes connections to the EST server (proxy_pass)";
    assert_eq!(
        warnings[0],
        est_warning("enterprise-gw", "enterprise", no_config)
    );
    assert_eq!(
        warnings[1],
        est_warning(
            "site1-gw",
            "gateway",
            &format!("relays EST to its parent \"enterprise-gw\", whose deployment {no_config}")
        )
    );
    assert!(warnings.contains(&est_warning(
        "site1-area1-gw",
        "gateway",
        &format!("relays EST to its parent \"site1-gw\", whose deployment relays EST to its parent \"enterprise-gw\", whose deployment {no_config}")
    )));
    // Every gateway with Edge children once; cells (Leaf children only) need no relay.
    assert_eq!(warnings.len(), 1 + 2 + 4 + 8, "{warnings:#?}");
    assert!(warnings.iter().all(|w| !w.contains("cell1\" has")));

    // The lower gateways do not relay: each of them is named, the top layer is not.
    let mut spec = est(factory().spec);
    with_relay(&mut spec, "enterprise", RELAY);
    let warnings = warnings_with_est(&spec, Some(8443));
    assert_eq!(warnings.len(), 2 + 4 + 8, "{warnings:#?}");
    assert_eq!(warnings[0], est_warning("site1-gw", "gateway", no_config));
    assert!(
        warnings
            .iter()
            .all(|w| !w.contains("\"enterprise-gw\" has"))
    );
}

#[test]
fn a_parent_whose_manifest_cannot_be_built_is_the_cause_for_est_too() {
    let mut spec = est(factory().spec);
    with_relay(&mut spec, "gateway", RELAY);
    let topology = crate::api::validate(&spec).unwrap();
    let mut manifests = resolve_manifests(&spec, |_| None).unwrap();
    manifests.remove("enterprise");
    let warnings: Vec<String> = gateway_warnings(&spec, &topology, &manifests, Some(8443))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        warnings.contains(&est_warning(
            "site1-gw",
            "gateway",
            "relays EST to its parent \"enterprise-gw\", whose deployment cannot be built"
        )),
        "{warnings:#?}"
    );
}

#[test]
fn the_relay_docs_est_md_shows_passes() {
    let doc = include_str!("../../../../docs/est.md");
    let block = doc
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/est.md has an nginx block");
    let mut spec = est(factory().spec);
    for deployment in ["enterprise", "gateway"] {
        with_relay(
            &mut spec,
            deployment,
            &format!("events {{ }}\n{block}http {{ }}\n"),
        );
    }
    assert_eq!(warnings_with_est(&spec, Some(8443)), Vec::<String>::new());
    // The warning it quotes is the check's own.
    let mut spec = est(factory().spec);
    with_relay(&mut spec, "enterprise", RELAY);
    let warnings = warnings_with_est(&spec, Some(8443));
    assert!(
        doc.contains(&format!("\n{}\n", warnings[0])),
        "{}",
        warnings[0]
    );
}
