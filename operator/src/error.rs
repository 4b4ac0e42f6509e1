//! The operator's one error type. Each variant has a short label used as the `reason` of the
//! reconcile-error metric, so a dashboard can tell a Kafka outage from an API conflict.

use kube::runtime::finalizer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("Kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka: {0}")]
    KafkaTask(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("serializing {what}: {detail}")]
    Serialize { what: &'static str, detail: String },
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("leader election: {0}")]
    LeaderElection(String),
}

impl Error {
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Kafka {
            context: context.into(),
            source,
        }
    }

    /// The `reason` label of `ump_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(status)) if status.code == 409 => "kube_conflict",
            Self::Kube(_) => "kube",
            Self::Kafka { .. } | Self::KafkaTask(_) => "kafka",
            Self::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
            Self::Serialize { .. } => "serialize",
            Self::NoNamespace(_) => "no_namespace",
            Self::LeaderElection(_) => "leader_election",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
