//! The simulation against a real IoT Hub emulator process, with hand-made bundles (no
//! Kubernetes): the tutorial's two devices, the API proxy removed and restored, a child whose
//! trust bundle lacks its parent's root, an X509 child and a device whose edge CA key is wrong.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use e2e_harness::{Emulator, wait_until, workspace_bin};
use edge_sim::fixtures::{BundleSpec, TestAuth, TestCa, bundle, edge_ca, identity, root_ca};
use edge_sim::hub::policy_token;
use edge_sim::{CheckStatus, EdgeSim, MemorySource, SimOptions, Snapshot};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const SENSOR: &str = "SimulatedTemperatureSensor";

/// The emulator process and a service client with the owner policy.
struct Hub {
    emulator: Emulator,
    host: String,
    policy: String,
    key: String,
    http: reqwest::Client,
}

impl Hub {
    async fn start(dir: &Path) -> Self {
        let binary = workspace_bin("iothub-emulator")
            .expect("the iothub-emulator binary (cargo build -p iothub-emulator)");
        let emulator = Emulator::start(&binary, dir, &[] as &[&str])
            .await
            .unwrap_or_else(|e| panic!("starting the emulator: {e:#}"));
        let connection = emulator.connection_string.clone();
        assert!(
            connection.contains("SharedAccessKey="),
            "the emulator wrote {connection:?}"
        );
        let field = |name: &str| {
            connection
                .split(';')
                .find_map(|p| p.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("connection string lacks {name}"))
                .to_string()
        };
        let ca = reqwest::Certificate::from_pem(emulator.ca_pem.as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap();
        Self {
            host: field("HostName"),
            policy: field("SharedAccessKeyName"),
            key: field("SharedAccessKey"),
            http,
            emulator,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let token = policy_token(
            &self.host,
            &self.policy,
            &self.key,
            jiff::Timestamp::now().as_second() + 600,
        )
        .unwrap();
        let url = format!(
            "https://{}{path}{}api-version=2021-04-12",
            self.host,
            if path.contains('?') { "&" } else { "?" }
        );
        let mut request = self
            .http
            .request(method.clone(), url)
            .header("authorization", token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("calling the emulator");
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    async fn create_edge_device(
        &self,
        id: &str,
        auth: Value,
        parent_scope: Option<&str>,
    ) -> String {
        let body = json!({
            "deviceId": id,
            "status": "enabled",
            "capabilities": {"iotEdge": true},
            "authentication": auth,
            "parentScopes": parent_scope.map(|s| vec![s.to_string()]).unwrap_or_default(),
        });
        let device = self
            .call(reqwest::Method::PUT, &format!("/devices/{id}"), Some(body))
            .await;
        device["deviceScope"]
            .as_str()
            .expect("deviceScope")
            .to_string()
    }

    async fn apply(&self, device: &str, agent_modules: Value, edge_hub_image: &str) {
        let content = json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {
                "schemaVersion": "1.1",
                "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
                "systemModules": {
                    "edgeAgent": {"type": "docker", "settings": {"image": edge_hub_image.replace("hub", "agent"), "createOptions": ""}},
                    "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": edge_hub_image, "createOptions": ""}}
                },
                "modules": agent_modules
            }},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"upstream": "FROM /messages/* INTO $upstream"}, "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}
        }});
        self.call(
            reqwest::Method::POST,
            &format!("/devices/{device}/applyConfigurationContent"),
            Some(content),
        )
        .await;
    }

    async fn module_twin(&self, device: &str, module: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/twins/{device}/modules/{}", module.replace('$', "%24")),
            None,
        )
        .await
    }

    async fn stats(&self) -> Value {
        let url = format!("https://{}/_emulator/stats", self.host);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn sas_key(seed: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

fn top_modules(with_proxy: bool) -> Value {
    let mut modules = json!({
        "registry": {"type": "docker", "status": "running", "restartPolicy": "always", "version": "1.0",
            "settings": {"image": "registry:latest", "createOptions": ""},
            "env": {"REGISTRY_PROXY_REMOTEURL": {"value": "https://mcr.microsoft.com"}}}
    });
    if with_proxy {
        modules["IoTEdgeAPIProxy"] = json!({"type": "docker", "status": "running", "restartPolicy": "always", "version": "1.0",
            "settings": {"image": "mcr.microsoft.com/azureiotedge-api-proxy:1.1", "createOptions": ""},
            "env": {"NGINX_DEFAULT_PORT": {"value": "443"}, "DOCKER_REQUEST_ROUTE_ADDRESS": {"value": "registry:5000"}}});
    }
    modules
}

fn lower_modules() -> Value {
    json!({SENSOR: {"type": "docker", "status": "running", "restartPolicy": "always", "version": "1.0",
        "settings": {"image": "$upstream:443/azureiotedge-simulated-temperature-sensor:1.5", "createOptions": ""}}})
}

fn child_spec(id: &str, hub: &Hub, root: &TestCa, trust: &TestCa, auth: TestAuth) -> BundleSpec {
    BundleSpec {
        device_id: id.into(),
        hub_host: hub.host.clone(),
        hostname: None,
        parent_hostname: Some(None),
        auth,
        trust_bundle_pem: trust.cert_pem.clone(),
        edge_ca: edge_ca(root, id, 90, true),
        root_pem: root.cert_pem.clone(),
        upstream_port: 443,
    }
}

async fn wait_for<T>(sim: &EdgeSim, what: &str, check: impl Fn(&Snapshot) -> Option<T>) -> T {
    wait_until(WAIT, POLL, what, || {
        let snapshot = sim.snapshot();
        let found = check(&snapshot);
        async move { found }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nlast snapshot: {}",
            serde_json::to_string_pretty(&sim.snapshot()).unwrap()
        )
    })
}

fn module_status(snapshot: &Snapshot, device: &str, module: &str) -> Option<(String, String)> {
    let m = snapshot.devices.get(device)?.modules.get(module)?;
    Some((m.runtime_status.clone(), m.status_description.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_chain_proxy_removal_and_trust_failures() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The simulation's log lines show with --nocapture (and in the output of a failed run).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .with_env_filter("edge_sim=info")
        .try_init();
    let work = tempfile::tempdir().unwrap();
    let hub_dir = work.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let hub = Hub::start(&hub_dir).await;

    // The hub: top-layer, lower-layer (SAS), x509-child (self-signed), stranger and broken.
    let sas = |seed: u8| json!({"type": "sas", "symmetricKey": {"primaryKey": sas_key(seed), "secondaryKey": sas_key(seed + 100)}});
    let top_scope = hub.create_edge_device("top-layer", sas(1), None).await;
    hub.create_edge_device("lower-layer", sas(2), Some(&top_scope))
        .await;
    hub.call(
        reqwest::Method::PUT,
        &format!("/devices/lower-layer/modules/{SENSOR}"),
        Some(json!({"deviceId": "lower-layer", "moduleId": SENSOR})),
    )
    .await;
    let (x509_identity, thumbprint) = identity("x509-child");
    hub.create_edge_device(
        "x509-child",
        json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": thumbprint, "secondaryThumbprint": null}}),
        Some(&top_scope),
    )
    .await;
    hub.create_edge_device("stranger", sas(3), Some(&top_scope))
        .await;
    hub.create_edge_device("broken", sas(4), None).await;
    hub.apply(
        "top-layer",
        top_modules(true),
        "mcr.microsoft.com/azureiotedge-hub:1.5",
    )
    .await;
    for child in ["lower-layer", "x509-child", "stranger"] {
        hub.apply(child, lower_modules(), "$upstream:443/azureiotedge-hub:1.5")
            .await;
    }

    // Bundles made by hand: one root for the hierarchy, another for the stranger.
    let root = root_ca("hierarchy root");
    let other_root = root_ca("someone else's root");
    let source = MemorySource::new();
    source.put(bundle(&BundleSpec {
        device_id: "top-layer".into(),
        hub_host: hub.host.clone(),
        hostname: None,
        parent_hostname: None,
        auth: TestAuth::Sas(sas_key(1)),
        trust_bundle_pem: root.cert_pem.clone(),
        edge_ca: edge_ca(&root, "top-layer", 90, true),
        root_pem: root.cert_pem.clone(),
        upstream_port: 443,
    }));
    source.put(bundle(&child_spec(
        "lower-layer",
        &hub,
        &root,
        &root,
        TestAuth::Sas(sas_key(2)),
    )));
    source.put(bundle(&child_spec(
        "x509-child",
        &hub,
        &root,
        &root,
        TestAuth::X509(x509_identity),
    )));
    // Its own chain verifies (other root signed its edge CA), but it cannot trust top-layer.
    let mut stranger = child_spec(
        "stranger",
        &hub,
        &other_root,
        &other_root,
        TestAuth::Sas(sas_key(3)),
    );
    stranger.hostname = Some("stranger.example.net".into());
    stranger.parent_hostname = Some(Some("top-layer.edge.sim".into()));
    source.put(bundle(&stranger));
    let mut broken = child_spec("broken", &hub, &root, &root, TestAuth::Sas(sas_key(4)));
    broken.parent_hostname = None;
    broken.edge_ca.key_pem = root_ca("unrelated").key_pem;
    source.put(bundle(&broken));

    let mut options = SimOptions::new(Arc::new(source.clone()), &hub.emulator.dir);
    options.state_dir = Some(work.path().join("devices"));
    options.interval = Duration::from_millis(300);
    let sim = EdgeSim::start(options)
        .await
        .expect("starting the simulation");

    // 1. The tutorial: the sensor on the lower layer runs, pulled through top-layer's proxy, and
    //    its telemetry reaches the hub through its parent.
    wait_for(
        &sim,
        "the lower layer's sensor to run and send telemetry",
        |s| {
            let lower = s.devices.get("lower-layer")?;
            (module_status(s, "lower-layer", SENSOR)?.0 == "running" && lower.telemetry.sent >= 2)
                .then_some(())
        },
    )
    .await;
    let snapshot = sim.snapshot();
    let top = &snapshot.devices["top-layer"];
    let lower = &snapshot.devices["lower-layer"];
    assert_eq!(top.hostname.as_deref(), Some("top-layer.edge.sim"));
    assert_eq!(
        lower.parent_hostname.as_deref(),
        Some("top-layer.edge.sim"),
        "filled from the hub's parentScopes"
    );
    assert_eq!(lower.parent_id.as_deref(), Some("top-layer"));
    assert!(
        lower.checks.iter().all(|c| c.status == CheckStatus::Passed),
        "{:?}",
        lower.checks
    );
    assert!(lower.link.as_ref().unwrap().ok, "{:?}", lower.link);
    for module in ["registry", "IoTEdgeAPIProxy"] {
        assert_eq!(
            module_status(&snapshot, "top-layer", module).unwrap().0,
            "running"
        );
    }
    assert!(top.telemetry.forwarded >= 2, "{:?}", top.telemetry);
    assert!(top.telemetry.posted_to_hub >= 2);
    let stats = hub.stats().await;
    assert!(
        stats["telemetry"]["bySender"][format!("lower-layer/{SENSOR}")]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "{stats}"
    );
    let installed = std::fs::read_to_string(lower.root.join("etc/aziot/config.toml")).unwrap();
    assert!(installed.contains("parent_hostname = \"top-layer.edge.sim\""));

    // What the hub sees: $edgeAgent reported per the schema, $edgeHub clients.
    let agent = hub.module_twin("lower-layer", "$edgeAgent").await;
    let reported = &agent["properties"]["reported"];
    assert_eq!(reported["lastDesiredStatus"]["code"], 200, "{reported}");
    assert_eq!(
        reported["lastDesiredVersion"],
        agent["properties"]["desired"]["$version"]
    );
    assert_eq!(
        reported["systemModules"]["edgeAgent"]["runtimeStatus"],
        "running"
    );
    assert_eq!(
        reported["systemModules"]["edgeHub"]["runtimeStatus"],
        "running"
    );
    assert_eq!(reported["modules"][SENSOR]["runtimeStatus"], "running");
    // As the real agent reports it: `$upstream` resolved to the parent's hostname.
    assert_eq!(
        reported["modules"][SENSOR]["settings"]["image"],
        "top-layer.edge.sim:443/azureiotedge-simulated-temperature-sensor:1.5"
    );
    let top_hub = wait_until(
        WAIT,
        POLL,
        "top-layer's $edgeHub to list lower-layer as connected",
        || async {
            let twin = hub.module_twin("top-layer", "$edgeHub").await;
            (twin["properties"]["reported"]["clients"]["lower-layer"]["status"] == "connected")
                .then_some(twin)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        top_hub["properties"]["reported"]["lastDesiredStatus"]["code"],
        200
    );

    // 2. X509 child: authenticates with its client certificate, telemetry goes up the chain.
    wait_for(&sim, "the X509 child's telemetry to arrive", |s| {
        (s.devices.get("x509-child")?.telemetry.sent >= 1).then_some(())
    })
    .await;
    let x509_agent = hub.module_twin("x509-child", "$edgeAgent").await;
    assert_eq!(
        x509_agent["properties"]["reported"]["modules"][SENSOR]["runtimeStatus"],
        "running"
    );

    // 3. The stranger trusts another root: TLS to top-layer fails, its modules back off.
    let stranger_state = wait_for(&sim, "the stranger's link to fail", |s| {
        let d = s.devices.get("stranger")?;
        d.link.as_ref().filter(|l| !l.ok).map(|_| d.clone())
    })
    .await;
    let detail = &stranger_state.link.as_ref().unwrap().detail;
    assert!(
        detail.contains("TLS handshake with top-layer.edge.sim failed"),
        "{detail}"
    );
    // Each failed handshake is counted (tests of root rotation rely on the count).
    let counts = &stranger_state.link.as_ref().unwrap().counts;
    assert!(
        counts.handshake_failures >= 1 && counts.handshake_failures == counts.handshakes,
        "{counts:?}"
    );
    assert!(counts.last_handshake_error.is_some(), "{counts:?}");
    let lower_counts = &sim.snapshot().devices["lower-layer"]
        .link
        .clone()
        .unwrap()
        .counts;
    assert!(
        lower_counts.handshakes >= 1 && lower_counts.handshake_failures == 0,
        "{lower_counts:?}"
    );
    assert!(
        detail.to_lowercase().contains("unknownissuer") || detail.contains("issuer"),
        "{detail}"
    );
    assert!(
        stranger_state
            .checks
            .iter()
            .all(|c| c.status == CheckStatus::Passed),
        "its own chain is fine"
    );
    assert!(
        !stranger_state.agent_running,
        "its agent image cannot be pulled through the parent either"
    );
    assert!(
        stranger_state
            .agent
            .status_description
            .contains("cannot open TLS to parent"),
        "{:?}",
        stranger_state.agent
    );

    // 4. The broken device reports the failing check instead of running.
    let broken_state = sim.snapshot().devices["broken"].clone();
    assert!(
        broken_state
            .failure
            .as_deref()
            .unwrap_or("")
            .starts_with("edge-ca-key:"),
        "{:?}",
        broken_state.failure
    );
    assert!(!broken_state.agent_running);
    let broken_agent = wait_until(WAIT, POLL, "broken to report its failed check", || async {
        let twin = hub.module_twin("broken", "$edgeAgent").await;
        (twin["properties"]["reported"]["lastDesiredStatus"]["code"] == 500).then_some(twin)
    })
    .await
    .unwrap();
    let description = broken_agent["properties"]["reported"]["lastDesiredStatus"]["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(description.contains("edge-ca-key"), "{description}");
    assert!(!description.contains("PRIVATE KEY"));

    // 5. Converged: nothing changes, so no device patches its reported properties again.
    let before: Vec<u64> = sim
        .snapshot()
        .devices
        .values()
        .map(|d| d.reported_patches)
        .collect();
    let ticks = sim.snapshot().ticks;
    wait_for(&sim, "five more polls", |s| {
        (s.ticks >= ticks + 5).then_some(())
    })
    .await;
    let after: Vec<u64> = sim
        .snapshot()
        .devices
        .values()
        .map(|d| d.reported_patches)
        .collect();
    assert_eq!(
        before, after,
        "a poll without changes must not patch reported properties"
    );

    // 6. The API proxy removed from top-layer: the lower layer's module goes to backoff with the reason.
    hub.apply(
        "top-layer",
        top_modules(false),
        "mcr.microsoft.com/azureiotedge-hub:1.5",
    )
    .await;
    let (_, why) = wait_for(&sim, "the lower layer's sensor to back off", |s| {
        module_status(s, "lower-layer", SENSOR).filter(|(status, _)| status == "backoff")
    })
    .await;
    assert_eq!(
        why,
        "image pull from $upstream:443 failed: parent \"top-layer\" runs no API proxy on port 443"
    );
    let reported = wait_until(WAIT, POLL, "the hub to show the backoff", || async {
        let twin = hub.module_twin("lower-layer", "$edgeAgent").await;
        let module = twin["properties"]["reported"]["modules"][SENSOR].clone();
        (module["runtimeStatus"] == "backoff").then_some(module)
    })
    .await
    .unwrap();
    assert_eq!(reported["statusDescription"], why.as_str());
    assert!(
        !sim.snapshot().devices["top-layer"]
            .modules
            .contains_key("IoTEdgeAPIProxy")
    );

    // 7. Restored: the sensor runs again.
    hub.apply(
        "top-layer",
        top_modules(true),
        "mcr.microsoft.com/azureiotedge-hub:1.5",
    )
    .await;
    wait_for(&sim, "the sensor to run again", |s| {
        module_status(s, "lower-layer", SENSOR).filter(|(status, _)| status == "running")
    })
    .await;

    // 8. A bundle removed stops that device.
    source.remove("stranger");
    wait_for(&sim, "the stranger to disappear", |s| {
        (!s.devices.contains_key("stranger")).then_some(())
    })
    .await;

    // No secret in anything the simulation shows.
    let shown = serde_json::to_string(&sim.snapshot()).unwrap();
    for secret in [
        sas_key(1),
        sas_key(2),
        "PRIVATE KEY".to_string(),
        "SharedAccessSignature".to_string(),
    ] {
        assert!(!shown.contains(&secret), "the snapshot shows a secret");
    }
    sim.stop().await;
}
