//! Errors of the certificate chain. None of them carries key material: reasons come from
//! parsers and signers that report what is wrong, never the bytes.

use crate::api::KeyAlgorithm;

/// Why issuing or reading a certificate failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PkiError {
    /// The crypto library could not make a key.
    #[error("generating a {algorithm:?} key failed: {reason}")]
    KeyGeneration {
        algorithm: KeyAlgorithm,
        reason: String,
    },
    /// A stored private key could not be used.
    #[error(
        "the private key of {what} cannot be used: {reason}; re-issue the certificate (delete its Secret) or fix the key"
    )]
    UnusableKey { what: String, reason: String },
    /// A stored certificate could not be read.
    #[error("the certificate of {what} cannot be read: {reason}")]
    UnreadableCertificate { what: String, reason: String },
    /// X.509 allows at most 64 characters in a common name.
    #[error(
        "common name {common_name:?} has {length} characters, X.509 allows at most 64; device ids become `<id>.deviceca`, so use a device id of at most 55 characters"
    )]
    CommonNameTooLong { common_name: String, length: usize },
    /// A hostname that cannot go into a certificate's subjectAltName.
    #[error(
        "hostname {hostname:?} is neither an IP address nor a DNS name (ASCII letters, digits, '-', '.'); fix the device's hostname"
    )]
    InvalidHostname { hostname: String },
    /// The certificate could not be built or signed.
    #[error("signing the certificate {subject:?} failed: {reason}")]
    Signing { subject: String, reason: String },
    /// The issuer's subject name has a form the signer cannot reproduce exactly, so the issued
    /// certificate would not chain to it.
    #[error(
        "the issuer {issuer:?} has a subject name the operator cannot reproduce byte for byte ({reason}); use a root CA whose subject has one attribute per RDN"
    )]
    IssuerNameMismatch { issuer: String, reason: String },
    /// The blocking worker running key generation or signing died.
    #[error("the certificate worker failed: {0}")]
    Worker(String),
}

/// Why a root CA (a user's `kubernetes.io/tls` Secret, or the operator's own generated one) cannot
/// be used. The caller prefixes the Secret's name; each message names the field and the fix.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RootCaError {
    #[error(
        "tls.crt holds no PEM certificate (no -----BEGIN CERTIFICATE----- block); store the root CA certificate in PEM form"
    )]
    MissingCertificate,
    #[error("tls.crt is not a readable X.509 certificate: {reason}")]
    MalformedCertificate { reason: String },
    #[error(
        "tls.key holds no PEM private key (no -----BEGIN ... PRIVATE KEY----- block); store the root CA's unencrypted private key in PEM form"
    )]
    MissingKey,
    #[error(
        "tls.key is encrypted ({marker}); the operator has no passphrase. Store the decrypted key, for example from `openssl pkey -in encrypted.pem -out key.pem`"
    )]
    EncryptedKey { marker: String },
    #[error(
        "tls.key is not a readable private key ({reason}); store a PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key in PEM form"
    )]
    MalformedKey { reason: String },
    #[error(
        "tls.crt ({subject}) is not a CA certificate: {detail}; use a certificate with basicConstraints CA:TRUE and keyUsage keyCertSign"
    )]
    NotCa { subject: String, detail: String },
    #[error(
        "tls.crt ({subject}) has pathLenConstraint 0, which forbids the per-device edge CAs below it; use a root CA without a path length limit or with one of at least 1"
    )]
    PathLengthTooShort { subject: String },
    #[error(
        "tls.key does not belong to tls.crt ({subject}): the public keys differ; store the key the certificate was issued for"
    )]
    KeyMismatch { subject: String },
    #[error("tls.crt ({subject}) expired at {not_after}; store a valid root CA")]
    Expired { subject: String, not_after: String },
    #[error(
        "tls.crt ({subject}) is not valid before {not_before}; check the clock or store a root CA that is already valid"
    )]
    NotYetValid { subject: String, not_before: String },
    #[error(
        "tls.crt ({subject}) uses {algorithm}, which the operator does not sign with; use RSA (2048 to 8192 bits) or ECDSA P-256/P-384"
    )]
    UnsupportedAlgorithm { subject: String, algorithm: String },
    #[error(
        "tls.crt ({subject}) has a subject name the operator cannot reproduce in issued certificates ({reason}); use a root CA whose subject has one attribute per RDN and no repeated attribute types"
    )]
    UnsupportedSubject { subject: String, reason: String },
}
