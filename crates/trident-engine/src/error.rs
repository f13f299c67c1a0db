//! Errors of the engine; each names the setting, server or record at fault.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid setting `{setting}`: {msg}")]
    Config { setting: String, msg: String },
    #[error("redis at {url}: {msg}")]
    Redis { url: String, msg: String },
    #[error("worker {worker}: {msg}")]
    Worker { worker: String, msg: String },
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] trident_model::ModelError),
    #[error("actor system: {0}")]
    Actor(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored value of {key} is not a valid trident record: {msg}")]
    Codec { key: String, msg: String },
    #[error("metrics endpoint {addr}: {msg}")]
    Metrics { addr: String, msg: String },
}

impl EngineError {
    pub fn config(setting: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        EngineError::Config { setting: setting.into(), msg: msg.to_string() }
    }
}
