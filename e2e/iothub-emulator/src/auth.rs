//! Shared access policies and SAS token verification, as IoT Hub does it.
//!
//! The signature is HMAC-SHA256 over the `sr` value exactly as it appears in the token (still
//! URL-encoded), a newline and the expiry; every other field is URL-decoded first. Tokens are
//! accepted up to five minutes after their expiry (the service's clock-skew allowance).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use percent_encoding::percent_decode_str;
use sha2::Sha256;

/// Seconds a token stays valid after its `se` (IoT Hub's `MaxClockSkew`).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// A right a shared access policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read the identity registry.
    RegistryRead,
    /// Write the identity registry.
    RegistryWrite,
    /// Service-facing endpoints: twins, queries, configurations.
    ServiceConnect,
    /// Device-facing endpoints on behalf of any device.
    DeviceConnect,
}

impl Permission {
    fn bit(self) -> u8 {
        match self {
            Permission::RegistryRead => 1,
            Permission::RegistryWrite => 2,
            Permission::ServiceConnect => 4,
            Permission::DeviceConnect => 8,
        }
    }

    /// The name IoT Hub uses for this right.
    pub fn name(self) -> &'static str {
        match self {
            Permission::RegistryRead => "RegistryRead",
            Permission::RegistryWrite => "RegistryWrite",
            Permission::ServiceConnect => "ServiceConnect",
            Permission::DeviceConnect => "DeviceConnect",
        }
    }

    /// All rights, in IoT Hub's order.
    pub const ALL: [Permission; 4] = [
        Permission::RegistryRead,
        Permission::RegistryWrite,
        Permission::ServiceConnect,
        Permission::DeviceConnect,
    ];
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    /// The set holding exactly these permissions.
    pub fn of(permissions: &[Permission]) -> Self {
        Self(permissions.iter().fold(0, |acc, p| acc | p.bit()))
    }

    /// Whether the set holds the permission.
    pub fn has(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// The permissions in the set.
    pub fn list(self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.has(*p))
            .collect()
    }
}

/// A shared access policy of the hub (`skn` in tokens).
#[derive(Clone)]
pub struct AccessPolicy {
    /// Policy name, e.g. `iothubowner`.
    pub name: String,
    /// Base64 primary key.
    pub primary_key: String,
    /// Base64 secondary key.
    pub secondary_key: String,
    /// What the policy allows.
    pub rights: Rights,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("name", &self.name)
            .field("rights", &self.rights.list())
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// A fresh random 32-byte key, base64-encoded, as IoT Hub generates them.
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    BASE64.encode(bytes)
}

/// The policies of a new hub: Azure's defaults plus `serviceConnect` (same rights as `service`).
pub fn default_policies() -> Vec<AccessPolicy> {
    use Permission::*;
    let table: [(&str, &[Permission]); 6] = [
        (
            "iothubowner",
            &[RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect],
        ),
        ("service", &[ServiceConnect]),
        ("serviceConnect", &[ServiceConnect]),
        ("device", &[DeviceConnect]),
        ("registryRead", &[RegistryRead]),
        ("registryReadWrite", &[RegistryRead, RegistryWrite]),
    ];
    table
        .iter()
        .map(|(name, rights)| AccessPolicy {
            name: (*name).to_string(),
            primary_key: generate_key(),
            secondary_key: generate_key(),
            rights: Rights::of(rights),
        })
        .collect()
}

/// A parsed `SharedAccessSignature` header.
#[derive(Clone)]
pub struct SasToken {
    /// `sr` exactly as sent (URL-encoded); the signature covers this form.
    pub resource_raw: String,
    /// `sr` URL-decoded: `host[/path]`.
    pub resource: String,
    /// Decoded `sig` (base64 text).
    signature: String,
    /// `se`, Unix seconds.
    pub expiry: i64,
    /// `skn`, the policy name; absent for device-key tokens.
    pub key_name: Option<String>,
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .field("signature", &"<redacted>")
            .finish()
    }
}

/// Why a token was refused. Messages never include the token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the Authorization header is missing; send 'SharedAccessSignature sr=...&sig=...&se=...&skn=...'"
    )]
    Missing,
    #[error("the Authorization header is not a SharedAccessSignature token: {0}")]
    Malformed(String),
    #[error(
        "the SAS token expired at {expiry} (Unix seconds; now {now}, 5 minutes of skew allowed); sign a new token"
    )]
    Expired { expiry: i64, now: i64 },
    #[error("the SAS token names policy '{0}', which this hub does not have")]
    UnknownPolicy(String),
    #[error(
        "the SAS token signature does not match; check the key and sign the sr value exactly as sent"
    )]
    BadSignature,
    #[error("the SAS token's resource '{resource}' does not cover {path} on this hub ({hosts})")]
    WrongResource {
        resource: String,
        path: String,
        hosts: String,
    },
    #[error("policy '{policy}' lacks the {needed} permission this operation requires")]
    MissingPermission {
        policy: String,
        needed: &'static str,
    },
    #[error("{0}")]
    Denied(String),
}

/// Parses `SharedAccessSignature sr=..&sig=..&se=..[&skn=..]` (fields in any order).
pub fn parse_token(header: &str) -> Result<SasToken, AuthError> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .ok_or_else(|| AuthError::Malformed("no fields after the scheme".into()))?;
    if scheme != "SharedAccessSignature" {
        return Err(AuthError::Malformed(format!(
            "scheme '{scheme}' is not SharedAccessSignature"
        )));
    }
    let mut resource_raw = None;
    let mut signature = None;
    let mut expiry = None;
    let mut key_name = None;
    for pair in rest.trim().split('&') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| AuthError::Malformed("a field has no '='".into()))?;
        let decoded = || {
            percent_decode_str(value)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| AuthError::Malformed(format!("field '{key}' is not valid UTF-8")))
        };
        match key {
            "sr" => resource_raw = Some(value.to_string()),
            "sig" => signature = Some(decoded()?),
            "se" => {
                let text = decoded()?;
                expiry = Some(text.parse::<i64>().map_err(|_| {
                    AuthError::Malformed("se must be an integer of Unix seconds".into())
                })?);
            }
            "skn" => key_name = Some(decoded()?),
            // Like the service's own parser, fields it does not use are ignored.
            _ => {}
        }
    }
    let resource_raw = resource_raw.ok_or_else(|| AuthError::Malformed("sr is missing".into()))?;
    let resource = percent_decode_str(&resource_raw)
        .decode_utf8()
        .map_err(|_| AuthError::Malformed("sr is not valid UTF-8".into()))?
        .into_owned();
    Ok(SasToken {
        resource_raw,
        resource,
        signature: signature.ok_or_else(|| AuthError::Malformed("sig is missing".into()))?,
        expiry: expiry.ok_or_else(|| AuthError::Malformed("se is missing".into()))?,
        key_name: key_name.filter(|k| !k.is_empty()),
    })
}

/// Base64 HMAC-SHA256 of `sr + "\n" + se` with a base64 key. `None` if the key is not base64.
pub fn sign(key_base64: &str, resource_raw: &str, expiry: i64) -> Option<String> {
    let key = BASE64.decode(key_base64).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{resource_raw}\n{expiry}").as_bytes());
    Some(BASE64.encode(mac.finalize().into_bytes()))
}

impl SasToken {
    /// Whether the signature was made with this key (constant-time comparison).
    pub fn signed_with(&self, key_base64: &str) -> bool {
        let Ok(key) = BASE64.decode(key_base64) else {
            return false;
        };
        let Ok(sig) = BASE64.decode(self.signature.trim()) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(format!("{}\n{}", self.resource_raw, self.expiry).as_bytes());
        mac.verify_slice(&sig).is_ok()
    }

    /// Refuses tokens whose expiry plus the clock skew has passed.
    pub fn check_expiry(&self, now_secs: i64) -> Result<(), AuthError> {
        if self.expiry.saturating_add(MAX_CLOCK_SKEW_SECS) < now_secs {
            return Err(AuthError::Expired {
                expiry: self.expiry,
                now: now_secs,
            });
        }
        Ok(())
    }

    /// Splits the decoded resource into host and path segments.
    pub fn host_and_segments(&self) -> (String, Vec<String>) {
        let resource = self
            .resource
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let mut parts = resource.split('/');
        let host = parts.next().unwrap_or_default().to_ascii_lowercase();
        (host, parts.map(str::to_string).collect())
    }

    /// Whether the token's resource names one of `hosts` and is a segment-wise prefix of
    /// `path_segments` (`host/devices` covers `/devices/x` but not `/twins/x`).
    pub fn covers(&self, hosts: &[String], path_segments: &[String]) -> bool {
        let (host, prefix) = self.host_and_segments();
        hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
            && prefix.len() <= path_segments.len()
            && prefix.iter().zip(path_segments).all(|(a, b)| a == b)
    }
}

/// Builds a token the way the SDKs do (client side; for the bench, tests and docs).
pub fn build_token(
    resource_raw: &str,
    key_base64: &str,
    key_name: Option<&str>,
    expiry: i64,
) -> String {
    let signature = sign(key_base64, resource_raw, expiry).unwrap_or_default();
    let sig = percent_encoding::utf8_percent_encode(&signature, percent_encoding::NON_ALPHANUMERIC);
    let mut token = format!("SharedAccessSignature sr={resource_raw}&sig={sig}&se={expiry}");
    if let Some(name) = key_name {
        token.push_str("&skn=");
        token.push_str(name);
    }
    token
}

/// URL-encodes a resource the way the Python SDK does (`quote_plus`).
pub fn encode_resource(resource: &str) -> String {
    percent_encoding::utf8_percent_encode(resource, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%7E", "~")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn signature_covers_the_encoded_resource() {
        // Python signs quote_plus(host) = localhost%3A8443, not the decoded form.
        let token = parse_token(&build_token(
            "localhost%3A8443",
            KEY,
            Some("iothubowner"),
            1_700_000_000,
        ))
        .unwrap();
        assert!(token.signed_with(KEY));
        assert_eq!(token.resource, "localhost:8443");
        let decoded_sig = sign(KEY, "localhost:8443", 1_700_000_000).unwrap();
        let over_decoded = parse_token(&format!(
            "SharedAccessSignature sr=localhost%3A8443&sig={}&se=1700000000&skn=x",
            encode_resource(&decoded_sig)
        ))
        .unwrap();
        assert!(!over_decoded.signed_with(KEY));
    }

    #[test]
    fn fields_may_come_in_any_order() {
        let sig = encode_resource(&sign(KEY, "h", 5).unwrap());
        let token =
            parse_token(&format!("SharedAccessSignature skn=p&se=5&sig={sig}&sr=h")).unwrap();
        assert!(token.signed_with(KEY));
        assert_eq!(token.key_name.as_deref(), Some("p"));
    }

    #[test]
    fn tampered_resource_fails() {
        let header = build_token("hub%3A1", KEY, Some("p"), 99);
        let token = parse_token(&header.replace("sr=hub%3A1", "sr=hub%3A2")).unwrap();
        assert!(!token.signed_with(KEY));
    }

    #[test]
    fn wrong_key_fails() {
        let token = parse_token(&build_token("h", KEY, None, 99)).unwrap();
        assert!(!token.signed_with(&generate_key()));
        assert!(!token.signed_with("not base64!"));
    }

    #[test]
    fn expiry_allows_five_minutes_of_skew() {
        let token = parse_token(&build_token("h", KEY, None, 1000)).unwrap();
        assert!(token.check_expiry(1000 + 300).is_ok());
        assert!(matches!(
            token.check_expiry(1000 + 301),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in [
            "",
            "Bearer abc",
            "SharedAccessSignature",
            "SharedAccessSignature sr=h&se=1",
            "SharedAccessSignature sr=h&sig=x&se=soon",
            "SharedAccessSignature sig=x&se=1",
        ] {
            assert!(parse_token(header).is_err(), "{header}");
        }
    }

    #[test]
    fn resource_prefix_matches_by_segment() {
        let token = parse_token(&build_token("localhost%3A1%2Fdevices", KEY, None, 1)).unwrap();
        let hosts = vec!["LOCALHOST:1".to_string()];
        let seg = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(token.covers(&hosts, &seg(&["devices", "d1"])));
        assert!(!token.covers(&hosts, &seg(&["twins", "d1"])));
        assert!(!token.covers(&["other:1".to_string()], &seg(&["devices", "d1"])));
        let device = parse_token(&build_token("h%2Fdevices%2Fd1", KEY, None, 1)).unwrap();
        assert!(!device.covers(&["h".into()], &seg(&["devices", "d10"])));
        assert!(device.covers(&["h".into()], &seg(&["devices", "d1", "twin"])));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let policy = &default_policies()[0];
        assert!(!format!("{policy:?}").contains(&policy.primary_key));
        let token = parse_token(&build_token("h", KEY, None, 1)).unwrap();
        assert!(!format!("{token:?}").contains(&token.signature));
    }

    #[test]
    fn default_policies_have_their_rights() {
        let policies = default_policies();
        let rights = |n: &str| policies.iter().find(|p| p.name == n).unwrap().rights;
        assert!(rights("iothubowner").has(Permission::DeviceConnect));
        assert!(rights("registryRead").has(Permission::RegistryRead));
        assert!(!rights("registryRead").has(Permission::RegistryWrite));
        assert!(rights("registryReadWrite").has(Permission::RegistryWrite));
        assert!(!rights("serviceConnect").has(Permission::RegistryRead));
        assert!(rights("device").has(Permission::DeviceConnect));
        assert!(!rights("device").has(Permission::ServiceConnect));
    }
}
