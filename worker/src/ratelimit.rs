//! A channel's rate limit, shared by all its workers: GCRA (a leaky bucket as one timestamp) in
//! Redis, on the server's clock so workers with skewed clocks still agree.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterUnavailable(pub String);

#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync {
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
    async fn try_acquire(
        &self,
        key: &str,
        per_second: u32,
        burst: u32,
    ) -> Result<Option<Duration>, LimiterUnavailable> {
        let interval = 1000.0 / f64::from(per_second.max(1));
        // A burst of b means b sends may go at once: b-1 intervals of tolerance.
        let tolerance = interval * f64::from(burst.max(1) - 1);
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
