//! `ump-worker`: the delivery worker process.

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    anyhow::bail!("ump-worker has no delivery pipeline yet; run `ump` (the all-in-one) instead")
}
