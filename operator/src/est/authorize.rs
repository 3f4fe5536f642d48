//! Who may enroll what: a pure decision from the client certificate a device presented, the
//! name it asks for, and the trust the operator manages (each hierarchy's roots and devices).
//!
//! A client certificate is accepted when a root of some hierarchy signed it, it is valid now,
//! and its common name names a device of that hierarchy (`<id>` for a bootstrap or EST-issued
//! identity, `<id>.deviceca` for an EST-issued edge CA). That device may then ask for exactly
//! two names: its identity (`<id>`) and, for an Edge device, its edge CA (`<id>.deviceca`).

use std::collections::BTreeMap;

use jiff::Timestamp;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pki::edge_ca_common_name;

/// A hierarchy as the EST server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HierarchyTrust {
    pub namespace: String,
    pub name: String,
    /// DER of every root a client certificate of this hierarchy may chain to (the current root
    /// first; an older one while a rotation still has certificates under it).
    pub roots: Vec<Vec<u8>>,
    /// The hierarchy's devices: id -> whether it is an Edge device.
    pub devices: BTreeMap<String, bool>,
}

/// The certificate profile a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// The device's edge CA: CA:TRUE pathlen 0, CN `<id>.deviceca`.
    EdgeCa,
    /// The device's identity: clientAuth, CN = device id.
    Identity,
}

impl Profile {
    pub fn label(self) -> &'static str {
        match self {
            Self::EdgeCa => "edge-ca",
            Self::Identity => "identity",
        }
    }
}

/// Who the client is, once its certificate is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// Index into the hierarchies given to [`authenticate`].
    pub hierarchy: usize,
    pub device_id: String,
    /// SHA-256 thumbprint (upper-case hex) of the certificate the client presented.
    pub thumbprint: String,
}

/// Why a request is refused. [`Refusal::reason`] is the metric label and Event reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no TLS client certificate; present the bootstrap identity certificate of the device's bundle or its EST-issued certificate"
    )]
    NoClientCertificate,
    #[error("the client certificate cannot be read: {0}")]
    UnreadableCertificate(String),
    #[error(
        "the client certificate {subject:?} was not issued by the root CA of any hierarchy this operator manages"
    )]
    UnknownIssuer { subject: String },
    #[error("the client certificate {subject:?} expired at {not_after}; install a new bundle")]
    Expired {
        subject: String,
        not_after: Timestamp,
    },
    #[error("the client certificate {subject:?} is not valid before {not_before}")]
    NotYetValid {
        subject: String,
        not_before: Timestamp,
    },
    #[error(
        "the client certificate {subject:?} names no device of hierarchy {hierarchy}; its CN must be a device id or <id>.deviceca"
    )]
    UnknownDevice { subject: String, hierarchy: String },
    #[error(
        "device {device:?} asked for a certificate named {requested:?}; it may only enroll {device:?} (identity) or \"{device}.deviceca\" (edge CA, Edge devices)"
    )]
    ForeignName { device: String, requested: String },
    #[error("the certificate request is malformed: {0}")]
    BadRequest(String),
    #[error("device {device:?} sent too many requests; retry later")]
    RateLimited { device: String },
}

impl Refusal {
    /// Short label for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no-client-certificate",
            Self::UnreadableCertificate(_) => "unreadable-certificate",
            Self::UnknownIssuer { .. } => "unknown-issuer",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not-yet-valid",
            Self::UnknownDevice { .. } => "unknown-device",
            Self::ForeignName { .. } => "foreign-name",
            Self::BadRequest(_) => "bad-request",
            Self::RateLimited { .. } => "rate-limited",
        }
    }

    /// HTTP status: 401 without a certificate, 400 for a bad request, 429 when rate-limited,
    /// 403 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoClientCertificate => 401,
            Self::BadRequest(_) => 400,
            Self::RateLimited { .. } => 429,
            _ => 403,
        }
    }
}

/// Accepts or refuses the client certificate `presented` (DER of the leaf) at `now`.
pub fn authenticate(
    presented: Option<&[u8]>,
    hierarchies: &[HierarchyTrust],
    now: Timestamp,
) -> Result<Client, Refusal> {
    let der = presented.ok_or(Refusal::NoClientCertificate)?;
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| Refusal::UnreadableCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Refusal::UnreadableCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    let subject = cert.subject().to_string();
    let hierarchy = hierarchies
        .iter()
        .position(|h| h.roots.iter().any(|root| signed_by(&cert, root)))
        .ok_or_else(|| Refusal::UnknownIssuer {
            subject: subject.clone(),
        })?;
    let validity = cert.validity();
    let not_before = Timestamp::from_second(validity.not_before.timestamp())
        .map_err(|e| Refusal::UnreadableCertificate(e.to_string()))?;
    let not_after = Timestamp::from_second(validity.not_after.timestamp())
        .map_err(|e| Refusal::UnreadableCertificate(e.to_string()))?;
    if now < not_before {
        return Err(Refusal::NotYetValid {
            subject,
            not_before,
        });
    }
    if now >= not_after {
        return Err(Refusal::Expired { subject, not_after });
    }
    let trust = &hierarchies[hierarchy];
    let unknown = || Refusal::UnknownDevice {
        subject: subject.clone(),
        hierarchy: format!("{}/{}", trust.namespace, trust.name),
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(unknown)?;
    let device_id = device_of_name(trust, cn).ok_or_else(unknown)?;
    Ok(Client {
        hierarchy,
        device_id,
        thumbprint: crate::pki::sha256_thumbprint(der),
    })
}

/// The hierarchy whose root signed `der`, when one did (to tell that hierarchy about a refusal).
pub fn hierarchy_of(der: &[u8], hierarchies: &[HierarchyTrust]) -> Option<usize> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    hierarchies
        .iter()
        .position(|h| h.roots.iter().any(|root| signed_by(&cert, root)))
}

/// The profile `client` gets for a request whose subject CN is `requested`.
pub fn authorize(
    client: &Client,
    hierarchies: &[HierarchyTrust],
    requested: &str,
) -> Result<Profile, Refusal> {
    let trust = &hierarchies[client.hierarchy];
    let edge = trust
        .devices
        .get(&client.device_id)
        .copied()
        .unwrap_or(false);
    if requested == client.device_id {
        Ok(Profile::Identity)
    } else if edge && requested == edge_ca_common_name(&client.device_id) {
        Ok(Profile::EdgeCa)
    } else {
        Err(Refusal::ForeignName {
            device: client.device_id.clone(),
            requested: requested.to_string(),
        })
    }
}

/// The device a certificate's common name stands for: the id itself, or an Edge device's
/// `<id>.deviceca`.
fn device_of_name(trust: &HierarchyTrust, cn: &str) -> Option<String> {
    if trust.devices.contains_key(cn) {
        return Some(cn.to_string());
    }
    let id = cn.strip_suffix(".deviceca")?;
    (trust.devices.get(id) == Some(&true)).then(|| id.to_string())
}

/// Whether `root` (DER) issued `cert`: names match and the signature verifies.
fn signed_by(cert: &X509Certificate<'_>, root: &[u8]) -> bool {
    let Ok((_, root)) = X509Certificate::from_der(root) else {
        return false;
    };
    cert.issuer().as_raw() == root.subject().as_raw()
        && cert.verify_signature(Some(root.public_key())).is_ok()
}

#[cfg(test)]
mod tests;
