//! When a certificate is re-issued.

use std::time::Duration;

use jiff::Timestamp;

use super::error::PkiError;
use super::inspect::inspect_certificate_pem;

/// The moment a certificate ending at `not_after` is due: `not_after - renew_before`
/// (never before the earliest representable time).
pub fn renewal_time(not_after: Timestamp, renew_before: Duration) -> Timestamp {
    not_after
        .checked_sub(renew_before)
        .unwrap_or(Timestamp::MIN)
}

/// Whether the first certificate of `cert_pem` is due for renewal at `now`: at or after its
/// [`renewal_time`], or not valid yet (issued by a clock ahead of this one, which devices would
/// reject too). An unreadable certificate is an error; the caller decides (usually: re-issue
/// and say why).
pub fn needs_renewal(
    cert_pem: &str,
    renew_before: Duration,
    now: Timestamp,
) -> Result<bool, PkiError> {
    let info = inspect_certificate_pem(cert_pem)?;
    Ok(now >= renewal_time(info.not_after, renew_before) || now < info.not_before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn renewal_time_is_not_after_minus_renew_before() {
        let not_after = at("2025-03-01T00:00:00Z");
        assert_eq!(
            renewal_time(not_after, Duration::from_secs(720 * 3600)),
            at("2025-01-30T00:00:00Z")
        );
        assert_eq!(renewal_time(not_after, Duration::ZERO), not_after);
        assert_eq!(
            renewal_time(Timestamp::MIN, Duration::from_secs(60)),
            Timestamp::MIN
        );
    }
}
