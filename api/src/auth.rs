//! Authentication: `Authorization: Bearer <api key>` → the key's tenant. Active keys are cached in
//! memory and refreshed in the background, so accepting a message never waits on the database; a
//! key the cache does not know is looked up once and, when unknown, remembered as such briefly.
//!
//! Revocation is bounded by the refresh: a key revoked in the store (`ump keys revoke`, from any
//! process) stops working in every API process at its next refresh, within `REFRESH_EVERY` plus the
//! time of one query. While the store is unreachable the cached keys stay in force.
//!
//! Each authenticated request also takes one unit of its key's rate (GCRA per key id, in this
//! process): over it, `429` with `Retry-After`.

use crate::problem::Problem;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use ump_core::keys::{ApiKeyStore, BOOTSTRAP_KEY_ID, PresentedKey, StoredKey};
use ump_core::ratelimit::LocalRateLimiter;
use ump_core::ratelimit::RateLimiter;

/// How long an unknown key id is answered from memory.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
const MAX_NEGATIVE_ENTRIES: usize = 10_000;
/// How often the API reloads the active keys: the bound on a revocation taking effect.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The request rate each API key gets from one API process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct KeyRateSettings {
    /// Requests per second each API key may make to this API process; 0 turns the limit off.
    /// A batch is one request.
    #[arg(long, env = "UMP_KEY_RATE_PER_SECOND", default_value_t = 1000)]
    pub key_rate_per_second: u32,
    /// Requests a key may make at once before its rate applies.
    #[arg(long, env = "UMP_KEY_RATE_BURST", default_value_t = 2000)]
    pub key_rate_burst: u32,
}

impl Default for KeyRateSettings {
    fn default() -> Self {
        Self {
            key_rate_per_second: 1000,
            key_rate_burst: 2000,
        }
    }
}

pub struct KeyCache {
    store: Arc<dyn ApiKeyStore>,
    active: RwLock<HashMap<String, StoredKey>>,
    unknown: RwLock<HashMap<String, Instant>>,
    /// Theoretical arrival times by key id; a process serves few keys, so it stays small.
    limiter: LocalRateLimiter,
    per_second: AtomicU32,
    burst: AtomicU32,
}

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(pub String);

impl KeyCache {
    pub fn new(store: Arc<dyn ApiKeyStore>) -> Arc<Self> {
        let rate = KeyRateSettings::default();
        Arc::new(Self {
            store,
            active: RwLock::default(),
            unknown: RwLock::default(),
            limiter: LocalRateLimiter::new(),
            per_second: AtomicU32::new(rate.key_rate_per_second),
            burst: AtomicU32::new(rate.key_rate_burst),
        })
    }

    /// Sets the rate every key gets (the default is `KeyRateSettings::default()`).
    pub fn limit_rate(&self, rate: KeyRateSettings) {
        self.per_second
            .store(rate.key_rate_per_second, Ordering::Relaxed);
        self.burst.store(rate.key_rate_burst, Ordering::Relaxed);
    }

    /// Reloads every active key (revocations take effect here).
    pub async fn refresh(&self) -> Result<usize, ump_core::keys::KeyError> {
        let keys = self.store.active().await?;
        let map: HashMap<String, StoredKey> =
            keys.into_iter().map(|k| (k.key_id.clone(), k)).collect();
        let count = map.len();
        if let Ok(mut active) = self.active.write() {
            *active = map;
        }
        Ok(count)
    }

    /// Refreshes every `every` until the process ends.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = cache.refresh().await {
                    tracing::warn!(error = %e, "refreshing API keys failed; keeping the cached ones");
                }
            }
        });
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Tenant, Problem> {
        let key = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(Problem::unauthorized)?;
        let presented = PresentedKey::parse(key);
        let mut tenant = self.verify(&presented, &presented.key_id).await?;
        let mut key_id = presented.key_id.as_str();
        // The bootstrap key may be any text, the shape of a generated key included
        // (`ump_<id>_<secret>`): one that matches no stored key of its id may still be it.
        if tenant.is_none() && key_id != BOOTSTRAP_KEY_ID {
            key_id = BOOTSTRAP_KEY_ID;
            tenant = self.verify(&presented, key_id).await?;
        }
        let tenant = tenant.ok_or_else(Problem::unauthorized)?;
        self.take_rate(key_id).await?;
        Ok(tenant)
    }

    /// The tenant of the stored key `key_id` when `presented` is that key and it is active.
    async fn verify(
        &self,
        presented: &PresentedKey,
        key_id: &str,
    ) -> Result<Option<Tenant>, Problem> {
        // The usual case, answered under the read lock without copying the key record.
        let verdict = |stored: &StoredKey| {
            (stored.revoked_at.is_none() && presented.matches(&stored.hash))
                .then(|| Tenant(stored.tenant.clone()))
        };
        let cached = self
            .active
            .read()
            .ok()
            .and_then(|m| m.get(key_id).map(verdict));
        Ok(match cached {
            Some(tenant) => tenant,
            None => self.lookup(key_id).await?.as_ref().and_then(verdict),
        })
    }

    /// Takes one request from `key_id`'s rate, or says how long to wait.
    async fn take_rate(&self, key_id: &str) -> Result<(), Problem> {
        let per_second = self.per_second.load(Ordering::Relaxed);
        if per_second == 0 {
            return Ok(());
        }
        let burst = self.burst.load(Ordering::Relaxed).max(1);
        match self.limiter.try_acquire(key_id, per_second, burst).await {
            Ok(Some(wait)) => Err(Problem::rate_limited(per_second, burst, wait)),
            // The in-process limiter cannot fail; were it to, the request is let through.
            Ok(None) | Err(_) => Ok(()),
        }
    }

    async fn lookup(&self, key_id: &str) -> Result<Option<StoredKey>, Problem> {
        let recently_unknown = self
            .unknown
            .read()
            .ok()
            .and_then(|m| m.get(key_id).copied())
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL);
        if recently_unknown {
            return Ok(None);
        }
        let found = self.store.find(key_id).await.map_err(|e| {
            tracing::warn!(error = %e, "API key lookup failed");
            Problem::unavailable("the key store is unavailable", 2)
        })?;
        match &found {
            Some(stored) if stored.revoked_at.is_none() => {
                if let Ok(mut active) = self.active.write() {
                    active.insert(key_id.to_owned(), stored.clone());
                }
            }
            _ => {
                if let Ok(mut unknown) = self.unknown.write() {
                    if unknown.len() >= MAX_NEGATIVE_ENTRIES {
                        unknown.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                    }
                    if unknown.len() < MAX_NEGATIVE_ENTRIES {
                        unknown.insert(key_id.to_owned(), Instant::now());
                    }
                }
            }
        }
        Ok(found)
    }
}
