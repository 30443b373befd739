//! The model crate's error type. Every variant that concerns a file names
//! it, so a user can see which file of a checkpoint is at fault.

use std::path::PathBuf;

use strata_core::executor::BatchError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unsupported architecture {found:?}; supported: {}", supported.join(", "))]
    UnsupportedArchitecture { path: PathBuf, found: Vec<String>, supported: Vec<&'static str> },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: not a usable GGUF file: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("tensor `{name}` not found in {location}")]
    MissingTensor { name: String, location: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{name}` has dtype {dtype}; supported: F32, F16, BF16")]
    TensorDtype { path: PathBuf, name: String, dtype: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("KV cache: {0}")]
    KvCache(String),
    /// A GPU that is missing, a library that cannot be found or loaded, a
    /// kernel that does not compile, or an error the device reported.
    #[error("CUDA: {0}")]
    Device(String),
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config { path: path.into(), message: message.into() }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
