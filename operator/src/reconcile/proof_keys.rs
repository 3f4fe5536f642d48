//! The key behind ownership proofs (`ownership::ProofKey`): one per namespace, in the Secret
//! [`PROOF_KEY_SECRET`], made by the operator the first time a hierarchy there needs it. It has no
//! owner, so it outlives every hierarchy: a hierarchy deleted with `deletion: Detach` and created
//! again proves its devices with the same key. Observe (read), a pure decision, apply (create);
//! a key once read is kept in memory, so a namespace being deleted (its Secrets go first) still
//! has it.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rand::RngCore;

use crate::names::{COMPONENT_LABEL, MANAGED_BY_LABEL, MANAGER};
use crate::ownership::{PROOF_KEY_BYTES, ProofKey};

/// Name of the Secret holding a namespace's proof key.
pub const PROOF_KEY_SECRET: &str = "edge-hierarchy-ownership-key";
/// Its data key.
pub const PROOF_KEY_FIELD: &str = "key";
/// [`COMPONENT_LABEL`] of the Secret.
const PROOF_KEY_COMPONENT: &str = "ownership-key";

/// Why a namespace's key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProofKeyError {
    #[error(
        "Secret {namespace}/{PROOF_KEY_SECRET} holds no usable ownership key ({detail}); restore it \
         from a backup, or delete the Secret so a new key is made (devices in a hierarchy's status \
         then get new proofs; others tagged under the lost key become Conflicts, never deleted)"
    )]
    Invalid { namespace: String, detail: String },
    #[error("could not read or create Secret {namespace}/{PROOF_KEY_SECRET}: {source}")]
    Kube {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// What to do with a namespace's key Secret as read.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyPlan {
    Use(ProofKey),
    Create,
    Invalid(String),
}

/// Decides from the Secret as read (pure).
pub fn plan(secret: Option<&Secret>) -> KeyPlan {
    let Some(secret) = secret else {
        return KeyPlan::Create;
    };
    match secret
        .data
        .as_ref()
        .and_then(|d| d.get(PROOF_KEY_FIELD))
        .map(|v| v.0.as_slice())
    {
        None => KeyPlan::Invalid(format!("it has no {PROOF_KEY_FIELD:?} entry")),
        Some(key) if key.len() < PROOF_KEY_BYTES => KeyPlan::Invalid(format!(
            "{PROOF_KEY_FIELD:?} has {} bytes, at least {PROOF_KEY_BYTES} are needed",
            key.len()
        )),
        Some(key) => KeyPlan::Use(ProofKey::new(key)),
    }
}

/// The Secret holding a new random key.
fn new_key_secret() -> Secret {
    let mut key = vec![0u8; PROOF_KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    Secret {
        metadata: ObjectMeta {
            name: Some(PROOF_KEY_SECRET.into()),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
                    (COMPONENT_LABEL.to_string(), PROOF_KEY_COMPONENT.to_string()),
                ]
                .into(),
            ),
            annotations: Some(
                [(
                    "edgehierarchy.dev/purpose".to_string(),
                    "Signs the ownership tags the operator writes on device twins; keep it (and \
                     back it up) as long as any hierarchy of this namespace has devices."
                        .to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(PROOF_KEY_FIELD.to_string(), ByteString(key))].into()),
        ..Secret::default()
    }
}

/// The namespaces' keys, read once each.
pub struct ProofKeys {
    client: kube::Client,
    known: Mutex<HashMap<String, ProofKey>>,
}

impl ProofKeys {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            known: Mutex::default(),
        }
    }

    fn remembered(&self, namespace: &str) -> Option<ProofKey> {
        self.known
            .lock()
            .expect("proof keys")
            .get(namespace)
            .cloned()
    }

    fn remember(&self, namespace: &str, key: &ProofKey) {
        self.known
            .lock()
            .expect("proof keys")
            .insert(namespace.to_string(), key.clone());
    }

    /// The namespace's key, made when it has none yet.
    pub async fn get_or_create(&self, namespace: &str) -> Result<ProofKey, ProofKeyError> {
        if let Some(key) = self.remembered(namespace) {
            return Ok(key);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let kube = |source| ProofKeyError::Kube {
            namespace: namespace.to_string(),
            source,
        };
        let mut secret = api.get_opt(PROOF_KEY_SECRET).await.map_err(kube)?;
        if plan(secret.as_ref()) == KeyPlan::Create {
            secret = Some(
                match api.create(&PostParams::default(), &new_key_secret()).await {
                    Ok(created) => created,
                    // Another reconcile of this namespace made it first: use that one.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        api.get(PROOF_KEY_SECRET).await.map_err(kube)?
                    }
                    Err(e) => return Err(kube(e)),
                },
            );
        }
        match plan(secret.as_ref()) {
            KeyPlan::Use(key) => {
                self.remember(namespace, &key);
                Ok(key)
            }
            KeyPlan::Invalid(detail) => Err(ProofKeyError::Invalid {
                namespace: namespace.to_string(),
                detail,
            }),
            KeyPlan::Create => unreachable!("a missing Secret was created above"),
        }
    }

    /// The namespace's key if there is one; never makes one (a hierarchy being deleted has no
    /// use for a new key, and a terminating namespace takes no new Secrets).
    pub async fn existing(&self, namespace: &str) -> Option<ProofKey> {
        if let Some(key) = self.remembered(namespace) {
            return Some(key);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        match plan(api.get_opt(PROOF_KEY_SECRET).await.ok().flatten().as_ref()) {
            KeyPlan::Use(key) => {
                self.remember(namespace, &key);
                Some(key)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(bytes: &[u8]) -> Secret {
        Secret {
            data: Some([(PROOF_KEY_FIELD.to_string(), ByteString(bytes.to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[test]
    fn a_missing_secret_is_created_a_good_one_used_a_bad_one_refused() {
        assert_eq!(plan(None), KeyPlan::Create);
        let key = [7u8; PROOF_KEY_BYTES];
        assert_eq!(
            plan(Some(&with_key(&key))),
            KeyPlan::Use(ProofKey::new(&key))
        );
        assert!(
            matches!(plan(Some(&with_key(b"short"))), KeyPlan::Invalid(d) if d.contains("5 bytes"))
        );
        assert!(
            matches!(plan(Some(&Secret::default())), KeyPlan::Invalid(d) if d.contains("no \"key\""))
        );
    }

    #[test]
    fn a_new_secret_holds_a_random_key_of_full_length_and_no_owner() {
        let (a, b) = (new_key_secret(), new_key_secret());
        let key = |s: &Secret| s.data.as_ref().unwrap()[PROOF_KEY_FIELD].0.clone();
        assert_eq!(key(&a).len(), PROOF_KEY_BYTES);
        assert_ne!(key(&a), key(&b));
        assert!(a.metadata.owner_references.is_none());
        assert!(matches!(plan(Some(&a)), KeyPlan::Use(_)));
    }

    #[test]
    fn the_key_is_never_printed() {
        let key = ProofKey::new(b"a secret that must not be shown");
        assert_eq!(format!("{key:?}"), "ProofKey(..)");
    }
}
