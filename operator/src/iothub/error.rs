//! Errors of hub calls, and the parsing of IoT Hub's error responses.
//!
//! The hub reports errors as an `iothub-errorcode: <Name>` header plus a body, either
//! `{"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:..."}` or a newer form
//! whose `Message` is itself JSON with a numeric `errorCode` and `message`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::operation::HubOperation;

/// Longest hub message kept in an error; bodies can be whole HTML pages behind proxies.
const MAX_MESSAGE_CHARS: usize = 600;

/// What a failed call was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTarget {
    /// A device (identity or twin).
    Device(String),
    /// A module of a device.
    Module {
        /// Device id.
        device_id: String,
        /// Module id.
        module_id: String,
    },
    /// A configuration (automatic deployment).
    Configuration(String),
    /// A bulk call over these devices (first few ids and the count).
    Devices {
        /// First ids of the chunk.
        first: Vec<String>,
        /// Number of devices in the call.
        count: usize,
    },
    /// The hub as a whole (queries, lists).
    Hub,
}

impl fmt::Display for HubTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubTarget::Device(id) => write!(f, "device '{id}'"),
            HubTarget::Module {
                device_id,
                module_id,
            } => write!(f, "module '{module_id}' of device '{device_id}'"),
            HubTarget::Configuration(id) => write!(f, "configuration '{id}'"),
            HubTarget::Devices { first, count } => {
                write!(f, "{count} devices ('{}'", first.join("', '"))?;
                if *count > first.len() {
                    write!(f, ", ...")?;
                }
                write!(f, ")")
            }
            HubTarget::Hub => write!(f, "the hub"),
        }
    }
}

/// A failed IoT Hub call. Carries no token, key or request header; messages taken from the hub
/// are cut short and scrubbed of anything that looks like a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The hub answered with an error status.
    #[error(
        "IoT Hub {operation} of {target} failed: HTTP {status}{}: {message}",
        code_suffix(code)
    )]
    Api {
        /// Which call.
        operation: HubOperation,
        /// What it was about.
        target: HubTarget,
        /// HTTP status.
        status: u16,
        /// IoT Hub error code name (`DeviceNotFound`) or number (`404001`).
        code: Option<String>,
        /// The hub's message.
        message: String,
        /// The server's `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },
    /// No HTTP answer: connection refused or reset, TLS failure, timeout.
    #[error("IoT Hub {operation} of {target} failed: {kind}: {message}")]
    Transport {
        /// Which call.
        operation: HubOperation,
        /// What it was about.
        target: HubTarget,
        /// Connect, timeout, ...
        kind: TransportKind,
        /// Underlying error, without headers.
        message: String,
    },
    /// A success status with a body that does not match the model.
    #[error("IoT Hub {operation} of {target}: HTTP {status} response could not be read: {message}")]
    InvalidResponse {
        /// Which call.
        operation: HubOperation,
        /// What it was about.
        target: HubTarget,
        /// HTTP status.
        status: u16,
        /// Why it could not be read.
        message: String,
    },
    /// The caller asked for something the client refuses to send.
    #[error("IoT Hub {operation} of {target} not sent: {message}")]
    InvalidRequest {
        /// Which call.
        operation: HubOperation,
        /// What it was about.
        target: HubTarget,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The answer was larger than the client reads for this operation; reading stopped at the
    /// limit and the connection was dropped. Not retried: the same server sends the same.
    #[error(
        "IoT Hub {operation} of {target} at {host}: the answer is larger than the {} MiB the operator reads for this call; it stopped reading. IoT Hub's own answers stay far below this, so check that HostName in the connection string names the hub",
        limit_bytes / (1024 * 1024)
    )]
    TooLarge {
        /// Which call.
        operation: HubOperation,
        /// What it was about.
        target: HubTarget,
        /// The hub host.
        host: String,
        /// The limit that was reached, in bytes.
        limit_bytes: usize,
    },
    /// The call's whole time budget (attempts, backoffs, waits for a connection slot) ran out.
    #[error(
        "IoT Hub {operation} of {target} at {host}: no answer within the call's time budget of {}s ({attempts} attempts): {message}",
        budget.as_secs()
    )]
    DeadlineExceeded {
        /// Which call.
        operation: HubOperation,
        /// What it was about.
        target: HubTarget,
        /// The hub host.
        host: String,
        /// The call's budget.
        budget: Duration,
        /// Attempts sent (0 when the hub was paused).
        attempts: u32,
        /// What the last attempt saw, or why none was sent.
        message: String,
    },
    /// Not sent: an earlier call to this hub got no answer within its whole time budget, and
    /// calls to it fail at once until the pause ends (or any answer from the hub ends it).
    #[error(
        "IoT Hub {operation} of {target} at {host} not sent: an earlier call to this hub got no answer within its whole time budget, so calls to it fail at once for another {}s",
        remaining.as_secs().max(1)
    )]
    Paused {
        /// Which call.
        operation: HubOperation,
        /// What it was about.
        target: HubTarget,
        /// The hub host.
        host: String,
        /// How long the pause lasts from now.
        remaining: Duration,
    },
    /// The client could not be built (bad CA certificate, TLS set-up).
    #[error("IoT Hub client for {host} could not be set up: {message}")]
    Setup {
        /// The hub host.
        host: String,
        /// What failed.
        message: String,
    },
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(" {c}")).unwrap_or_default()
}

/// Kinds of transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Could not connect (refused, DNS, TLS handshake).
    Connect,
    /// The request timed out.
    Timeout,
    /// The connection broke while sending or reading.
    Io,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "connection failed",
            TransportKind::Timeout => "timed out",
            TransportKind::Io => "connection broken",
        })
    }
}

impl HubError {
    /// HTTP status of an `Api` or `InvalidResponse` error.
    pub fn status(&self) -> Option<u16> {
        match self {
            HubError::Api { status, .. } | HubError::InvalidResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// IoT Hub error code (name or number), when the hub sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            HubError::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The call that failed, if it got as far as being a call.
    pub fn operation(&self) -> Option<HubOperation> {
        match self {
            HubError::Api { operation, .. }
            | HubError::Transport { operation, .. }
            | HubError::InvalidResponse { operation, .. }
            | HubError::InvalidRequest { operation, .. }
            | HubError::TooLarge { operation, .. }
            | HubError::DeadlineExceeded { operation, .. }
            | HubError::Paused { operation, .. } => Some(*operation),
            HubError::Setup { .. } => None,
        }
    }

    /// What the call was about.
    pub fn target(&self) -> Option<&HubTarget> {
        match self {
            HubError::Api { target, .. }
            | HubError::Transport { target, .. }
            | HubError::InvalidResponse { target, .. }
            | HubError::InvalidRequest { target, .. }
            | HubError::TooLarge { target, .. }
            | HubError::DeadlineExceeded { target, .. }
            | HubError::Paused { target, .. } => Some(target),
            HubError::Setup { .. } => None,
        }
    }

    /// The device the call was about (device or module targets).
    pub fn device_id(&self) -> Option<&str> {
        match self.target()? {
            HubTarget::Device(id) => Some(id),
            HubTarget::Module { device_id, .. } => Some(device_id),
            _ => None,
        }
    }

    fn code_is(&self, names: &[&str]) -> bool {
        self.code().is_some_and(|c| names.contains(&c))
    }

    /// 404: device, module or configuration does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// 409: already exists, or a conflicting operation in progress.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// 412 or an etag mismatch: the object changed since it was read; re-read and retry.
    pub fn is_precondition_failed(&self) -> bool {
        self.status() == Some(412)
            || self.code_is(&["PreconditionFailed", "EtagDoesNotMatch", "412001", "400023"])
    }

    /// 401: wrong key, expired token, or a policy without the needed permission.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }

    /// 403 `IoTHubQuotaExceeded` (403002): the hub's daily message quota is used up; every call
    /// fails until it resets at 00:00 UTC (Learn, "Troubleshoot error 403002").
    pub fn is_quota_exceeded(&self) -> bool {
        self.status() == Some(403)
            && (self.code().is_none()
                || self.code_is(&["IotHubQuotaExceeded", "IoTHubQuotaExceeded", "403002"]))
    }

    /// 429: the hub throttled the call.
    pub fn is_throttled(&self) -> bool {
        self.status() == Some(429)
    }

    /// Worth retrying later: throttling, server errors, timeouts and connection failures.
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::Api { status, .. } => is_transient_status(*status),
            HubError::Transport { .. }
            | HubError::DeadlineExceeded { .. }
            | HubError::Paused { .. } => true,
            _ => false,
        }
    }
}

/// Statuses retried: 408, 429 and 5xx other than 501/505 (which will not change on retry).
pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status) && !matches!(status, 501 | 505)
}

/// Error code and message pulled out of an error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedError {
    /// Code name or number.
    pub code: Option<String>,
    /// Human-readable text.
    pub message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "Message", alias = "message")]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NumericErrorBody {
    error_code: Option<serde_json::Value>,
    message: Option<String>,
}

/// Parses an error response: the `iothub-errorcode` header wins, then `ErrorCode:<Name>;` at the
/// start of the body's `Message`, then a numeric `errorCode` inside a JSON `Message`.
pub fn parse_error(header_code: Option<&str>, body: &[u8]) -> ParsedError {
    let header_code = header_code
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let text = String::from_utf8_lossy(body);
    let outer = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.message);
    let (body_code, message) = match outer {
        Some(message) => split_message(&message),
        None => (None, text.trim().to_string()),
    };
    ParsedError {
        code: header_code.or(body_code),
        message: scrub(&message),
    }
}

fn split_message(message: &str) -> (Option<String>, String) {
    if let Some(rest) = message.strip_prefix("ErrorCode:") {
        return match rest.split_once(';') {
            Some((code, text)) => (Some(code.trim().to_string()), text.trim().to_string()),
            None => (Some(rest.trim().to_string()), String::new()),
        };
    }
    if let Ok(inner) = serde_json::from_str::<NumericErrorBody>(message) {
        let code = inner.error_code.map(|c| match c {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        return (code, inner.message.unwrap_or_default());
    }
    (None, message.trim().to_string())
}

/// Cuts a hub-supplied message short and masks anything that looks like a SAS token or its
/// signature, in case a server or proxy echoes request headers.
pub fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS));
    let mut rest = message;
    const MARKERS: [&str; 3] = ["SharedAccessSignature", "sig=", "SharedAccessKey="];
    loop {
        let next = MARKERS
            .iter()
            .filter_map(|m| rest.find(m).map(|at| (at, *m)))
            .min_by_key(|(at, _)| *at);
        match next {
            None => {
                out.push_str(rest);
                break;
            }
            Some((at, marker)) => {
                out.push_str(&rest[..at]);
                out.push_str(marker.trim_end_matches('='));
                out.push_str("=<redacted>");
                // A token follows its scheme word after a space; a key or sig directly.
                let after = rest[at + marker.len()..].trim_start_matches(' ');
                // Skip the secret up to the next separator that cannot be part of it.
                let end = after
                    .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
                    .unwrap_or(after.len());
                rest = &after[end..];
            }
        }
    }
    if out.chars().count() > MAX_MESSAGE_CHARS {
        let cut: String = out.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{cut}...")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_code_wins_and_body_text_is_kept() {
        let body = br#"{"Message":"ErrorCode:DeviceNotFound;Device d1 not registered","ExceptionMessage":"Tracking ID:abc-G:1-TimeStamp:01/01/2024 00:00:00"}"#;
        assert_eq!(
            parse_error(Some("DeviceNotFound"), body),
            ParsedError {
                code: Some("DeviceNotFound".into()),
                message: "Device d1 not registered".into()
            }
        );
    }

    #[test]
    fn code_from_the_message_prefix_when_no_header() {
        let body = br#"{"Message":"ErrorCode:PreconditionFailed;Precondition failed: Device version did not match, existingVersion:957482805 newVersion:957482804","ExceptionMessage":""}"#;
        let parsed = parse_error(None, body);
        assert_eq!(parsed.code.as_deref(), Some("PreconditionFailed"));
        assert!(
            parsed
                .message
                .starts_with("Precondition failed: Device version")
        );
    }

    #[test]
    fn numeric_form_inside_the_message() {
        let body = br#"{"Message":"{\"errorCode\":401002,\"trackingId\":\"t\",\"message\":\"Unauthorized\",\"timestampUtc\":\"2024-01-01T00:00:00Z\",\"info\":{}}","ExceptionMessage":""}"#;
        assert_eq!(
            parse_error(None, body),
            ParsedError {
                code: Some("401002".into()),
                message: "Unauthorized".into()
            }
        );
    }

    #[test]
    fn plain_and_empty_bodies() {
        assert_eq!(
            parse_error(None, b"Bad Gateway"),
            ParsedError {
                code: None,
                message: "Bad Gateway".into()
            }
        );
        assert_eq!(
            parse_error(Some("  "), b""),
            ParsedError {
                code: None,
                message: String::new()
            }
        );
        assert_eq!(
            parse_error(None, br#"{"Message":"ErrorCode:ServerBusy"}"#)
                .code
                .as_deref(),
            Some("ServerBusy")
        );
    }

    #[test]
    fn scrub_masks_tokens_and_truncates() {
        let echoed = "denied: SharedAccessSignature sr=h&sig=abc%2Fdef&se=1&skn=p, again sig=zzz";
        let shown = scrub(echoed);
        assert!(
            !shown.contains("abc%2Fdef") && !shown.contains("zzz"),
            "{shown}"
        );
        assert!(
            shown.starts_with("denied: SharedAccessSignature=<redacted>"),
            "{shown}"
        );
        let long = "x".repeat(5000);
        assert_eq!(scrub(&long).chars().count(), MAX_MESSAGE_CHARS + 3);
        let key_echo = "HostName=h;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0 rest";
        assert!(!scrub(key_echo).contains("c2VjcmV0"));
    }

    fn api(status: u16, code: Option<&str>) -> HubError {
        HubError::Api {
            operation: HubOperation::CreateOrUpdateDevice,
            target: HubTarget::Device("edge#1".into()),
            status,
            code: code.map(str::to_string),
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn classification_helpers() {
        assert!(api(404, Some("DeviceNotFound")).is_not_found());
        assert!(api(409, Some("DeviceAlreadyExists")).is_conflict());
        assert!(api(412, None).is_precondition_failed());
        assert!(api(400, Some("EtagDoesNotMatch")).is_precondition_failed());
        assert!(!api(400, Some("ArgumentInvalid")).is_precondition_failed());
        assert!(api(401, Some("IotHubUnauthorizedAccess")).is_unauthorized());
        assert!(api(429, Some("ThrottlingException")).is_throttled());
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(api(status, None).is_transient(), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 412, 501, 505] {
            assert!(!api(status, None).is_transient(), "{status}");
        }
        let transport = HubError::Transport {
            operation: HubOperation::Query,
            target: HubTarget::Hub,
            kind: TransportKind::Connect,
            message: "refused".into(),
        };
        assert!(transport.is_transient() && !transport.is_not_found());
        assert_eq!(transport.status(), None);
    }

    #[test]
    fn display_names_the_operation_target_status_and_code() {
        let err = api(409, Some("DeviceAlreadyExists"));
        assert_eq!(
            err.to_string(),
            "IoT Hub create_or_update_device of device 'edge#1' failed: HTTP 409 DeviceAlreadyExists: m"
        );
        assert_eq!(err.device_id(), Some("edge#1"));
        let bulk = HubTarget::Devices {
            first: vec!["a".into(), "b".into()],
            count: 100,
        };
        assert_eq!(bulk.to_string(), "100 devices ('a', 'b', ...)");
    }
}
