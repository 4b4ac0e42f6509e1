//! UMP's delivery worker: consumers (Kafka for bulk, AMQP 1.0 for realtime), the delivery
//! pipeline and the providers.

pub mod all_in_one;
pub mod consumer;
pub mod dedupe;
pub mod fallback;
pub mod metrics;
pub mod pause;
pub mod pipeline;
pub mod providers;
pub use ump_core::ratelimit;
pub mod realtime;
pub mod service;
pub mod transport;
pub mod turns;
pub mod webhooks;
