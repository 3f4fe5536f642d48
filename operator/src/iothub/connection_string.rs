//! Parsing of IoT Hub service connection strings
//! (`HostName=<hub>;SharedAccessKeyName=<policy>;SharedAccessKey=<base64>`).
//!
//! Errors name the part that is missing or malformed but never repeat the key or the text around
//! it, because the whole string comes from a Secret.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// A parsed service (shared access policy) connection string.
///
/// `Debug` shows the host and policy name only; the key is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    host_name: String,
    key_name: String,
    key: Vec<u8>,
}

/// Why a connection string was rejected. No variant carries the key or any text taken from a
/// `SharedAccessKey` part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// The string was empty or only whitespace.
    #[error(
        "the connection string is empty; expected HostName=<hub>.azure-devices.net;SharedAccessKeyName=<policy>;SharedAccessKey=<key>"
    )]
    Empty,
    /// A `;`-separated part had no `=`.
    #[error(
        "part {position} of the connection string has no '=' (expected Name=value pairs separated by ';')"
    )]
    PartWithoutEquals {
        /// 1-based position of the part.
        position: usize,
    },
    /// A part name that a service connection string does not have.
    #[error(
        "the connection string has an unknown part '{name}'; allowed are HostName, SharedAccessKeyName, SharedAccessKey"
    )]
    UnknownPart {
        /// The part's name (names are not secret).
        name: String,
    },
    /// A part appeared twice.
    #[error("the connection string has '{name}' more than once")]
    DuplicatePart {
        /// The repeated part name.
        name: String,
    },
    /// A required part was absent.
    #[error(
        "the connection string has no {name}; a service connection string needs HostName, SharedAccessKeyName and SharedAccessKey"
    )]
    MissingPart {
        /// The missing part name.
        name: &'static str,
    },
    /// A part was present but empty.
    #[error("the connection string's {name} is empty")]
    EmptyPart {
        /// The empty part name.
        name: &'static str,
    },
    /// A device or module connection string was given where a hub policy is needed.
    #[error(
        "this is a device or module connection string ({name} is set); the operator needs a hub shared access policy such as iothubowner or registryReadWrite"
    )]
    DeviceConnectionString {
        /// `DeviceId` or `ModuleId`.
        name: &'static str,
    },
    /// A connection string carrying a ready-made SAS token instead of a key.
    #[error(
        "connection strings with a SharedAccessSignature are not supported; use a policy's SharedAccessKey so tokens can be renewed"
    )]
    SignatureNotSupported,
    /// `HostName` is not a bare host (optionally with a port).
    #[error(
        "the connection string's HostName '{host}' is not a host name (expected for example myhub.azure-devices.net, without scheme or path)"
    )]
    InvalidHostName {
        /// The rejected host value (host names are not secret).
        host: String,
    },
    /// `SharedAccessKey` is not valid base64.
    #[error(
        "the connection string's SharedAccessKey is not valid base64; copy the policy's primary key again"
    )]
    InvalidKey,
}

impl ConnectionString {
    /// Parses a service connection string. Parts are `Name=value` separated by `;`; the value
    /// is everything after the first `=` (base64 keys end in `=`). Empty parts (a trailing `;`)
    /// and whitespace around the string are ignored.
    pub fn parse(input: &str) -> Result<ConnectionString, ConnectionStringError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(ConnectionStringError::Empty);
        }
        let mut host_name: Option<&str> = None;
        let mut key_name: Option<&str> = None;
        let mut key: Option<&str> = None;
        for (index, part) in input.split(';').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((name, value)) = part.split_once('=') else {
                return Err(ConnectionStringError::PartWithoutEquals {
                    position: index + 1,
                });
            };
            let name = name.trim();
            let value = value.trim();
            let slot = match name {
                "HostName" => &mut host_name,
                "SharedAccessKeyName" => &mut key_name,
                "SharedAccessKey" => &mut key,
                // Accepted by the SDKs for gateways; irrelevant to service calls.
                "GatewayHostName" => continue,
                "DeviceId" => {
                    return Err(ConnectionStringError::DeviceConnectionString { name: "DeviceId" });
                }
                "ModuleId" => {
                    return Err(ConnectionStringError::DeviceConnectionString { name: "ModuleId" });
                }
                "SharedAccessSignature" => {
                    return Err(ConnectionStringError::SignatureNotSupported);
                }
                other => {
                    return Err(ConnectionStringError::UnknownPart {
                        name: sanitize_part_name(other),
                    });
                }
            };
            if slot.is_some() {
                return Err(ConnectionStringError::DuplicatePart {
                    name: name.to_string(),
                });
            }
            *slot = Some(value);
        }
        let host_name = require(host_name, "HostName")?;
        let key_name = require(key_name, "SharedAccessKeyName")?;
        let key = require(key, "SharedAccessKey")?;
        validate_host(host_name)?;
        let key = BASE64
            .decode(key)
            .map_err(|_| ConnectionStringError::InvalidKey)?;
        if key.is_empty() {
            return Err(ConnectionStringError::InvalidKey);
        }
        Ok(ConnectionString {
            host_name: host_name.to_string(),
            key_name: key_name.to_string(),
            key,
        })
    }

    /// The hub's host name, possibly with a port (`myhub.azure-devices.net`, `localhost:8443`).
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The shared access policy name (the token's `skn`).
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The decoded policy key. Crate-private so the key bytes only reach the signer.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl std::str::FromStr for ConnectionString {
    type Err = ConnectionStringError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnectionString::parse(s)
    }
}

fn require<'a>(
    value: Option<&'a str>,
    name: &'static str,
) -> Result<&'a str, ConnectionStringError> {
    match value {
        None => Err(ConnectionStringError::MissingPart { name }),
        Some("") => Err(ConnectionStringError::EmptyPart { name }),
        Some(v) => Ok(v),
    }
}

/// A part name is echoed in the error, so keep it short and printable: a mangled string could
/// otherwise put key material in the "name" position.
fn sanitize_part_name(name: &str) -> String {
    let looks_like_name =
        !name.is_empty() && name.len() <= 40 && name.chars().all(|c| c.is_ascii_alphabetic());
    if looks_like_name {
        name.to_string()
    } else {
        "<unreadable part name>".to_string()
    }
}

fn validate_host(host: &str) -> Result<(), ConnectionStringError> {
    let invalid = || ConnectionStringError::InvalidHostName {
        host: host.chars().take(256).collect(),
    };
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(invalid());
    }
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-']);
    if !name_ok {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // base64 of the 32 bytes 0x00..=0x1f; not a real key.
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn valid() -> String {
        format!(
            "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        )
    }

    #[test]
    fn parses_the_service_form() {
        let cs = ConnectionString::parse(&valid()).unwrap();
        assert_eq!(cs.host_name(), "myhub.azure-devices.net");
        assert_eq!(cs.key_name(), "iothubowner");
        assert_eq!(cs.key(), (0u8..32).collect::<Vec<_>>().as_slice());
    }

    #[test]
    fn accepts_any_order_a_port_a_trailing_semicolon_and_whitespace() {
        let cs = ConnectionString::parse(&format!(
            "  SharedAccessKey={KEY}; HostName=localhost:8443 ;SharedAccessKeyName=service;\n"
        ))
        .unwrap();
        assert_eq!(cs.host_name(), "localhost:8443");
        assert_eq!(cs.key_name(), "service");
    }

    #[test]
    fn ignores_gateway_host_name() {
        let cs = ConnectionString::parse(&format!("{};GatewayHostName=gw.local", valid())).unwrap();
        assert_eq!(cs.host_name(), "myhub.azure-devices.net");
    }

    #[test]
    fn rejects_each_malformed_case_with_the_part_named() {
        use ConnectionStringError as E;
        let cases: Vec<(String, E)> = vec![
            ("".into(), E::Empty),
            ("   ".into(), E::Empty),
            (
                "HostName=h.net;SharedAccessKeyName=p;garbage".into(),
                E::PartWithoutEquals { position: 3 },
            ),
            (
                // A bare key (its '=' padding splits it) must not be echoed as a part name.
                format!("HostName=h.net;SharedAccessKeyName=p;{KEY}"),
                E::UnknownPart {
                    name: "<unreadable part name>".into(),
                },
            ),
            (
                format!("{};Foo=bar", valid()),
                E::UnknownPart { name: "Foo".into() },
            ),
            (
                format!("{};HostName=other.net", valid()),
                E::DuplicatePart {
                    name: "HostName".into(),
                },
            ),
            (
                format!("SharedAccessKeyName=p;SharedAccessKey={KEY}"),
                E::MissingPart { name: "HostName" },
            ),
            (
                format!("HostName=h.net;SharedAccessKey={KEY}"),
                E::MissingPart {
                    name: "SharedAccessKeyName",
                },
            ),
            (
                "HostName=h.net;SharedAccessKeyName=p".into(),
                E::MissingPart {
                    name: "SharedAccessKey",
                },
            ),
            (
                format!("HostName=;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
                E::EmptyPart { name: "HostName" },
            ),
            (
                format!("HostName=h.net;SharedAccessKeyName=;SharedAccessKey={KEY}"),
                E::EmptyPart {
                    name: "SharedAccessKeyName",
                },
            ),
            (
                "HostName=h.net;SharedAccessKeyName=p;SharedAccessKey=".into(),
                E::EmptyPart {
                    name: "SharedAccessKey",
                },
            ),
            (
                format!("HostName=h.net;DeviceId=d1;SharedAccessKey={KEY}"),
                E::DeviceConnectionString { name: "DeviceId" },
            ),
            (
                format!("HostName=h.net;DeviceId=d1;ModuleId=m;SharedAccessKey={KEY}"),
                E::DeviceConnectionString { name: "DeviceId" },
            ),
            (
                "HostName=h.net;SharedAccessSignature=SharedAccessSignature sr=x".into(),
                E::SignatureNotSupported,
            ),
            (
                format!("HostName=https://h.net/;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
                E::InvalidHostName {
                    host: "https://h.net/".into(),
                },
            ),
            (
                format!("HostName=h.net:99999;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
                E::InvalidHostName {
                    host: "h.net:99999".into(),
                },
            ),
            (
                format!("HostName=h net;SharedAccessKeyName=p;SharedAccessKey={KEY}"),
                E::InvalidHostName {
                    host: "h net".into(),
                },
            ),
            (
                "HostName=h.net;SharedAccessKeyName=p;SharedAccessKey=not*base64!".into(),
                E::InvalidKey,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                ConnectionString::parse(&input),
                Err(expected.clone()),
                "input {input:?}"
            );
            // Every message must be actionable and say what it is about.
            let message = expected.to_string();
            assert!(message.contains("connection string"), "{message}");
        }
    }

    #[test]
    fn errors_never_echo_the_key() {
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA==";
        let inputs = [
            format!("HostName=h.net;SharedAccessKeyName=p;{secret}"),
            format!("HostName=h.net;{secret}=x;SharedAccessKey={secret}"),
            format!("HostName=h.net;SharedAccessKeyName=p;SharedAccessKey={secret}!!"),
            format!("HostName=h.net;SharedAccessKey={secret};SharedAccessKey={secret}"),
        ];
        for input in inputs {
            let err = ConnectionString::parse(&input).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("c2VjcmV0"), "{shown}");
        }
    }

    #[test]
    fn debug_redacts_the_key() {
        let cs = ConnectionString::parse(&valid()).unwrap();
        let shown = format!("{cs:?}");
        assert!(shown.contains("myhub.azure-devices.net"));
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(KEY));
        assert!(!shown.contains("AAECAw"));
    }
}
