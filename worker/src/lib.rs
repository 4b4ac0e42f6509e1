//! UMP's delivery worker: consumers (Kafka for bulk, AMQP 1.0 for realtime), the delivery
//! pipeline and the providers.

pub mod providers;
