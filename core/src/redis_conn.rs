//! Connections to Redis, made one way for every service: the API's idempotency keys and rate
//! limits, the workers' dedupe keys and channel rate limits.

/// A Redis client for `url` with TCP_NODELAY (redis-rs leaves Nagle's algorithm on by default):
/// every message's claim is one small command on a shared, multiplexed connection, and a command
/// written while an earlier one is unanswered must not wait for an ACK.
pub fn redis_client(url: &str) -> anyhow::Result<redis::Client> {
    use anyhow::Context as _;
    use redis::IntoConnectionInfo as _;
    let info = url
        .into_connection_info()
        .context("invalid UMP_REDIS_URL")?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp)).context("invalid UMP_REDIS_URL")
}

/// A managed (reconnecting) connection to Redis at `url`, made by [`redis_client`].
pub async fn connect_redis(url: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    use anyhow::Context as _;
    redis::aio::ConnectionManager::new(redis_client(url)?)
        .await
        .context("connecting to Redis")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_connections_have_nagle_off() {
        for url in ["redis://127.0.0.1:6379", "redis://:secret@127.0.0.1:6380/2"] {
            let client = redis_client(url).expect("a valid URL");
            assert!(
                client.get_connection_info().tcp_settings().nodelay(),
                "{url}"
            );
        }
        let error = redis_client("http://127.0.0.1").expect_err("not a Redis URL");
        assert!(error.to_string().contains("UMP_REDIS_URL"), "{error}");
    }
}
