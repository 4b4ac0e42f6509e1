//! Smoke test: sqlx reaches the real MariaDB from `scripts/infra up` and applies the migrations.

use sqlx::Row;
use ump_core::store::{MYSQL_MIGRATIONS, connect_mysql, migrate_mysql};
use ump_core::testing::{infra, unique_name};

#[tokio::test]
async fn migrations_apply_to_a_fresh_mariadb_database() {
    let admin_url = infra().mysql_url();
    let admin = connect_mysql(&admin_url, 2)
        .await
        .unwrap_or_else(|e| panic!("MariaDB: {e}"));

    // A throwaway database, so the test never depends on (or damages) shared state.
    let db = unique_name("ump_smoke").replace('-', "_");
    // `db` is our own hex name, not input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{db}`")))
        .execute(&admin)
        .await
        .expect("MariaDB: CREATE DATABASE");

    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    let pool = connect_mysql(&format!("{base}/{db}"), 2)
        .await
        .unwrap_or_else(|e| panic!("MariaDB: {e}"));
    migrate_mysql(&pool).await.expect("MariaDB: migrations");
    // Running them again is a no-op (every process migrates at start).
    migrate_mysql(&pool)
        .await
        .expect("MariaDB: second migration run");

    let tables: Vec<String> = sqlx::query(
        "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = ? ORDER BY t",
    )
    .bind(&db)
    .fetch_all(&pool)
    .await
    .expect("MariaDB: list tables")
    .iter()
    .map(|row| row.get::<String, _>("t"))
    .collect();
    for expected in [
        "_sqlx_migrations",
        "api_keys",
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
        .fetch_one(&pool)
        .await
        .expect("MariaDB: count migrations");
    assert_eq!(applied as usize, MYSQL_MIGRATIONS.iter().count());

    // Korean text must round-trip byte for byte (utf8mb4 everywhere).
    sqlx::query(
        "INSERT INTO tenants (id, name, created_at) VALUES ('t1', '안녕하세요 🎉', NOW(6))",
    )
    .execute(&pool)
    .await
    .expect("MariaDB: insert");
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE id = 't1'")
        .fetch_one(&pool)
        .await
        .expect("MariaDB: select");
    assert_eq!(name, "안녕하세요 🎉");

    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{db}`")))
        .execute(&admin)
        .await
        .expect("MariaDB: DROP DATABASE");
}
