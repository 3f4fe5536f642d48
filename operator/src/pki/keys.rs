//! Private keys: generation for each [`KeyAlgorithm`], a holder that never prints its contents,
//! and a bounded pool that keeps the CPU-heavy work off the async runtime.

use std::fmt;
use std::sync::Arc;

use rcgen::KeyPair;
use tokio::sync::Semaphore;

use super::error::PkiError;
use super::pem_text::{KeyBlock, private_key_block, with_trailing_newline};
use crate::api::KeyAlgorithm;

/// A private key in PEM form (PKCS#8 when the operator generated it; whatever unencrypted form
/// the user supplied otherwise). `Debug` prints no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    pem: String,
}

impl PrivateKey {
    /// Wraps PEM text whose framing the caller already checked.
    pub(crate) fn from_checked_pem(pem: String) -> Self {
        Self { pem }
    }

    /// Wraps an unencrypted PEM private key. Only the PEM framing is checked here (a key block
    /// exists and is not encrypted); the key itself is parsed when it signs. Errors carry no key
    /// material.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let unusable = |reason: String| PkiError::UnusableKey {
            what: "the supplied key".into(),
            reason,
        };
        match private_key_block(pem) {
            KeyBlock::Plain { .. } => Ok(Self {
                pem: with_trailing_newline(pem),
            }),
            KeyBlock::Encrypted { marker } => Err(unusable(format!("it is encrypted ({marker})"))),
            KeyBlock::Missing => Err(unusable("no PEM private key block".into())),
            KeyBlock::Malformed { reason } => Err(unusable(reason)),
        }
    }

    /// The PEM text, for writing into a Secret or a device bundle. Never log it.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Parses the key for signing. `what` names the key's owner in the error.
    pub(crate) fn key_pair(&self, what: &str) -> Result<KeyPair, PkiError> {
        let unusable = |reason: String| PkiError::UnusableKey {
            what: what.to_string(),
            reason,
        };
        match private_key_block(&self.pem) {
            KeyBlock::Plain { der, .. } => KeyPair::try_from(der.as_slice())
                .map_err(|e| unusable(format!("not a supported key ({e})"))),
            KeyBlock::Encrypted { marker } => Err(unusable(format!("it is encrypted ({marker})"))),
            KeyBlock::Missing => Err(unusable("no PEM private key block".into())),
            KeyBlock::Malformed { reason } => Err(unusable(reason)),
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Generates a new key for `algorithm`. Blocking and CPU-heavy for RSA (RSA-4096 takes seconds);
/// async code uses [`CryptoPool::generate_key`].
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<PrivateKey, PkiError> {
    let generated = match algorithm {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
        }
    };
    let key_pair = generated.map_err(|e| PkiError::KeyGeneration {
        algorithm,
        reason: e.to_string(),
    })?;
    Ok(PrivateKey {
        pem: with_trailing_newline(&key_pair.serialize_pem()),
    })
}

/// Runs key generation and signing on tokio's blocking threads, at most `parallelism` at a time,
/// so a hierarchy of 1,000 RSA-4096 devices neither stalls the reconcile loop nor starves the
/// other work on the machine. Cheap to clone; clones share the limit.
#[derive(Clone, Debug)]
pub struct CryptoPool {
    permits: Arc<Semaphore>,
    parallelism: usize,
}

impl CryptoPool {
    /// A pool running at most `parallelism` jobs at once (at least one).
    pub fn new(parallelism: usize) -> Self {
        let parallelism = parallelism.max(1);
        Self {
            permits: Arc::new(Semaphore::new(parallelism)),
            parallelism,
        }
    }

    /// A pool as wide as the machine's available cores.
    pub fn with_available_parallelism() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How many jobs run at once.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }

    /// Runs `work` on a blocking thread once a slot is free.
    pub async fn run<T, F>(&self, work: F) -> Result<T, PkiError>
    where
        F: FnOnce() -> Result<T, PkiError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| PkiError::Worker("the certificate worker pool was closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| PkiError::Worker(e.to_string()))?
    }

    /// [`generate_key`] on the pool.
    pub async fn generate_key(&self, algorithm: KeyAlgorithm) -> Result<PrivateKey, PkiError> {
        self.run(move || generate_key(algorithm)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
        assert!(key.pem().contains("BEGIN PRIVATE KEY"));
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains(key.pem().lines().nth(1).unwrap()));
    }

    #[test]
    fn from_pem_rejects_encrypted_and_missing_keys_without_echoing_them() {
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nU0VDUkVU\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = PrivateKey::from_pem(encrypted).unwrap_err().to_string();
        assert!(err.contains("encrypted"), "{err}");
        assert!(!err.contains("U0VDUkVU"), "{err}");
        let err = PrivateKey::from_pem("hello").unwrap_err().to_string();
        assert!(err.contains("no PEM private key block"), "{err}");
    }

    #[test]
    fn a_placeholder_key_is_accepted_but_cannot_sign() {
        let key = PrivateKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nUExBQ0VIT0xERVI=\n-----END PRIVATE KEY-----",
        )
        .unwrap();
        assert!(key.pem().ends_with("-----END PRIVATE KEY-----\n"));
        let err = key.key_pair("device x edge CA").unwrap_err().to_string();
        assert!(err.contains("device x edge CA"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pool_never_runs_more_jobs_than_its_parallelism() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = CryptoPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..8).map(|_| {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Real work, so jobs overlap when the pool lets them.
                    let key = generate_key(KeyAlgorithm::EcdsaP256);
                    running.fetch_sub(1, Ordering::SeqCst);
                    key
                })
                .await
            }
        });
        let keys = futures::future::join_all(jobs).await;
        assert!(keys.iter().all(Result::is_ok));
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "peak {peak}");
    }

    #[tokio::test]
    async fn pool_runs_jobs_and_reports_their_errors() {
        let pool = CryptoPool::new(0);
        assert_eq!(pool.parallelism(), 1);
        let key = pool.generate_key(KeyAlgorithm::EcdsaP256).await.unwrap();
        assert!(key.key_pair("k").is_ok());
        let err = pool
            .run(|| -> Result<(), PkiError> { Err(PkiError::Worker("boom".into())) })
            .await
            .unwrap_err();
        assert_eq!(err, PkiError::Worker("boom".into()));
    }
}
