//! Client-side rate limiting, so the operator stays under the hub's own throttles instead of
//! collecting 429s.
//!
//! One limiter per throttle class ([`OperationClass`]), sized from the documented IoT Hub quotas
//! for the hub's tier and unit count, each overridable. Two rules apply together:
//!
//! - A pacing token bucket: it starts with a modest burst (1/20 of a window's quota) and refills
//!   at the quota rate, so a freshly started operator (perhaps restarted while the hub's window
//!   still holds its predecessor's calls) ramps up instead of firing a whole window at once.
//! - A sliding-window log: the costs sent in any window (60 s for registry, query and
//!   configuration quotas; 1 s for the per-second twin quotas, plus a 2% margin for clock and
//!   network jitter) never exceed the quota, whatever mix of single calls and bulk calls (which
//!   cost one per device) is sent. This is what keeps the hub's own window from tripping; the
//!   bucket alone cannot, once a bulk call costs more than its burst.
//!
//! Callers *reserve* a send time and sleep until it, so waiting callers are served in order and a
//! bulk call larger than the burst still goes (after waiting for its share).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::operation::OperationClass;

/// A hub's pricing tier, as far as its quotas go (F1 and the basic tiers have no IoT Edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HubTier {
    #[default]
    S1,
    S2,
    S3,
}

/// Fraction of a minute's quota a bucket may spend at once.
const BURST_FRACTION: f64 = 1.0 / 20.0;

/// Quotas for one hub: tier, units and optional per-class overrides (requests per minute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Hub tier.
    pub sku: HubTier,
    /// Scale units (at least 1).
    pub units: u32,
    /// Identity registry operations per minute (bulk calls count per device).
    pub registry_operations_per_minute: Option<u32>,
    /// Queries per minute.
    pub queries_per_minute: Option<u32>,
    /// Configuration and edge deployment operations per minute.
    pub configurations_per_minute: Option<u32>,
    /// Twin reads and updates per minute (applies to both twin classes).
    pub twin_operations_per_minute: Option<u32>,
}

impl Default for RateLimits {
    /// S1 with one unit, no overrides: the smallest hub that supports IoT Edge.
    fn default() -> Self {
        RateLimits {
            sku: HubTier::S1,
            units: 1,
            registry_operations_per_minute: None,
            queries_per_minute: None,
            configurations_per_minute: None,
            twin_operations_per_minute: None,
        }
    }
}

impl RateLimits {
    /// Documented defaults for a tier, without overrides.
    pub fn for_sku(sku: HubTier, units: u32) -> Self {
        RateLimits {
            sku,
            units: units.max(1),
            ..RateLimits::default()
        }
    }

    /// The per-minute budget for a class: the override if set, else the documented quota
    /// ("IoT Hub quotas and throttling"): identity registry 100/min/unit on S1/S2 and
    /// 5,000/min/unit on S3; queries 20/min/unit on S1/S2 and 1,000/min/unit on S3;
    /// configurations 20/min/unit; twin reads 100/s (S1), max(100, 10/unit)/s (S2),
    /// 500/s/unit (S3); twin updates 50/s, max(50, 5/unit)/s, 250/s/unit.
    pub fn per_minute(&self, class: OperationClass) -> u32 {
        let units = self.units.max(1);
        let overridden = match class {
            OperationClass::Registry => self.registry_operations_per_minute,
            OperationClass::Query => self.queries_per_minute,
            OperationClass::Configuration => self.configurations_per_minute,
            OperationClass::TwinRead | OperationClass::TwinUpdate => {
                self.twin_operations_per_minute
            }
        };
        if let Some(value) = overridden {
            return value.max(1);
        }
        let per_second = |s1: u32, s2_per_unit: u32, s3_per_unit: u32| -> u32 {
            let per_second = match self.sku {
                HubTier::S1 => s1,
                HubTier::S2 => s1.max(s2_per_unit.saturating_mul(units)),
                HubTier::S3 => s3_per_unit.saturating_mul(units),
            };
            per_second.saturating_mul(60)
        };
        match (class, self.sku) {
            (OperationClass::Registry, HubTier::S3) => 5_000u32.saturating_mul(units),
            (OperationClass::Registry, _) => 100u32.saturating_mul(units),
            (OperationClass::Query, HubTier::S3) => 1_000u32.saturating_mul(units),
            (OperationClass::Query, _) => 20u32.saturating_mul(units),
            (OperationClass::Configuration, _) => 20u32.saturating_mul(units),
            (OperationClass::TwinRead, _) => per_second(100, 10, 500),
            (OperationClass::TwinUpdate, _) => per_second(50, 5, 250),
        }
    }

    /// Length of the hub's throttle window for a class: per-second quotas for twins, per-minute
    /// for the rest.
    pub fn window(&self, class: OperationClass) -> Duration {
        match class {
            OperationClass::TwinRead | OperationClass::TwinUpdate => Duration::from_secs(1),
            _ => Duration::from_secs(60),
        }
    }

    /// Operations allowed per [`RateLimits::window`].
    pub fn per_window(&self, class: OperationClass) -> f64 {
        f64::from(self.per_minute(class)) * self.window(class).as_secs_f64() / 60.0
    }

    /// Pacing bucket shape for a class: (burst, refill per second).
    pub fn bucket_shape(&self, class: OperationClass) -> (f64, f64) {
        let quota = self.per_window(class);
        let burst = (quota * BURST_FRACTION).ceil().max(1.0);
        (burst, quota / self.window(class).as_secs_f64())
    }
}

/// A token bucket that allows debt: a reservation larger than the current level succeeds and
/// the caller waits until the refill has paid it back.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn new(capacity: f64, per_second: f64, now: Instant) -> Self {
        Bucket {
            capacity,
            per_second,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// Takes `cost` tokens and returns how long the caller must wait before sending.
    fn reserve(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        self.level -= cost;
        self.debt_wait()
    }

    /// After a 429: nothing new may start for `wait`.
    fn block_for(&mut self, wait: Duration, now: Instant) {
        self.refill(now);
        self.level = self.level.min(-wait.as_secs_f64() * self.per_second);
    }

    fn debt_wait(&self) -> Duration {
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.per_second)
        }
    }
}

/// Sends within the last window, for the sliding-window rule.
#[derive(Debug, Clone)]
struct WindowLog {
    window: Duration,
    quota: f64,
    /// (send time, cost), in send-time order.
    sends: VecDeque<(Instant, f64)>,
    /// Latest reserved send time: reservations are served in order.
    last_send: Instant,
}

impl WindowLog {
    fn new(window: Duration, quota: f64, now: Instant) -> Self {
        // Margin for jitter between our clock, the network and the hub's clock.
        let window = window + window / 50;
        WindowLog {
            window,
            quota,
            sends: VecDeque::new(),
            last_send: now,
        }
    }

    /// The earliest time at or after `earliest` when `cost` fits the window quota; records it.
    /// A cost above the whole quota is sent alone in an otherwise empty window.
    fn schedule(&mut self, cost: f64, earliest: Instant, now: Instant) -> Instant {
        while let Some(&(at, _)) = self.sends.front() {
            if at + self.window <= now {
                self.sends.pop_front();
            } else {
                break;
            }
        }
        let cost = cost.min(self.quota);
        let start = earliest.max(self.last_send);
        let mut in_window: f64 = self
            .sends
            .iter()
            .filter(|(at, _)| *at + self.window > start)
            .map(|(_, c)| c)
            .sum();
        let mut send_at = start;
        const EPSILON: f64 = 1e-9;
        if in_window + cost > self.quota + EPSILON {
            for &(at, sent) in self
                .sends
                .iter()
                .filter(|(at, _)| *at + self.window > start)
            {
                in_window -= sent;
                send_at = at + self.window;
                if in_window + cost <= self.quota + EPSILON {
                    break;
                }
            }
        }
        self.sends.push_back((send_at, cost));
        self.last_send = send_at;
        send_at
    }
}

#[derive(Debug, Clone)]
struct ClassLimiter {
    bucket: Bucket,
    log: WindowLog,
}

/// Rate limiter for one hub, shared by every client and hierarchy using that hub.
#[derive(Debug)]
pub struct HubRateLimiter {
    limits: RateLimits,
    classes: Mutex<HashMap<OperationClass, ClassLimiter>>,
}

impl HubRateLimiter {
    /// A limiter with the given quotas; every bucket starts at its burst.
    pub fn new(limits: RateLimits) -> Self {
        let now = Instant::now();
        let classes = OperationClass::ALL
            .iter()
            .map(|&class| {
                let (burst, per_second) = limits.bucket_shape(class);
                let log = WindowLog::new(limits.window(class), limits.per_window(class), now);
                (
                    class,
                    ClassLimiter {
                        bucket: Bucket::new(burst, per_second, now),
                        log,
                    },
                )
            })
            .collect();
        HubRateLimiter {
            limits,
            classes: Mutex::new(classes),
        }
    }

    /// The quotas this limiter was built with (the first hierarchy's, see [`HubLimiters`]).
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Reserves `cost` operations of `class` and returns the wait before they may be sent.
    /// A dropped caller's reservation stays spent, which only makes the limiter more cautious.
    pub fn reserve(&self, class: OperationClass, cost: u32) -> Duration {
        let now = Instant::now();
        let cost = f64::from(cost.max(1));
        let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        let limiter = classes.get_mut(&class).expect("a limiter per class");
        let paced = now + limiter.bucket.reserve(cost, now);
        let send_at = limiter.log.schedule(cost, paced, now);
        send_at.saturating_duration_since(now)
    }

    /// Waits until `cost` operations of `class` may be sent; returns how long it waited.
    pub async fn acquire(&self, class: OperationClass, cost: u32) -> Duration {
        let wait = self.reserve(class, cost);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// Records that the hub throttled `class`: no new call of that class starts within `wait`.
    pub fn block_for(&self, class: OperationClass, wait: Duration) {
        let now = Instant::now();
        let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        let limiter = classes.get_mut(&class).expect("a limiter per class");
        limiter.bucket.block_for(wait, now);
        limiter.log.last_send = limiter.log.last_send.max(now + wait);
    }
}

/// Process-wide registry of limiters keyed by hub host name, so every hierarchy on one hub
/// shares one budget.
///
/// The first caller for a host decides that hub's quotas; later callers get the same limiter
/// whatever limits they pass (compare [`HubRateLimiter::limits`] to warn about a mismatch).
/// Limiters live as long as the registry: a handful per process.
#[derive(Debug, Default)]
pub struct HubLimiters {
    by_host: Mutex<HashMap<String, Arc<HubRateLimiter>>>,
}

impl HubLimiters {
    /// An empty registry (tests; the operator uses [`HubLimiters::global`]).
    pub fn new() -> Self {
        HubLimiters::default()
    }

    /// The registry shared by the whole process.
    pub fn global() -> &'static HubLimiters {
        static GLOBAL: OnceLock<HubLimiters> = OnceLock::new();
        GLOBAL.get_or_init(HubLimiters::new)
    }

    /// The limiter for `host` (case-insensitive, port included), created with `limits` if this
    /// is the first request for that host.
    pub fn for_hub(&self, host: &str, limits: &RateLimits) -> Arc<HubRateLimiter> {
        let mut by_host = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        by_host
            .entry(host.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(HubRateLimiter::new(limits.clone())))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_quotas_by_tier_and_units() {
        use OperationClass::*;
        let s1 = RateLimits::for_sku(HubTier::S1, 1);
        assert_eq!(s1.per_minute(Registry), 100);
        assert_eq!(s1.per_minute(Query), 20);
        assert_eq!(s1.per_minute(Configuration), 20);
        assert_eq!(s1.per_minute(TwinRead), 6_000);
        assert_eq!(s1.per_minute(TwinUpdate), 3_000);
        let s1x3 = RateLimits::for_sku(HubTier::S1, 3);
        assert_eq!(s1x3.per_minute(Registry), 300);
        assert_eq!(
            s1x3.per_minute(TwinRead),
            6_000,
            "S1 twin reads are not per unit"
        );
        let s2x20 = RateLimits::for_sku(HubTier::S2, 20);
        assert_eq!(s2x20.per_minute(Registry), 2_000);
        assert_eq!(s2x20.per_minute(TwinRead), 200 * 60);
        assert_eq!(s2x20.per_minute(TwinUpdate), 100 * 60);
        assert_eq!(
            RateLimits::for_sku(HubTier::S2, 2).per_minute(TwinRead),
            6_000
        );
        let s3x2 = RateLimits::for_sku(HubTier::S3, 2);
        assert_eq!(s3x2.per_minute(Registry), 10_000);
        assert_eq!(s3x2.per_minute(Query), 2_000);
        assert_eq!(s3x2.per_minute(Configuration), 40);
        assert_eq!(s3x2.per_minute(TwinRead), 60_000);
        assert_eq!(s3x2.per_minute(TwinUpdate), 30_000);
    }

    #[test]
    fn windows_and_bucket_shapes() {
        let s1 = RateLimits::default();
        assert_eq!(s1.window(OperationClass::Registry), Duration::from_secs(60));
        assert_eq!(s1.window(OperationClass::TwinRead), Duration::from_secs(1));
        assert_eq!(s1.per_window(OperationClass::TwinRead), 100.0);
        // S1 registry: burst 5, then 100 per minute.
        assert_eq!(
            s1.bucket_shape(OperationClass::Registry),
            (5.0, 100.0 / 60.0)
        );
        // S1 queries: burst 1, 20 per minute.
        assert_eq!(s1.bucket_shape(OperationClass::Query), (1.0, 20.0 / 60.0));
        // S1 twin reads: burst 5 of the 100 per second.
        assert_eq!(s1.bucket_shape(OperationClass::TwinRead), (5.0, 100.0));
        for sku in [HubTier::S1, HubTier::S2, HubTier::S3] {
            for units in [1, 2, 10, 200] {
                let limits = RateLimits::for_sku(sku, units);
                for class in OperationClass::ALL {
                    let (burst, _) = limits.bucket_shape(class);
                    assert!(burst >= 1.0 && burst <= limits.per_window(class).max(1.0));
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_pacing() {
        let limiter = HubRateLimiter::new(RateLimits::default());
        // Burst of 5 goes at once.
        for _ in 0..5 {
            assert_eq!(limiter.reserve(OperationClass::Registry, 1), Duration::ZERO);
        }
        // The sixth waits one token's worth (0.6 s at 100/min), the seventh queues behind it.
        let wait = limiter.reserve(OperationClass::Registry, 1);
        assert!((wait.as_secs_f64() - 0.6).abs() < 1e-6, "{wait:?}");
        let wait = limiter.reserve(OperationClass::Registry, 1);
        assert!((wait.as_secs_f64() - 1.2).abs() < 1e-6, "{wait:?}");
        // Other classes are independent.
        assert_eq!(limiter.reserve(OperationClass::Query, 1), Duration::ZERO);
    }

    /// Sends `costs` one after the other through the limiter (paused time) and returns when
    /// each went out.
    async fn send_all(
        limiter: &HubRateLimiter,
        class: OperationClass,
        costs: &[u32],
    ) -> Vec<(Duration, u32)> {
        let start = Instant::now();
        let mut sent = Vec::new();
        for &cost in costs {
            limiter.acquire(class, cost).await;
            sent.push((start.elapsed(), cost));
        }
        sent
    }

    /// The largest total cost sent within any half-open window `[t, t + window)`.
    fn busiest_window(sent: &[(Duration, u32)], window: Duration) -> u32 {
        sent.iter()
            .map(|(from, _)| {
                sent.iter()
                    .filter(|(at, _)| at >= from && *at < *from + window)
                    .map(|(_, cost)| cost)
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn single_calls_never_exceed_the_quota_in_any_minute() {
        let limiter = HubRateLimiter::new(RateLimits::default());
        let sent = send_all(&limiter, OperationClass::Registry, &[1; 300]).await;
        assert_eq!(busiest_window(&sent, Duration::from_secs(60)), 100);
        // The budget is used: 300 calls take about three minutes, not much more.
        let last = sent.last().unwrap().0;
        assert!(last < Duration::from_secs(200), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn mixed_single_and_bulk_calls_never_exceed_the_quota_in_any_minute() {
        // The case a plain token bucket gets wrong: singles use the refill, then a bulk call
        // costing a whole window lands in the same minute.
        let limiter = HubRateLimiter::new(RateLimits::default());
        let mut costs = vec![1; 90];
        costs.extend([100, 50, 1, 1, 100, 3, 100]);
        let sent = send_all(&limiter, OperationClass::Registry, &costs).await;
        assert!(
            busiest_window(&sent, Duration::from_secs(60)) <= 100,
            "{sent:?}"
        );
        // Every call was eventually sent.
        assert_eq!(sent.len(), costs.len());
    }

    #[tokio::test(start_paused = true)]
    async fn twin_reads_respect_the_per_second_quota() {
        let limiter = HubRateLimiter::new(RateLimits::default());
        let sent = send_all(&limiter, OperationClass::TwinRead, &[1; 400]).await;
        assert!(busiest_window(&sent, Duration::from_secs(1)) <= 100);
        assert!(sent.last().unwrap().0 < Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn bulk_costs_are_paid_as_debt() {
        let limiter = HubRateLimiter::new(RateLimits::default());
        // 100 devices with 5 in the bucket: wait for 95 at 100/min = 57 s.
        let waited = limiter.acquire(OperationClass::Registry, 100).await;
        assert!((waited.as_secs_f64() - 57.0).abs() < 1e-6, "{waited:?}");
        // Right after, the whole quota sits in the window: the next call waits until the bulk
        // call leaves it (60 s plus the 2% margin).
        let wait = limiter.reserve(OperationClass::Registry, 1);
        assert!((wait.as_secs_f64() - 61.2).abs() < 0.01, "{wait:?}");
        // After a long pause the bucket is full again, but only up to the burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(limiter.reserve(OperationClass::Registry, 5), Duration::ZERO);
        assert!(limiter.reserve(OperationClass::Registry, 1) > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_blocks_new_calls_for_the_wait() {
        let limiter = HubRateLimiter::new(RateLimits::default());
        limiter.block_for(OperationClass::Query, Duration::from_secs(10));
        let wait = limiter.reserve(OperationClass::Query, 1);
        // 10 s of block, plus one token at 20/min.
        assert!((wait.as_secs_f64() - 13.0).abs() < 1e-6, "{wait:?}");
        // A shorter block does not shorten an existing longer wait.
        limiter.block_for(OperationClass::Query, Duration::from_secs(1));
        let wait2 = limiter.reserve(OperationClass::Query, 1);
        assert!(wait2 > wait);
    }

    #[test]
    fn registry_shares_one_limiter_per_host_and_first_settings_win() {
        let limiters = HubLimiters::new();
        let first = limiters.for_hub(
            "MyHub.azure-devices.net",
            &RateLimits::for_sku(HubTier::S3, 1),
        );
        let second = limiters.for_hub("myhub.azure-devices.net", &RateLimits::default());
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(second.limits().sku, HubTier::S3);
        let other = limiters.for_hub("other.azure-devices.net", &RateLimits::default());
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(Arc::ptr_eq(
            &HubLimiters::global().for_hub("g.example", &RateLimits::default()),
            &HubLimiters::global().for_hub("G.EXAMPLE", &RateLimits::default())
        ));
    }
}
