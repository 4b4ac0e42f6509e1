//! `Idempotency-Key`: the same key with the same body within 24 h answers what the first request
//! answered (same ids, nothing sent twice); with a different body it is a 422; while the first
//! request is still in flight, a 409. The embedded mode keeps the same states in process.

use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long a completed request is remembered.
pub const REMEMBER: Duration = Duration::from_secs(24 * 3600);
/// How long an in-flight marker lives if its request dies before completing.
pub const IN_FLIGHT: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq)]
pub enum Begin {
    /// First time: go ahead, then `complete` or `abandon`.
    New,
    /// Done before with the same body: here is the response it got.
    Replay(String),
    /// Still being processed.
    InFlight,
    /// Used before with another body.
    Mismatch,
}

#[derive(Debug, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct StoreUnavailable(pub String);

#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
    ) -> Result<Begin, StoreUnavailable>;
    /// Remembers `response` (the JSON body answered) for replays.
    async fn complete(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        response: &str,
    ) -> Result<(), StoreUnavailable>;
    /// Forgets an in-flight key whose request failed, so a retry can go ahead.
    async fn abandon(&self, scope: &str, key: &str) -> Result<(), StoreUnavailable>;
}

pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The stored value: `p:<hash>` while in flight, `d:<hash>:<response>` once done.
fn redis_key(scope: &str, key: &str) -> String {
    // Hash the client's key: it may be long or contain anything.
    format!(
        "ump:idem:{scope}:{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

const BEGIN_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'p:' .. ARGV[1], 'EX', ARGV[2])
  return 'new'
end
local state = string.sub(v, 1, 1)
local hash = string.sub(v, 3, 2 + string.len(ARGV[1]))
if hash ~= ARGV[1] then return 'mismatch' end
if state == 'p' then return 'inflight' end
return 'd:' .. string.sub(v, 4 + string.len(ARGV[1]))
"#;

pub struct RedisIdempotency {
    conn: redis::aio::ConnectionManager,
    begin: redis::Script,
}

impl RedisIdempotency {
    pub fn new(conn: redis::aio::ConnectionManager) -> Self {
        Self {
            conn,
            begin: redis::Script::new(BEGIN_SCRIPT),
        }
    }
}

fn unavailable(e: redis::RedisError) -> StoreUnavailable {
    StoreUnavailable(e.to_string())
}

#[async_trait::async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
    ) -> Result<Begin, StoreUnavailable> {
        let mut conn = self.conn.clone();
        let answer: String = self
            .begin
            .key(redis_key(scope, key))
            .arg(body_hash)
            .arg(IN_FLIGHT.as_secs())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match answer.as_str() {
            "new" => Begin::New,
            "inflight" => Begin::InFlight,
            "mismatch" => Begin::Mismatch,
            done => Begin::Replay(done.strip_prefix("d:").unwrap_or(done).to_owned()),
        })
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        response: &str,
    ) -> Result<(), StoreUnavailable> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(redis_key(scope, key))
            .arg(format!("d:{body_hash}:{response}"))
            .arg("EX")
            .arg(REMEMBER.as_secs())
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn abandon(&self, scope: &str, key: &str) -> Result<(), StoreUnavailable> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(redis_key(scope, key))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }
}

/// The embedded mode's store: the same states, in the SQLite file (`expiring_keys`).
pub struct SqliteIdempotency {
    store: ump_core::sqlite::SqliteStore,
    /// One process owns the file; this makes `begin`'s read-then-write atomic within it.
    lock: tokio::sync::Mutex<()>,
}

impl SqliteIdempotency {
    pub fn new(store: ump_core::sqlite::SqliteStore) -> Self {
        Self {
            store,
            lock: tokio::sync::Mutex::new(()),
        }
    }
}

fn sqlite_unavailable(e: sqlx::Error) -> StoreUnavailable {
    StoreUnavailable(e.to_string())
}

fn expiry(after: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::days(1))
}

#[async_trait::async_trait]
impl IdempotencyStore for SqliteIdempotency {
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
    ) -> Result<Begin, StoreUnavailable> {
        let key = redis_key(scope, key);
        let _guard = self.lock.lock().await;
        let stored = self
            .store
            .get_expiring(&key, chrono::Utc::now())
            .await
            .map_err(sqlite_unavailable)?;
        let Some(value) = stored else {
            self.store
                .put_expiring(&key, &format!("p:{body_hash}"), expiry(IN_FLIGHT))
                .await
                .map_err(sqlite_unavailable)?;
            return Ok(Begin::New);
        };
        let (state, rest) = value.split_at(2.min(value.len()));
        let Some(rest) = rest.strip_prefix(body_hash) else {
            return Ok(Begin::Mismatch);
        };
        Ok(match state {
            "p:" => Begin::InFlight,
            _ => Begin::Replay(rest.strip_prefix(':').unwrap_or(rest).to_owned()),
        })
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        response: &str,
    ) -> Result<(), StoreUnavailable> {
        self.store
            .put_expiring(
                &redis_key(scope, key),
                &format!("d:{body_hash}:{response}"),
                expiry(REMEMBER),
            )
            .await
            .map_err(sqlite_unavailable)
    }

    async fn abandon(&self, scope: &str, key: &str) -> Result<(), StoreUnavailable> {
        self.store
            .delete_expiring(&redis_key(scope, key))
            .await
            .map_err(sqlite_unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sqlite_store_walks_the_same_states_as_redis() {
        let dir = tempfile::tempdir().unwrap();
        let store = ump_core::sqlite::SqliteStore::open(&dir.path().join("ump.db"))
            .await
            .unwrap();
        let idem = SqliteIdempotency::new(store);
        let hash = body_hash(b"{}");
        assert_eq!(idem.begin("t", "k", &hash).await.unwrap(), Begin::New);
        assert_eq!(idem.begin("t", "k", &hash).await.unwrap(), Begin::InFlight);
        assert_eq!(
            idem.begin("t", "k", &body_hash(b"[]")).await.unwrap(),
            Begin::Mismatch
        );
        idem.complete("t", "k", &hash, r#"{"id":"x"}"#)
            .await
            .unwrap();
        assert_eq!(
            idem.begin("t", "k", &hash).await.unwrap(),
            Begin::Replay(r#"{"id":"x"}"#.to_owned())
        );
        // Scopes (tenants) never see each other's keys.
        assert_eq!(idem.begin("u", "k", &hash).await.unwrap(), Begin::New);
        idem.abandon("u", "k").await.unwrap();
        assert_eq!(idem.begin("u", "k", &hash).await.unwrap(), Begin::New);
    }
}
