//! When to retry a failed call and how long to wait. Pure: the caller supplies the attempt
//! number, what happened and a random number, so every branch is testable.

use std::time::Duration;

use super::error::{TransportKind, is_transient_status};

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 disables retries).
    pub max_attempts: u32,
    /// First backoff after a server error or connection failure; doubles per attempt.
    pub base_delay: Duration,
    /// First backoff after a 429 without `Retry-After`; doubles per attempt. Larger than
    /// `base_delay` because hub throttles are per-minute windows.
    pub throttle_base_delay: Duration,
    /// Ceiling of any computed backoff.
    pub max_delay: Duration,
    /// Ceiling applied to a server's `Retry-After` (protects against absurd values).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            throttle_base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// What a finished attempt produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// An HTTP error status, with the server's `Retry-After` if any.
    Status {
        /// HTTP status.
        status: u16,
        /// Parsed `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// No HTTP answer.
    Transport(TransportKind),
}

/// Retry or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Return the error.
    GiveUp,
}

impl RetryPolicy {
    /// Decides after the `attempt`-th attempt (1-based) failed with `outcome`. `jitter` is a
    /// random number in `[0, 1)`; backoffs use "equal jitter" (half fixed, half random) so
    /// concurrent callers spread out but never retry immediately. A `Retry-After` is a floor:
    /// the wait is at least that long (up to `max_retry_after`) plus up to 10% jitter.
    pub fn decide(&self, attempt: u32, outcome: AttemptOutcome, jitter: f64) -> RetryDecision {
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let (base, retry_after) = match outcome {
            AttemptOutcome::Status { status, .. } if !is_transient_status(status) => {
                return RetryDecision::GiveUp;
            }
            AttemptOutcome::Status {
                status: 429,
                retry_after,
            } => (self.throttle_base_delay, retry_after),
            AttemptOutcome::Status { retry_after, .. } => (self.base_delay, retry_after),
            AttemptOutcome::Transport(_) => (self.base_delay, None),
        };
        let delay = match retry_after {
            Some(server) => {
                let floor = server.min(self.max_retry_after);
                floor + floor.mul_f64(0.1 * jitter)
            }
            None => {
                let exponential = backoff(base, attempt, self.max_delay);
                exponential / 2 + (exponential / 2).mul_f64(jitter)
            }
        };
        RetryDecision::RetryAfter(delay)
    }
}

/// `base * 2^(attempt-1)`, capped.
fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << doublings).min(cap)
}

/// Parses a `Retry-After` value: delay seconds (integer or decimal) or an HTTP date, relative to
/// `now`. Dates in the past give zero; garbage gives `None`.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let when = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let millis = when.as_millisecond() - now.as_millisecond();
    Some(Duration::from_millis(millis.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> AttemptOutcome {
        AttemptOutcome::Status {
            status,
            retry_after: None,
        }
    }

    fn retry(d: RetryDecision) -> Duration {
        match d {
            RetryDecision::RetryAfter(d) => d,
            RetryDecision::GiveUp => panic!("expected a retry"),
        }
    }

    #[test]
    fn client_errors_are_never_retried() {
        let policy = RetryPolicy::default();
        for s in [400, 401, 403, 404, 409, 412, 413, 501] {
            assert_eq!(
                policy.decide(1, status(s), 0.5),
                RetryDecision::GiveUp,
                "{s}"
            );
        }
    }

    #[test]
    fn server_errors_back_off_exponentially_with_equal_jitter() {
        let policy = RetryPolicy::default();
        // attempt 1: 200 ms window -> [100, 200] ms
        assert_eq!(
            retry(policy.decide(1, status(503), 0.0)),
            Duration::from_millis(100)
        );
        assert_eq!(
            retry(policy.decide(1, status(503), 1.0)),
            Duration::from_millis(200)
        );
        // attempt 3: 800 ms window
        assert_eq!(
            retry(policy.decide(3, status(500), 0.5)),
            Duration::from_millis(600)
        );
        // capped at 60 s
        let late = RetryPolicy {
            max_attempts: 100,
            ..RetryPolicy::default()
        };
        assert_eq!(
            retry(late.decide(40, status(502), 1.0)),
            Duration::from_secs(60)
        );
        // transport failures behave like 5xx
        assert_eq!(
            retry(policy.decide(2, AttemptOutcome::Transport(TransportKind::Connect), 0.0)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn throttling_honours_retry_after_as_a_floor() {
        let policy = RetryPolicy::default();
        let throttled = |secs| AttemptOutcome::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            retry(policy.decide(1, throttled(7), 0.0)),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry(policy.decide(1, throttled(10), 0.999)).as_millis(),
            10_999
        );
        // absurd values are capped
        assert_eq!(
            retry(policy.decide(1, throttled(100_000), 0.0)),
            Duration::from_secs(300)
        );
        // without Retry-After the throttle backoff starts at 2 s
        assert_eq!(
            retry(policy.decide(1, status(429), 1.0)),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry(policy.decide(2, status(429), 0.0)),
            Duration::from_secs(2)
        );
        // a 503 with Retry-After also waits at least that long
        let busy = AttemptOutcome::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(retry(policy.decide(1, busy, 0.0)), Duration::from_secs(3));
    }

    #[test]
    fn gives_up_after_max_attempts_and_tolerates_bad_jitter() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(matches!(
            policy.decide(2, status(503), f64::NAN),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(policy.decide(3, status(503), 0.1), RetryDecision::GiveUp);
        let never = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(never.decide(1, status(503), 0.1), RetryDecision::GiveUp);
    }

    #[test]
    fn retry_after_parsing() {
        let now: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Mon, 01 Jan 2024 00:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 31 Dec 2023 23:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
