//! Shared access signature tokens for the service API.
//!
//! A token is `SharedAccessSignature sr=<enc host>&sig=<enc base64 hmac>&se=<unix expiry>&skn=<policy>`
//! where the HMAC-SHA256 (keyed with the base64-decoded policy key) covers `<sr as sent>\n<se>`.
//! Tokens are short-lived and re-signed shortly before they expire, so a leaked token is only
//! useful for a short while and a rotated key is picked up by the next client built from it.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

use super::connection_string::ConnectionString;

/// Characters left as they are when encoding `sr` and `sig`: the RFC 3986 unreserved set, like
/// JavaScript's `encodeURIComponent` minus its extra marks. `:` of a port becomes `%3A`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A signed token. `Debug` is redacted and there is no `Display`, so the token cannot end up in
/// a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    value: String,
    expires_at_unix: u64,
}

impl SasToken {
    /// The `Authorization` header value. Crate-private: only the HTTP layer needs it.
    pub(crate) fn header_value(&self) -> &str {
        &self.value
    }

    /// Expiry as Unix seconds (the token's `se`).
    pub fn expires_at_unix(&self) -> u64 {
        self.expires_at_unix
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("value", &"<redacted>")
            .field("expires_at_unix", &self.expires_at_unix)
            .finish()
    }
}

/// Signs a service token for `resource` (the hub host name) valid until `expires_at_unix`.
pub fn sign_token(resource: &str, key_name: &str, key: &[u8], expires_at_unix: u64) -> SasToken {
    let sr = utf8_percent_encode(resource, COMPONENT).to_string();
    let signed = format!("{sr}\n{expires_at_unix}");
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(signed.as_bytes());
    let signature = BASE64.encode(mac.finalize().into_bytes());
    let sig = utf8_percent_encode(&signature, COMPONENT);
    let skn = utf8_percent_encode(key_name, COMPONENT);
    SasToken {
        value: format!("SharedAccessSignature sr={sr}&sig={sig}&se={expires_at_unix}&skn={skn}"),
        expires_at_unix,
    }
}

/// Whether a token expiring at `expires_at_unix` must be replaced at `now_unix`, given that it
/// should be renewed `refresh_before` ahead of expiry (covers clock skew and slow requests).
pub fn needs_refresh(now_unix: u64, expires_at_unix: u64, refresh_before: Duration) -> bool {
    now_unix.saturating_add(refresh_before.as_secs()) >= expires_at_unix
}

/// Signs tokens for one connection string and reuses each until it is close to expiry.
pub(crate) struct TokenSource {
    connection: ConnectionString,
    ttl: Duration,
    refresh_before: Duration,
    cached: Mutex<Option<SasToken>>,
}

impl TokenSource {
    pub(crate) fn new(
        connection: ConnectionString,
        ttl: Duration,
        refresh_before: Duration,
    ) -> Self {
        // A margin as long as the lifetime would re-sign on every call; keep at least a minute
        // of use per token.
        let ttl = ttl.max(Duration::from_secs(120));
        let refresh_before = refresh_before.min(ttl - Duration::from_secs(60));
        TokenSource {
            connection,
            ttl,
            refresh_before,
            cached: Mutex::new(None),
        }
    }

    /// A token valid for at least `refresh_before` from now.
    pub(crate) fn token(&self) -> SasToken {
        self.token_at(unix_now())
    }

    pub(crate) fn token_at(&self, now_unix: u64) -> SasToken {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = cached.as_ref()
            && !needs_refresh(now_unix, token.expires_at_unix, self.refresh_before)
        {
            return token.clone();
        }
        let token = sign_token(
            self.connection.host_name(),
            self.connection.key_name(),
            self.connection.key(),
            now_unix + self.ttl.as_secs(),
        );
        *cached = Some(token.clone());
        token
    }

    pub(crate) fn connection(&self) -> &ConnectionString {
        &self.connection
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base64 of the bytes 0x00..=0x1f; a test key, not a real one.
    const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn key() -> Vec<u8> {
        BASE64.decode(KEY_B64).unwrap()
    }

    // Fixtures computed independently of this code:
    //   python3 -c 'import hmac,hashlib,base64,urllib.parse as u; k=base64.b64decode("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
    //     sr=u.quote("localhost:8443",safe=""); print(base64.b64encode(hmac.new(k,(sr+"\n1893456000").encode(),hashlib.sha256).digest()))'
    //   printf 'localhost%%3A8443\n1893456000' | openssl dgst -sha256 -mac HMAC \
    //     -macopt hexkey:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f -binary | base64
    // both print S82VeJ/uWysBysKErSrOWOc6EliEdc5yeDssWsNAbec=
    #[test]
    fn signs_like_the_independent_vector_with_a_port() {
        let token = sign_token("localhost:8443", "iothubowner", &key(), 1_893_456_000);
        assert_eq!(
            token.header_value(),
            "SharedAccessSignature sr=localhost%3A8443&sig=S82VeJ%2FuWysBysKErSrOWOc6EliEdc5yeDssWsNAbec%3D&se=1893456000&skn=iothubowner"
        );
        assert_eq!(token.expires_at_unix(), 1_893_456_000);
    }

    // Same Python one-liner with host "myhub.azure-devices.net" and se 1700000000:
    // iIzEw6hi6GK79RY5jNXO6QeQkSL/Ax4zTmy44X2G1VY=
    #[test]
    fn signs_like_the_independent_vector_for_a_hub_host() {
        let token = sign_token("myhub.azure-devices.net", "service", &key(), 1_700_000_000);
        assert_eq!(
            token.header_value(),
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%2FAx4zTmy44X2G1VY%3D&se=1700000000&skn=service"
        );
    }

    #[test]
    fn refresh_happens_within_the_margin_only() {
        let margin = Duration::from_secs(300);
        assert!(!needs_refresh(1000, 2000, margin));
        assert!(!needs_refresh(1699, 2000, margin));
        assert!(needs_refresh(1700, 2000, margin));
        assert!(needs_refresh(2500, 2000, margin));
        assert!(needs_refresh(u64::MAX, 2000, margin));
    }

    #[test]
    fn cache_reuses_a_token_until_the_margin_then_re_signs() {
        let cs = ConnectionString::parse(&format!(
            "HostName=h.example;SharedAccessKeyName=p;SharedAccessKey={KEY_B64}"
        ))
        .unwrap();
        let source = TokenSource::new(cs, Duration::from_secs(3600), Duration::from_secs(300));
        let first = source.token_at(10_000);
        assert_eq!(first.expires_at_unix(), 13_600);
        assert_eq!(source.token_at(13_299), first);
        let renewed = source.token_at(13_300);
        assert_eq!(renewed.expires_at_unix(), 16_900);
        assert_ne!(renewed.header_value(), first.header_value());
    }

    #[test]
    fn a_margin_longer_than_the_lifetime_is_clamped() {
        let cs = ConnectionString::parse(&format!(
            "HostName=h.example;SharedAccessKeyName=p;SharedAccessKey={KEY_B64}"
        ))
        .unwrap();
        let source = TokenSource::new(cs, Duration::from_secs(600), Duration::from_secs(3600));
        let first = source.token_at(0);
        // Still reused for the first minutes instead of being re-signed on every call.
        assert_eq!(source.token_at(59), first);
    }

    #[test]
    fn debug_hides_the_token() {
        let token = sign_token("h.example", "p", &key(), 42);
        let shown = format!("{token:?}");
        assert!(!shown.contains("sig="));
        assert!(!shown.contains("SharedAccessSignature"));
        assert!(shown.contains("42"));
    }
}
