//! Polling until something holds, with a timeout that says what was awaited.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;

/// Calls `check` every `poll_interval` until it returns `Some(value)`, and returns that value.
///
/// Fails after `timeout` with an error naming `what` (write it as the condition awaited, e.g.
/// "Secret owned-secret to be garbage-collected"). `check` runs at least once, even with a zero
/// timeout.
pub async fn wait_until<T, F, Fut>(
    timeout: Duration,
    poll_interval: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} ({attempts} checks) waiting for {what}");
        }
        tokio::time::sleep(poll_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_value_found() {
        let mut calls = 0;
        let value = wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            "the third call",
            || {
                calls += 1;
                let now = calls;
                async move { (now == 3).then_some(now * 10) }
            },
        )
        .await
        .unwrap();
        assert_eq!(value, 30);
    }

    #[tokio::test]
    async fn timeout_names_what_was_awaited() {
        let err = wait_until(
            Duration::from_millis(30),
            Duration::from_millis(5),
            "the moon to turn blue",
            || async { None::<()> },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("the moon to turn blue"), "{err}");
    }
}
