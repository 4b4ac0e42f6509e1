//! Providers: one module per protocol, all behind `ump_core::provider::Provider`.

pub mod sandbox;

use std::path::Path;
use std::sync::Arc;
use ump_core::provider::Provider;
use ump_core::resources::{ProviderSpec, ProviderType};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("provider {name}: type {provider_type:?} is not supported yet")]
    Unsupported {
        name: String,
        provider_type: ProviderType,
    },
    #[error("provider {name}: {detail}")]
    Invalid { name: String, detail: String },
}

/// Everything a provider may need besides its spec.
#[derive(Clone, Debug)]
pub struct ProviderContext<'a> {
    /// Where the provider's Secret is mounted: `<secrets_dir>/<secretRef.name>/<key>`.
    pub secrets_dir: &'a Path,
    /// Where the sandbox provider appends what it would have sent.
    pub sandbox_outbox: &'a Path,
}

pub fn build(
    spec: &ProviderSpec,
    ctx: &ProviderContext<'_>,
) -> Result<Arc<dyn Provider>, BuildError> {
    match spec.provider_type {
        ProviderType::Sandbox => Ok(Arc::new(sandbox::SandboxProvider::build(spec, ctx)?)),
        other => Err(BuildError::Unsupported {
            name: spec.name.clone(),
            provider_type: other,
        }),
    }
}
