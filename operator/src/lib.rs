//! UMP's operator: `MessageChannel` and `DeliveryPolicy` custom resources reconciled into worker
//! Deployments and Kafka topics. The resources and reconcilers arrive with the operator work.
