//! Lower bounds that a hub's quotas put on a run's duration, from the operator's own quota
//! table (`edge_hierarchy_operator::iothub::RateLimits`), so the bound and the operator's client
//! budget are the same numbers.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use edge_hierarchy_operator::iothub::{OperationClass, RateLimits};

use crate::stats::HubStats;

/// The operator's throttle class of one of the emulator's stats classes (`unrouted`, `device`
/// and `statistics` have no quota).
pub fn class_of_emulator_class(name: &str) -> Option<OperationClass> {
    match name {
        "registry" => Some(OperationClass::Registry),
        "query" => Some(OperationClass::Query),
        "twinRead" => Some(OperationClass::TwinRead),
        "twinUpdate" => Some(OperationClass::TwinUpdate),
        "configurations" => Some(OperationClass::Configuration),
        _ => None,
    }
}

/// Quota units a run took per class, as the emulator counted them.
pub fn units_by_class(stats: &HubStats) -> BTreeMap<OperationClass, u64> {
    let mut units = BTreeMap::new();
    for (name, class_use) in &stats.classes {
        if let Some(class) = class_of_emulator_class(name) {
            *units.entry(class).or_default() += class_use.units;
        }
    }
    units
}

/// The time one class's quota needs for `units` operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassFloor {
    /// The throttle class.
    pub class: OperationClass,
    /// Operations (quota units) in that class.
    pub units: u64,
    /// The class's quota per minute.
    pub per_minute: u32,
    /// `units / per_minute` minutes.
    pub time: Duration,
}

impl fmt::Display for ClassFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} at {}/min = {:.1} s",
            self.units,
            self.class,
            self.per_minute,
            self.time.as_secs_f64()
        )
    }
}

/// Per class, the time its quota needs for the given operations; classes are throttled
/// independently, so the slowest of them bounds the run. Sorted slowest first; zero-unit
/// classes left out.
pub fn class_floors(units: &BTreeMap<OperationClass, u64>, limits: &RateLimits) -> Vec<ClassFloor> {
    let mut floors: Vec<ClassFloor> = units
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(&class, &n)| {
            let per_minute = limits.per_minute(class);
            ClassFloor {
                class,
                units: n,
                per_minute,
                time: Duration::from_secs_f64(n as f64 * 60.0 / f64::from(per_minute)),
            }
        })
        .collect();
    floors.sort_by(|a, b| b.time.cmp(&a.time).then(a.class.cmp(&b.class)));
    floors
}

/// The minimum time of `operations` calls to a class that allows `per_window` calls per
/// fixed window of `window`, made by a client that waits out each 429: the last batch can start
/// only after `ceil(operations / per_window) - 1` full windows.
pub fn fixed_window_floor(operations: u64, per_window: u32, window: Duration) -> Duration {
    if operations == 0 || per_window == 0 {
        return Duration::ZERO;
    }
    let windows = operations.div_ceil(u64::from(per_window));
    window * u32::try_from(windows - 1).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use edge_hierarchy_operator::iothub::HubTier;

    use super::*;

    #[test]
    fn registry_creations_dominate_an_s3_hierarchy() {
        let s3 = RateLimits::for_sku(HubTier::S3, 1);
        let units = BTreeMap::from([
            (OperationClass::Registry, 1000),
            (OperationClass::Query, 40),
            (OperationClass::TwinRead, 0),
        ]);
        let floors = class_floors(&units, &s3);
        assert_eq!(floors.len(), 2, "zero-unit classes are left out");
        assert_eq!(floors[0].class, OperationClass::Registry);
        assert_eq!(floors[0].per_minute, 5000);
        assert_eq!(floors[0].time, Duration::from_secs(12));
        assert_eq!(floors[1].per_minute, 1000);
        assert_eq!(floors[1].time, Duration::from_millis(2400));
        assert_eq!(floors[0].to_string(), "1000 registry at 5000/min = 12.0 s");
    }

    #[test]
    fn configurations_dominate_per_device_deployments() {
        let s3 = RateLimits::for_sku(HubTier::S3, 1);
        let units = BTreeMap::from([
            (OperationClass::Registry, 4000),
            (OperationClass::Configuration, 700),
        ]);
        let floors = class_floors(&units, &s3);
        assert_eq!(floors[0].class, OperationClass::Configuration);
        assert_eq!(floors[0].time, Duration::from_secs(2100));
        // Twin quotas are per second (500/s on S3); per_minute scales them.
        let twins = class_floors(&BTreeMap::from([(OperationClass::TwinRead, 500)]), &s3);
        assert_eq!(twins[0].time, Duration::from_secs(1));
    }

    #[test]
    fn emulator_classes_map_to_the_operators() {
        let stats: HubStats = serde_json::from_value(serde_json::json!({
            "total": 0,
            "classes": {
                "registry": {"requests": 10, "writes": 10, "units": 1000},
                "configurations": {"requests": 3, "writes": 3, "units": 3},
                "twinRead": {"requests": 5, "writes": 0, "units": 5},
                "device": {"requests": 9, "writes": 9, "units": 0},
                "unrouted": {"requests": 1, "writes": 0, "units": 0},
            },
        }))
        .unwrap();
        let units = units_by_class(&stats);
        assert_eq!(
            units,
            BTreeMap::from([
                (OperationClass::Registry, 1000),
                (OperationClass::TwinRead, 5),
                (OperationClass::Configuration, 3)
            ])
        );
        assert_eq!(
            class_of_emulator_class("twinUpdate"),
            Some(OperationClass::TwinUpdate)
        );
        assert_eq!(
            class_of_emulator_class("query"),
            Some(OperationClass::Query)
        );
    }

    #[test]
    fn a_fixed_window_lets_the_last_batch_start_after_the_full_windows_before_it() {
        let minute = Duration::from_secs(60);
        assert_eq!(fixed_window_floor(0, 20, minute), Duration::ZERO);
        assert_eq!(fixed_window_floor(20, 20, minute), Duration::ZERO);
        assert_eq!(fixed_window_floor(21, 20, minute), minute);
        assert_eq!(fixed_window_floor(700, 20, minute), minute * 34);
        assert_eq!(fixed_window_floor(5, 0, minute), Duration::ZERO);
    }
}
