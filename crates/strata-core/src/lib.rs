//! strata-core: the pure, synchronous heart of the engine.
//!
//! This crate holds no tensors, no async runtime, no metrics client and no
//! wall clock. It defines the vocabulary shared by every other crate: ids,
//! sampling parameters, and the [`Executor`] contract through which the
//! engine drives a model (see docs/architecture.md, "The step").

pub mod connector;
pub mod dense;
pub mod engine;
pub mod executor;
pub mod ids;
pub mod kv;
pub mod offline;
pub mod records;
pub mod request;
pub mod sampling;
pub mod scheduler;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod structured;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use engine::EngineCore;
pub use executor::{
    BatchError, Executor, KvBlockIo, KvCacheSpec, ModelBatch, ModelOutput, PromptLogprobsChunk,
    PromptLogprobsRequest, SampleRequest, SampledToken, SeqInput, TokenLogprob, TopLogprobs,
};
pub use ids::{BlockId, RequestId, TokenId};
pub use records::{
    AccountingViolation, FinishRecord, PrefillRecord, Provenance, StepRecord, TokenSource,
};
pub use request::{FinishReason, KvTransferParams, NewRequest, RequestStatus};
pub use sampling::{SamplingError, SamplingParams};
pub use scheduler::{
    AdmissionError, SchedulerConfig, SchedulerOutput, SchedulerStats, SchedulingPolicy, StepResult,
};
