//! A token bucket per tenant.
//!
//! Each tenant's bucket holds up to `burst` tokens and refills at `per_second`; a request
//! takes one token or is refused with the time until the next token. The buckets live in
//! one map behind a mutex held for a few arithmetic operations; the tenants are the
//! platform's organisations (taken from verified credentials), so the map stays small.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// Per-tenant token buckets.
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub(crate) fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter { per_second: config.per_second.max(0.0), burst: f64::from(config.burst.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token of `tenant`'s bucket, or returns how long until one is available.
    pub(crate) fn check(&self, tenant: &str) -> Result<(), Duration> {
        self.check_at(tenant, Instant::now())
    }

    fn check_at(&self, tenant: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = match buckets.get_mut(tenant) {
            Some(b) => b,
            None => buckets.entry(tenant.to_owned()).or_insert(Bucket { tokens: self.burst, updated: now }),
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_tenant() {
        let limiter = RateLimiter::new(&RateLimitConfig { per_second: 2.0, burst: 3 });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("acme", t0).is_ok());
        }
        let wait = limiter.check_at("acme", t0).unwrap_err();
        assert!(wait > Duration::from_millis(490) && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limiter.check_at("globex", t0).is_ok(), "another tenant has its own bucket");
        assert!(limiter.check_at("acme", t0 + Duration::from_millis(500)).is_ok(), "one token after 0.5 s");
        assert!(limiter.check_at("acme", t0 + Duration::from_millis(500)).is_err());
        // Idle for long: the bucket is full again but never above `burst`.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check_at("acme", later).is_ok());
        }
        assert!(limiter.check_at("acme", later).is_err());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(&RateLimitConfig { per_second: 0.0, burst: 1 });
        assert!((0..10_000).all(|_| limiter.check("acme").is_ok()));
    }
}
