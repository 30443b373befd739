//! strata-model: the executor side of strata.
//!
//! - [`backend`]: the tensor operations a Llama-family forward needs, and
//!   the CPU implementation (`gemm` + rayon, AVX2 GEMV kernels);
//! - [`models`]: the decoder (Llama, Qwen2, Qwen3) written against
//!   [`backend::Backend`];
//! - [`weights`], [`config`]: checkpoint loading (safetensors, sharded or
//!   not; f32/f16/bf16) and deterministic dummy weights;
//! - [`executor`]: [`ModelExecutor`], the `strata_core::Executor`
//!   implementation with its paged KV pool and [`sampler::Sampler`];
//! - [`builtin`]: the default model that needs no download;
//! - [`device`]: `--device cpu|cuda[:N]` and an executor over either
//!   (the CUDA backend is [`backend::cuda`], behind the `cuda` feature).

pub mod backend;
pub mod builtin;
pub mod config;
pub mod device;
pub mod error;
pub mod executor;
pub mod gguf;
pub mod loader;
pub mod models;
pub mod quant;
pub mod rope;
pub mod sampler;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use device::{load_on_device, Device, DeviceExecutor, GpuOptions};
pub use error::ModelError;
pub use executor::{KvPoolConfig, LogitRows, ModelExecutor};
pub use loader::{load_cpu_executor, LoadOptions, ModelSource};
