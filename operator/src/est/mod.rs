//! The EST server (RFC 7030) devices renew their certificates from (docs/est.md).
//!
//! Under `spec.certificates.issuance: Est` a device's bundle carries a bootstrap identity (its
//! identity certificate, signed by the hierarchy's root) instead of relying on new bundles:
//! aziot-certd enrolls its edge CA (and, with X509, its hub identity) with `POST
//! /.well-known/est/simpleenroll` authenticated by that certificate, and renews each later
//! with a fresh `simpleenroll` authenticated by the certificate it holds then.
//!
//! - [`authorize`]: the decision, pure: which hierarchy's root signed the client certificate,
//!   which device it names, what that device may ask for;
//! - [`wire`]: PKCS#10 in, certs-only PKCS#7 out;
//! - [`enroll`]: issuing for the request's public key, same profiles as the bundle path;
//! - [`trust`]: the hierarchies, devices and roots, read from Kubernetes;
//! - [`tls`]: the operator's EST CA (devices trust it through `trusted_certs`) and the server
//!   certificate it issues;
//! - [`server`]: HTTPS, refusals with metrics and Events, the hub write before an X509 answer.
//! - [`endpoint`]: the leader's EndpointSlice behind the chart's selectorless EST Service.
//!
//! Start and stop it with [`serve`]: only a replica allowed to write to hubs should run it.

pub mod authorize;
pub mod endpoint;
pub mod enroll;
mod limit;
mod metrics;
pub mod record;
pub mod server;
pub mod tls;
pub mod trust;
pub mod wire;

use std::sync::Arc;

pub use limit::RateLimiter;
pub use metrics::EstMetrics;
pub use server::{EST_PATH, serve};
pub use tls::{EstCa, ensure_est_ca};

use crate::reconcile::credentials::HubClients;
use crate::reconcile::events::EventPublisher;

/// What bundles need to point devices at the EST server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EstEndpoint {
    /// `https://HOST:PORT/.well-known/est`, as devices reach it (`--est-url`).
    pub url: String,
    /// PEM of the CA that issued the server's TLS certificate (`trusted_certs`).
    pub trusted_ca_pem: String,
}

impl EstEndpoint {
    /// The port devices connect to, which a parent's API proxy relays (the gateway check).
    pub fn port(&self) -> Option<u16> {
        url::Url::parse(&self.url).ok()?.port_or_known_default()
    }
}

/// Everything a running EST server shares between requests.
pub struct EstState {
    pub endpoint: EstEndpoint,
    pub tls: Arc<rustls::ServerConfig>,
    pub trust: trust::TrustStore,
    pub hubs: HubClients,
    pub events: EventPublisher,
    pub metrics: Arc<EstMetrics>,
    pub limiter: RateLimiter,
    pub client: kube::Client,
}

/// How `run --est-addr` sets the server up.
#[derive(Clone, Debug)]
pub struct EstOptions {
    pub addr: std::net::SocketAddr,
    /// `--est-url`; `None`: `https://<addr>/.well-known/est`.
    pub url: Option<url::Url>,
    pub ca_secret: String,
    pub ca_namespace: String,
    /// `User-Agent` of its hub calls (the controller's, naming this replica).
    pub user_agent: String,
    /// The hierarchies it answers for: the controller's.
    pub watched: crate::reconcile::controller::Watched,
}

impl EstOptions {
    /// The URL devices use, checked: https, a host, the EST path.
    pub fn device_url(&self) -> anyhow::Result<url::Url> {
        let url = match &self.url {
            Some(url) => url.clone(),
            None if self.addr.ip().is_unspecified() => anyhow::bail!(
                "--est-addr {} listens on every address; set --est-url to the address devices use",
                self.addr
            ),
            None => url::Url::parse(&format!("https://{}{EST_PATH}", self.addr))?,
        };
        if url.scheme() != "https" || url.host_str().is_none() {
            anyhow::bail!("--est-url {url} must be an https:// URL with a host");
        }
        if !url.path().trim_end_matches('/').ends_with(EST_PATH) {
            anyhow::bail!(
                "--est-url {url} must end with {EST_PATH} (an optional label after it is not supported)"
            );
        }
        Ok(url)
    }
}

/// Reads (or creates) the EST CA, issues the server certificate for the device URL's host and
/// returns the state [`serve`] needs. Cheap to call again after losing and regaining a lease.
pub async fn prepare(
    client: kube::Client,
    counters: Arc<crate::iothub::HubCallCounters>,
    metrics: Arc<EstMetrics>,
    options: &EstOptions,
) -> anyhow::Result<Arc<EstState>> {
    let url = options.device_url()?;
    let ca = ensure_est_ca(&client, &options.ca_namespace, &options.ca_secret).await?;
    // url::Url keeps the brackets of an IPv6 host; certificates hold the bare address.
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = ca.server_config(&host)?;
    let reporter = kube::runtime::events::Reporter {
        controller: format!("{}-est", crate::names::MANAGER),
        instance: std::env::var("POD_NAME").ok(),
    };
    Ok(Arc::new(EstState {
        endpoint: EstEndpoint {
            url: url.as_str().trim_end_matches('/').to_string(),
            trusted_ca_pem: ca.ca.cert_pem.clone(),
        },
        tls,
        trust: trust::TrustStore::new(client.clone(), options.watched.clone()),
        hubs: HubClients::new(client.clone(), counters, options.user_agent.clone()),
        events: EventPublisher::new(client.clone(), reporter),
        metrics,
        // A device renews two certificates a few times a year; 10 requests at once and one
        // more every 30 s leave room for retries and nothing for a loop.
        limiter: RateLimiter::new(10, std::time::Duration::from_secs(30)),
        client,
    }))
}

#[cfg(test)]
mod endpoint_tests {
    use super::EstEndpoint;

    #[test]
    fn the_port_devices_connect_to_defaults_to_https() {
        let endpoint = |url: &str| EstEndpoint {
            url: url.to_string(),
            trusted_ca_pem: String::new(),
        };
        let port = |url: &str| endpoint(url).port();
        assert_eq!(
            port("https://est.factory.example:8443/.well-known/est"),
            Some(8443)
        );
        assert_eq!(
            port("https://est.factory.example/.well-known/est"),
            Some(443)
        );
        assert_eq!(port("https://[::1]:9443/.well-known/est"), Some(9443));
        assert_eq!(port("not a url"), None);
    }
}
