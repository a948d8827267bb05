//! Retry delays: `base × 2^(attempt-1)`, capped, with jitter so retries of a burst of failures do
//! not all return at the same instant.

use std::time::Duration;

use rand::Rng;

/// The delay before retrying after failed attempt number `attempt` (1-based). Jitter draws from
/// the upper half of the exponential delay (50–100 %), so the gap never falls below half of it.
/// A handler's `retry_after` wins when it is longer; both are capped by `max`.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, retry_after: Option<Duration>) -> Duration {
    let exp = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)))
        .min(max);
    let half = exp / 2;
    let jittered = half + rand::rng().random_range(Duration::ZERO..=exp - half);
    match retry_after {
        Some(after) if after > jittered => after.min(max),
        _ => jittered,
    }
}

/// Lower bound of [`retry_delay`] without a `retry_after`: what tests assert gaps against.
pub fn min_retry_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)))
        .min(max)
        / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn delay_doubles_per_attempt_within_jitter_bounds() {
        for attempt in 1..=5 {
            let exp = S * 2u32.pow(attempt - 1);
            for _ in 0..50 {
                let d = retry_delay(attempt, S, Duration::from_secs(3600), None);
                assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn delay_is_capped() {
        let d = retry_delay(40, S, Duration::from_secs(10), None);
        assert!(d <= Duration::from_secs(10) && d >= Duration::from_secs(5));
    }

    #[test]
    fn longer_retry_after_wins_but_is_capped() {
        assert_eq!(
            retry_delay(1, S, Duration::from_secs(60), Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(1, S, Duration::from_secs(60), Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
        assert!(retry_delay(1, S, Duration::from_secs(60), Some(Duration::from_millis(1))) >= S / 2);
    }
}
