//! UMP's operator: `MessageChannel` and `DeliveryPolicy` custom resources reconciled into Kafka
//! topics, worker ConfigMaps and lag-scaled worker Deployments; the event processor's Deployment
//! scaled from its lag too.

pub mod builders;
pub mod channel;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod error;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod processor;
pub mod scaling;
pub mod settings;
pub mod status;
pub mod topic;
