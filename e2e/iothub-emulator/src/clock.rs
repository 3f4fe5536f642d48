//! Time source of the emulator. Injectable so that tests can move time (SAS expiry, quota
//! windows) without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_millis(&self) -> i64;

    /// Lets a request wait `ms` milliseconds (traffic shaping). The machine's clock answers
    /// false and the caller sleeps; a manual clock moves itself forward and answers true.
    fn skip_wait(&self, _ms: u64) -> bool {
        false
    }
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        jiff::Timestamp::now().as_millisecond()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicI64,
}

impl ManualClock {
    /// A manual clock starting at the current machine time.
    pub fn starting_now() -> Arc<Self> {
        Arc::new(Self {
            millis: AtomicI64::new(SystemClock.now_millis()),
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, duration: std::time::Duration) {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.millis.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.millis.load(Ordering::SeqCst)
    }

    fn skip_wait(&self, ms: u64) -> bool {
        self.advance(std::time::Duration::from_millis(ms));
        true
    }
}

/// IoT Hub's serialisation of a time that was never set.
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// Formats a time the way IoT Hub does: UTC, seven fractional digits (.NET ticks precision).
pub fn format_timestamp(millis: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(millis).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 100
    )
}

/// Formats a time as IoT Hub's tracking ids do (`MM/dd/yyyy HH:mm:ss`).
pub fn format_tracking_time(millis: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(millis).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    format!(
        "{:02}/{:02}/{:04} {:02}:{:02}:{:02}",
        dt.month(),
        dt.day(),
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// .NET ticks (100 ns since 0001-01-01) for a Unix time; IoT Hub generation ids look like these.
pub fn dotnet_ticks(millis: i64) -> i64 {
    const TICKS_AT_UNIX_EPOCH: i64 = 621_355_968_000_000_000;
    TICKS_AT_UNIX_EPOCH + millis * 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_seven_fraction_digits() {
        assert_eq!(
            format_timestamp(1_623_457_666_383),
            "2021-06-12T00:27:46.3830000Z"
        );
        assert_eq!(
            format_tracking_time(1_623_457_666_383),
            "06/12/2021 00:27:46"
        );
    }

    #[test]
    fn generation_ids_look_like_dotnet_ticks() {
        // The AZ-220 sample's generation id 637121074930370650 is 2019-12-16T15:38:13.037Z.
        assert_eq!(dotnet_ticks(1_576_510_693_037), 637_121_074_930_370_000);
        assert_eq!(dotnet_ticks(0), 621_355_968_000_000_000);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_now();
        let t0 = clock.now_millis();
        clock.advance(std::time::Duration::from_secs(61));
        assert_eq!(clock.now_millis() - t0, 61_000);
        assert!(clock.skip_wait(500));
        assert_eq!(clock.now_millis() - t0, 61_500);
        assert!(!SystemClock.skip_wait(1));
    }
}
