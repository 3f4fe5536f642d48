//! EST enrollment and renewal as aziot-certd does it (RFC 7030 `simpleenroll` and `cacerts`),
//! with its own parsing of config.toml's EST sections.
//!
//! A device whose config.toml has `[edge_ca] method = "est"` gets its edge CA from the EST
//! server instead of a file: first an EST identity (CN = device id) authenticated by the
//! bootstrap identity, then the edge CA authenticated by that identity; each is renewed with a
//! fresh `simpleenroll` (a new key when `rotate_key`) once its `threshold` is reached, retried
//! every `retry` after a failure. The chain kept is the enrolled certificate followed by the
//! `cacerts` certificates. With `[provisioning.authentication.identity_cert] method = "est"`
//! the EST identity is also the device's hub identity.
//!
//! [`Est::materialize`] hands the rest of the simulation a bundle as aziot-certd would leave
//! the device: config.toml's `[edge_ca]` (and X509 identity) pointing at the enrolled files. A
//! renewed edge CA changes those files, so the device is re-installed: every module restarts,
//! as every edge CA renewal restarts them on a real device.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use toml::{Table, Value};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::file_uri_name;
use crate::source::Bundle;

/// `threshold` / `retry`: aziot's renewal policy syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// `N%` (1 to 99) of the certificate's lifetime.
    Percent(u8),
    /// `Nmin`.
    Minutes(u64),
    /// `Nday`.
    Days(u64),
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let number = |digits: &str| {
            digits
                .parse::<u64>()
                .map_err(|_| format!("{text:?} is not N%, Nmin or Nday"))
        };
        if let Some(n) = text.strip_suffix('%') {
            let n = number(n)?;
            if !(1..=99).contains(&n) {
                return Err(format!("{text:?}: a percentage must be 1 to 99"));
            }
            return Ok(Self::Percent(n as u8));
        }
        if let Some(n) = text.strip_suffix("min") {
            return Ok(Self::Minutes(number(n)?));
        }
        if let Some(n) = text.strip_suffix("day") {
            return Ok(Self::Days(number(n)?));
        }
        Err(format!("{text:?} is not N%, Nmin or Nday"))
    }

    /// As a threshold: when a certificate valid from `not_before` to `not_after` is renewed (a
    /// share of its lifetime elapsed, or a time before its expiry).
    pub fn renew_at(self, not_before: Timestamp, not_after: Timestamp) -> Timestamp {
        let lifetime = not_after.as_second() - not_before.as_second();
        let second = match self {
            Self::Percent(p) => not_before.as_second() + lifetime * i64::from(p) / 100,
            Self::Minutes(m) => not_after.as_second() - m as i64 * 60,
            Self::Days(d) => not_after.as_second() - d as i64 * 86_400,
        };
        Timestamp::from_second(second.max(not_before.as_second())).unwrap_or(not_before)
    }

    /// As a retry period for a certificate with that lifetime.
    pub fn period(self, not_before: Timestamp, not_after: Timestamp) -> Duration {
        let lifetime = (not_after.as_second() - not_before.as_second()).max(1) as u64;
        let secs = match self {
            Self::Percent(p) => lifetime * u64::from(p) / 100,
            Self::Minutes(m) => m * 60,
            Self::Days(d) => d * 86_400,
        };
        Duration::from_secs(secs.max(1))
    }
}

/// The EST sections of a config.toml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EstSettings {
    /// `[cert_issuance.est.urls] default`.
    pub url: String,
    /// `trusted_certs` file URIs.
    pub trusted_certs: Vec<String>,
    /// `auth.bootstrap_identity_cert` / `_pk` file URIs.
    pub bootstrap_cert: String,
    pub bootstrap_pk: String,
    /// `[edge_ca] common_name`; aziot's default when absent is left to the server's rules.
    pub edge_ca_common_name: String,
    pub threshold: Policy,
    pub retry: Policy,
    pub rotate_key: bool,
    /// The hub identity is enrolled over EST (`identity_cert.method = "est"`).
    pub hub_identity: bool,
}

/// Reads the EST sections; `Ok(None)` when `[edge_ca]` does not use EST.
pub fn parse_est(config: &str, device_id: &str) -> Result<Option<EstSettings>, String> {
    let root: Table = config
        .parse()
        .map_err(|_| "config.toml is not valid TOML".to_string())?;
    let edge_ca = root.get("edge_ca").and_then(Value::as_table);
    if edge_ca
        .and_then(|t| t.get("method"))
        .and_then(Value::as_str)
        != Some("est")
    {
        return Ok(None);
    }
    let edge_ca = edge_ca.ok_or("[edge_ca] is missing")?;
    let est = root
        .get("cert_issuance")
        .and_then(|t| t.get("est"))
        .and_then(Value::as_table)
        .ok_or("[edge_ca] method = \"est\" needs [cert_issuance.est]")?;
    let string = |table: &Table, key: &str, path: &str| {
        table
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("{path} is missing"))
    };
    let url = est
        .get("urls")
        .and_then(Value::as_table)
        .ok_or("[cert_issuance.est.urls] is missing".to_string())
        .and_then(|u| string(u, "default", "cert_issuance.est.urls.default"))?;
    let trusted_certs = est
        .get("trusted_certs")
        .and_then(Value::as_array)
        .ok_or("cert_issuance.est.trusted_certs is missing")?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or("trusted_certs holds a non-string")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let auth = est
        .get("auth")
        .and_then(Value::as_table)
        .ok_or("[cert_issuance.est.auth] is missing")?;
    let renew = edge_ca.get("auto_renew").and_then(Value::as_table);
    let policy = |key: &str, default: &str| {
        Policy::parse(
            renew
                .and_then(|t| t.get(key))
                .and_then(Value::as_str)
                .unwrap_or(default),
        )
        .map_err(|e| format!("edge_ca.auto_renew.{key}: {e}"))
    };
    let hub_identity = root
        .get("provisioning")
        .and_then(|p| p.get("authentication"))
        .and_then(|a| a.get("identity_cert"))
        .and_then(|c| c.get("method"))
        .and_then(Value::as_str)
        == Some("est");
    Ok(Some(EstSettings {
        url: url.trim_end_matches('/').to_string(),
        trusted_certs,
        bootstrap_cert: string(
            auth,
            "bootstrap_identity_cert",
            "cert_issuance.est.auth.bootstrap_identity_cert",
        )?,
        bootstrap_pk: string(
            auth,
            "bootstrap_identity_pk",
            "cert_issuance.est.auth.bootstrap_identity_pk",
        )?,
        edge_ca_common_name: edge_ca
            .get("common_name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("{device_id}.deviceca"), str::to_string),
        threshold: policy("threshold", "80%")?,
        retry: policy("retry", "4%")?,
        rotate_key: renew
            .and_then(|t| t.get("rotate_key"))
            .and_then(Value::as_bool)
            .unwrap_or(true),
        hub_identity,
    }))
}

/// A certificate the device holds from EST.
#[derive(Clone)]
struct Held {
    /// Enrolled certificate followed by the cacerts certificates (PEM).
    chain_pem: String,
    key_pem: String,
    not_before: Timestamp,
    not_after: Timestamp,
}

impl Held {
    fn identity_pem(&self) -> String {
        format!("{}{}", self.chain_pem, self.key_pem)
    }
}

#[derive(Default)]
struct DeviceEst {
    identity: Option<Held>,
    edge_ca: Option<Held>,
    retry_after: Option<Timestamp>,
    last_error: Option<String>,
    edge_ca_renewals: u64,
    identity_renewals: u64,
}

/// What EST did for one device, for snapshots and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EstCounts {
    /// Edge CAs enrolled after the first.
    pub edge_ca_renewals: u64,
    /// EST identities enrolled after the first.
    pub identity_renewals: u64,
    /// notAfter of the edge CA held now.
    pub edge_ca_not_after: Option<Timestamp>,
    /// SHA-256 (upper-case hex) of the identity held now.
    pub identity_thumbprint: Option<String>,
    pub last_error: Option<String>,
}

/// The EST state of every simulated device.
#[derive(Default)]
pub struct Est {
    devices: Mutex<HashMap<String, DeviceEst>>,
}

impl Est {
    /// Counts per device id.
    pub fn counts(&self) -> BTreeMap<String, EstCounts> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    EstCounts {
                        edge_ca_renewals: d.edge_ca_renewals,
                        identity_renewals: d.identity_renewals,
                        edge_ca_not_after: d.edge_ca.as_ref().map(|h| h.not_after),
                        identity_thumbprint: d
                            .identity
                            .as_ref()
                            .and_then(|h| leaf_thumbprint(&h.chain_pem)),
                        last_error: d.last_error.clone(),
                    },
                )
            })
            .collect()
    }

    /// The bundle as the device sees it once aziot-certd has done its work: enrolls or renews
    /// what is due, then points config.toml at the certificates held. A bundle without EST
    /// comes back unchanged; one whose enrollment failed too (its config then names no edge
    /// CA file, and the checks say so).
    pub async fn materialize(&self, mut bundle: Bundle) -> Bundle {
        let Some(text) = bundle
            .files
            .get("config.toml")
            .and_then(|b| String::from_utf8(b.clone()).ok())
        else {
            return bundle;
        };
        let settings = match parse_est(&text, &bundle.device_id) {
            Ok(Some(s)) => s,
            Ok(None) => return bundle,
            Err(e) => {
                tracing::warn!("device {}: EST settings: {e}", bundle.device_id);
                return bundle;
            }
        };
        let id = bundle.device_id.clone();
        let (identity, edge_ca) = {
            let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            let d = devices.get(&id);
            (
                d.and_then(|d| d.identity.clone()),
                d.and_then(|d| d.edge_ca.clone()),
            )
        };
        let now = Timestamp::now();
        let retry_after = {
            let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            devices.get(&id).and_then(|d| d.retry_after)
        };
        let due = |held: &Option<Held>| {
            held.as_ref()
                .is_none_or(|h| now >= settings.threshold.renew_at(h.not_before, h.not_after))
        };
        let may_try = retry_after.is_none_or(|t| now >= t);
        let mut identity = identity;
        let mut edge_ca = edge_ca;
        if may_try && (due(&identity) || due(&edge_ca)) {
            match self
                .enroll_due(&bundle, &settings, &identity, &edge_ca, now)
                .await
            {
                Ok((new_identity, new_edge_ca)) => {
                    let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
                    let d = devices.entry(id.clone()).or_default();
                    if let Some(h) = new_identity {
                        if d.identity.is_some() {
                            d.identity_renewals += 1;
                        }
                        d.identity = Some(h);
                    }
                    if let Some(h) = new_edge_ca {
                        if d.edge_ca.is_some() {
                            d.edge_ca_renewals += 1;
                            tracing::info!(
                                "device {id}: edge CA renewed over EST; restarting all modules"
                            );
                        }
                        d.edge_ca = Some(h);
                    }
                    d.retry_after = None;
                    d.last_error = None;
                    identity = d.identity.clone();
                    edge_ca = d.edge_ca.clone();
                }
                Err(e) => {
                    tracing::warn!("device {id}: EST enrollment failed: {e}");
                    let period = edge_ca
                        .as_ref()
                        .map(|h| settings.retry.period(h.not_before, h.not_after))
                        .unwrap_or(Duration::from_secs(5));
                    let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
                    let d = devices.entry(id.clone()).or_default();
                    d.retry_after = now.checked_add(period).ok();
                    d.last_error = Some(e);
                }
            }
        }
        if let Some(edge_ca) = &edge_ca {
            let identity = identity.as_ref().filter(|_| settings.hub_identity);
            if let Some(config) = rewrite_config(&text, &id, identity.is_some()) {
                let slug = crate::config::device_slug(&id);
                bundle
                    .files
                    .insert("config.toml".into(), config.into_bytes());
                bundle.files.insert(
                    format!("{slug}.est-edge-ca.pem"),
                    edge_ca.chain_pem.clone().into_bytes(),
                );
                bundle.files.insert(
                    format!("{slug}.est-edge-ca.key.pem"),
                    edge_ca.key_pem.clone().into_bytes(),
                );
                if let Some(identity) = identity {
                    bundle.files.insert(
                        format!("{slug}.est-identity.pem"),
                        identity.chain_pem.clone().into_bytes(),
                    );
                    bundle.files.insert(
                        format!("{slug}.est-identity.key.pem"),
                        identity.key_pem.clone().into_bytes(),
                    );
                }
            }
        }
        bundle
    }

    /// Enrolls what is due: the EST identity (with the current one, or the bootstrap the first
    /// time or once it expired), then the edge CA (with the EST identity).
    async fn enroll_due(
        &self,
        bundle: &Bundle,
        settings: &EstSettings,
        identity: &Option<Held>,
        edge_ca: &Option<Held>,
        now: Timestamp,
    ) -> Result<(Option<Held>, Option<Held>), String> {
        let file = |uri: &str| -> Result<String, String> {
            let name = file_uri_name(uri).map_err(|e| format!("{uri}: {e}"))?;
            bundle
                .files
                .get(&name)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| format!("{uri} names {name}, which is not in the bundle"))
        };
        let mut trusted = String::new();
        for uri in &settings.trusted_certs {
            trusted.push_str(&file(uri)?);
        }
        let usable = identity.as_ref().filter(|h| now < h.not_after);
        let client_pem = match usable {
            Some(h) => h.identity_pem(),
            None => format!(
                "{}{}",
                file(&settings.bootstrap_cert)?,
                file(&settings.bootstrap_pk)?
            ),
        };
        let due = |held: &Option<Held>| {
            held.as_ref()
                .is_none_or(|h| now >= settings.threshold.renew_at(h.not_before, h.not_after))
        };
        let reuse_key = |held: &Option<Held>| {
            (!settings.rotate_key)
                .then(|| held.as_ref().map(|h| h.key_pem.clone()))
                .flatten()
        };
        let mut new_identity = None;
        let mut auth_pem = client_pem;
        if due(identity) {
            let held = enroll(
                settings,
                &trusted,
                &auth_pem,
                &bundle.device_id,
                reuse_key(identity),
            )
            .await?;
            auth_pem = held.identity_pem();
            new_identity = Some(held);
        }
        let new_edge_ca = if due(edge_ca) {
            Some(
                enroll(
                    settings,
                    &trusted,
                    &auth_pem,
                    &settings.edge_ca_common_name,
                    reuse_key(edge_ca),
                )
                .await?,
            )
        } else {
            None
        };
        Ok((new_identity, new_edge_ca))
    }
}

/// One `simpleenroll` for `common_name` plus `cacerts`, authenticated by `client_pem` (chain
/// and key), trusting only `trusted_pem`.
async fn enroll(
    settings: &EstSettings,
    trusted_pem: &str,
    client_pem: &str,
    common_name: &str,
    key_pem: Option<String>,
) -> Result<Held, String> {
    let key = match key_pem {
        Some(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("reusing the key: {e}"))?,
        None => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("generating a key: {e}"))?,
    };
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("building the CSR: {e}"))?;
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .identity(
            reqwest::Identity::from_pem(client_pem.as_bytes())
                .map_err(|e| format!("client certificate: {e}"))?,
        );
    let mut roots = Vec::new();
    for block in pem_blocks(trusted_pem) {
        roots.push(
            reqwest::Certificate::from_pem(block.as_bytes())
                .map_err(|e| format!("trusted_certs: {e}"))?,
        );
    }
    builder = builder.tls_certs_only(roots);
    let http = builder.build().map_err(|e| e.to_string())?;
    let enrolled = http
        .post(format!("{}/simpleenroll", settings.url))
        .header("content-type", "application/pkcs10")
        .header("content-transfer-encoding", "base64")
        .body(STANDARD.encode(csr.der()))
        .send()
        .await
        .map_err(|e| format!("simpleenroll: {e}"))?;
    let enrolled = pkcs7_body(enrolled, "simpleenroll").await?;
    let cacerts = http
        .get(format!("{}/cacerts", settings.url))
        .send()
        .await
        .map_err(|e| format!("cacerts: {e}"))?;
    let cacerts = pkcs7_body(cacerts, "cacerts").await?;
    let leaf = enrolled
        .first()
        .ok_or("simpleenroll returned no certificate")?;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| format!("the enrolled certificate: {e}"))?;
    let validity = cert.validity();
    let chain_pem: String = enrolled
        .iter()
        .take(1)
        .chain(cacerts.iter())
        .map(|der| pem_of(der))
        .collect();
    Ok(Held {
        chain_pem,
        key_pem: key.serialize_pem(),
        not_before: Timestamp::from_second(validity.not_before.timestamp())
            .map_err(|e| e.to_string())?,
        not_after: Timestamp::from_second(validity.not_after.timestamp())
            .map_err(|e| e.to_string())?,
    })
}

/// The certificates of a 200 `application/pkcs7-mime` answer (base64 DER, or PEM), as
/// aziot-certd requires it.
async fn pkcs7_body(response: reqwest::Response, what: &str) -> Result<Vec<Vec<u8>>, String> {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "{what}: {status} {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    if content_type != "application/pkcs7-mime"
        && !content_type.starts_with("application/pkcs7-mime;")
    {
        return Err(format!("{what}: unexpected content-type {content_type:?}"));
    }
    let text = String::from_utf8_lossy(&body);
    let base64: String = if text.contains("-----BEGIN") {
        text.lines().filter(|l| !l.starts_with("-----")).collect()
    } else {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    };
    let der = STANDARD
        .decode(base64)
        .map_err(|e| format!("{what}: body is not base64: {e}"))?;
    certificates_of_pkcs7(&der).map_err(|e| format!("{what}: {e}"))
}

/// The certificates of a degenerate PKCS#7 SignedData, read with a minimal DER walker:
/// ContentInfo { contentType, [0] SignedData { version, digestAlgorithms, encapContentInfo,
/// [0] certificates, ... } }.
fn certificates_of_pkcs7(der: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let (content_info, _) = tlv(der)?;
    let (_oid, rest) = tlv(content_info.value)?;
    let (explicit, _) = tlv(rest)?;
    let (signed_data, _) = tlv(explicit.value)?;
    let mut rest = signed_data.value;
    for _ in 0..3 {
        let (_, after) = tlv(rest)?;
        rest = after;
    }
    let (certificates, _) = tlv(rest)?;
    if certificates.tag != 0xA0 {
        return Err("the SignedData has no certificates".into());
    }
    let mut out = Vec::new();
    let mut rest = certificates.value;
    while !rest.is_empty() {
        let (cert, after) = tlv(rest)?;
        out.push(cert.raw.to_vec());
        rest = after;
    }
    Ok(out)
}

struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
    raw: &'a [u8],
}

fn tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let short = || "truncated DER".to_string();
    let tag = *input.first().ok_or_else(short)?;
    let first = *input.get(1).ok_or_else(short)?;
    let (length, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 {
            return Err("unsupported DER length".into());
        }
        let bytes = input.get(2..2 + count).ok_or_else(short)?;
        (
            bytes.iter().fold(0usize, |n, b| (n << 8) | *b as usize),
            2 + count,
        )
    };
    let end = header.checked_add(length).ok_or_else(short)?;
    let raw = input.get(..end).ok_or_else(short)?;
    Ok((
        Tlv {
            tag,
            value: &raw[header..],
            raw,
        },
        &input[end..],
    ))
}

/// config.toml with `[edge_ca]` (and, for an EST hub identity, the identity) pointing at the
/// files the device holds from EST.
fn rewrite_config(text: &str, device_id: &str, hub_identity: bool) -> Option<String> {
    let mut root: Table = text.parse().ok()?;
    let slug = crate::config::device_slug(device_id);
    let mut edge_ca = Table::new();
    edge_ca.insert(
        "cert".into(),
        Value::String(format!(
            "file:///var/lib/aziot/certd/certs/{slug}.est-edge-ca.pem"
        )),
    );
    edge_ca.insert(
        "pk".into(),
        Value::String(format!(
            "file:///var/lib/aziot/keyd/keys/{slug}.est-edge-ca.key.pem"
        )),
    );
    root.insert("edge_ca".into(), Value::Table(edge_ca));
    if hub_identity {
        let auth = root
            .get_mut("provisioning")?
            .as_table_mut()?
            .get_mut("authentication")?
            .as_table_mut()?;
        auth.insert(
            "identity_cert".into(),
            Value::String(format!(
                "file:///var/lib/aziot/certd/certs/{slug}.est-identity.pem"
            )),
        );
        auth.insert(
            "identity_pk".into(),
            Value::String(format!(
                "file:///var/lib/aziot/keyd/keys/{slug}.est-identity.key.pem"
            )),
        );
    }
    toml::to_string(&root).ok()
}

fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

fn pem_of(der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn leaf_thumbprint(chain_pem: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let block = pem_blocks(chain_pem).into_iter().next()?;
    let body: String = block.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body).ok()?;
    Some(
        Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_aziot_accepts_them() {
        assert_eq!(Policy::parse("80%"), Ok(Policy::Percent(80)));
        assert_eq!(Policy::parse("90min"), Ok(Policy::Minutes(90)));
        assert_eq!(Policy::parse("3day"), Ok(Policy::Days(3)));
        for bad in ["0%", "100%", "80", "5h", "min", "-1day"] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thresholds_and_retries_follow_the_lifetime() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let end: Timestamp = "2026-01-11T00:00:00Z".parse().unwrap();
        assert_eq!(
            Policy::Percent(80).renew_at(start, end),
            "2026-01-09T00:00:00Z".parse().unwrap()
        );
        assert_eq!(
            Policy::Days(1).renew_at(start, end),
            "2026-01-10T00:00:00Z".parse().unwrap()
        );
        assert_eq!(
            Policy::Minutes(30).renew_at(start, end),
            "2026-01-10T23:30:00Z".parse().unwrap()
        );
        // A threshold before notBefore means "renew now", never earlier than issuance.
        assert_eq!(Policy::Days(30).renew_at(start, end), start);
        assert_eq!(
            Policy::Percent(4).period(start, end),
            Duration::from_secs(34_560)
        );
        assert_eq!(
            Policy::Minutes(2).period(start, end),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn est_sections_are_read_and_plain_configs_ignored() {
        let config = r#"
hostname = "gw"
[provisioning]
source = "manual"
connection_string = "HostName=h;DeviceId=gw;SharedAccessKey=a2V5"
[cert_issuance.est]
trusted_certs = ["file:///var/aziot/certs/est.pem"]
[cert_issuance.est.auth]
bootstrap_identity_cert = "file:///var/aziot/certs/gw.b.pem"
bootstrap_identity_pk = "file:///var/aziot/secrets/gw.b.key.pem"
[cert_issuance.est.urls]
default = "https://127.0.0.1:1/.well-known/est/"
[edge_ca]
method = "est"
[edge_ca.auto_renew]
rotate_key = false
threshold = "50%"
retry = "1min"
"#;
        let s = parse_est(config, "gw").unwrap().unwrap();
        assert_eq!(s.url, "https://127.0.0.1:1/.well-known/est");
        assert_eq!(s.edge_ca_common_name, "gw.deviceca");
        assert_eq!(
            (s.threshold, s.retry, s.rotate_key),
            (Policy::Percent(50), Policy::Minutes(1), false)
        );
        assert!(!s.hub_identity);
        let plain = "[provisioning]\nsource = \"manual\"\n[edge_ca]\ncert = \"file:///a\"\npk = \"file:///b\"\n";
        assert_eq!(parse_est(plain, "gw"), Ok(None));
        let broken = config.replace(
            "[cert_issuance.est.urls]\ndefault = \"https://127.0.0.1:1/.well-known/est/\"\n",
            "",
        );
        assert!(parse_est(&broken, "gw").unwrap_err().contains("urls"));
    }

    #[test]
    fn a_rewritten_config_names_the_enrolled_files() {
        let config = "[provisioning]\nsource = \"manual\"\n[provisioning.authentication]\nmethod = \"x509\"\n[provisioning.authentication.identity_cert]\nmethod = \"est\"\n[edge_ca]\nmethod = \"est\"\n";
        let out: Table = rewrite_config(config, "gw", true).unwrap().parse().unwrap();
        assert_eq!(
            out["edge_ca"]["cert"].as_str(),
            Some("file:///var/lib/aziot/certd/certs/gw.est-edge-ca.pem")
        );
        assert_eq!(
            out["provisioning"]["authentication"]["identity_pk"].as_str(),
            Some("file:///var/lib/aziot/keyd/keys/gw.est-identity.key.pem")
        );
    }
}
