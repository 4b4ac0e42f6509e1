//! UMP's domain, shared by every binary: the `MessageChannel` and `DeliveryPolicy` resources and
//! their one validation, the message model, durations as the specs write them, and the pure
//! rules of a delivery policy (quiet hours, backoff). No I/O: the adapters (MySQL, SQLite, Kafka,
//! AMQP) live in `ump-core` and `ump-kafka`, so the operator builds without them.

pub mod duration;
pub mod model;
pub mod policy;
pub mod resources;
pub mod validate;
