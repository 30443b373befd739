//! Requests and their state machine.
//!
//! ```text
//!            ┌───────────────(connector: async load)──────────────┐
//!            │                                                    ▼
//! add ──▶ Waiting ──(admitted)──▶ Running ──▶ Finished   WaitingForRemoteKv
//!            ▲                       │                            │
//!            └──── Preempted ◀───────┘   (loads done) ──▶ Waiting ┘
//! ```
//!
//! Abort is allowed in every state. A request's prompt-token
//! [`Provenance`] is fixed at its first admission and changes afterwards
//! only by a failed load (tokens move to local compute); it never derives
//! from `num_computed_tokens`, which preemption resets.

use serde::{Deserialize, Serialize};

use crate::executor::{PromptLogprobsChunk, TopLogprobs};
use crate::ids::{RequestId, TokenId};
use crate::kv::hash::{extend_block_hashes, BlockHash};
use crate::records::{PrefillRecord, Provenance, Recomputed};
use crate::sampling::SamplingParams;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FinishReason {
    /// EOS or a stop token.
    Stop,
    /// `max_tokens` or the model's length reached.
    Length,
    /// The client went away, or `abort` was called.
    Abort,
    /// The request failed (e.g. a KV load with policy `fail`).
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
            Self::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestStatus {
    Waiting,
    WaitingForRemoteKv,
    Running,
    Preempted,
    Finished(FinishReason),
}

impl RequestStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Finished(_))
    }
}

/// vLLM's `kv_transfer_params`, the P/D handshake carried by a request
/// and returned with its answer (field names as vLLM's, so routers that
/// drive vLLM P/D engines drive strata's).
///
/// - To a prefill engine: `do_remote_decode: true`. It computes the
///   prompt, holds the KV under a lease, and answers with the fields a
///   decode engine needs to pull it, and with its record of the prompt.
/// - To a decode engine: `do_remote_prefill: true` plus those fields. It
///   pulls the KV (what it does not have locally), decodes, and reports the
///   prefill's record as its usage (docs/accounting.md, A18).
///
/// Every field may be absent or `null` (llm-d's routing sidecar sends
/// `remote_block_ids: null` and the like); unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTransferParams {
    #[serde(default, deserialize_with = "null_as_default")]
    pub do_remote_decode: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub do_remote_prefill: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_engine_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub remote_block_ids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// strata: the prefill engine's lease on the KV (what a pull names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// strata: prompt tokens whose KV the lease holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_num_tokens: Option<u32>,
    /// strata: tokens per block on the prefill engine (must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_block_size: Option<u32>,
    /// strata, to a prefill engine: how many decode requests will pull
    /// this KV (the `n` of the client's request; default 1). The lease
    /// ends after that many pulls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_pulls: Option<u32>,
    /// vLLM's: the prefill engine's cached prompt tokens (its prefix hits
    /// on the device and in its offload tiers), which a decode engine
    /// reports as its `cached_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_prefill_cached_tokens: Option<u32>,
    /// strata: where the prefill engine's prompt tokens came from (its
    /// usage's `sources`), which a decode engine reports as its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_prefill_sources: Option<PromptSources>,
    /// strata: prompt tokens the prefill engine computed twice, by reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_prefill_recomputed: Option<Recomputed>,
}

/// A prompt's tokens by source, as a usage's `sources` names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSources {
    #[serde(default, deserialize_with = "null_as_default")]
    pub local_compute: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub local_cache_hit: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub host: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub disk: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub remote: u32,
}

/// `null` reads as the type's default, as an absent field does.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl KvTransferParams {
    /// The params a prefill engine answers with carry `record`, its account
    /// of the prompt (A18): vLLM's `remote_prefill_cached_tokens` and
    /// strata's sources and recomputed tokens.
    pub fn with_prefill_record(mut self, record: &PrefillRecord) -> Self {
        self.remote_prefill_cached_tokens = Some(record.cached_tokens());
        self.remote_prefill_sources = Some(PromptSources {
            local_compute: record.local_compute,
            local_cache_hit: record.local_cache_hit,
            host: record.host,
            disk: record.disk,
            remote: record.remote,
        });
        self.remote_prefill_recomputed = Some(record.recomputed);
        self
    }

    /// The prefill engine's record, as the decode request `request_id` of
    /// `num_prompt_tokens` reports it (A18). `None` unless these params ask
    /// for a remote prefill and carry a record of this prompt that keeps
    /// the accounting identities (sources sum to the prompt, at least one
    /// token computed, cached tokens agree with the sources): a record of
    /// another prompt, or an inconsistent one, is never reported.
    pub fn remote_prefill_record(
        &self,
        request_id: RequestId,
        num_prompt_tokens: usize,
    ) -> Option<PrefillRecord> {
        if !self.do_remote_prefill {
            return None;
        }
        let s = self.remote_prefill_sources?;
        let prompt_tokens = self.remote_num_tokens?;
        let sum = [s.local_compute, s.local_cache_hit, s.host, s.disk, s.remote]
            .iter()
            .map(|&t| u64::from(t))
            .sum::<u64>();
        let consistent = prompt_tokens as usize == num_prompt_tokens
            && sum == u64::from(prompt_tokens)
            && s.local_compute >= 1;
        let record = PrefillRecord {
            request_id,
            prompt_tokens,
            local_compute: s.local_compute,
            local_cache_hit: s.local_cache_hit,
            host: s.host,
            disk: s.disk,
            remote: s.remote,
            recomputed: self.remote_prefill_recomputed.unwrap_or_default(),
        };
        let cached_agrees =
            self.remote_prefill_cached_tokens.is_none_or(|c| c == record.cached_tokens());
        (consistent && cached_agrees).then_some(record)
    }
}

/// What a caller submits.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub prompt_token_ids: Vec<TokenId>,
    pub params: SamplingParams,
    /// Under the priority policy a lower value runs first (vLLM's
    /// convention, see `SchedulingPolicy::Priority`); ignored under FCFS.
    pub priority: i32,
    /// Tenant isolation for the prefix cache.
    pub cache_salt: Option<String>,
    /// Token ids that end generation besides `params.stop_token_ids`.
    pub eos_token_ids: Vec<TokenId>,
    /// P/D disaggregation (see [`KvTransferParams`]).
    pub kv_transfer_params: Option<KvTransferParams>,
    /// A grammar the output must follow (structured outputs).
    pub structured: Option<crate::structured::SharedGrammar>,
}

impl NewRequest {
    /// A request for `prompt` with `params` and nothing else set (priority
    /// 0, no cache salt, no EOS ids, no KV transfer); the `with_*` methods
    /// set the rest.
    ///
    /// ```
    /// use strata_core::{NewRequest, SamplingParams};
    /// let r = NewRequest::new(vec![1, 2, 3], SamplingParams::greedy(4))
    ///     .with_priority(-1)
    ///     .with_eos(vec![2]);
    /// assert_eq!((r.priority, r.eos_token_ids.as_slice()), (-1, &[2][..]));
    /// ```
    pub fn new(prompt_token_ids: Vec<TokenId>, params: SamplingParams) -> Self {
        Self {
            prompt_token_ids,
            params,
            priority: 0,
            cache_salt: None,
            eos_token_ids: Vec::new(),
            kv_transfer_params: None,
            structured: None,
        }
    }

    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    pub fn with_cache_salt(mut self, salt: impl Into<String>) -> Self {
        self.cache_salt = Some(salt.into());
        self
    }

    pub fn with_eos(mut self, eos_token_ids: Vec<TokenId>) -> Self {
        self.eos_token_ids = eos_token_ids;
        self
    }

    pub fn with_kv_transfer_params(mut self, params: KvTransferParams) -> Self {
        self.kv_transfer_params = Some(params);
        self
    }

    /// Constrains the output to `grammar` (each request gets its own
    /// matcher).
    pub fn with_structured(mut self, grammar: crate::structured::SharedGrammar) -> Self {
        self.structured = Some(grammar);
        self
    }
}

#[derive(Debug)]
pub struct Request {
    pub id: RequestId,
    pub prompt_token_ids: Vec<TokenId>,
    pub output_token_ids: Vec<TokenId>,
    /// Prompt then output, what the model has seen or will see.
    pub all_token_ids: Vec<TokenId>,
    pub params: SamplingParams,
    pub eos_token_ids: Vec<TokenId>,
    pub priority: i32,
    pub cache_salt: Option<String>,
    pub arrival_time: f64,
    pub status: RequestStatus,
    /// Tokens whose KV is in this request's blocks.
    pub num_computed_tokens: usize,
    /// Chain hashes of the full blocks of `all_token_ids`.
    pub block_hashes: Vec<BlockHash>,
    pub num_preemptions: u32,
    /// Set once, at first admission (see module header).
    pub provenance: Option<Provenance>,
    /// Prompt tokens already computed (or loaded) at the last preemption:
    /// their re-prefill counts as recomputed work.
    pub num_tokens_to_recompute: usize,
    pub record_emitted: bool,
    /// External tokens being loaded by a connector (WaitingForRemoteKv).
    pub num_external_tokens: usize,
    /// Set when the connector reports the request's load finished.
    pub load_done: bool,
    pub first_token_time: Option<f64>,
    pub scheduled_time: Option<f64>,
    pub kv_transfer_params: Option<KvTransferParams>,
    /// Prompt logprobs gathered so far (`params.prompt_logprobs`): entry
    /// `i` is for prompt position `i + 1`. Taken when they are delivered.
    pub prompt_logprobs: Vec<TopLogprobs>,
    /// Set once the prompt logprobs went out (with the first sampled
    /// token); a recompute after preemption then neither asks for them
    /// again nor skips the prefix cache.
    pub prompt_logprobs_delivered: bool,
    /// The request's position in its grammar (structured outputs).
    pub grammar: Option<Box<dyn crate::structured::GrammarMatcher>>,
}

impl Request {
    pub fn new(id: RequestId, new: NewRequest, arrival_time: f64, block_size: usize) -> Self {
        let mut block_hashes = Vec::new();
        extend_block_hashes(
            &mut block_hashes,
            &new.prompt_token_ids,
            block_size,
            new.cache_salt.as_deref(),
        );
        Self {
            id,
            all_token_ids: new.prompt_token_ids.clone(),
            prompt_token_ids: new.prompt_token_ids,
            output_token_ids: Vec::new(),
            params: new.params,
            eos_token_ids: new.eos_token_ids,
            priority: new.priority,
            cache_salt: new.cache_salt,
            arrival_time,
            status: RequestStatus::Waiting,
            num_computed_tokens: 0,
            block_hashes,
            num_preemptions: 0,
            provenance: None,
            num_tokens_to_recompute: 0,
            record_emitted: false,
            num_external_tokens: 0,
            load_done: false,
            first_token_time: None,
            scheduled_time: None,
            kv_transfer_params: new.kv_transfer_params,
            grammar: new.structured.as_ref().map(|g| g.matcher()),
            prompt_logprobs: Vec::new(),
            prompt_logprobs_delivered: false,
        }
    }

    /// Whether the request still waits for prompt logprobs: it asked for
    /// them and they have not been delivered. Such a request skips the
    /// prefix cache and connector matches (vLLM does the same), so every
    /// prompt position is computed.
    pub fn needs_prompt_logprobs(&self) -> bool {
        self.params.prompt_logprobs.is_some() && !self.prompt_logprobs_delivered
    }

    /// Adds the entries of `chunk` not yet held (a chunk recomputed after
    /// preemption repeats positions already gathered: they are skipped).
    /// Entries must continue the gathered ones; a gap is ignored.
    pub fn add_prompt_logprobs(&mut self, chunk: PromptLogprobsChunk) {
        if !self.needs_prompt_logprobs() {
            return;
        }
        let next = self.prompt_logprobs.len() + 1;
        if chunk.first_position > next {
            debug_assert!(
                false,
                "{}: prompt logprobs from {} after {next}",
                self.id, chunk.first_position
            );
            return;
        }
        let skip = next - chunk.first_position;
        let max = self.num_prompt_tokens().saturating_sub(1);
        self.prompt_logprobs.extend(chunk.logprobs.into_iter().skip(skip));
        self.prompt_logprobs.truncate(max);
    }

    /// The prompt logprobs to deliver with the first sampled token, as
    /// vLLM returns them: one entry per prompt token, `None` for the first.
    /// `None` if the request did not ask for them or they went out already.
    pub fn take_prompt_logprobs(&mut self) -> Option<Vec<Option<TopLogprobs>>> {
        if !self.needs_prompt_logprobs() {
            return None;
        }
        self.prompt_logprobs_delivered = true;
        let gathered = std::mem::take(&mut self.prompt_logprobs);
        Some(std::iter::once(None).chain(gathered.into_iter().map(Some)).collect())
    }

    pub fn num_prompt_tokens(&self) -> usize {
        self.prompt_token_ids.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.all_token_ids.len()
    }

    pub fn append_output(&mut self, token: TokenId, block_size: usize) {
        self.output_token_ids.push(token);
        self.all_token_ids.push(token);
        extend_block_hashes(
            &mut self.block_hashes,
            &self.all_token_ids,
            block_size,
            self.cache_salt.as_deref(),
        );
    }

    /// Feeds the token just appended to the request's grammar: a grammar
    /// at its end ends the request (`stop`), and so does a token the
    /// grammar refuses (`error`; the mask should have made it impossible).
    pub fn advance_grammar(&mut self) -> Option<FinishReason> {
        let grammar = self.grammar.as_mut()?;
        let token = *self.output_token_ids.last()?;
        match grammar.accept_token(token) {
            Ok(()) if grammar.is_terminated() => Some(FinishReason::Stop),
            Ok(()) => None,
            Err(_) => Some(FinishReason::Error),
        }
    }

    /// Whether `token` (just appended) ends the request, and why.
    pub fn check_stop(&self, max_model_len: usize) -> Option<FinishReason> {
        let token = *self.output_token_ids.last()?;
        let p = &self.params;
        if self.output_token_ids.len() >= p.min_tokens as usize
            && ((!p.ignore_eos && self.eos_token_ids.contains(&token))
                || p.stop_token_ids.contains(&token))
        {
            return Some(FinishReason::Stop);
        }
        if self.output_token_ids.len() >= p.max_tokens as usize
            || self.num_tokens() >= max_model_len
        {
            return Some(FinishReason::Length);
        }
        None
    }
}
