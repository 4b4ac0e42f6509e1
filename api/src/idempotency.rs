//! `Idempotency-Key`: the same key with the same body within 24 h answers what the first request
//! answered (same ids, nothing sent twice); with a different body it is a 422; while the first
//! request is still in flight, a 409 with `Retry-After`.
//!
//! The first request with a key records, before it produces anything, the message ids it will
//! use (its *plan*). A request that fails in a way that leaves its messages' fate unknown (the
//! broker timed out: they may be durable after all) gives up its claim but keeps the plan, and so
//! does one that dies or loses the store before it could say: its claim lapses after `IN_FLIGHT`.
//! A retry then takes the plan over and produces the very same ids again, so whatever the first
//! attempt left in the broker and whatever the retry adds are one message, which the worker
//! delivers once (a message is never a duplicate of itself). A client that retries with the same
//! key and body after a 503 or a 409 therefore always ends with the one answer of the one set of
//! messages. The cluster mode keeps the states in Redis (one Lua script per step, so each is
//! atomic), the all-in-one mode in its SQLite file; `contract` holds both to the same behaviour.

use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long a completed request is remembered.
pub const REMEMBER: Duration = Duration::from_secs(24 * 3600);
/// How long a request's claim on its key holds off others: longer than an accept can take
/// (the broker wait, `UMP_ACCEPT_TIMEOUT`, 5 s by default); the longest a client can see 409.
/// Taking over a claim whose request is in fact still running is harmless: both produce the
/// same ids.
pub const IN_FLIGHT: Duration = Duration::from_secs(10);

/// A request's hold on its key: the ids it uses, and the token that `release` and `abandon` need
/// so that they end this claim and never a later request's.
#[derive(Debug, PartialEq)]
pub struct Claim {
    pub plan: String,
    pub token: String,
}

#[derive(Debug, PartialEq)]
pub enum Begin {
    /// Go ahead with the claim's message ids (the plan: this request's own, or that of an earlier
    /// attempt whose outcome is unknown), then `complete`, `release` or `abandon`.
    Go(Claim),
    /// Done before with the same body: here is the response it got.
    Replay(String),
    /// Another request with this key is being processed; try again after this long.
    InFlight(Duration),
    /// Used before with another body.
    Mismatch,
}

#[derive(Debug, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct StoreUnavailable(pub String);

#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for a request with `body_hash` that would use the ids of `plan`.
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        plan: &str,
    ) -> Result<Begin, StoreUnavailable>;
    /// Remembers `response` (the JSON body answered) for replays.
    async fn complete(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        response: &str,
    ) -> Result<(), StoreUnavailable>;
    /// Ends the claim of a request whose messages may or may not be durable (a 503): the next
    /// request with the key goes ahead at once, with the same plan. Only while `claim` holds.
    async fn release(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        claim: &str,
    ) -> Result<(), StoreUnavailable>;
    /// Forgets a key whose request certainly produced nothing (refused outright), so it can be
    /// used again, with any body. Only while `claim` holds: a request that took the key over
    /// meanwhile keeps it.
    async fn abandon(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        claim: &str,
    ) -> Result<(), StoreUnavailable>;
}

pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Where a key's state lives, and its stored values:
/// `p:<hash>:<claimed until, ms since the epoch>:<claim token>:<plan>` while claimed (or after a
/// release, with 0), `d:<hash>:<response>` once done.
fn storage_key(scope: &str, key: &str) -> String {
    // Hash the client's key: it may be long or contain anything.
    format!(
        "ump:idem:{scope}:{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The states as a pure function, for the SQLite store (the Redis scripts below are the same
/// rules): what `begin` answers for the value `stored` at `now_ms`, and the value to store then.
fn begin_state(
    stored: Option<&str>,
    hash: &str,
    plan: &str,
    token: &str,
    now_ms: u64,
) -> (Begin, Option<String>) {
    let claim = |plan: &str| {
        let value = format!("p:{hash}:{}:{token}:{plan}", now_ms + millis(IN_FLIGHT));
        (
            Begin::Go(Claim {
                plan: plan.to_owned(),
                token: token.to_owned(),
            }),
            Some(value),
        )
    };
    let Some(value) = stored else {
        return claim(plan);
    };
    let (state, rest) = value.split_at(2.min(value.len()));
    let Some(after) = rest.strip_prefix(hash) else {
        return (Begin::Mismatch, None);
    };
    // A claim of the earlier format (no time, no plan).
    if state == "p:" && after.is_empty() {
        return claim(plan);
    }
    let Some(rest) = after.strip_prefix(':') else {
        return (Begin::Mismatch, None);
    };
    if state == "d:" {
        return (Begin::Replay(rest.to_owned()), None);
    }
    let mut parts = rest.splitn(3, ':');
    match (
        parts.next().map(str::parse::<u64>),
        parts.next(),
        parts.next(),
    ) {
        (Some(Ok(until)), _, _) if now_ms < until => {
            (Begin::InFlight(Duration::from_millis(until - now_ms)), None)
        }
        (Some(Ok(_)), Some(_), Some(earlier)) => claim(earlier),
        _ => claim(plan),
    }
}

/// The plan of `stored` when it holds the claim `token` of a request with `hash`.
fn claimed_plan<'s>(stored: Option<&'s str>, hash: &str, token: &str) -> Option<&'s str> {
    let rest = stored?
        .strip_prefix("p:")?
        .strip_prefix(hash)?
        .strip_prefix(':')?;
    let mut parts = rest.splitn(3, ':');
    let (_until, held, plan) = (parts.next()?, parts.next()?, parts.next()?);
    (held == token).then_some(plan)
}

/// A claim's token: unique to one request's attempt, so that a late `release` or `abandon`
/// never ends a later claim, even one made in the same millisecond.
fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

const BEGIN_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hash, plan, token = ARGV[1], ARGV[2], ARGV[5]
local claim_end = now + tonumber(ARGV[3])
local v = redis.call('GET', KEYS[1])
-- None yet, or a claim of the earlier format (no time, no plan): go ahead with this plan.
if not v or v == 'p:' .. hash then
  redis.call('SET', KEYS[1], 'p:' .. hash .. ':' .. claim_end .. ':' .. token .. ':' .. plan, 'EX', ARGV[4])
  return 'go:' .. plan
end
if string.sub(v, 3, 3 + string.len(hash)) ~= hash .. ':' then return 'mismatch' end
local rest = string.sub(v, 4 + string.len(hash))
if string.sub(v, 1, 2) == 'd:' then return 'd:' .. rest end
local claimed = tonumber(string.match(rest, '^(%d+):'))
if claimed and now < claimed then return 'wait:' .. (claimed - now) end
plan = string.match(rest, '^%d+:[^:]*:(.*)$') or plan
redis.call('SET', KEYS[1], 'p:' .. hash .. ':' .. claim_end .. ':' .. token .. ':' .. plan, 'KEEPTTL')
return 'go:' .. plan
"#;

// Both end only the claim with token ARGV[2] of a request with body hash ARGV[1].
const RELEASE_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
local prefix = 'p:' .. ARGV[1] .. ':'
if not v or string.sub(v, 1, string.len(prefix)) ~= prefix then return 0 end
local token, plan = string.match(string.sub(v, string.len(prefix) + 1), '^%d+:([^:]*):(.*)$')
if token ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], prefix .. '0:' .. token .. ':' .. plan, 'KEEPTTL')
return 1
"#;

const ABANDON_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
local prefix = 'p:' .. ARGV[1] .. ':'
if not v or string.sub(v, 1, string.len(prefix)) ~= prefix then return 0 end
local token = string.match(string.sub(v, string.len(prefix) + 1), '^%d+:([^:]*):')
if token ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

pub struct RedisIdempotency {
    conn: redis::aio::ConnectionManager,
    begin: redis::Script,
    release: redis::Script,
    abandon: redis::Script,
}

impl RedisIdempotency {
    pub fn new(conn: redis::aio::ConnectionManager) -> Self {
        Self {
            conn,
            begin: redis::Script::new(BEGIN_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            abandon: redis::Script::new(ABANDON_SCRIPT),
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
        plan: &str,
    ) -> Result<Begin, StoreUnavailable> {
        let mut conn = self.conn.clone();
        let token = new_token();
        let answer: String = self
            .begin
            .key(storage_key(scope, key))
            .arg(body_hash)
            .arg(plan)
            .arg(millis(IN_FLIGHT))
            .arg(REMEMBER.as_secs())
            .arg(&token)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(if let Some(plan) = answer.strip_prefix("go:") {
            Begin::Go(Claim {
                plan: plan.to_owned(),
                token,
            })
        } else if let Some(wait) = answer.strip_prefix("wait:") {
            Begin::InFlight(Duration::from_millis(wait.parse().unwrap_or(0)))
        } else if let Some(response) = answer.strip_prefix("d:") {
            Begin::Replay(response.to_owned())
        } else {
            Begin::Mismatch
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
            .arg(storage_key(scope, key))
            .arg(format!("d:{body_hash}:{response}"))
            .arg("EX")
            .arg(REMEMBER.as_secs())
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn release(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        claim: &str,
    ) -> Result<(), StoreUnavailable> {
        self.end_claim(&self.release, scope, key, body_hash, claim)
            .await
    }

    async fn abandon(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        claim: &str,
    ) -> Result<(), StoreUnavailable> {
        self.end_claim(&self.abandon, scope, key, body_hash, claim)
            .await
    }
}

impl RedisIdempotency {
    /// Runs `script` (release or abandon) on the claim `claim` of a request with `body_hash`.
    async fn end_claim(
        &self,
        script: &redis::Script,
        scope: &str,
        key: &str,
        body_hash: &str,
        claim: &str,
    ) -> Result<(), StoreUnavailable> {
        let mut conn = self.conn.clone();
        script
            .key(storage_key(scope, key))
            .arg(body_hash)
            .arg(claim)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// The all-in-one mode's store: the same states, in the SQLite file (`expiring_keys`).
pub struct SqliteIdempotency {
    store: ump_core::sqlite::SqliteStore,
    /// One process owns the file; this makes each read-then-write atomic within it.
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
        plan: &str,
    ) -> Result<Begin, StoreUnavailable> {
        let key = storage_key(scope, key);
        let _guard = self.lock.lock().await;
        let now = chrono::Utc::now();
        let stored = self
            .store
            .get_expiring(&key, now)
            .await
            .map_err(sqlite_unavailable)?;
        let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        let (answer, write) = begin_state(stored.as_deref(), body_hash, plan, &new_token(), now_ms);
        match (write, stored) {
            (Some(value), None) => self
                .store
                .put_expiring(&key, &value, expiry(REMEMBER))
                .await
                .map_err(sqlite_unavailable)?,
            (Some(value), Some(_)) => {
                self.store
                    .replace_expiring(&key, &value)
                    .await
                    .map_err(sqlite_unavailable)?;
            }
            (None, _) => {}
        }
        Ok(answer)
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        response: &str,
    ) -> Result<(), StoreUnavailable> {
        let _guard = self.lock.lock().await;
        self.store
            .put_expiring(
                &storage_key(scope, key),
                &format!("d:{body_hash}:{response}"),
                expiry(REMEMBER),
            )
            .await
            .map_err(sqlite_unavailable)
    }

    async fn release(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        claim: &str,
    ) -> Result<(), StoreUnavailable> {
        self.end_claim(scope, key, body_hash, claim, |plan| {
            Some(format!("p:{body_hash}:0:{claim}:{plan}"))
        })
        .await
    }

    async fn abandon(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        claim: &str,
    ) -> Result<(), StoreUnavailable> {
        self.end_claim(scope, key, body_hash, claim, |_| None).await
    }
}

impl SqliteIdempotency {
    /// While the key holds the claim `claim` of a request with `body_hash`: replaces it with what
    /// `then(plan)` gives, or deletes it when that is `None`.
    async fn end_claim(
        &self,
        scope: &str,
        key: &str,
        body_hash: &str,
        claim: &str,
        then: impl FnOnce(&str) -> Option<String>,
    ) -> Result<(), StoreUnavailable> {
        let key = storage_key(scope, key);
        let _guard = self.lock.lock().await;
        let stored = self
            .store
            .get_expiring(&key, chrono::Utc::now())
            .await
            .map_err(sqlite_unavailable)?;
        let Some(plan) = claimed_plan(stored.as_deref(), body_hash, claim) else {
            return Ok(());
        };
        match then(plan) {
            Some(value) => self
                .store
                .replace_expiring(&key, &value)
                .await
                .map(|_| ())
                .map_err(sqlite_unavailable),
            None => self
                .store
                .delete_expiring(&key)
                .await
                .map_err(sqlite_unavailable),
        }
    }
}

/// The behaviour every `IdempotencyStore` must have, run against SQLite (below) and Redis
/// (`tests/idempotency_store.rs`). `scope` must be fresh for the run.
#[doc(hidden)]
pub mod contract {
    use super::{Begin, Claim, IN_FLIGHT, IdempotencyStore, body_hash};

    fn go(answer: Begin) -> Claim {
        match answer {
            Begin::Go(claim) => claim,
            other => panic!("expected to go ahead, got {other:?}"),
        }
    }

    pub async fn keys_walk_the_states(store: &dyn IdempotencyStore, scope: &str) {
        let body = body_hash(br#"{"channel":"sms"}"#);
        let other = body_hash(br#"{"channel":"email"}"#);
        let begin = |key: &'static str, hash: String, plan: &'static str| async move {
            store.begin(scope, key, &hash, plan).await.expect("begin")
        };

        assert_eq!(
            go(begin("order-1", body.clone(), "id-1").await).plan,
            "id-1"
        );
        match begin("order-1", body.clone(), "id-2").await {
            Begin::InFlight(wait) => assert!(wait <= IN_FLIGHT && !wait.is_zero(), "{wait:?}"),
            other => panic!("a second request while the first runs: {other:?}"),
        }
        assert_eq!(
            begin("order-1", other.clone(), "id-3").await,
            Begin::Mismatch
        );

        let answer = r#"{"id":"id-1","status":"accepted"}"#;
        store
            .complete(scope, "order-1", &body, answer)
            .await
            .expect("complete");
        assert_eq!(
            begin("order-1", body.clone(), "id-4").await,
            Begin::Replay(answer.to_owned())
        );
        assert_eq!(
            begin("order-1", other.clone(), "id-5").await,
            Begin::Mismatch
        );

        // Keys are per scope (tenant).
        let stranger = format!("{scope}-other");
        let claim = go(store
            .begin(&stranger, "order-1", &body, "id-6")
            .await
            .expect("begin"));
        assert_eq!(claim.plan, "id-6");

        // A request refused outright gives its key back, for any body; another claim's token
        // changes nothing.
        let claim = go(begin("order-2", body.clone(), "id-7").await);
        store
            .abandon(scope, "order-2", &body, "12345")
            .await
            .expect("abandon, another claim");
        assert!(matches!(
            begin("order-2", body.clone(), "x").await,
            Begin::InFlight(_)
        ));
        store
            .abandon(scope, "order-2", &body, &claim.token)
            .await
            .expect("abandon");
        assert_eq!(
            go(begin("order-2", other.clone(), "id-8").await).plan,
            "id-8"
        );

        // A request whose outcome is unknown (503) hands its plan to the next one at once.
        let claim = go(begin("order-3", body.clone(), "id-9").await);
        store
            .release(scope, "order-3", &other, &claim.token)
            .await
            .expect("release, another body");
        assert!(matches!(
            begin("order-3", body.clone(), "id-10").await,
            Begin::InFlight(_)
        ));
        store
            .release(scope, "order-3", &body, &claim.token)
            .await
            .expect("release");
        let retry = go(begin("order-3", body.clone(), "id-11").await);
        assert_eq!(retry.plan, "id-9");
        assert_ne!(retry.token, claim.token);
        assert!(matches!(
            begin("order-3", body.clone(), "id-12").await,
            Begin::InFlight(_)
        ));
        assert_eq!(
            begin("order-3", other.clone(), "id-13").await,
            Begin::Mismatch
        );
        // The first request, ending late, touches nothing of the retry's claim.
        store
            .abandon(scope, "order-3", &body, &claim.token)
            .await
            .expect("late abandon");
        assert!(matches!(
            begin("order-3", body.clone(), "id-14").await,
            Begin::InFlight(_)
        ));
    }

    /// A request that died (or lost the store) without saying how it ended: after `IN_FLIGHT`
    /// the next request takes its plan over, and the first one's late word changes nothing.
    pub async fn a_lapsed_claim_is_taken_over_with_its_plan(
        store: &dyn IdempotencyStore,
        scope: &str,
    ) {
        let body = body_hash(b"{}");
        let first = go(store
            .begin(scope, "k", &body, "first")
            .await
            .expect("begin"));
        assert_eq!(first.plan, "first");
        tokio::time::sleep(IN_FLIGHT + std::time::Duration::from_millis(100)).await;
        let second = go(store
            .begin(scope, "k", &body, "second")
            .await
            .expect("begin"));
        assert_eq!(second.plan, "first");
        store
            .abandon(scope, "k", &body, &first.token)
            .await
            .expect("late abandon");
        assert!(matches!(
            store
                .begin(scope, "k", &body, "third")
                .await
                .expect("begin"),
            Begin::InFlight(_)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> (tempfile::TempDir, SqliteIdempotency) {
        let dir = tempfile::tempdir().unwrap();
        let store = ump_core::sqlite::SqliteStore::open(&dir.path().join("ump.db"))
            .await
            .unwrap();
        (dir, SqliteIdempotency::new(store))
    }

    #[tokio::test]
    async fn the_sqlite_store_keeps_the_contract() {
        let (_dir, store) = sqlite().await;
        contract::keys_walk_the_states(&store, "t").await;
        contract::a_lapsed_claim_is_taken_over_with_its_plan(&store, "t").await;
    }

    #[test]
    fn the_states_at_a_given_time() {
        let hash = "h";
        let end = 1_000 + millis(IN_FLIGHT);
        let (go, stored) = begin_state(None, hash, "a", "t1", 1_000);
        assert_eq!(
            go,
            Begin::Go(Claim {
                plan: "a".into(),
                token: "t1".into()
            })
        );
        let stored = stored.expect("claimed");
        assert_eq!(stored, format!("p:h:{end}:t1:a"));
        assert_eq!(
            begin_state(Some(&stored), hash, "b", "t2", 1_500).0,
            Begin::InFlight(IN_FLIGHT - Duration::from_millis(500))
        );
        // Lapsed: taken over with its plan, under the new request's token.
        let (go, taken) = begin_state(Some(&stored), hash, "b", "t2", end);
        assert_eq!(
            go,
            Begin::Go(Claim {
                plan: "a".into(),
                token: "t2".into()
            })
        );
        let taken = taken.expect("claimed");
        assert_eq!(claimed_plan(Some(&taken), hash, "t2"), Some("a"));
        assert_eq!(
            claimed_plan(Some(&taken), hash, "t1"),
            None,
            "the old claim is over"
        );
        assert_eq!(
            begin_state(Some(&stored), "g", "b", "t2", 1_500).0,
            Begin::Mismatch
        );
        // A marker of the earlier format (no time, no plan) is taken over with the new plan.
        match begin_state(Some("p:h"), hash, "b", "t3", 1_500).0 {
            Begin::Go(claim) => assert_eq!(claim.plan, "b"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            begin_state(Some("d:h:{}"), hash, "b", "t3", 1_500).0,
            Begin::Replay("{}".into())
        );
        assert_eq!(claimed_plan(Some(&stored), hash, "t1"), Some("a"));
        assert_eq!(claimed_plan(Some("d:h:{}"), hash, "t1"), None);
        assert_eq!(claimed_plan(Some(&stored), "g", "t1"), None);
    }
}
