//! The leader's address behind the chart's EST Service (docs/est.md, "In the chart").
//!
//! Only the replica that leads serves EST, so a Service selecting the operator's Pods would send
//! devices to standbys that refuse the connection. The chart's Service has no selector instead,
//! and each leader, at the start of its term, server-side applies the one EndpointSlice of that
//! Service with its own Pod IP: the Service then routes to whoever leads now.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tracing::{info, warn};

use crate::names::{
    ENDPOINTSLICE_MANAGED_BY_LABEL, EST_FIELD_MANAGER, MANAGED_BY_LABEL, MANAGER,
    SERVICE_NAME_LABEL,
};

/// The name of the EST port, in the Service and in the slice (kube-proxy pairs them by name).
pub const PORT_NAME: &str = "est";

/// What a leader publishes: which Service, and where this replica serves EST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EstService {
    /// The selectorless Service (`--est-service`), in `namespace`.
    pub name: String,
    pub namespace: String,
    /// This replica's address (`--est-endpoint-ip`, the Pod IP in a cluster).
    pub ip: IpAddr,
    /// The port EST listens on (`--est-addr`'s).
    pub port: u16,
    /// This replica's Pod (`POD_NAME`), named in the endpoint's targetRef when known.
    pub pod: Option<String>,
}

/// Checks an address to publish: the apiserver refuses loopback and link-local endpoints, and an
/// unspecified one routes nowhere. The error names the flag and the fix.
pub fn check_endpoint_ip(ip: IpAddr) -> anyhow::Result<()> {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    let what = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "the unspecified address"
    } else if link_local {
        "a link-local address"
    } else {
        return Ok(());
    };
    anyhow::bail!(
        "--est-endpoint-ip {ip} is {what}, which the EST Service cannot route to; set it (or POD_IP) to the Pod's IP (downward API status.podIP)"
    )
}

/// The EndpointSlice routing `service` to this replica: named like the Service, labelled for it
/// (and as not the EndpointSlice controller's), one ready endpoint on the EST port, owned by the
/// Service so it goes when the Service does. `service_uid` is the Service's metadata.uid.
pub fn leader_slice(service: &EstService, service_uid: &str) -> EndpointSlice {
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), service.name.clone()),
        (
            ENDPOINTSLICE_MANAGED_BY_LABEL.to_string(),
            MANAGER.to_string(),
        ),
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
    ]);
    let address_type = match service.ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(service.name.clone()),
            namespace: Some(service.namespace.clone()),
            labels: Some(labels),
            // No blockOwnerDeletion: it would need update on services/finalizers, and nothing
            // has to wait for this slice.
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service.name.clone(),
                uid: service_uid.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: vec![Endpoint {
            addresses: vec![service.ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            target_ref: service.pod.as_ref().map(|pod| ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.clone()),
                namespace: Some(service.namespace.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some(PORT_NAME.into()),
            port: Some(i32::from(service.port)),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

/// Reads the Service and applies [`leader_slice`] for it.
async fn apply_once(client: &kube::Client, service: &EstService) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), &service.namespace);
    let found = services.get(&service.name).await.map_err(|e| {
        anyhow::anyhow!(
            "reading Service {}/{}: {e}",
            service.namespace,
            service.name
        )
    })?;
    let uid = found.metadata.uid.ok_or_else(|| {
        anyhow::anyhow!("Service {}/{} has no uid", service.namespace, service.name)
    })?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &service.namespace);
    let slice = leader_slice(service, &uid);
    slices
        .patch(
            &service.name,
            &PatchParams::apply(EST_FIELD_MANAGER).force(),
            &Patch::Apply(&slice),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "applying EndpointSlice {}/{}: {e}",
                service.namespace,
                service.name
            )
        })?;
    Ok(())
}

/// The waits between attempts: 2 s, doubling, at most 60 s, for as long as the term lasts.
pub fn backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(2))
        .with_max_delay(Duration::from_secs(60))
        .without_max_times()
        .build()
}

/// Publishes this replica as the Service's endpoint, retrying (see [`backoff`]) until it
/// succeeds or `stop` (the end of the term) completes. Called at the start of each term.
pub async fn publish(
    client: kube::Client,
    service: EstService,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut waits = backoff();
    loop {
        match apply_once(&client, &service).await {
            Ok(()) => {
                info!(service = %service.name, namespace = %service.namespace, ip = %service.ip,
                      port = service.port, "EST Service routes to this replica");
                return;
            }
            Err(e) => {
                let wait = waits.next().unwrap_or(Duration::from_secs(60));
                warn!(error = %e, retry_in_secs = wait.as_secs(), "EST Service not routed to this replica yet");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut stop => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ip: &str) -> EstService {
        EstService {
            name: "eho-edge-hierarchy-operator-est".into(),
            namespace: "eho-system".into(),
            ip: ip.parse().unwrap(),
            port: 8443,
            pod: Some("eho-edge-hierarchy-operator-7d9f-x".into()),
        }
    }

    #[test]
    fn an_ipv4_leader_gets_one_ready_endpoint_on_the_est_port() {
        let slice = leader_slice(&service("10.1.2.3"), "uid-1");
        let value = serde_json::to_value(&slice).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "eho-edge-hierarchy-operator-est",
                    "namespace": "eho-system",
                    "labels": {
                        "kubernetes.io/service-name": "eho-edge-hierarchy-operator-est",
                        "endpointslice.kubernetes.io/managed-by": "edge-hierarchy-operator",
                        "app.kubernetes.io/managed-by": "edge-hierarchy-operator",
                    },
                    "ownerReferences": [{
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": "eho-edge-hierarchy-operator-est",
                        "uid": "uid-1",
                    }],
                },
                "addressType": "IPv4",
                "endpoints": [{
                    "addresses": ["10.1.2.3"],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "targetRef": {
                        "kind": "Pod",
                        "name": "eho-edge-hierarchy-operator-7d9f-x",
                        "namespace": "eho-system",
                    },
                }],
                "ports": [{"name": "est", "port": 8443, "protocol": "TCP"}],
            })
        );
    }

    #[test]
    fn an_ipv6_leader_gets_an_ipv6_slice_in_canonical_form() {
        let mut svc = service("fd00:0:0::0a");
        svc.port = 9443;
        svc.pod = None;
        let slice = leader_slice(&svc, "uid-6");
        assert_eq!(slice.address_type, "IPv6");
        assert_eq!(slice.endpoints[0].addresses, ["fd00::a"]);
        assert_eq!(slice.endpoints[0].target_ref, None);
        let ports = slice.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(9443));
        assert_eq!(ports[0].name.as_deref(), Some(PORT_NAME));
        let owner = &slice.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "uid-6")
        );
        assert_eq!(owner.block_owner_deletion, None);
    }

    #[test]
    fn addresses_the_service_cannot_route_to_are_refused_naming_the_flag() {
        for ip in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.1.1",
            "fe80::1",
        ] {
            let error = check_endpoint_ip(ip.parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("--est-endpoint-ip {ip} is "))
                    && error.contains("status.podIP"),
                "{error}"
            );
        }
        for ip in ["10.0.0.7", "192.0.2.10", "fd00::7"] {
            assert!(check_endpoint_ip(ip.parse().unwrap()).is_ok(), "{ip}");
        }
    }

    #[test]
    fn retries_wait_two_seconds_doubling_to_a_minute() {
        let waits: Vec<u64> = backoff().take(8).map(|d| d.as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
