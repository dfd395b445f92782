//! The one retry policy every connector and the pipeline share: exponential backoff with
//! jitter, the server's Retry-After honoured, a cap on attempts, and only transient errors
//! retried.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1 = never retry).
    pub max_attempts: u32,
    /// Backoff before the second attempt; it doubles with every further attempt.
    pub initial_delay: Duration,
    /// No computed backoff is longer than this.
    pub max_delay: Duration,
    /// A server's Retry-After longer than this is treated as a failure rather than waited for.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(15 * 60),
        }
    }
}

/// A random number in [0, 1) without a dependency: std's per-instance random hasher keys.
fn jitter_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl RetryPolicy {
    /// A policy that never retries (for tests and `--retries 0`).
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Whether an error after `attempt` attempts (1-based) deserves another try.
    pub fn should_retry(&self, error: &Error, attempt: u32) -> bool {
        error.is_transient()
            && attempt < self.max_attempts
            && error
                .retry_after()
                .is_none_or(|d| d <= self.max_retry_after)
    }

    /// How long to wait after failed attempt number `attempt` (1-based).
    ///
    /// A server's Retry-After is obeyed as given (plus up to 10% jitter, so that many clients
    /// told the same thing do not return in lockstep); otherwise "equal jitter" backoff: half of
    /// the exponential delay fixed, half random, so no retry comes back immediately.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after + after.mul_f64(0.1 * jitter_unit());
        }
        let exp = attempt.saturating_sub(1).min(30);
        let full = self
            .initial_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        full / 2 + (full / 2).mul_f64(jitter_unit())
    }

    /// Runs `op` until it succeeds, fails permanently, or attempts run out. `on_retry` hears of
    /// each retry (error, delay) before the wait.
    pub async fn run<T, F, Fut>(
        &self,
        mut op: F,
        mut on_retry: impl FnMut(&Error, Duration),
    ) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if self.should_retry(&e, attempt) => {
                    let delay = self.delay(attempt, e.retry_after());
                    on_retry(&e, delay);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parses an HTTP `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
/// A date in the past means "now" (zero). Garbage gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some servers send fractional seconds although the RFC does not allow them.
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs));
        }
        return None;
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..Default::default()
        };
        for attempt in 1..10 {
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1))
                .min(Duration::from_secs(1));
            let d = p.delay(attempt, None);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        let d = p.delay(1, Some(Duration::from_secs(7)));
        assert!(d >= Duration::from_secs(7) && d <= Duration::from_millis(7700));
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        assert!(p.should_retry(&Error::transient("x"), 1));
        assert!(p.should_retry(&Error::transient("x"), 2));
        assert!(!p.should_retry(&Error::transient("x"), 3));
        assert!(!p.should_retry(&Error::permanent("x"), 1));
        assert!(!p.should_retry(&Error::fatal("x"), 1));
        let too_long = Error::transient("x").with_retry_after(Some(Duration::from_secs(3600)));
        assert!(!p.should_retry(&too_long, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_then_succeeds_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 4,
            ..Default::default()
        };
        let calls = AtomicU32::new(0);
        let mut delays = Vec::new();
        let start = tokio::time::Instant::now();
        let v = p
            .run(
                |attempt| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if attempt < 3 {
                            Err(Error::transient("busy")
                                .with_retry_after(Some(Duration::from_secs(2))))
                        } else {
                            Ok(attempt)
                        }
                    }
                },
                |_, d| delays.push(d),
            )
            .await
            .unwrap();
        assert_eq!(v, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(delays.len(), 2);
        assert!(start.elapsed() >= Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn run_gives_up_on_permanent() {
        let p = RetryPolicy::default();
        let calls = AtomicU32::new(0);
        let r: Result<()> = p
            .run(
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(Error::permanent("gone")) }
                },
                |_, _| {},
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
