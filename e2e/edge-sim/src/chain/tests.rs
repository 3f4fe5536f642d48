use super::*;

fn module(name: &str, image: &str) -> ModuleSpec {
    ModuleSpec {
        name: name.into(),
        image: image.into(),
        wants_running: true,
        env: BTreeMap::new(),
    }
}

fn with_env(mut m: ModuleSpec, env: &[(&str, &str)]) -> ModuleSpec {
    m.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m
}

fn registry() -> ModuleSpec {
    with_env(
        module("registry", "registry:latest"),
        &[("REGISTRY_PROXY_REMOTEURL", "https://mcr.microsoft.com")],
    )
}

fn proxy_to_registry() -> ModuleSpec {
    with_env(
        module(
            "IoTEdgeAPIProxy",
            "mcr.microsoft.com/azureiotedge-api-proxy:1.1",
        ),
        &[
            ("NGINX_DEFAULT_PORT", "443"),
            ("DOCKER_REQUEST_ROUTE_ADDRESS", "registry:5000"),
        ],
    )
}

fn upstream_proxy() -> ModuleSpec {
    with_env(
        module(
            "IoTEdgeAPIProxy",
            "$upstream:443/azureiotedge-api-proxy:1.1",
        ),
        &[("NGINX_DEFAULT_PORT", "443")],
    )
}

fn sensor() -> ModuleSpec {
    module(
        "SimulatedTemperatureSensor",
        "$upstream:443/azureiotedge-simulated-temperature-sensor:1.5",
    )
}

fn node(id: &str, parent: Option<&str>, modules: Vec<ModuleSpec>) -> DeviceNode {
    DeviceNode {
        id: id.into(),
        parent: parent.map(str::to_string),
        link: if parent.is_some() {
            LinkState::Up
        } else {
            LinkState::Unknown
        },
        runtime_up: true,
        modules,
    }
}

fn tutorial(top_modules: Vec<ModuleSpec>) -> Vec<DeviceNode> {
    vec![
        node("top-layer", None, top_modules),
        node(
            "lower-layer",
            Some("top-layer"),
            vec![
                module("edgeHub", "$upstream:443/azureiotedge-hub:1.5"),
                sensor(),
            ],
        ),
    ]
}

fn outcome<'a>(outcomes: &'a Outcomes, device: &str, module: &str) -> &'a ModuleOutcome {
    &outcomes[device][module]
}

fn backoff_reason(outcomes: &Outcomes, device: &str, module: &str) -> String {
    match outcome(outcomes, device, module) {
        ModuleOutcome::Backoff(why) => why.clone(),
        other => panic!("{device}/{module} is {other:?}, expected backoff"),
    }
}

#[test]
fn tutorial_with_registry_and_proxy_runs_everything() {
    let outcomes = resolve_modules(&tutorial(vec![
        module("edgeHub", "mcr.microsoft.com/azureiotedge-hub:1.5"),
        registry(),
        proxy_to_registry(),
    ]));
    for (device, modules) in &outcomes {
        for (name, o) in modules {
            assert_eq!(o, &ModuleOutcome::Running, "{device}/{name}");
        }
    }
    assert_eq!(outcomes["lower-layer"].len(), 2);
}

#[test]
fn without_api_proxy_the_lower_layer_backs_off_naming_the_parent_and_port() {
    let outcomes = resolve_modules(&tutorial(vec![
        module("edgeHub", "mcr.microsoft.com/azureiotedge-hub:1.5"),
        registry(),
    ]));
    assert_eq!(
        backoff_reason(&outcomes, "lower-layer", "SimulatedTemperatureSensor"),
        "image pull from $upstream:443 failed: parent \"top-layer\" runs no API proxy on port 443"
    );
    assert_eq!(
        outcome(&outcomes, "top-layer", "registry"),
        &ModuleOutcome::Running
    );
}

#[test]
fn proxy_on_another_port_is_named() {
    let proxy = with_env(
        proxy_to_registry(),
        &[
            ("NGINX_DEFAULT_PORT", "8000"),
            ("DOCKER_REQUEST_ROUTE_ADDRESS", "registry:5000"),
        ],
    );
    let outcomes = resolve_modules(&tutorial(vec![registry(), proxy]));
    let why = backoff_reason(&outcomes, "lower-layer", "SimulatedTemperatureSensor");
    assert!(
        why.contains("runs no API proxy on port 443 (IoTEdgeAPIProxy listens on 8000)"),
        "{why}"
    );
}

#[test]
fn proxy_port_defaults_to_443() {
    let proxy = with_env(
        module("proxy", "mcr.microsoft.com/azureiotedge-api-proxy:1.1"),
        &[("DOCKER_REQUEST_ROUTE_ADDRESS", "registry:5000")],
    );
    let outcomes = resolve_modules(&tutorial(vec![registry(), proxy]));
    assert_eq!(
        outcome(&outcomes, "lower-layer", "SimulatedTemperatureSensor"),
        &ModuleOutcome::Running
    );
}

#[test]
fn route_to_a_missing_or_stopped_registry_fails() {
    let outcomes = resolve_modules(&tutorial(vec![proxy_to_registry()]));
    let why = backoff_reason(&outcomes, "lower-layer", "SimulatedTemperatureSensor");
    assert!(
        why.contains(
            "routes image pulls to registry:5000, but \"top-layer\" runs no module \"registry\""
        ),
        "{why}"
    );

    let mut stopped = registry();
    stopped.wants_running = false;
    let outcomes = resolve_modules(&tutorial(vec![stopped, proxy_to_registry()]));
    let why = backoff_reason(&outcomes, "lower-layer", "SimulatedTemperatureSensor");
    assert!(
        why.contains("registry module \"registry\" on parent \"top-layer\" is not running"),
        "{why}"
    );
}

#[test]
fn top_layer_proxy_without_route_cannot_serve() {
    let proxy = with_env(
        module("proxy", "mcr.microsoft.com/azureiotedge-api-proxy:1.1"),
        &[],
    );
    let outcomes = resolve_modules(&tutorial(vec![registry(), proxy]));
    let why = backoff_reason(&outcomes, "lower-layer", "SimulatedTemperatureSensor");
    assert!(
        why.contains(
            "is the top layer, but its API proxy proxy has no DOCKER_REQUEST_ROUTE_ADDRESS"
        ),
        "{why}"
    );
}

#[test]
fn stopped_proxy_and_stopped_modules() {
    let mut proxy = proxy_to_registry();
    proxy.wants_running = false;
    let mut nodes = tutorial(vec![registry(), proxy]);
    let mut idle = sensor();
    idle.name = "idle".into();
    idle.wants_running = false;
    nodes[1].modules.push(idle);
    let outcomes = resolve_modules(&nodes);
    assert_eq!(
        outcome(&outcomes, "top-layer", "IoTEdgeAPIProxy"),
        &ModuleOutcome::Stopped
    );
    assert_eq!(
        outcome(&outcomes, "lower-layer", "idle"),
        &ModuleOutcome::Stopped
    );
    assert!(
        backoff_reason(&outcomes, "lower-layer", "SimulatedTemperatureSensor")
            .contains("IoTEdgeAPIProxy on parent \"top-layer\" is stopped")
    );
}

#[test]
fn link_down_or_not_tried_blocks_pulls() {
    let mut nodes = tutorial(vec![registry(), proxy_to_registry()]);
    nodes[1].link = LinkState::Down(
        "TLS handshake with top.edge.sim failed: invalid peer certificate: UnknownIssuer".into(),
    );
    let outcomes = resolve_modules(&nodes);
    let why = backoff_reason(&outcomes, "lower-layer", "SimulatedTemperatureSensor");
    assert!(why.starts_with("image pull from $upstream:443 failed: device \"lower-layer\" cannot open TLS to parent \"top-layer\": TLS handshake"), "{why}");
    nodes[1].link = LinkState::Unknown;
    let why = backoff_reason(
        &resolve_modules(&nodes),
        "lower-layer",
        "SimulatedTemperatureSensor",
    );
    assert!(why.contains("has not connected to parent"), "{why}");
}

#[test]
fn parent_runtime_down_or_missing() {
    let mut nodes = tutorial(vec![registry(), proxy_to_registry()]);
    nodes[0].runtime_up = false;
    let why = backoff_reason(
        &resolve_modules(&nodes),
        "lower-layer",
        "SimulatedTemperatureSensor",
    );
    assert!(
        why.contains("parent \"top-layer\" has no running edge runtime"),
        "{why}"
    );
    let orphan = vec![node("lower-layer", Some("gone"), vec![sensor()])];
    let why = backoff_reason(
        &resolve_modules(&orphan),
        "lower-layer",
        "SimulatedTemperatureSensor",
    );
    assert!(
        why.contains("parent \"gone\" is not running (no bundle installed)"),
        "{why}"
    );
}

#[test]
fn registry_images_resolve_only_on_the_top_layer() {
    let nodes = vec![
        node(
            "top",
            None,
            vec![
                module("a", "mcr.microsoft.com/azureiotedge-hub:1.5"),
                module("b", "registry:latest"),
            ],
        ),
        node(
            "child",
            Some("top"),
            vec![module("c", "mcr.microsoft.com/azureiotedge-hub:1.5")],
        ),
    ];
    let outcomes = resolve_modules(&nodes);
    assert_eq!(outcome(&outcomes, "top", "a"), &ModuleOutcome::Running);
    assert_eq!(outcome(&outcomes, "top", "b"), &ModuleOutcome::Running);
    let why = backoff_reason(&outcomes, "child", "c");
    assert!(
        why.starts_with(
            "image pull from mcr.microsoft.com failed: device \"child\" is below the top layer"
        ),
        "{why}"
    );
}

#[test]
fn upstream_on_the_top_layer_and_malformed_upstream() {
    let nodes = vec![node(
        "top",
        None,
        vec![
            module("a", "$upstream:443/x:1"),
            module("b", "$upstream/x:1"),
            module("c", " "),
        ],
    )];
    let outcomes = resolve_modules(&nodes);
    assert!(backoff_reason(&outcomes, "top", "a").contains("is the top layer and has no parent"));
    assert!(backoff_reason(&outcomes, "top", "b").contains("is not of the form $upstream:<port>"));
    assert!(backoff_reason(&outcomes, "top", "c").contains("settings.image is empty"));
}

/// Five generations: layers 2-4 run proxies without a route, pulling through their parents.
fn factory(chain_break: Option<usize>) -> Vec<DeviceNode> {
    let mut nodes = vec![node("l1", None, vec![registry(), proxy_to_registry()])];
    for layer in 2..=4 {
        let mut proxy = upstream_proxy();
        if chain_break == Some(layer) {
            proxy.env.insert("NGINX_DEFAULT_PORT".into(), "8443".into());
        }
        nodes.push(node(
            &format!("l{layer}"),
            Some(&format!("l{}", layer - 1)),
            vec![proxy],
        ));
    }
    nodes.push(node("l5", Some("l4"), vec![sensor()]));
    // Out of order on purpose: the rule must evaluate parents first.
    nodes.reverse();
    nodes
}

#[test]
fn five_generations_pull_through_every_proxy() {
    let outcomes = resolve_modules(&factory(None));
    for layer in 2..=4 {
        assert_eq!(
            outcome(&outcomes, &format!("l{layer}"), "IoTEdgeAPIProxy"),
            &ModuleOutcome::Running
        );
    }
    assert_eq!(
        outcome(&outcomes, "l5", "SimulatedTemperatureSensor"),
        &ModuleOutcome::Running
    );
}

#[test]
fn a_break_in_the_middle_reaches_every_layer_below() {
    let outcomes = resolve_modules(&factory(Some(3)));
    assert_eq!(
        outcome(&outcomes, "l2", "IoTEdgeAPIProxy"),
        &ModuleOutcome::Running
    );
    // l3's proxy listens on 8443 but pulls its own image through l2 on 443: it runs.
    assert_eq!(
        outcome(&outcomes, "l3", "IoTEdgeAPIProxy"),
        &ModuleOutcome::Running
    );
    let why = backoff_reason(&outcomes, "l4", "IoTEdgeAPIProxy");
    assert!(
        why.contains(
            "parent \"l3\" runs no API proxy on port 443 (IoTEdgeAPIProxy listens on 8443)"
        ),
        "{why}"
    );
    let why = backoff_reason(&outcomes, "l5", "SimulatedTemperatureSensor");
    assert!(
        why.contains("the API proxy IoTEdgeAPIProxy on parent \"l4\" is not running"),
        "{why}"
    );
}

#[test]
fn a_middle_layer_route_to_its_own_registry_cannot_reach_the_cloud() {
    let nodes = vec![
        node("l1", None, vec![registry(), proxy_to_registry()]),
        node(
            "l2",
            Some("l1"),
            vec![
                with_env(module("registry", "$upstream:443/registry:latest"), &[]),
                {
                    let mut p = proxy_to_registry();
                    p.image = "$upstream:443/azureiotedge-api-proxy:1.1".into();
                    p
                },
            ],
        ),
        node("l3", Some("l2"), vec![sensor()]),
    ];
    let outcomes = resolve_modules(&nodes);
    assert_eq!(
        outcome(&outcomes, "l2", "registry"),
        &ModuleOutcome::Running
    );
    let why = backoff_reason(&outcomes, "l3", "SimulatedTemperatureSensor");
    assert!(why.contains("but \"l2\" is below the top layer (parent \"l1\") so that registry cannot reach the cloud"), "{why}");
}

#[test]
fn cycles_do_not_hang() {
    let nodes = vec![
        node("a", Some("b"), vec![upstream_proxy()]),
        node("b", Some("a"), vec![upstream_proxy()]),
    ];
    let outcomes = resolve_modules(&nodes);
    assert!(matches!(
        outcome(&outcomes, "a", "IoTEdgeAPIProxy"),
        ModuleOutcome::Backoff(_)
    ));
    assert!(matches!(
        outcome(&outcomes, "b", "IoTEdgeAPIProxy"),
        ModuleOutcome::Backoff(_)
    ));
}

#[test]
fn bad_proxy_port_is_reported() {
    let proxy = with_env(proxy_to_registry(), &[("NGINX_DEFAULT_PORT", "https")]);
    let why = backoff_reason(
        &resolve_modules(&tutorial(vec![registry(), proxy])),
        "lower-layer",
        "SimulatedTemperatureSensor",
    );
    assert!(
        why.contains("NGINX_DEFAULT_PORT \"https\", which is not a port"),
        "{why}"
    );
}

#[test]
fn registry_hosts() {
    assert_eq!(
        registry_host("mcr.microsoft.com/azureiotedge-hub:1.5"),
        "mcr.microsoft.com"
    );
    assert_eq!(registry_host("registry:latest"), "docker.io");
    assert_eq!(registry_host("library/nginx"), "docker.io");
    assert_eq!(registry_host("localhost/x"), "localhost");
    assert_eq!(registry_host("myacr:5000/x"), "myacr:5000");
}
