//! Rate limits: GCRA (a leaky bucket as one timestamp). A channel's limit, shared by all its
//! workers, is kept in Redis on the server's clock, so workers with skewed clocks still agree;
//! one process (the all-in-one mode, the API's per-key limits there) keeps it in memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterUnavailable(pub String);

#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync {
    /// Where the budget is kept (`redis`, `memory`): the label of the pause metric while it is
    /// unavailable.
    fn backend(&self) -> &'static str;
    /// Takes one send from `key`'s budget; `Ok(None)` when allowed now, else how long to wait
    /// before asking again.
    async fn try_acquire(
        &self,
        key: &str,
        per_second: u32,
        burst: u32,
    ) -> Result<Option<Duration>, LimiterUnavailable>;
}

const GCRA: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or ms)
if tat < ms then tat = ms end
if ms < tat - tolerance then return math.ceil(tat - tolerance - ms) end
local next_tat = tat + interval
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - ms + tolerance) + 1)
return 0
"#;

/// GCRA's emission interval and tolerance in milliseconds, for `per_second` sends a second with
/// a burst of `burst`: a burst of b means b sends may go at once, b-1 intervals of tolerance.
/// Both limiters take their figures from here.
fn gcra(per_second: u32, burst: u32) -> (f64, f64) {
    let interval = 1000.0 / f64::from(per_second.max(1));
    (interval, interval * f64::from(burst.max(1) - 1))
}

pub struct RedisRateLimiter {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
}

impl RedisRateLimiter {
    pub fn new(conn: redis::aio::ConnectionManager) -> Self {
        Self {
            conn,
            script: redis::Script::new(GCRA),
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisRateLimiter {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn try_acquire(
        &self,
        key: &str,
        per_second: u32,
        burst: u32,
    ) -> Result<Option<Duration>, LimiterUnavailable> {
        let (interval, tolerance) = gcra(per_second, burst);
        let mut conn = self.conn.clone();
        let wait: i64 = self
            .script
            .key(key)
            .arg(interval)
            .arg(tolerance)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimiterUnavailable(e.to_string()))?;
        Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
    }
}

/// GCRA in process: the same rule as the Redis limiter, for one process.
#[derive(Default)]
pub struct LocalRateLimiter {
    started: Option<Instant>,
    /// Theoretical arrival time of the next send, in ms since `started`, by key.
    tat: Mutex<HashMap<String, f64>>,
}

impl LocalRateLimiter {
    pub fn new() -> Self {
        Self {
            started: Some(Instant::now()),
            tat: Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for LocalRateLimiter {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn try_acquire(
        &self,
        key: &str,
        per_second: u32,
        burst: u32,
    ) -> Result<Option<Duration>, LimiterUnavailable> {
        let (interval, tolerance) = gcra(per_second, burst);
        let now = self
            .started
            .map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0);
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let current = tat.get(key).copied().unwrap_or(now).max(now);
        if now < current - tolerance {
            return Ok(Some(Duration::from_millis(
                (current - tolerance - now).ceil() as u64,
            )));
        }
        tat.insert(key.to_owned(), current + interval);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_local_limiter_allows_the_burst_then_spaces_sends() {
        let limiter = LocalRateLimiter::new();
        for _ in 0..5 {
            assert_eq!(limiter.try_acquire("k", 10, 5).await.unwrap(), None);
        }
        let wait = limiter
            .try_acquire("k", 10, 5)
            .await
            .unwrap()
            .expect("over the burst");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Other keys have their own budget.
        assert_eq!(limiter.try_acquire("other", 10, 1).await.unwrap(), None);
    }
}
