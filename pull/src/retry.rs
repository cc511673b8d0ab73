// SPDX-License-Identifier: Apache-2.0
//! Retries: exponential backoff with jitter, `Retry-After`, and a total time budget shared
//! by every request of a run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::fetch::FetchError;

/// Retry policy of a run.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First backoff.
    pub base: Duration,
    /// Largest backoff.
    pub max: Duration,
    /// When the whole run must give up.
    pub deadline: Instant,
}

impl RetryPolicy {
    /// A policy giving up `budget` from now.
    pub fn with_budget(budget: Duration) -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            deadline: Instant::now() + budget,
        }
    }

    /// Time left in the budget.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The wait before attempt `attempt + 1` (`attempt` counts from 0): exponential with
    /// "equal jitter" (half fixed, half random) so that many nodes restarting together do
    /// not hit the registry in lock-step. A server's `Retry-After` wins when given.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(Duration::from_secs(600));
        }
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let half = exp / 2;
        half + half.mul_f64(jitter())
    }

    /// The wait before the next attempt, or `None` when it would not fit in the budget.
    pub fn next_wait(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let wait = self.backoff(attempt, retry_after);
        (wait < self.remaining()).then_some(wait)
    }
}

/// Runs `op` again while its error is retryable and `policy`'s budget allows the wait;
/// `what` names the operation in the journal and in the final error.
pub(crate) async fn with_retries<T>(
    policy: &RetryPolicy,
    what: &str,
    mut op: impl AsyncFnMut() -> Result<T, FetchError>,
) -> Result<T, FetchError> {
    let mut attempt = 0u32;
    loop {
        let e = match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() => e,
            Err(e) => return Err(e),
        };
        let Some(wait) = policy.next_wait(attempt, e.retry_after()) else {
            let why = match e.retry_after() {
                Some(ra) => format!(
                    "the registry asked to retry after {} s, beyond the {} s left of the retry budget",
                    ra.as_secs(),
                    policy.remaining().as_secs()
                ),
                None => "the retry budget is spent".into(),
            };
            return Err(FetchError::Budget(format!(
                "{e} (gave up after {} attempts: {why}; raise --budget or fix the registry or network)",
                attempt + 1
            )));
        };
        warn!(
            attempt = attempt + 1,
            wait_ms = wait.as_millis() as u64,
            "{what}: {e}; retrying"
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// A number in [0, 1) that differs between processes and calls; not cryptographic.
fn jitter() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a `Retry-After` value: delta-seconds, or an HTTP date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(v)?;
    // A date in the past means "now"; one far in the future is a long wait that
    // `RetryPolicy::backoff` caps and the budget refuses.
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_imf_fixdate(v: &str) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = v.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    if parts.len() != 5 || parts[4] != "GMT" {
        return None;
    }
    let day: u64 = parts[0].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[1])? as u64
        + 1;
    let year: i64 = parts[2].parse().ok()?;
    let hms: Vec<u64> = parts[3]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // Every field in its range (a leap second allowed), and a four-digit year as RFC 9110's
    // IMF-fixdate has: whatever a registry sends, the arithmetic below cannot overflow.
    if hms.len() != 3
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || hms[0] > 23
        || hms[1] > 59
        || hms[2] > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = RetryPolicy::with_budget(Duration::from_secs(60));
        for attempt in 0..20 {
            let b = p.backoff(attempt, None);
            let exp = p.base.saturating_mul(1 << attempt.min(16)).min(p.max);
            assert!(b >= exp / 2 && b <= exp, "{attempt}: {b:?}");
        }
        assert_eq!(
            p.backoff(3, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn budget_bounds_waits() {
        let p = RetryPolicy::with_budget(Duration::from_secs(2));
        assert!(p.next_wait(0, None).is_some());
        assert!(p.next_wait(0, Some(Duration::from_secs(5))).is_none());
        let p = RetryPolicy::with_budget(Duration::ZERO);
        assert!(p.next_wait(0, None).is_none());
    }

    #[test]
    fn retry_after_values() {
        let now = UNIX_EPOCH + Duration::from_secs(784111777 - 10);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now + Duration::from_secs(99)
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    proptest::proptest! {
        /// Whatever a registry or proxy sends as `Retry-After`: no panic, and a wait the
        /// policy caps.
        #[test]
        fn any_retry_after_parses_without_panic(v in ".{0,40}", now in 0u64..=u64::MAX / 4) {
            let now = UNIX_EPOCH.checked_add(Duration::from_secs(now)).unwrap_or(UNIX_EPOCH);
            if let Some(d) = parse_retry_after(&v, now) {
                let p = RetryPolicy::with_budget(Duration::from_secs(60));
                proptest::prop_assert!(p.backoff(0, Some(d)) <= Duration::from_secs(600));
            }
        }

        /// Dates of any size in every field, far past and far future.
        #[test]
        fn any_http_date_parses_without_panic(
            day in 0u64..=u64::MAX, month in 0usize..12, year in proptest::num::i64::ANY,
            h in 0u64..=u64::MAX, m in 0u64..100, s in 0u64..100,
        ) {
            let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
            let v = format!("Sun, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT", months[month]);
            let _ = parse_retry_after(&v, SystemTime::now());
        }
    }

    #[test]
    fn a_date_far_in_the_future_is_a_capped_wait() {
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", SystemTime::now()).unwrap();
        let p = RetryPolicy::with_budget(Duration::from_secs(60));
        assert_eq!(p.backoff(0, Some(far)), Duration::from_secs(600));
        assert!(p.next_wait(0, Some(far)).is_none());
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 99999999999 08:49:37 GMT", SystemTime::now()),
            None
        );
    }
}
