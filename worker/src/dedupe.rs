//! Deduplication and the "already sent" memory, in one key per message. The key is the dedupe key
//! (Idempotency-Key or content hash, per the policy) or, when the policy does not dedupe, the
//! message id. Its value says who owns it and how far it got:
//!
//! `<message id>|sending|<worker instance>|<ms>` → `<message id>|sent||`
//!
//! A `sent` mark keeps only what a later claim reads (the id and the state): it stays for the
//! whole dedupe window, one per message sent in it, so its size is what Redis holds, forks and
//! rewrites. 43 bytes with a UUID fit Redis's compact string encoding (at most 44 bytes, value and
//! object in one allocation).
//!
//! A message is never a duplicate of itself: a redelivered message (its worker died, its
//! partition moved) finds its own id. Found `sent`, it is recorded as sent without a second
//! provider call. Found `sending` by another live worker (within the lease), it waits, because
//! that worker may be calling the provider right now. Found `sending` by a worker that is gone
//! (lease over), the call's fate is unknown and the message is sent again: the one window in which
//! a message can go out twice.

use std::time::Duration;

pub use ump_core::redis_conn::{connect_redis, redis_client};

#[derive(Debug, PartialEq)]
pub enum Claim {
    /// Go ahead and send.
    Claimed,
    /// This message was sent already (by an earlier delivery of it).
    AlreadySent,
    /// Another worker is delivering it right now: try again after a while.
    Busy,
    /// Another message with the same dedupe key owns it.
    Duplicate { of: String },
}

#[derive(Debug, thiserror::Error)]
#[error("dedupe store unavailable: {0}")]
pub struct DedupeUnavailable(pub String);

#[async_trait::async_trait]
pub trait DedupeStore: Send + Sync {
    /// The dependency it lives in (`redis`, `sqlite`): the label of the pause metric while it is
    /// down.
    fn backend(&self) -> &'static str;
    /// `ttl`: how long the key lives (the dedupe window, or a day for per-message keys).
    async fn claim(&self, key: &str, id: &str, ttl: Duration) -> Result<Claim, DedupeUnavailable>;
    async fn mark_sent(&self, key: &str, id: &str, ttl: Duration) -> Result<(), DedupeUnavailable>;
    /// Gives the key up (the message failed for good), so a later identical send can go out; only
    /// while this worker's own claim holds it.
    async fn release(&self, key: &str, id: &str) -> Result<(), DedupeUnavailable>;
    /// The messages holding `keys` (each its own per-message key, shared with no other message)
    /// are settled with their transport: each key lives at most `keep` longer, and is deleted now
    /// when `keep` is zero. What is left of a key's life only matters to a redelivery of its
    /// message, which a settled message no longer gets.
    async fn forget(&self, keys: &[String], keep: Duration) -> Result<(), DedupeUnavailable>;
}

/// How long another worker's `sending` mark is trusted to be alive, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

const CLAIM: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local v = redis.call('GET', KEYS[1])
if v then
  local id, state, inst, ts = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if id ~= ARGV[1] then return 'duplicate|' .. (id or '') end
  if state == 'sent' then return 'sent' end
  if inst ~= ARGV[2] and (ms - tonumber(ts)) < tonumber(ARGV[3]) then return 'busy' end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|sending|' .. ARGV[2] .. '|' .. ms, 'EX', ARGV[4])
return 'claimed'
"#;

const MARK_SENT: &str = r#"
local v = redis.call('GET', KEYS[1])
local prefix = ARGV[1] .. '|'
if v and string.sub(v, 1, string.len(prefix)) ~= prefix then return 0 end
local value = ARGV[1] .. '|sent||'
if v then redis.call('SET', KEYS[1], value, 'KEEPTTL') else redis.call('SET', KEYS[1], value, 'EX', ARGV[2]) end
return 1
"#;

// Only this worker's own `sending` claim: another worker that took the key over after the lease
// (or sent the message meanwhile) keeps it.
const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
local prefix = ARGV[1] .. '|sending|' .. ARGV[2] .. '|'
if v and string.sub(v, 1, string.len(prefix)) == prefix then redis.call('DEL', KEYS[1]) return 1 end
return 0
"#;

pub struct RedisDedupe {
    conn: redis::aio::ConnectionManager,
    instance: String,
    lease: Duration,
    claim: redis::Script,
    mark_sent: redis::Script,
    release: redis::Script,
}

impl RedisDedupe {
    /// `instance` identifies this worker process (a new one per start); `lease` is how long its
    /// `sending` marks hold off other workers.
    pub fn new(conn: redis::aio::ConnectionManager, instance: String, lease: Duration) -> Self {
        Self {
            conn,
            instance,
            lease,
            claim: redis::Script::new(CLAIM),
            mark_sent: redis::Script::new(MARK_SENT),
            release: redis::Script::new(RELEASE),
        }
    }
}

fn unavailable(e: redis::RedisError) -> DedupeUnavailable {
    DedupeUnavailable(e.to_string())
}

#[async_trait::async_trait]
impl DedupeStore for RedisDedupe {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn claim(&self, key: &str, id: &str, ttl: Duration) -> Result<Claim, DedupeUnavailable> {
        let mut conn = self.conn.clone();
        let answer: String = self
            .claim
            .key(key)
            .arg(id)
            .arg(&self.instance)
            .arg(self.lease.as_millis() as u64)
            .arg(ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match answer.as_str() {
            "claimed" => Claim::Claimed,
            "sent" => Claim::AlreadySent,
            "busy" => Claim::Busy,
            other => Claim::Duplicate {
                of: other.strip_prefix("duplicate|").unwrap_or(other).to_owned(),
            },
        })
    }

    async fn mark_sent(&self, key: &str, id: &str, ttl: Duration) -> Result<(), DedupeUnavailable> {
        let mut conn = self.conn.clone();
        self.mark_sent
            .key(key)
            .arg(id)
            .arg(ttl.as_secs().max(1))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn release(&self, key: &str, id: &str) -> Result<(), DedupeUnavailable> {
        let mut conn = self.conn.clone();
        self.release
            .key(key)
            .arg(id)
            .arg(&self.instance)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn forget(&self, keys: &[String], keep: Duration) -> Result<(), DedupeUnavailable> {
        if keys.is_empty() {
            return Ok(());
        }
        // One round trip; `UNLINK` frees the memory off Redis's main thread.
        let mut pipe = redis::pipe();
        for key in keys {
            if keep.is_zero() {
                pipe.cmd("UNLINK").arg(key).ignore();
            } else {
                pipe.cmd("PEXPIRE")
                    .arg(key)
                    .arg(keep.as_millis() as u64)
                    .ignore();
            }
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }
}

/// The behaviour every `DedupeStore` must have, run against each implementation (the in-process
/// one in `crate::local`'s tests, Redis in `tests/dedupe_redis.rs`). `store(instance, lease)`
/// makes a store of one worker instance; every call of one run must share the same data, and
/// keys must be fresh for the run.
#[doc(hidden)]
pub mod contract {
    use super::{Claim, DedupeStore};
    use std::time::Duration;

    pub async fn claims_follow_the_state_machine<F, S>(store: F, key: &str)
    where
        F: Fn(&str, Duration) -> S,
        S: DedupeStore,
    {
        let lease = Duration::from_secs(60);
        let (one, two) = (store("one", lease), store("two", lease));
        let ttl = Duration::from_secs(600);
        let other = format!("{key}-2");
        assert_eq!(one.claim(key, "m1", ttl).await.unwrap(), Claim::Claimed);
        // Another message with the same key is a duplicate of the first.
        assert_eq!(
            two.claim(key, "m2", ttl).await.unwrap(),
            Claim::Duplicate { of: "m1".into() }
        );
        // The same message seen by another live instance waits; by its own owner, goes ahead.
        assert_eq!(two.claim(key, "m1", ttl).await.unwrap(), Claim::Busy);
        assert_eq!(one.claim(key, "m1", ttl).await.unwrap(), Claim::Claimed);
        one.mark_sent(key, "m1", ttl).await.unwrap();
        assert_eq!(two.claim(key, "m1", ttl).await.unwrap(), Claim::AlreadySent);
        // A sent message's key is never given up: nor by another message, nor by its own.
        one.release(key, "m2").await.unwrap();
        one.release(key, "m1").await.unwrap();
        assert_eq!(
            two.claim(key, "m2", ttl).await.unwrap(),
            Claim::Duplicate { of: "m1".into() }
        );
        // A claim released by its owner (the message failed for good) frees the content; a
        // release by anyone else changes nothing.
        assert_eq!(one.claim(&other, "m3", ttl).await.unwrap(), Claim::Claimed);
        two.release(&other, "m3").await.unwrap();
        assert_eq!(
            two.claim(&other, "m4", ttl).await.unwrap(),
            Claim::Duplicate { of: "m3".into() }
        );
        one.release(&other, "m3").await.unwrap();
        assert_eq!(two.claim(&other, "m4", ttl).await.unwrap(), Claim::Claimed);
    }

    pub async fn a_lapsed_claim_is_taken_over_and_its_release_changes_nothing<F, S>(
        store: F,
        key: &str,
    ) where
        F: Fn(&str, Duration) -> S,
        S: DedupeStore,
    {
        let lease = Duration::from_millis(200);
        let (slow, next) = (store("slow", lease), store("next", lease));
        let third = store("third", Duration::from_secs(60));
        let ttl = Duration::from_secs(600);
        assert_eq!(slow.claim(key, "m", ttl).await.unwrap(), Claim::Claimed);
        assert_eq!(next.claim(key, "m", ttl).await.unwrap(), Claim::Busy);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // `slow` outlived its lease in a provider call; `next` took the message over.
        assert_eq!(next.claim(key, "m", ttl).await.unwrap(), Claim::Claimed);
        slow.release(key, "m").await.unwrap();
        assert_eq!(third.claim(key, "m", ttl).await.unwrap(), Claim::Busy);
        next.mark_sent(key, "m", ttl).await.unwrap();
        slow.release(key, "m").await.unwrap();
        assert_eq!(
            third.claim(key, "m", ttl).await.unwrap(),
            Claim::AlreadySent
        );
    }

    /// `keys` must be two fresh keys.
    pub async fn a_settled_message_is_forgotten_after_what_is_kept<F, S>(store: F, keys: [&str; 2])
    where
        F: Fn(&str, Duration) -> S,
        S: DedupeStore,
    {
        let lease = Duration::from_secs(60);
        let (one, two) = (store("one", lease), store("two", lease));
        let ttl = Duration::from_secs(600);
        let [now, soon] = keys;
        for (key, id) in [(now, "m1"), (soon, "m2")] {
            assert_eq!(one.claim(key, id, ttl).await.unwrap(), Claim::Claimed);
            one.mark_sent(key, id, ttl).await.unwrap();
        }
        one.forget(&[now.to_owned()], Duration::ZERO).await.unwrap();
        one.forget(&[soon.to_owned()], Duration::from_secs(1))
            .await
            .unwrap();
        // Gone at once: a redelivery now would be a new claim.
        assert_eq!(two.claim(now, "m1", ttl).await.unwrap(), Claim::Claimed);
        // Kept for the time given, then gone.
        assert_eq!(
            two.claim(soon, "m2", ttl).await.unwrap(),
            Claim::AlreadySent
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(two.claim(soon, "m2", ttl).await.unwrap(), Claim::Claimed);
        // Nothing to forget is not an error.
        one.forget(&[], Duration::ZERO).await.unwrap();
    }
}
