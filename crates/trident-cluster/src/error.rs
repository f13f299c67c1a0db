//! Errors of the Kafka node: the engine's, plus the broker's.

pub use trident_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("kafka ({context}): {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl ClusterError {
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        ClusterError::Kafka { context: context.into(), source }
    }

    pub fn config(setting: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        EngineError::config(setting, msg).into()
    }
}
