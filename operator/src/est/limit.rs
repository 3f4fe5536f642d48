//! Per-device rate limit: a device renews a few certificates a year, so a burst is a bug or an
//! attack; either way it must not reach the root's key or the hub without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket per device: `burst` requests at once, refilled at one per `every`.
pub struct RateLimiter {
    burst: u32,
    every: Duration,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, every: Duration) -> Self {
        Self {
            burst: burst.max(1),
            every,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `device` may make a request now (and takes a token if so).
    pub fn allow(&self, device: &str) -> bool {
        self.allow_at(device, Instant::now())
    }

    fn allow_at(&self, device: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Forget devices whose bucket is full again: memory stays bounded by active devices.
        let full_after = self.every * self.burst;
        buckets.retain(|_, (_, at)| now.duration_since(*at) < full_after);
        let (tokens, at) = buckets
            .entry(device.to_string())
            .or_insert((f64::from(self.burst), now));
        let refill = now.duration_since(*at).as_secs_f64() / self.every.as_secs_f64().max(1e-9);
        *tokens = (*tokens + refill).min(f64::from(self.burst));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_request_per_interval() {
        let limiter = RateLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.allow_at("gw", t0)));
        assert!(!limiter.allow_at("gw", t0));
        // Other devices have their own bucket.
        assert!(limiter.allow_at("other", t0));
        assert!(!limiter.allow_at("gw", t0 + Duration::from_secs(5)));
        assert!(limiter.allow_at("gw", t0 + Duration::from_secs(11)));
        assert!(!limiter.allow_at("gw", t0 + Duration::from_secs(11)));
    }
}
