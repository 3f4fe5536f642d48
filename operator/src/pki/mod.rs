//! The certificate chain of a hierarchy (docs/architecture.md, "Certificates and bundles").
//!
//! - a root CA, imported from a user's Secret ([`import_root_ca`]) or generated once
//!   ([`generate_root_ca`]);
//! - per Edge device an edge CA signed by the root ([`issue_edge_ca`]);
//! - with X509 authentication an identity certificate whose SHA-256 thumbprint is registered in
//!   the hub ([`issue_identity_certificate`], [`sha256_thumbprint`], [`rotate_thumbprints`]);
//! - the TLS server certificate an edge device's edgeHub presents to its children
//!   ([`issue_server_certificate`]; the runtime does this on a real device, tests and the
//!   simulated devices do it here);
//! - renewal arithmetic ([`renewal_time`], [`needs_renewal`]).
//!
//! Everything that depends on the clock takes `now`, so renewal is testable. Issuing functions
//! take the subject's key as an argument: key generation is the slow part (RSA-4096 takes
//! seconds) and runs on [`CryptoPool`], off the async runtime.
//!
//! Private keys live in [`PrivateKey`], whose `Debug` prints no key material, and no error of
//! this module carries key material.

mod error;
mod inspect;
mod issue;
mod keys;
mod pem_text;
mod renewal;
mod root;
mod thumbprint;

pub use error::{PkiError, RootCaError};
pub use inspect::{CertificateInfo, certificate_ders, inspect_certificate_pem, sha256_thumbprint};
pub use issue::{
    CLOCK_SKEW_ALLOWANCE, IdentitySigner, IssuedCertificate, MAX_COMMON_NAME, edge_ca_common_name,
    issue_edge_ca, issue_identity_certificate, issue_server_certificate,
};
pub(crate) use issue::{random_serial, validity_window};
pub use keys::{CryptoPool, PrivateKey, generate_key};
pub use renewal::{needs_renewal, renewal_time};
pub use root::{DEFAULT_ROOT_VALIDITY, RootCa, generate_root_ca, import_root_ca};
pub use thumbprint::{ThumbprintPair, rotate_thumbprints};
