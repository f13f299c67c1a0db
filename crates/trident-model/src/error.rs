//! The crate's error type: every variant names the file, tensor or input at fault.

use std::path::PathBuf;

use crate::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{what} not found: {path} (a BGE-M3 model directory needs config.json, model.safetensors or pytorch_model.bin, colbert_linear.pt, sparse_linear.pt and tokenizer.json)")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("corrupt or truncated weight file {path}: {msg}")]
    CorruptFile { path: PathBuf, msg: String },
    #[error("tensor `{tensor}` missing from {path}")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("tensor `{tensor}` in {path} has shape {actual:?}, expected {expected:?} (from config.json)")]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error(
        "tensor `{tensor}` in {path} has unsupported dtype {dtype} (expected F32, F16 or BF16)"
    )]
    Dtype { path: PathBuf, tensor: String, dtype: String },
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
}
