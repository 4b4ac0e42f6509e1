//! The behaviour every `ApiKeyStore` must have, run against MySQL (`core/tests/mysql_history.rs`)
//! and SQLite (`crate::sqlite`'s tests) alike.

use crate::keys::{ApiKeyStore, KeyError, generate_key, hash_key};

/// Keys are kept as their hash only, under their tenant; a key put again under its id (a rotated
/// bootstrap key) replaces the hash and is active again; a revoked key leaves `active`; revoking
/// twice is fine, revoking an unknown id is `NotFound`. `tenant` must be fresh for the run.
pub async fn keys_are_hashed_replaced_and_revoked(store: &dyn ApiKeyStore, tenant: &str) {
    let (id, key) = generate_key();
    store.put(&id, tenant, &key, "first").await.expect("put");
    let found = store.find(&id).await.expect("find").expect("the key");
    assert_eq!(
        (found.tenant.as_str(), found.description.as_str()),
        (tenant, "first")
    );
    assert_eq!(found.hash, hash_key(&key), "the SHA-256 of the key");
    assert!(found.revoked_at.is_none());
    let active = |keys: Vec<crate::keys::StoredKey>| keys.iter().any(|k| k.key_id == id);
    assert!(active(store.active().await.expect("active")));

    store.revoke(&id).await.expect("revoke");
    store.revoke(&id).await.expect("revoke again");
    let revoked = store.find(&id).await.expect("find").expect("still known");
    assert!(revoked.revoked_at.is_some());
    assert!(!active(store.active().await.expect("active")));

    let (_, rotated) = generate_key();
    store
        .put(&id, tenant, &rotated, "rotated")
        .await
        .expect("put again");
    let replaced = store.find(&id).await.expect("find").expect("the key");
    assert_eq!(replaced.hash, hash_key(&rotated));
    assert_eq!(replaced.description, "rotated");
    assert!(replaced.revoked_at.is_none(), "active again");
    assert!(active(store.active().await.expect("active")));

    let (unknown, _) = generate_key();
    assert!(store.find(&unknown).await.expect("find").is_none());
    assert!(matches!(
        store.revoke(&unknown).await,
        Err(KeyError::NotFound(id)) if id == unknown
    ));
}
