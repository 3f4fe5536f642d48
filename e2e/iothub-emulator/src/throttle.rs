//! Per-hub quotas by SKU and unit count (Microsoft Learn, "IoT Hub quotas and throttling"), counted in fixed windows.
//!
//! A window opens with the first request after the previous one closed; requests beyond the
//! limit inside it get 429 with the seconds until it closes. Time comes from the caller, so
//! tests move a manual clock instead of sleeping.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::routes::OperationClass;

/// IoT Hub standard tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sku {
    S1,
    S2,
    S3,
}

impl std::str::FromStr for Sku {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "S1" => Ok(Sku::S1),
            "S2" => Ok(Sku::S2),
            "S3" => Ok(Sku::S3),
            other => Err(format!("unknown SKU '{other}'; use S1, S2 or S3")),
        }
    }
}

/// A limit: at most `limit` units per `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub limit: u64,
    pub window_ms: i64,
}

const MINUTE: i64 = 60_000;
const SECOND: i64 = 1_000;

/// The documented throttles of a SKU with `units` units.
pub fn limits_for(sku: Sku, units: u64) -> HashMap<OperationClass, Limit> {
    let units = units.max(1);
    let per_minute = |n: u64| Limit {
        limit: n,
        window_ms: MINUTE,
    };
    let per_second = |n: u64| Limit {
        limit: n,
        window_ms: SECOND,
    };
    let (registry, query, twin_read, twin_update) = match sku {
        Sku::S1 => (100 * units, 20 * units, 100, 50),
        Sku::S2 => (
            100 * units,
            20 * units,
            (10 * units).max(100),
            (5 * units).max(50),
        ),
        Sku::S3 => (5000 * units, 1000 * units, 500 * units, 250 * units),
    };
    HashMap::from([
        (OperationClass::Registry, per_minute(registry)),
        (OperationClass::Query, per_minute(query)),
        (OperationClass::TwinRead, per_second(twin_read)),
        (OperationClass::TwinUpdate, per_second(twin_update)),
        (OperationClass::Configurations, per_minute(20 * units)),
    ])
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: i64,
    used: u64,
}

/// Counts quota use per operation class.
#[derive(Debug)]
pub struct Throttle {
    limits: HashMap<OperationClass, Limit>,
    windows: Mutex<HashMap<OperationClass, Window>>,
}

impl Throttle {
    /// A throttle with these limits; classes without a limit are never throttled.
    pub fn new(limits: HashMap<OperationClass, Limit>) -> Self {
        Self {
            limits,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// No throttling at all (benchmarks).
    pub fn unlimited() -> Self {
        Self::new(HashMap::new())
    }

    /// The limit of a class, if any.
    pub fn limit(&self, class: OperationClass) -> Option<Limit> {
        self.limits.get(&class).copied()
    }

    /// Takes `units` from the class's current window, or answers how many seconds to wait.
    pub fn try_acquire(&self, class: OperationClass, units: u64, now_ms: i64) -> Result<(), u64> {
        self.try_acquire_ms(class, units, now_ms)
            .map_err(|wait_ms| u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1))
    }

    /// Like [`Throttle::try_acquire`], but answers the wait in milliseconds (at least 1).
    pub fn try_acquire_ms(
        &self,
        class: OperationClass,
        units: u64,
        now_ms: i64,
    ) -> Result<(), i64> {
        let Some(limit) = self.limits.get(&class) else {
            return Ok(());
        };
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows.entry(class).or_insert(Window {
            start_ms: now_ms,
            used: 0,
        });
        if now_ms >= window.start_ms + limit.window_ms {
            *window = Window {
                start_ms: now_ms,
                used: 0,
            };
        }
        if window.used + units <= limit.limit {
            window.used += units;
            return Ok(());
        }
        Err((window.start_ms + limit.window_ms - now_ms).max(1))
    }

    /// Forgets all windows (used by the stats reset).
    pub fn reset(&self) {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s1_one_unit_allows_100_registry_operations_a_minute() {
        let throttle = Throttle::new(limits_for(Sku::S1, 1));
        let t0 = 1_000_000;
        for i in 0..100 {
            assert!(
                throttle
                    .try_acquire(OperationClass::Registry, 1, t0 + i)
                    .is_ok()
            );
        }
        assert_eq!(
            throttle.try_acquire(OperationClass::Registry, 1, t0 + 100),
            Err(60)
        );
        assert_eq!(
            throttle.try_acquire(OperationClass::Registry, 1, t0 + 30_500),
            Err(30)
        );
        // Other classes have their own windows.
        assert!(
            throttle
                .try_acquire(OperationClass::Query, 1, t0 + 100)
                .is_ok()
        );
        assert!(
            throttle
                .try_acquire(OperationClass::Registry, 1, t0 + 60_000)
                .is_ok()
        );
    }

    #[test]
    fn bulk_calls_count_per_device() {
        // The docs' example: S1 with one unit accepts two bulk calls of 50 devices a minute.
        let throttle = Throttle::new(limits_for(Sku::S1, 1));
        assert!(
            throttle
                .try_acquire(OperationClass::Registry, 50, 0)
                .is_ok()
        );
        assert!(
            throttle
                .try_acquire(OperationClass::Registry, 50, 1)
                .is_ok()
        );
        assert!(
            throttle
                .try_acquire(OperationClass::Registry, 50, 2)
                .is_err()
        );
    }

    #[test]
    fn limits_scale_with_sku_and_units() {
        let s2 = limits_for(Sku::S2, 20);
        assert_eq!(s2[&OperationClass::Registry].limit, 2000);
        assert_eq!(s2[&OperationClass::TwinRead].limit, 200);
        assert_eq!(limits_for(Sku::S2, 1)[&OperationClass::TwinRead].limit, 100);
        let s3 = limits_for(Sku::S3, 2);
        assert_eq!(s3[&OperationClass::Registry].limit, 10_000);
        assert_eq!(s3[&OperationClass::Query].limit, 2000);
        assert_eq!(s3[&OperationClass::Configurations].limit, 40);
        assert_eq!(limits_for(Sku::S1, 3)[&OperationClass::Query].limit, 60);
    }

    #[test]
    fn twin_reads_are_per_second() {
        let throttle = Throttle::new(limits_for(Sku::S1, 1));
        for _ in 0..100 {
            assert!(throttle.try_acquire(OperationClass::TwinRead, 1, 0).is_ok());
        }
        assert_eq!(
            throttle.try_acquire(OperationClass::TwinRead, 1, 10),
            Err(1)
        );
        assert!(
            throttle
                .try_acquire(OperationClass::TwinRead, 1, 1000)
                .is_ok()
        );
    }

    #[test]
    fn waits_are_also_told_in_milliseconds() {
        let throttle = Throttle::new(limits_for(Sku::S1, 1));
        for _ in 0..50 {
            assert!(
                throttle
                    .try_acquire_ms(OperationClass::TwinUpdate, 1, 0)
                    .is_ok()
            );
        }
        assert_eq!(
            throttle.try_acquire_ms(OperationClass::TwinUpdate, 1, 250),
            Err(750)
        );
        assert_eq!(
            throttle.try_acquire(OperationClass::TwinUpdate, 1, 250),
            Err(1)
        );
    }

    #[test]
    fn unlimited_never_throttles() {
        let throttle = Throttle::unlimited();
        for _ in 0..10_000 {
            assert!(
                throttle
                    .try_acquire(OperationClass::Registry, 100, 0)
                    .is_ok()
            );
        }
        assert!("s2".parse::<Sku>().is_ok());
        assert!("F1".parse::<Sku>().is_err());
    }
}
