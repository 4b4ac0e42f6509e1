//! API keys. A key is `ump_<key id>_<secret>`; only SHA-256 of the whole key is stored, and a
//! presented key is compared in constant time. Keys are 256-bit random, so a fast hash is
//! enough: there is nothing to brute-force that a slow hash would protect.
//!
//! The bootstrap key (`UMP_BOOTSTRAP_API_KEY`) may be any text an `Authorization` header can carry
//! (`check_bootstrap_key`), the shape of a generated key included; it is stored under the key id
//! `bootstrap`, and a presented key that matches no stored key of its own id is tried against it.

use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::mysql::MySqlPool;
use subtle::ConstantTimeEq;

pub const BOOTSTRAP_KEY_ID: &str = "bootstrap";
pub const DEFAULT_TENANT: &str = "default";

/// A key as presented by a client, split into its id and the hash of the whole key.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey {
    pub key_id: String,
    pub hash: [u8; 32],
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the hash: with it, a log reader could match keys across systems.
        f.debug_struct("PresentedKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl PresentedKey {
    pub fn parse(key: &str) -> Self {
        let key_id = key
            .strip_prefix("ump_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| {
                !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .unwrap_or(BOOTSTRAP_KEY_ID);
        Self {
            key_id: key_id.to_owned(),
            hash: hash_key(key),
        }
    }

    /// Constant-time comparison with a stored hash.
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.hash.ct_eq(stored))
    }
}

/// The longest bootstrap key accepted: far beyond any sensible secret, well within what every
/// HTTP server and proxy passes in a header.
pub const MAX_BOOTSTRAP_KEY_LEN: usize = 1024;

/// The bootstrap key as it will be presented: `raw` without surrounding whitespace (a Secret
/// written with `echo` ends in a newline). Refused, with the reason, when no client could ever
/// present it: blank, longer than `MAX_BOOTSTRAP_KEY_LEN`, or with a character a header value
/// cannot hold (controls, non-ASCII).
pub fn check_bootstrap_key(raw: &str) -> Result<&str, String> {
    let key = raw.trim();
    if key.is_empty() {
        return Err("it is set but blank: unset it, or give the key".into());
    }
    if key.len() > MAX_BOOTSTRAP_KEY_LEN {
        return Err(format!(
            "it is {} characters long; at most {MAX_BOOTSTRAP_KEY_LEN} are accepted",
            key.len()
        ));
    }
    if let Some(at) = key.find(|c: char| !(c == ' ' || c.is_ascii_graphic())) {
        return Err(format!(
            "character {} is not printable ASCII, so no Authorization header can carry it",
            key[..at].chars().count() + 1
        ));
    }
    Ok(key)
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key: its id and the full key (shown once, never stored). The secret is 256 bits
/// from the operating system's CSPRNG (through ring, already linked for TLS), as 64 hex digits.
pub fn generate_key() -> (String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    let random = rustls::crypto::ring::default_provider().secure_random;
    for buf in [&mut id[..], &mut secret[..]] {
        // Only a broken kernel RNG fails here; a key must never come from anything weaker.
        random
            .fill(buf)
            .expect("the operating system's random number generator failed");
    }
    let id = hex::encode(id);
    let key = format!("ump_{id}_{}", hex::encode(secret));
    (id, key)
}

/// A stored key as the store returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredKey {
    pub key_id: String,
    pub tenant: String,
    pub hash: Vec<u8>,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod bootstrap_tests {
    use super::*;

    #[test]
    fn a_bootstrap_key_is_any_text_a_header_can_carry() {
        assert_eq!(check_bootstrap_key("any-string-key"), Ok("any-string-key"));
        let generated = "ump_bars_0123456789abcdef0123456789abcdef";
        assert_eq!(check_bootstrap_key(generated), Ok(generated));
        assert_eq!(check_bootstrap_key("  dev key\n"), Ok("dev key"));
        let longest = "k".repeat(MAX_BOOTSTRAP_KEY_LEN);
        assert_eq!(check_bootstrap_key(&longest), Ok(longest.as_str()));
    }

    #[test]
    fn a_bootstrap_key_no_client_could_present_is_refused() {
        for (raw, why) in [
            ("", "blank"),
            (" \t\n", "blank"),
            ("열쇠", "character 1 is not printable ASCII"),
            ("key\u{7f}x", "character 4 is not printable ASCII"),
        ] {
            let refused = check_bootstrap_key(raw).expect_err(raw);
            assert!(refused.contains(why), "{raw:?}: {refused}");
        }
        let long = "k".repeat(MAX_BOOTSTRAP_KEY_LEN + 1);
        assert!(
            check_bootstrap_key(&long)
                .unwrap_err()
                .contains("1025 characters")
        );
    }

    #[test]
    fn a_generated_shape_names_its_key_id() {
        let presented = PresentedKey::parse("ump_bars_0123456789abcdef0123456789abcdef");
        assert_eq!(presented.key_id, "bars");
        assert_eq!(
            PresentedKey::parse("any-string-key").key_id,
            BOOTSTRAP_KEY_ID
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no key with id {0}")]
    NotFound(String),
}

#[async_trait::async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Stores `key` for `tenant` under `key_id` (creating the tenant); replaces the hash when the
    /// id exists (a rotated bootstrap key).
    async fn put(
        &self,
        key_id: &str,
        tenant: &str,
        key: &str,
        description: &str,
    ) -> Result<(), KeyError>;
    async fn revoke(&self, key_id: &str) -> Result<(), KeyError>;
    async fn find(&self, key_id: &str) -> Result<Option<StoredKey>, KeyError>;
    /// Every active key, for the api's in-memory cache.
    async fn active(&self) -> Result<Vec<StoredKey>, KeyError>;
}

#[derive(Clone, Debug)]
pub struct MySqlKeys {
    pool: MySqlPool,
}

impl MySqlKeys {
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }
}

fn stored_key(row: &sqlx::mysql::MySqlRow) -> Result<StoredKey, sqlx::Error> {
    Ok(StoredKey {
        key_id: row.try_get("key_id")?,
        tenant: row.try_get("tenant_id")?,
        hash: row.try_get("secret_hash")?,
        description: row.try_get("description")?,
        created_at: row.try_get::<NaiveDateTime, _>("created_at")?.and_utc(),
        revoked_at: row
            .try_get::<Option<NaiveDateTime>, _>("revoked_at")?
            .map(|t| t.and_utc()),
    })
}

#[async_trait::async_trait]
impl ApiKeyStore for MySqlKeys {
    async fn put(
        &self,
        key_id: &str,
        tenant: &str,
        key: &str,
        description: &str,
    ) -> Result<(), KeyError> {
        let now = Utc::now().naive_utc();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT IGNORE INTO tenants (id, name, created_at) VALUES (?, ?, ?)")
            .bind(tenant)
            .bind(tenant)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO api_keys (key_id, tenant_id, secret_hash, description, created_at) \
             VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE tenant_id = VALUES(tenant_id), \
             secret_hash = VALUES(secret_hash), description = VALUES(description), revoked_at = NULL",
        )
        .bind(key_id)
        .bind(tenant)
        .bind(hash_key(key).as_slice())
        .bind(description)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke(&self, key_id: &str) -> Result<(), KeyError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
        )
        .bind(Utc::now().naive_utc())
        .bind(key_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 && self.find(key_id).await?.is_none() {
            return Err(KeyError::NotFound(key_id.to_owned()));
        }
        Ok(())
    }

    async fn find(&self, key_id: &str) -> Result<Option<StoredKey>, KeyError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_id = ?")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(stored_key).transpose()?)
    }

    async fn active(&self) -> Result<Vec<StoredKey>, KeyError> {
        let rows = sqlx::query("SELECT * FROM api_keys WHERE revoked_at IS NULL")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(stored_key).collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_to_their_id_and_match_their_hash() {
        let (id, key) = generate_key();
        let presented = PresentedKey::parse(&key);
        assert_eq!(presented.key_id, id);
        assert!(presented.matches(&hash_key(&key)));
        assert!(!presented.matches(&hash_key("other")));
        assert!(!presented.matches(&[0u8; 3]));
        let secret = key.rsplit('_').next().unwrap_or_default();
        assert_eq!(secret.len(), 64, "256 bits as hex: {key}");
        assert_ne!(generate_key().1, key);
    }

    #[test]
    fn free_form_keys_are_the_bootstrap_key() {
        assert_eq!(PresentedKey::parse("dev-secret").key_id, BOOTSTRAP_KEY_ID);
        assert_eq!(PresentedKey::parse("ump__x").key_id, BOOTSTRAP_KEY_ID);
        assert_eq!(PresentedKey::parse("ump_a-b_x").key_id, BOOTSTRAP_KEY_ID);
    }

    #[test]
    fn debug_never_shows_the_hash() {
        let text = format!("{:?}", PresentedKey::parse("secret-key"));
        assert!(!text.contains("hash"), "{text}");
    }
}
