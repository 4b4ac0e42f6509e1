//! `ump-operator`: the controller process.

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    anyhow::bail!("ump-operator has no reconcilers yet")
}
