//! Model families. Llama, Qwen2 and Qwen3 share one decoder
//! ([`llama::DecoderModel`]); they differ only in switches read from
//! `config.json` (q/k/v bias for Qwen2, per-head q/k RMSNorm for Qwen3,
//! tied embeddings, explicit head_dim), which [`crate::config`] resolves
//! from the `architectures` entry.

pub mod llama;

pub use llama::DecoderModel;
