//! UMP's shared library: the pieces the api, worker and operator crates all use.
//! Storage lives here because both the api (reads) and the worker (writes) need it.

// The domain, under the paths it always had here.
pub use ump_domain::{duration, model, policy, resources, validate};

pub mod advertising;
pub mod amqp;
pub mod audience;
pub mod audience_mysql;
pub mod audience_sqlite;
pub mod broadcast;
pub mod catalog;
pub mod config;
pub mod history;
pub mod journeys;
pub mod keys;
pub mod person_codec;
pub mod pii;
pub mod profiles;
pub mod provider;
pub mod queue;
pub mod ratelimit;
pub mod recommendations;
pub mod redis_conn;
pub mod sqlite;
pub mod stats;
pub mod store;
pub mod template;
pub mod tls;
pub mod webhooks;
mod webhooks_batches;
mod webhooks_erasure;
pub mod webhooks_store;

#[cfg(feature = "testing")]
pub mod testing;
