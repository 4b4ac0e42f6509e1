//! UMP's operator: `MessageChannel` and `DeliveryPolicy` custom resources reconciled into Kafka
//! topics, worker ConfigMaps and lag-scaled worker Deployments.

pub mod builders;
pub mod conditions;
pub mod crd;
pub mod error;
pub mod kafka;
pub mod scaling;
pub mod settings;
pub mod topic;
pub mod validate;
