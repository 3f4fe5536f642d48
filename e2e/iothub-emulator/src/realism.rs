//! Behaviours of the real IoT Hub that its swagger does not show, each behind a knob.
//!
//! [`Realism::azure`] has Azure's documented values and is what the command line starts from;
//! its flags tune single values (tests shorten the timing ones). [`Realism::default`] is the
//! immediate variant the emulator's own HTTP tests embed: no query lag, evaluation on every
//! change, no shaping, `Retry-After` on 429s; the character rules and limits stay on. The
//! README's tables name the public source of each behaviour.

use std::collections::BTreeSet;

use crate::throttle::Sku;

/// Query lag of the `--azure` preset: Learn ("Queries for IoT Hub device and module twins")
/// says results usually arrive "in the order of a few seconds".
pub const AZURE_QUERY_LAG_MS: u64 = 3_000;
/// Configuration evaluation interval of the `--azure` preset: about every five minutes.
pub const AZURE_CONFIG_EVAL_INTERVAL_SECS: u64 = 300;
/// Longest query expression Azure accepts, in characters.
pub const AZURE_MAX_QUERY_LENGTH: usize = 8_192;
/// How long the `--azure` preset queues a request over a throttle before it answers 429.
pub const AZURE_THROTTLE_SHAPING_MS: u64 = 5_000;
/// Configurations (automatic device configurations and edge deployments, layered included).
pub const DEFAULT_MAX_CONFIGURATIONS: usize = 100;
/// Custom modules one edge deployment may carry (system modules not counted).
pub const DEFAULT_MAX_MODULES_PER_DEPLOYMENT: usize = 50;
/// Size of one billed message on the standard tiers.
pub const MESSAGE_CHUNK_BYTES: usize = 4 * 1024;

/// Messages per day one unit of a tier may use (Learn, "Choose the right IoT Hub tier").
pub fn daily_messages_per_unit(sku: Sku) -> u64 {
    match sku {
        Sku::S1 => 400_000,
        Sku::S2 => 6_000_000,
        Sku::S3 => 300_000_000,
    }
}

/// Messages billed for an operation of `bytes` bytes: 4 KB chunks, at least one.
pub fn billed_messages(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(MESSAGE_CHUNK_BYTES))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Which bulk-created devices get a `DeviceRegisteredWithoutTwin` warning.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum RegisteredWithoutTwin {
    /// None (the default).
    #[default]
    Off,
    /// Each created device with this probability (0..=1).
    Rate(f64),
    /// Exactly these device ids.
    Ids(BTreeSet<String>),
}

impl RegisteredWithoutTwin {
    /// Parses `--inject-registered-without-twin`: a number from 0 to 1, or device ids separated
    /// by commas.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(rate) = text.parse::<f64>() {
            return if (0.0..=1.0).contains(&rate) {
                Ok(if rate == 0.0 {
                    Self::Off
                } else {
                    Self::Rate(rate)
                })
            } else {
                Err(format!(
                    "'{text}' is not a rate from 0 to 1 (or give device ids separated by commas)"
                ))
            };
        }
        let ids: BTreeSet<String> = text
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return Err("give a rate from 0 to 1 or device ids separated by commas".into());
        }
        Ok(Self::Ids(ids))
    }

    /// Whether the bulk create of `device_id` loses its twin.
    pub fn hits(&self, device_id: &str) -> bool {
        match self {
            Self::Off => false,
            Self::Rate(rate) => rand::random::<f64>() < *rate,
            Self::Ids(ids) => ids.contains(device_id),
        }
    }
}

/// The realism knobs (see the README's flag table).
#[derive(Debug, Clone, PartialEq)]
pub struct Realism {
    /// Twin queries see writes this long after they happen (0: at once).
    pub query_lag_ms: u64,
    /// Automatic configurations are evaluated at creation and then this often (0: on every
    /// change, synchronously).
    pub config_eval_interval_secs: u64,
    /// Configuration labels must follow Azure's character rule.
    pub check_labels: bool,
    /// Longest query expression in characters (0: no limit).
    pub max_query_length: usize,
    /// String literals follow Azure: only `\'`, `\"`, `\\` and `\uXXXX` escapes in queries;
    /// in target conditions single quotes only, a quote doubled, no backslash.
    pub check_literals: bool,
    /// Twin keys may not contain `#` either, and configuration content is checked with the
    /// twin key rules.
    pub check_twin_keys: bool,
    /// Billed messages per UTC day before every request gets 403 (None: unlimited).
    pub daily_message_quota: Option<u64>,
    /// A request over a throttle waits up to this long for the next window before it gets 429.
    pub throttle_shaping_ms: u64,
    /// 429 answers carry `Retry-After`.
    pub retry_after: bool,
    /// Configurations one hub may hold.
    pub max_configurations: usize,
    /// Custom modules per edge deployment (0: no limit).
    pub max_modules_per_deployment: usize,
    /// Injected `DeviceRegisteredWithoutTwin` warnings on bulk create.
    pub registered_without_twin: RegisteredWithoutTwin,
}

impl Default for Realism {
    /// Azure's rules with immediate timing, for tests that check one request at a time.
    fn default() -> Self {
        Self {
            query_lag_ms: 0,
            config_eval_interval_secs: 0,
            check_labels: true,
            max_query_length: AZURE_MAX_QUERY_LENGTH,
            check_literals: true,
            check_twin_keys: true,
            daily_message_quota: None,
            throttle_shaping_ms: 0,
            retry_after: true,
            max_configurations: DEFAULT_MAX_CONFIGURATIONS,
            max_modules_per_deployment: DEFAULT_MAX_MODULES_PER_DEPLOYMENT,
            registered_without_twin: RegisteredWithoutTwin::Off,
        }
    }
}

impl Realism {
    /// Azure's behaviour for a hub of `units` units of `sku` (no daily quota without a tier).
    /// Injected warnings stay off: Azure documents the warning, not how often it comes.
    pub fn azure(sku: Option<Sku>, units: u64) -> Self {
        Self {
            query_lag_ms: AZURE_QUERY_LAG_MS,
            config_eval_interval_secs: AZURE_CONFIG_EVAL_INTERVAL_SECS,
            check_labels: true,
            max_query_length: AZURE_MAX_QUERY_LENGTH,
            check_literals: true,
            check_twin_keys: true,
            daily_message_quota: sku
                .map(|sku| daily_messages_per_unit(sku).saturating_mul(units.max(1))),
            throttle_shaping_ms: AZURE_THROTTLE_SHAPING_MS,
            retry_after: false,
            max_configurations: DEFAULT_MAX_CONFIGURATIONS,
            max_modules_per_deployment: DEFAULT_MAX_MODULES_PER_DEPLOYMENT,
            registered_without_twin: RegisteredWithoutTwin::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_billed_in_4_kb_chunks() {
        assert_eq!(billed_messages(0), 1);
        assert_eq!(billed_messages(100), 1);
        assert_eq!(billed_messages(4096), 1);
        assert_eq!(billed_messages(4097), 2);
        // The pricing page's example: a 6 KB message is two messages.
        assert_eq!(billed_messages(6 * 1024), 2);
        assert_eq!(billed_messages(12 * 1024), 3);
    }

    #[test]
    fn daily_quotas_per_tier_and_unit() {
        assert_eq!(daily_messages_per_unit(Sku::S1), 400_000);
        assert_eq!(daily_messages_per_unit(Sku::S2), 6_000_000);
        assert_eq!(daily_messages_per_unit(Sku::S3), 300_000_000);
        assert_eq!(
            Realism::azure(Some(Sku::S1), 3).daily_message_quota,
            Some(1_200_000)
        );
        assert_eq!(Realism::azure(None, 1).daily_message_quota, None);
        assert_eq!(Realism::default().daily_message_quota, None);
    }

    #[test]
    fn registered_without_twin_takes_a_rate_or_ids() {
        assert_eq!(
            RegisteredWithoutTwin::parse("0").unwrap(),
            RegisteredWithoutTwin::Off
        );
        assert_eq!(
            RegisteredWithoutTwin::parse("0.25").unwrap(),
            RegisteredWithoutTwin::Rate(0.25)
        );
        let ids = RegisteredWithoutTwin::parse("a, b,,c").unwrap();
        assert!(ids.hits("a") && ids.hits("c") && !ids.hits("d"));
        assert!(RegisteredWithoutTwin::parse("1.5").is_err());
        assert!(RegisteredWithoutTwin::parse(" , ").is_err());
        assert!(RegisteredWithoutTwin::Rate(1.0).hits("x"));
        assert!(!RegisteredWithoutTwin::Off.hits("x"));
    }
}
