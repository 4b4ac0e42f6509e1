//! Authentication: `Authorization: Bearer <api key>` → the key's tenant. Active keys are cached in
//! memory and refreshed in the background, so accepting a message never waits on the database; a
//! key the cache does not know is looked up once and, when unknown, remembered as such briefly.

use crate::problem::Problem;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use ump_core::keys::{ApiKeyStore, PresentedKey, StoredKey};

/// How long an unknown key id is answered from memory.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
const MAX_NEGATIVE_ENTRIES: usize = 10_000;

pub struct KeyCache {
    store: Arc<dyn ApiKeyStore>,
    active: RwLock<HashMap<String, StoredKey>>,
    unknown: RwLock<HashMap<String, Instant>>,
}

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(pub String);

impl KeyCache {
    pub fn new(store: Arc<dyn ApiKeyStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            active: RwLock::default(),
            unknown: RwLock::default(),
        })
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

        // The usual case, answered under the read lock without copying the key record.
        let verdict = |stored: &StoredKey| {
            (stored.revoked_at.is_none() && presented.matches(&stored.hash))
                .then(|| Tenant(stored.tenant.clone()))
        };
        let cached = self
            .active
            .read()
            .ok()
            .and_then(|m| m.get(&presented.key_id).map(verdict));
        let tenant = match cached {
            Some(tenant) => tenant,
            None => self
                .lookup(&presented.key_id)
                .await?
                .as_ref()
                .and_then(verdict),
        };
        tenant.ok_or_else(Problem::unauthorized)
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
