//! Message history storage: connecting to MySQL/MariaDB and keeping its schema current.

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The MySQL schema, embedded from `migrations/mysql` at compile time.
pub static MYSQL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid MySQL URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot connect to MySQL at {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the MySQL schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens a pool to the history database. The URL may carry credentials, so errors name only the
/// host and port, never the URL itself.
pub async fn connect_mysql(url: &str, max_connections: u32) -> Result<MySqlPool, StoreError> {
    let options = MySqlConnectOptions::from_str(url).map_err(StoreError::InvalidUrl)?;
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { host, port, source })
}

/// Brings the schema up to date; safe to run from several processes at once (sqlx takes a lock).
pub async fn migrate_mysql(pool: &MySqlPool) -> Result<(), StoreError> {
    MYSQL_MIGRATIONS.run(pool).await?;
    Ok(())
}
