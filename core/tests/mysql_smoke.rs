//! Smoke test: sqlx reaches the real MariaDB from `scripts/infra up` and applies the migrations.

use sqlx::Row;
use ump_core::store::{MYSQL_MIGRATIONS, migrate_mysql};
use ump_core::testing::TestDatabase;

#[tokio::test]
async fn migrations_apply_to_a_fresh_mariadb_database() {
    // A throwaway database, so the test never depends on (or damages) shared state.
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    // Running them again is a no-op (every process migrates at start).
    migrate_mysql(pool)
        .await
        .expect("MariaDB: second migration run");

    let tables: Vec<String> = sqlx::query(
        "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE() \
         ORDER BY t",
    )
    .fetch_all(pool)
    .await
    .expect("MariaDB: list tables")
    .iter()
    .map(|row| row.get::<String, _>("t"))
    .collect();
    for expected in [
        "_sqlx_migrations",
        "api_keys",
        "deferred_messages",
        "message_events",
        "messages",
        "tenants",
    ] {
        assert!(
            tables.iter().any(|t| t == expected),
            "table {expected} missing: {tables:?}"
        );
    }
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .expect("MariaDB: count migrations");
    assert_eq!(applied as usize, MYSQL_MIGRATIONS.iter().count());

    // Korean text must round-trip byte for byte (utf8mb4 everywhere).
    sqlx::query(
        "INSERT INTO tenants (id, name, created_at) VALUES ('t1', '안녕하세요 🎉', NOW(6))",
    )
    .execute(pool)
    .await
    .expect("MariaDB: insert");
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE id = 't1'")
        .fetch_one(pool)
        .await
        .expect("MariaDB: select");
    assert_eq!(name, "안녕하세요 🎉");

    db.drop_database().await;
}
