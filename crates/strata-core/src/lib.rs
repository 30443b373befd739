//! strata-core: the pure, synchronous heart of the engine.
//!
//! This crate holds no tensors, no async runtime, no metrics client and no
//! wall clock. It defines the vocabulary shared by every other crate: ids,
//! sampling parameters, and the [`Executor`] contract through which the
//! engine drives a model (see `ARCHITECTURE.md`, "The step contract").

pub mod executor;
pub mod ids;
pub mod offline;
pub mod sampling;

pub use executor::{
    BatchError, Executor, KvCacheSpec, ModelBatch, ModelOutput, SampleRequest, SampledToken,
    SeqInput, TokenLogprob, TopLogprobs,
};
pub use ids::{BlockId, RequestId, TokenId};
pub use sampling::{SamplingError, SamplingParams};
