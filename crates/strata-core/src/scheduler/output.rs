//! What a step hands out: the plan (`SchedulerOutput`, vLLM's name), the
//! admission counters gathered while scheduling (`SchedulerStats`), each
//! request's progress (`RequestOutput`) and everything a step produced
//! (`StepResult`).

use crate::connector::{ConnectorMeta, ConnectorStats};
use crate::executor::TopLogprobs;
use crate::ids::{RequestId, TokenId};
use crate::records::{AccountingViolation, FinishRecord, PrefillRecord, StepRecord};
use crate::request::FinishReason;

/// One request's work in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub request_id: RequestId,
    /// Tokens of the request already in the KV cache before this step.
    pub num_computed_tokens: usize,
    /// Tokens that run this step (vLLM's `num_scheduled_tokens[req_id]`).
    pub num_scheduled_tokens: usize,
    /// Whether a token is sampled after this step (the chunk reaches the
    /// end of the request's known tokens).
    pub samples: bool,
    /// Where the scheduler keeps the request (saves a lookup per request
    /// in `batch` and `update_from_output`).
    pub(crate) slot: u32,
}

/// What `schedule` decided for one step (vLLM's `SchedulerOutput`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedulerOutput {
    pub step: u64,
    pub seqs: Vec<ScheduledSeq>,
    pub preempted: Vec<RequestId>,
    /// The connector's work for this step; `Some` every step a connector
    /// is configured.
    pub kv_connector_metadata: Option<ConnectorMeta>,
    /// The tokens each sampling sequence may sample, by index in `seqs`
    /// (`None` for an unconstrained one); empty when no scheduled request
    /// is constrained (structured outputs).
    pub token_masks: Vec<Option<crate::structured::TokenMask>>,
}

impl SchedulerOutput {
    /// Tokens scheduled this step (vLLM's `total_num_scheduled_tokens`).
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_scheduled_tokens).sum()
    }

    /// Nothing for the executor to do: no token and no connector work.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.kv_connector_metadata.is_none()
    }
}

/// Admission and connector counters gathered while scheduling, handed to
/// the next [`StepRecord`] by `update_from_output` (vLLM's prefix-cache
/// stats, which the scheduler likewise makes into the iteration's stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Prompt tokens looked up in the device prefix cache at first
    /// admissions, and those found.
    pub prefix_cache_queries: u32,
    pub prefix_cache_hits: u32,
    /// Tokens looked up beyond the local hit, and those a connector had.
    pub external_prefix_cache_queries: u32,
    pub external_prefix_cache_hits: u32,
    /// `external_prefix_cache_hits` by where they come from.
    pub external_hits_host: u32,
    pub external_hits_disk: u32,
    pub external_hits_remote: u32,
    /// Prompt tokens re-prefilled by re-admissions of requests whose
    /// PrefillRecord is already out.
    pub recomputed_preemption_tokens: u32,
    /// Loads handed to the connector's worker, and loads that failed.
    pub num_connector_loads: u32,
    pub num_connector_load_failures: u32,
}

/// One request's progress in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestOutput {
    pub request_id: RequestId,
    /// The token sampled this step, if any (one per step: no speculative
    /// decoding yet).
    pub new_token_id: Option<TokenId>,
    pub logprobs: Option<TopLogprobs>,
    pub finish_reason: Option<FinishReason>,
    /// With the last output of a request whose connector answers for it
    /// (a P/D prefill engine's lease).
    pub kv_transfer_params: Option<crate::request::KvTransferParams>,
    /// vLLM's `prompt_logprobs`, for a request that asked for them
    /// (`SamplingParams::prompt_logprobs`): `Some` exactly once, with the
    /// request's first sampled token, holding one entry per prompt token,
    /// `None` for the first (as vLLM). Each entry's `sampled` is the prompt
    /// token at that position. A chunked prefill's chunks are gathered by
    /// the scheduler, so nothing needs concatenating; a request that ends
    /// before its first token gets none.
    pub prompt_logprobs: Option<Vec<Option<TopLogprobs>>>,
}

impl RequestOutput {
    /// A request's last output when it ends without a token (abort,
    /// error, a stop found by the caller).
    pub fn finished(request_id: RequestId, reason: FinishReason) -> Self {
        Self {
            request_id,
            new_token_id: None,
            logprobs: None,
            finish_reason: Some(reason),
            kv_transfer_params: None,
            prompt_logprobs: None,
        }
    }
}

/// Everything a step produced.
#[derive(Clone, Debug, Default)]
pub struct StepResult {
    pub outputs: Vec<RequestOutput>,
    pub step: Option<StepRecord>,
    pub prefill_records: Vec<PrefillRecord>,
    pub finish_records: Vec<FinishRecord>,
    /// Records that failed the accounting identity (a bug): no record is
    /// emitted for them; the metrics layer counts each and the server logs
    /// each once.
    pub accounting_violations: Vec<AccountingViolation>,
    /// Set when the executor failed this step (its requests ended with
    /// `error`); the caller logs it.
    pub executor_error: Option<String>,
    /// The connector's statistics reported during this step (opaque here;
    /// each connector crate defines its report types).
    pub connector_stats: ConnectorStats,
    /// Blocks that entered and left the prefix cache and the connector's
    /// tiers in this step, when events are on (`EngineCore::enable_kv_events`).
    pub kv_events: crate::kv::KvEventBatch,
}
