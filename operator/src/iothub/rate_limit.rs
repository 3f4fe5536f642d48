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
//!
//! Between tenants ([`HubLimiters`], docs/tenancy.md): every hierarchy on a hub is paced twice,
//! by a limiter of its own sized from its own `rateLimits`, and by the hub's shared limiter,
//! sized per class from the *upper median* of the declarations of the hierarchies using the hub
//! now. A hierarchy's declaration therefore binds its own calls fully, but moves the hub's
//! budget only within the range of what the others declare: it cannot push the budget the
//! others share below what they declared (with two hierarchies the hub takes the larger of the
//! two, and each is still held to its own), and when the others agree it cannot move it at all.
//! A change of a declaration takes effect at the hierarchy's next reconcile, no restart needed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
        bucket_shape(self.per_minute(class), class)
    }

    /// The per-minute budget of every class.
    pub fn all_per_minute(&self) -> Quotas {
        Quotas(OperationClass::ALL.map(|class| (class, self.per_minute(class))))
    }
}

/// Length of the hub's throttle window for a class: per-second quotas for twins, per-minute for
/// the rest.
fn window_of(class: OperationClass) -> Duration {
    RateLimits::default().window(class)
}

/// Operations of `class` allowed per window at `per_minute`.
fn per_window(per_minute: u32, class: OperationClass) -> f64 {
    f64::from(per_minute.max(1)) * window_of(class).as_secs_f64() / 60.0
}

/// (burst, refill per second) of the pacing bucket for `per_minute` operations of `class`.
fn bucket_shape(per_minute: u32, class: OperationClass) -> (f64, f64) {
    let quota = per_window(per_minute, class);
    let burst = (quota * BURST_FRACTION).ceil().max(1.0);
    (burst, quota / window_of(class).as_secs_f64())
}

/// Operations per minute for each throttle class: what a limiter enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas(pub [(OperationClass, u32); 5]);

impl Quotas {
    /// The per-minute budget of `class`.
    pub fn per_minute(&self, class: OperationClass) -> u32 {
        self.0
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(1, |(_, v)| *v)
    }

    /// The hub's shared budget from the declarations of the hierarchies using it: per class the
    /// upper median (for one declaration that one, for two the larger, for three the middle
    /// one). A single declaration can move it only between the values the others declared, so
    /// no hierarchy can lower the budget the others share below what they declare themselves,
    /// and when the others agree, no hierarchy can raise it either. `None` without
    /// declarations.
    pub fn upper_median<'a>(declarations: impl IntoIterator<Item = &'a Quotas>) -> Option<Quotas> {
        let declarations: Vec<&Quotas> = declarations.into_iter().collect();
        if declarations.is_empty() {
            return None;
        }
        Some(Quotas(OperationClass::ALL.map(|class| {
            let mut values: Vec<u32> = declarations.iter().map(|q| q.per_minute(class)).collect();
            values.sort_unstable();
            (class, values[values.len() / 2])
        })))
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

    /// New capacity and rate, keeping what was spent (a level above the new capacity is cut).
    fn reshape(&mut self, capacity: f64, per_second: f64, now: Instant) {
        self.refill(now);
        self.capacity = capacity;
        self.per_second = per_second;
        self.level = self.level.min(capacity);
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

impl ClassLimiter {
    fn new(class: OperationClass, per_minute: u32, now: Instant) -> Self {
        let (burst, per_second) = bucket_shape(per_minute, class);
        ClassLimiter {
            bucket: Bucket::new(burst, per_second, now),
            log: WindowLog::new(window_of(class), per_window(per_minute, class), now),
        }
    }
}

#[derive(Debug)]
struct LimiterState {
    quotas: Quotas,
    classes: HashMap<OperationClass, ClassLimiter>,
}

/// Rate limiter for one budget: a hub's shared one, or one hierarchy's own on a hub.
#[derive(Debug)]
pub struct HubRateLimiter {
    state: Mutex<LimiterState>,
}

impl HubRateLimiter {
    /// A limiter with the given quotas; every bucket starts at its burst.
    pub fn new(limits: RateLimits) -> Self {
        Self::with_quotas(limits.all_per_minute())
    }

    /// A limiter enforcing `quotas`.
    pub fn with_quotas(quotas: Quotas) -> Self {
        let now = Instant::now();
        let classes = quotas
            .0
            .iter()
            .map(|&(class, per_minute)| (class, ClassLimiter::new(class, per_minute, now)))
            .collect();
        HubRateLimiter {
            state: Mutex::new(LimiterState { quotas, classes }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The quotas this limiter enforces now.
    pub fn quotas(&self) -> Quotas {
        self.state().quotas
    }

    /// Enforces `quotas` from now on, keeping what was already sent in each window (a lower
    /// budget makes the next callers wait until the sends of the window fit it).
    pub fn set_quotas(&self, quotas: Quotas) {
        let now = Instant::now();
        let mut state = self.state();
        if state.quotas == quotas {
            return;
        }
        for &(class, per_minute) in &quotas.0 {
            let limiter = state.classes.get_mut(&class).expect("a limiter per class");
            let (burst, per_second) = bucket_shape(per_minute, class);
            limiter.bucket.reshape(burst, per_second, now);
            limiter.log.quota = per_window(per_minute, class);
        }
        state.quotas = quotas;
    }

    /// Reserves `cost` operations of `class` and returns the wait before they may be sent.
    /// A dropped caller's reservation stays spent, which only makes the limiter more cautious.
    pub fn reserve(&self, class: OperationClass, cost: u32) -> Duration {
        let now = Instant::now();
        let cost = f64::from(cost.max(1));
        let mut state = self.state();
        let limiter = state.classes.get_mut(&class).expect("a limiter per class");
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
        let mut state = self.state();
        let limiter = state.classes.get_mut(&class).expect("a limiter per class");
        limiter.bucket.block_for(wait, now);
        limiter.log.last_send = limiter.log.last_send.max(now + wait);
    }
}

/// Requests one hub may have in flight from this operator at once, over all its hierarchies.
/// Enough for the read-backs of a large round (each waits for its answer, ~50 ms on Azure) to
/// run at the quota's pace, few enough that a hub which accepts connections and never answers
/// ties up a bounded number of connections and response buffers.
pub const MAX_IN_FLIGHT_PER_HUB: usize = 32;

/// How long calls to a hub fail at once after one of them got no answer within its whole time
/// budget: the first pause, doubled after each further unanswered call up to
/// [`MAX_UNANSWERED_PAUSE`], and ended by any answer.
pub const FIRST_UNANSWERED_PAUSE: Duration = Duration::from_secs(60);
/// The longest such pause.
pub const MAX_UNANSWERED_PAUSE: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Responsiveness {
    /// Calls fail at once until then.
    paused_until: Option<Instant>,
    /// The pause after the next unanswered call.
    next_pause: Option<Duration>,
}

#[derive(Debug)]
struct Member {
    quotas: Quotas,
    own: Arc<HubRateLimiter>,
    seen: Instant,
    ttl: Duration,
}

/// Everything the hierarchies on one hub share: the hub's rate budget, its in-flight cap, and
/// whether it answers at all.
#[derive(Debug)]
pub struct HubBudget {
    key: String,
    shared: Arc<HubRateLimiter>,
    members: Mutex<HashMap<String, Member>>,
    in_flight: Arc<Semaphore>,
    responsiveness: Mutex<Responsiveness>,
}

impl HubBudget {
    fn new(key: String, shared: Arc<HubRateLimiter>) -> Self {
        HubBudget {
            key,
            shared,
            members: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_HUB)),
            responsiveness: Mutex::new(Responsiveness::default()),
        }
    }

    /// The hub this budget belongs to (host name, lower case, `:443` dropped).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The limiter every hierarchy on the hub waits on.
    pub fn shared(&self) -> &Arc<HubRateLimiter> {
        &self.shared
    }

    /// The hierarchies counted in the hub's budget now, with their declarations.
    pub fn members(&self) -> Vec<(String, Quotas)> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = members.iter().map(|(k, m)| (k.clone(), m.quotas)).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Adds or refreshes `member`'s declaration, drops declarations not refreshed within their
    /// time to live, and resizes the shared limiter. Returns the member's own limiter.
    fn join(&self, member: &str, quotas: Quotas, ttl: Duration) -> Arc<HubRateLimiter> {
        let now = Instant::now();
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|key, m| key == member || now.saturating_duration_since(m.seen) <= m.ttl);
        let entry = members.entry(member.to_string()).or_insert_with(|| Member {
            quotas,
            own: Arc::new(HubRateLimiter::with_quotas(quotas)),
            seen: now,
            ttl,
        });
        entry.seen = now;
        entry.ttl = ttl;
        if entry.quotas != quotas {
            entry.quotas = quotas;
            entry.own.set_quotas(quotas);
        }
        let own = entry.own.clone();
        if let Some(hub) = Quotas::upper_median(members.values().map(|m| &m.quotas)) {
            self.shared.set_quotas(hub);
        }
        own
    }

    /// When calls to this hub fail at once because an earlier one got no answer in time.
    pub fn paused_until(&self) -> Option<Instant> {
        let state = self
            .responsiveness
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        state.paused_until.filter(|until| *until > Instant::now())
    }

    /// A call got no answer within its whole budget: calls fail at once for the next pause.
    /// Returns the pause.
    pub fn note_unanswered(&self) -> Duration {
        let mut state = self
            .responsiveness
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let pause = state.next_pause.unwrap_or(FIRST_UNANSWERED_PAUSE);
        state.paused_until = Some(Instant::now() + pause);
        state.next_pause = Some((pause * 2).min(MAX_UNANSWERED_PAUSE));
        pause
    }

    /// The hub answered (whatever the status): no pause.
    pub fn note_answered(&self) {
        let mut state = self
            .responsiveness
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if state.paused_until.is_some() || state.next_pause.is_some() {
            *state = Responsiveness::default();
        }
    }

    /// Waits for one of the hub's in-flight slots.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

/// What one client waits on before each call: its own hierarchy's limiter (if it has one) and
/// the hub's shared budget.
#[derive(Debug, Clone)]
pub struct HubShare {
    hub: Arc<HubBudget>,
    own: Option<Arc<HubRateLimiter>>,
}

impl From<Arc<HubRateLimiter>> for HubShare {
    /// A client alone on its hub, with `limiter` as the hub's budget (tests, tools).
    fn from(limiter: Arc<HubRateLimiter>) -> Self {
        HubShare {
            hub: Arc::new(HubBudget::new(String::new(), limiter)),
            own: None,
        }
    }
}

impl HubShare {
    /// The hub's shared state.
    pub fn hub(&self) -> &Arc<HubBudget> {
        &self.hub
    }

    /// The hierarchy's own limiter, when it has one.
    pub fn own(&self) -> Option<&Arc<HubRateLimiter>> {
        self.own.as_ref()
    }

    /// Waits until both the hierarchy's own budget and the hub's allow `cost` operations of
    /// `class`; returns how long it waited.
    pub async fn acquire(&self, class: OperationClass, cost: u32) -> Duration {
        let started = Instant::now();
        if let Some(own) = &self.own {
            own.acquire(class, cost).await;
        }
        self.hub.shared.acquire(class, cost).await;
        started.elapsed()
    }

    /// The hub throttled `class`: every hierarchy on it holds back for `wait`.
    pub fn block_for(&self, class: OperationClass, wait: Duration) {
        self.hub.shared.block_for(class, wait);
    }
}

/// Normalises a hub host for keying: lower case, the default HTTPS port dropped.
pub fn hub_key(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    match host.strip_suffix(":443") {
        Some(bare) => bare.to_string(),
        None => host,
    }
}

/// Process-wide registry of hub budgets keyed by hub host name, so every hierarchy on one hub
/// shares one budget (and each keeps one of its own).
#[derive(Debug, Default)]
pub struct HubLimiters {
    by_host: Mutex<HashMap<String, Arc<HubBudget>>>,
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

    fn budget(&self, host: &str, limits: &RateLimits) -> Arc<HubBudget> {
        let key = hub_key(host);
        let mut by_host = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        by_host
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(HubBudget::new(
                    key,
                    Arc::new(HubRateLimiter::new(limits.clone())),
                ))
            })
            .clone()
    }

    /// The share of hub `host` for `member` (one hierarchy), declaring `limits`: its own
    /// limiter at `limits`, inside the hub's budget recomputed with this declaration. The
    /// declaration counts until `member` has not joined again for `ttl`.
    pub fn join(&self, host: &str, member: &str, limits: &RateLimits, ttl: Duration) -> HubShare {
        let hub = self.budget(host, limits);
        let own = hub.join(member, limits.all_per_minute(), ttl);
        HubShare {
            hub,
            own: Some(own),
        }
    }

    /// The hub's shared limiter for `host`, without declaring anything (created with `limits`
    /// if no hierarchy uses the hub yet).
    pub fn for_hub(&self, host: &str, limits: &RateLimits) -> Arc<HubRateLimiter> {
        self.budget(host, limits).shared.clone()
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
    fn registry_shares_one_limiter_per_host() {
        let limiters = HubLimiters::new();
        let first = limiters.for_hub(
            "MyHub.azure-devices.net",
            &RateLimits::for_sku(HubTier::S3, 1),
        );
        let second = limiters.for_hub("myhub.azure-devices.net:443", &RateLimits::default());
        assert!(
            Arc::ptr_eq(&first, &second),
            "the default port names the same hub"
        );
        let other = limiters.for_hub("other.azure-devices.net", &RateLimits::default());
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(Arc::ptr_eq(
            &HubLimiters::global().for_hub("g.example", &RateLimits::default()),
            &HubLimiters::global().for_hub("G.EXAMPLE", &RateLimits::default())
        ));
    }

    fn registry_per_minute(share: &HubShare) -> u32 {
        share
            .hub()
            .shared()
            .quotas()
            .per_minute(OperationClass::Registry)
    }

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn no_single_declaration_lowers_the_hub_budget_below_what_the_others_declare() {
        let limiters = HubLimiters::new();
        let s3 = RateLimits::for_sku(HubTier::S3, 1);
        let tiny = RateLimits {
            registry_operations_per_minute: Some(1),
            ..RateLimits::default()
        };
        let a = limiters.join("hub.example", "ns/a", &s3, TTL);
        assert_eq!(registry_per_minute(&a), 5_000);
        // A second hierarchy declares one registry call a minute: it holds only itself to it.
        let b = limiters.join("HUB.example:443", "ns/b", &tiny, TTL);
        assert!(Arc::ptr_eq(a.hub(), b.hub()), "one budget per hub");
        assert_eq!(registry_per_minute(&a), 5_000, "the larger of two");
        assert_eq!(
            b.own()
                .unwrap()
                .quotas()
                .per_minute(OperationClass::Registry),
            1
        );
        assert_eq!(
            a.own()
                .unwrap()
                .quotas()
                .per_minute(OperationClass::Registry),
            5_000
        );
        // With a third that agrees with the first, the dissenter cannot move it at all.
        limiters.join("hub.example", "ns/c", &s3, TTL);
        assert_eq!(registry_per_minute(&a), 5_000);
    }

    #[test]
    fn no_single_declaration_raises_the_hub_budget_when_the_others_agree() {
        let limiters = HubLimiters::new();
        let s1 = RateLimits::default();
        let a = limiters.join("hub.example", "ns/a", &s1, TTL);
        limiters.join("hub.example", "ns/b", &s1, TTL);
        let huge = RateLimits {
            registry_operations_per_minute: Some(1_000_000),
            ..RateLimits::for_sku(HubTier::S3, 200)
        };
        let c = limiters.join("hub.example", "ns/c", &huge, TTL);
        assert_eq!(registry_per_minute(&a), 100);
        assert_eq!(
            c.own()
                .unwrap()
                .quotas()
                .per_minute(OperationClass::Registry),
            1_000_000,
            "its own limiter follows its declaration, the hub's does not"
        );
    }

    #[test]
    fn a_changed_declaration_takes_effect_at_the_next_join_and_stale_ones_expire() {
        let limiters = HubLimiters::new();
        let a = limiters.join("hub.example", "ns/a", &RateLimits::default(), TTL);
        assert_eq!(registry_per_minute(&a), 100);
        let again = limiters.join(
            "hub.example",
            "ns/a",
            &RateLimits::for_sku(HubTier::S3, 2),
            TTL,
        );
        assert!(Arc::ptr_eq(a.own().unwrap(), again.own().unwrap()));
        assert_eq!(registry_per_minute(&a), 10_000);
        assert_eq!(
            a.own()
                .unwrap()
                .quotas()
                .per_minute(OperationClass::Registry),
            10_000
        );
        // A declaration not renewed within its time to live no longer counts.
        limiters.join(
            "hub.example",
            "ns/gone",
            &RateLimits::default(),
            Duration::ZERO,
        );
        std::thread::sleep(Duration::from_millis(5));
        limiters.join(
            "hub.example",
            "ns/a",
            &RateLimits::for_sku(HubTier::S3, 2),
            TTL,
        );
        let members: Vec<String> = a.hub().members().into_iter().map(|(k, _)| k).collect();
        assert_eq!(members, ["ns/a"]);
        assert_eq!(registry_per_minute(&a), 10_000);
    }

    #[test]
    fn upper_median_by_class() {
        let q = |registry: u32, query: u32| {
            RateLimits {
                registry_operations_per_minute: Some(registry),
                queries_per_minute: Some(query),
                ..RateLimits::default()
            }
            .all_per_minute()
        };
        let all = [q(1, 50), q(100, 20), q(5_000, 1_000), q(100, 1)];
        let median = Quotas::upper_median(&all).unwrap();
        assert_eq!(median.per_minute(OperationClass::Registry), 100);
        assert_eq!(median.per_minute(OperationClass::Query), 50);
        assert_eq!(Quotas::upper_median(&all[..1]).unwrap(), all[0]);
        assert_eq!(Quotas::upper_median(std::iter::empty()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hierarchy_is_paced_by_its_own_declaration_inside_the_hub_budget() {
        let limiters = HubLimiters::new();
        let s1 = RateLimits::default();
        let slow = RateLimits {
            registry_operations_per_minute: Some(10),
            ..RateLimits::default()
        };
        let fast = limiters.join("hub.example", "ns/fast", &s1, TTL);
        let slow = limiters.join("hub.example", "ns/slow", &slow, TTL);
        // The slow one's own bucket (burst 1, 10 a minute) makes its second call wait 6 s;
        // the other's calls go through the hub's budget (100 a minute, burst 5) unhindered.
        assert_eq!(
            slow.acquire(OperationClass::Registry, 1).await,
            Duration::ZERO
        );
        let waited = slow.acquire(OperationClass::Registry, 1).await;
        assert!((waited.as_secs_f64() - 6.0).abs() < 0.01, "{waited:?}");
        assert_eq!(
            fast.acquire(OperationClass::Registry, 1).await,
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lowered_budget_keeps_what_the_window_already_holds() {
        let limiter = HubRateLimiter::new(RateLimits::for_sku(HubTier::S3, 1));
        // 200 registry operations sent at once (S3: 5,000 a minute, burst 250).
        assert_eq!(
            limiter.reserve(OperationClass::Registry, 200),
            Duration::ZERO
        );
        limiter.set_quotas(RateLimits::default().all_per_minute());
        // Now 100 a minute: the next call waits until the 200 have left the window.
        let wait = limiter.reserve(OperationClass::Registry, 1);
        assert!(wait >= Duration::from_secs(60), "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_calls_pause_the_hub_with_doubling_pauses_until_it_answers() {
        let hub = HubBudget::new(
            "h".into(),
            Arc::new(HubRateLimiter::new(RateLimits::default())),
        );
        assert_eq!(hub.paused_until(), None);
        assert_eq!(hub.note_unanswered(), FIRST_UNANSWERED_PAUSE);
        assert!(hub.paused_until().is_some());
        assert_eq!(hub.note_unanswered(), FIRST_UNANSWERED_PAUSE * 2);
        for _ in 0..10 {
            hub.note_unanswered();
        }
        assert_eq!(hub.note_unanswered(), MAX_UNANSWERED_PAUSE);
        tokio::time::advance(MAX_UNANSWERED_PAUSE + Duration::from_secs(1)).await;
        assert_eq!(hub.paused_until(), None, "a pause ends by itself");
        hub.note_unanswered();
        hub.note_answered();
        assert_eq!(hub.paused_until(), None);
        assert_eq!(
            hub.note_unanswered(),
            FIRST_UNANSWERED_PAUSE,
            "an answer resets"
        );
    }
}
