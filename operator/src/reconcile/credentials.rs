//! Hub credentials: the connection string (and optional extra CA) read from the user's Secrets,
//! turned into a [`HubClient`]. Clients are cached per credentials so connections are reused;
//! each hierarchy gets the cached client with a share of its own (`HubLimiters::join`): its own
//! `rateLimits` pace its own calls, and the hub's budget, shared by every hierarchy on the hub,
//! follows the declarations of all of them (docs/tenancy.md). A changed `rateLimits` takes
//! effect at the hierarchy's next reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::EdgeHierarchy;
use crate::iothub::{
    ClientOptions, ConnectionString, HubCallCounters, HubClient, HubLimiters, RateLimits,
};

/// Why no hub client could be made. Messages name the Secret and key, never their content.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "Secret {secret:?} (spec.iotHub.{field}) does not exist in namespace {namespace:?}; create it or correct the name"
    )]
    MissingSecret {
        namespace: String,
        secret: String,
        field: &'static str,
    },
    #[error(
        "Secret {secret:?} has no key {key:?} (spec.iotHub.{field}); add the key or correct spec.iotHub.{field}.key"
    )]
    MissingKey {
        secret: String,
        key: String,
        field: &'static str,
    },
    #[error(
        "Secret {secret:?} key {key:?} is not a valid IoT Hub connection string: {detail}; expected HostName=<hub>.azure-devices.net;SharedAccessKeyName=<policy>;SharedAccessKey=<key>"
    )]
    Malformed {
        secret: String,
        key: String,
        detail: String,
    },
    #[error(
        "the hub rejected the credentials in Secret {secret:?} key {key:?}: {detail}; check that the policy's key is current and that it has registry read/write and service connect permissions"
    )]
    Rejected {
        secret: String,
        key: String,
        detail: String,
    },
    #[error(
        "Secret {secret:?} key {key:?} (spec.iotHub.caSecretRef) is not a usable PEM CA certificate: {detail}"
    )]
    BadCa {
        secret: String,
        key: String,
        detail: String,
    },
    #[error("could not read Secret {secret:?}: {detail}")]
    Unreadable {
        secret: String,
        detail: String,
        /// The API server failed or could not be reached (retry soon), rather than refused the
        /// read (a person must grant it).
        transient: bool,
    },
    #[error(
        "cannot delete the hierarchy's devices from the hub: {detail}. Fix the hub Secret, or set spec.policy.deletion: Detach to leave the devices in the hub and let the hierarchy go"
    )]
    Cleanup { detail: String },
}

/// Whether a hierarchy names `secret` as its connection string, hub CA, root CA or a registry
/// credentials Secret (a change to any of them must take effect at once).
pub fn refers_to_secret(hierarchy: &EdgeHierarchy, secret: &str) -> bool {
    if super::registry_auth::secret_names(&hierarchy.spec).contains(secret) {
        return true;
    }
    let hub = &hierarchy.spec.iot_hub;
    if hierarchy
        .spec
        .certificates
        .root_ca
        .as_ref()
        .is_some_and(|r| r.secret_ref.name == secret)
    {
        return true;
    }
    hub.connection_string_secret_ref.name == secret
        || hub.ca_secret_ref.as_ref().is_some_and(|r| r.name == secret)
}

/// Makes and caches hub clients.
pub struct HubClients {
    kube: Client,
    counters: Arc<HubCallCounters>,
    /// `User-Agent` of every hub call, so the hub's logs tell which replica wrote.
    user_agent: String,
    cache: Mutex<HashMap<String, HubClient>>,
}

impl HubClients {
    pub fn new(kube: Client, counters: Arc<HubCallCounters>, user_agent: String) -> Self {
        Self {
            kube,
            counters,
            user_agent,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Calls made to every hub, for metrics and benchmarks.
    pub fn counters(&self) -> &Arc<HubCallCounters> {
        &self.counters
    }

    /// A client for the hierarchy's hub, from its Secrets as they are now.
    pub async fn client_for(
        &self,
        hierarchy: &EdgeHierarchy,
    ) -> Result<HubClient, CredentialError> {
        let namespace = hierarchy.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), &namespace);
        let hub = &hierarchy.spec.iot_hub;
        let conn_ref = &hub.connection_string_secret_ref;
        let text = read_key(
            &secrets,
            &namespace,
            &conn_ref.name,
            &conn_ref.key,
            "connectionStringSecretRef",
        )
        .await?;
        let text = String::from_utf8(text).map_err(|_| CredentialError::Malformed {
            secret: conn_ref.name.clone(),
            key: conn_ref.key.clone(),
            detail: "the value is not UTF-8 text".into(),
        })?;
        let connection =
            ConnectionString::parse(text.trim()).map_err(|e| CredentialError::Malformed {
                secret: conn_ref.name.clone(),
                key: conn_ref.key.clone(),
                detail: e.to_string(),
            })?;
        let ca = match &hub.ca_secret_ref {
            Some(r) => Some(read_key(&secrets, &namespace, &r.name, &r.key, "caSecretRef").await?),
            None => None,
        };
        let limits = hub
            .rate_limits
            .as_ref()
            .map(RateLimits::from)
            .unwrap_or_default();
        let share = HubLimiters::global().join(
            connection.host_name(),
            &format!("{namespace}/{}", hierarchy.name_any()),
            &limits,
            declaration_ttl(&hierarchy.spec.policy.resync_interval),
        );
        let cache_key = fingerprint(&text, ca.as_deref());
        if let Some(client) = self.cache.lock().expect("cache lock").get(&cache_key) {
            return Ok(client.with_share(share));
        }
        let limiter = share.hub().shared().clone();
        let options = ClientOptions {
            counters: Some(self.counters.clone()),
            user_agent: self.user_agent.clone(),
            ..ClientOptions::default()
        };
        let client =
            HubClient::new(connection, ca.as_deref(), limiter, options).map_err(|e| match &hub
                .ca_secret_ref
            {
                Some(r) => CredentialError::BadCa {
                    secret: r.name.clone(),
                    key: r.key.clone(),
                    detail: e.to_string(),
                },
                None => CredentialError::Malformed {
                    secret: conn_ref.name.clone(),
                    key: conn_ref.key.clone(),
                    detail: e.to_string(),
                },
            })?;
        let mut cache = self.cache.lock().expect("cache lock");
        // Old credentials' clients are useless once rotated; keep the cache small.
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(cache_key, client.clone());
        Ok(client.with_share(share))
    }
}

/// How long a hierarchy's `rateLimits` count in its hub's budget after its last reconcile:
/// two resync intervals, at least ten minutes, so a hierarchy that was deleted or moved to
/// another hub stops counting, and one that resyncs rarely keeps counting between resyncs.
fn declaration_ttl(resync_interval: &str) -> Duration {
    let resync =
        crate::api::duration::parse_duration(resync_interval).unwrap_or(Duration::from_secs(300));
    (resync * 2).max(Duration::from_secs(600))
}

async fn read_key(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    key: &str,
    field: &'static str,
) -> Result<Vec<u8>, CredentialError> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| CredentialError::Unreadable {
            secret: name.into(),
            transient: !matches!(&e, kube::Error::Api(s) if matches!(s.code, 401 | 403)),
            detail: e.to_string(),
        })?
        .ok_or_else(|| CredentialError::MissingSecret {
            namespace: namespace.into(),
            secret: name.into(),
            field,
        })?;
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone());
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.clone().into_bytes());
    from_data
        .or(from_string)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CredentialError::MissingKey {
            secret: name.into(),
            key: key.into(),
            field,
        })
}

/// Cache key over the credentials (hashed: the cache never holds the key in clear as a map key).
fn fingerprint(connection: &str, ca: Option<&[u8]>) -> String {
    let mut hash = Sha256::new();
    hash.update(connection.as_bytes());
    hash.update([0]);
    hash.update(ca.unwrap_or_default());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_counts_for_two_resync_intervals_and_at_least_ten_minutes() {
        assert_eq!(declaration_ttl("5m"), Duration::from_secs(600));
        assert_eq!(declaration_ttl("10s"), Duration::from_secs(600));
        assert_eq!(declaration_ttl("1h"), Duration::from_secs(7200));
        assert_eq!(declaration_ttl("nonsense"), Duration::from_secs(600));
    }
}
