//! The executor contract: what the engine hands a model for one step and
//! what it gets back.
//!
//! A step is one flattened batch mixing prefill chunks of several sequences
//! with single-token decodes, the way vLLM's model runner feeds attention.
//! For each sequence the batch says which tokens run now, how many of its
//! tokens are already in the KV cache (so the position of the first new
//! token), and its block table. The executor writes the new tokens' K/V into
//! the slots the block table names and samples one token for every sequence
//! that asks for it (a sequence whose prefill chunk does not reach the end
//! of its prompt asks for none).
//!
//! A sequence whose request asks for prompt logprobs (vLLM's
//! `prompt_logprobs`) carries [`SeqInput::prompt_logprobs`]: the executor
//! then also computes the logits of every row of the chunk whose next token
//! is a prompt token (for a chunk at positions `[a, b)` of a prompt of
//! `P` tokens, the rows at positions `a..min(b, P - 1)`, the row at
//! position `p` scoring `prompt[p + 1]`) and returns them in
//! [`ModelOutput::prompt_logprobs`], one [`PromptLogprobsChunk`] per such
//! sequence. A chunked prefill returns its prompt logprobs over several
//! steps; the scheduler gathers them and hands them out with the request's
//! first sampled token.
//!
//! With a KV connector configured, the batch also carries the step's
//! connector metadata (vLLM's `kv_connector_metadata` in the scheduler
//! output): the executor hands it to the connector's worker side before
//! the forward pass and returns the worker's report in
//! [`ModelOutput::kv_connector_output`] (vLLM's `kv_connector_output` in
//! `ModelRunnerOutput`). A step in which no token runs but the connector
//! has work is a batch with no sequences and only metadata.
//!
//! Invariants the executor relies on, checked by [`ModelBatch::validate`]:
//! a batch runs at least one sequence or carries connector metadata; every
//! sequence runs at least one token; its block table covers
//! `num_computed_tokens + token_ids.len()` slots; every block id is inside
//! the pool; no request appears twice in a batch.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::connector::{ConnectorMeta, ConnectorOutput};
use crate::ids::{BlockId, RequestId, TokenId};
use crate::sampling::SamplingParams;

/// Shape of the executor's device KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCacheSpec {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// Bytes one block occupies across all layers (K and V).
    pub bytes_per_block: usize,
    /// The longest sequence (prompt plus output) the model accepts.
    pub max_model_len: usize,
}

impl KvCacheSpec {
    pub fn num_blocks_for_tokens(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }
}

/// Sampling inputs of one sequence for this step.
#[derive(Clone, Copy, Debug)]
pub struct SampleRequest<'a> {
    pub params: &'a SamplingParams,
    /// The request's prompt (for the repetition penalty, which counts
    /// prompt tokens too).
    pub prompt_token_ids: &'a [TokenId],
    /// Tokens generated so far (for penalties and bad words, and the
    /// position that keys the per-request random stream).
    pub output_token_ids: &'a [TokenId],
    /// The tokens a grammar allows next (structured outputs): every other
    /// token gets probability zero, before any other processing.
    pub token_mask: Option<&'a crate::structured::TokenMask>,
}

/// A sequence's request for prompt logprobs in this step.
#[derive(Clone, Copy, Debug)]
pub struct PromptLogprobsRequest<'a> {
    /// Alternatives per position, besides the prompt token itself (vLLM's
    /// `prompt_logprobs`; 0 gives only the prompt token's logprob).
    pub num_logprobs: u32,
    /// The whole prompt: the row at position `p` scores `prompt[p + 1]`.
    pub prompt_token_ids: &'a [TokenId],
}

/// One sequence's part of a step.
#[derive(Clone, Debug)]
pub struct SeqInput<'a> {
    pub request_id: RequestId,
    /// The tokens that run this step (a prefill chunk, or one decode token).
    pub token_ids: &'a [TokenId],
    /// Tokens of this sequence already in the KV cache; the first token of
    /// `token_ids` sits at this position.
    pub num_computed_tokens: usize,
    pub block_table: &'a [BlockId],
    /// `Some` when a token is to be sampled after this step's last token.
    pub sample: Option<SampleRequest<'a>>,
    /// `Some` when the executor is to return the logprobs of the prompt
    /// tokens that follow this step's rows (see the module header).
    pub prompt_logprobs: Option<PromptLogprobsRequest<'a>>,
}

impl SeqInput<'_> {
    /// Tokens in the KV cache once this step has run.
    pub fn context_len(&self) -> usize {
        self.num_computed_tokens + self.token_ids.len()
    }

    /// The rows of `token_ids` (offsets) whose prompt logprobs this step
    /// returns: those whose next token is a prompt token. Empty without
    /// [`SeqInput::prompt_logprobs`]. The row at offset `i` scores the
    /// prompt token at position `num_computed_tokens + i + 1`.
    pub fn prompt_logprob_rows(&self) -> Range<usize> {
        let Some(p) = self.prompt_logprobs else { return 0..0 };
        let end = self.context_len().min(p.prompt_token_ids.len().saturating_sub(1));
        0..end.saturating_sub(self.num_computed_tokens)
    }
}

#[derive(Clone, Debug, Default)]
pub struct ModelBatch<'a> {
    pub seqs: Vec<SeqInput<'a>>,
    /// The connector's work for this step (`None` without a connector).
    pub kv_connector_metadata: Option<&'a ConnectorMeta>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("the batch runs nothing (no sequence and no connector metadata)")]
    Empty,
    #[error("{0} runs no tokens")]
    NoTokens(RequestId),
    #[error("{0} appears twice in one batch")]
    Duplicate(RequestId),
    #[error("{req}: context of {context_len} tokens exceeds max_model_len {max_model_len}")]
    TooLong { req: RequestId, context_len: usize, max_model_len: usize },
    #[error("{req}: block table of {blocks} blocks cannot hold {context_len} tokens")]
    BlockTableShort { req: RequestId, blocks: usize, context_len: usize },
    #[error("{req}: block {block} is outside the pool of {num_blocks} blocks")]
    BlockOutOfRange { req: RequestId, block: u32, num_blocks: usize },
}

impl ModelBatch<'_> {
    /// Total tokens the model runs this step.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.token_ids.len()).sum()
    }

    /// Checks the invariants listed in the module header against `spec`.
    pub fn validate(&self, spec: &KvCacheSpec) -> Result<(), BatchError> {
        if self.seqs.is_empty() && self.kv_connector_metadata.is_none() {
            return Err(BatchError::Empty);
        }
        let mut seen = rustc_hash::FxHashSet::with_capacity_and_hasher(
            self.seqs.len(),
            rustc_hash::FxBuildHasher,
        );
        for seq in &self.seqs {
            let req = seq.request_id;
            if seq.token_ids.is_empty() {
                return Err(BatchError::NoTokens(req));
            }
            if !seen.insert(req) {
                return Err(BatchError::Duplicate(req));
            }
            let context_len = seq.context_len();
            if context_len > spec.max_model_len {
                return Err(BatchError::TooLong {
                    req,
                    context_len,
                    max_model_len: spec.max_model_len,
                });
            }
            if seq.block_table.len() * spec.block_size < context_len {
                return Err(BatchError::BlockTableShort {
                    req,
                    blocks: seq.block_table.len(),
                    context_len,
                });
            }
            if let Some(bad) = seq.block_table.iter().find(|b| b.index() >= spec.num_blocks) {
                return Err(BatchError::BlockOutOfRange {
                    req,
                    block: bad.0,
                    num_blocks: spec.num_blocks,
                });
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token_id: TokenId,
    pub logprob: f32,
}

/// Log-probabilities under the model's raw distribution (before
/// temperature, filters and penalties, as vLLM's default `raw_logprobs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprobs {
    pub sampled: TokenLogprob,
    /// The N most likely tokens, most likely first.
    pub top: Vec<TokenLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledToken {
    pub request_id: RequestId,
    pub token_id: TokenId,
    pub logprobs: Option<TopLogprobs>,
}

/// The prompt logprobs one step computed for one sequence: consecutive
/// prompt positions from `first_position`. Each entry's
/// [`TopLogprobs::sampled`] is the prompt token at that position (not a
/// sampled one) with its logprob given the tokens before it; `top` holds
/// the N most likely tokens there. Raw distribution, as vLLM's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptLogprobsChunk {
    pub request_id: RequestId,
    /// Prompt position of the token `logprobs[0]` scores (at least 1: the
    /// first prompt token has no logprob).
    pub first_position: usize,
    pub logprobs: Vec<TopLogprobs>,
}

/// What one step produced: a token for each sequence that asked for one,
/// in batch order, the prompt logprobs of the sequences that asked for
/// them (one chunk per such sequence, in batch order; an executor that
/// does not compute them leaves this empty), and the connector worker's
/// report (`Some` whenever a connector is configured).
#[derive(Clone, Debug, Default)]
pub struct ModelOutput {
    pub sampled: Vec<SampledToken>,
    pub prompt_logprobs: Vec<PromptLogprobsChunk>,
    pub kv_connector_output: Option<ConnectorOutput>,
}

/// Byte access to the device KV pool, one block at a time, for connector
/// worker sides (stores copy blocks out, loads copy them in). A block's
/// bytes are `bytes_per_block` long in the executor's own layout; only the
/// same layout (same model, dtype and block size) may read them back.
pub trait KvBlockIo {
    fn bytes_per_block(&self) -> usize;
    /// Copies the block into `out` (`bytes_per_block` long).
    fn read_block(&self, block: BlockId, out: &mut [u8]);
    /// Overwrites the block with `data` (`bytes_per_block` long).
    fn write_block(&mut self, block: BlockId, data: &[u8]);
}

/// Runs model steps over a paged KV pool.
pub trait Executor {
    type Error: std::error::Error + Send + Sync + 'static;

    fn kv_cache_spec(&self) -> KvCacheSpec;

    /// Token ids must be below this.
    fn vocab_size(&self) -> usize;

    /// Runs one step: the connector's worker side (if any) with the
    /// batch's metadata, then the model over the batch's sequences. A
    /// batch that fails [`ModelBatch::validate`] is an error, never a
    /// panic. An executor that fails a step after its connector reported
    /// keeps the report for the next step ([`WorkerHandle::keep`]).
    ///
    /// [`WorkerHandle::keep`]: crate::connector::WorkerHandle::keep
    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput, Self::Error>;

    /// Waits at most `timeout` for the connector's background work
    /// ([`WorkerHandle::wait`]); the default sleeps.
    ///
    /// [`WorkerHandle::wait`]: crate::connector::WorkerHandle::wait
    fn wait_for_connector(&mut self, timeout: std::time::Duration) {
        std::thread::sleep(timeout);
    }
}

/// A borrowed executor drives an engine as well as an owned one.
impl<E: Executor> Executor for &mut E {
    type Error = E::Error;

    fn kv_cache_spec(&self) -> KvCacheSpec {
        (**self).kv_cache_spec()
    }

    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }

    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput, Self::Error> {
        (**self).execute(batch)
    }

    fn wait_for_connector(&mut self, timeout: std::time::Duration) {
        (**self).wait_for_connector(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KvCacheSpec {
        KvCacheSpec { block_size: 4, num_blocks: 8, bytes_per_block: 64, max_model_len: 32 }
    }

    fn req(n: u64) -> RequestId {
        RequestId::new(n).expect("non-zero")
    }

    #[test]
    fn validate_accepts_a_well_formed_mixed_batch() {
        let blocks = [BlockId(0), BlockId(3)];
        let params = SamplingParams::greedy(4);
        let batch = ModelBatch {
            seqs: vec![
                SeqInput {
                    request_id: req(1),
                    token_ids: &[1, 2, 3, 4, 5],
                    num_computed_tokens: 0,
                    block_table: &blocks,
                    sample: None,
                    prompt_logprobs: None,
                },
                SeqInput {
                    request_id: req(2),
                    token_ids: &[9],
                    num_computed_tokens: 7,
                    block_table: &blocks,
                    sample: Some(SampleRequest {
                        params: &params,
                        prompt_token_ids: &[],
                        output_token_ids: &[],
                        token_mask: None,
                    }),
                    prompt_logprobs: None,
                },
            ],
            kv_connector_metadata: None,
        };
        assert_eq!(batch.validate(&spec()), Ok(()));
        assert_eq!(batch.num_tokens(), 6);
    }

    #[test]
    fn validate_names_each_violation() {
        let one = [BlockId(0)];
        let outside = [BlockId(8)];
        let seq = |id, toks: &'static [u32], computed, table| SeqInput {
            request_id: req(id),
            token_ids: toks,
            num_computed_tokens: computed,
            block_table: table,
            sample: None,
            prompt_logprobs: None,
        };
        let check = |seqs: Vec<SeqInput<'_>>| {
            ModelBatch { seqs, kv_connector_metadata: None }.validate(&spec()).unwrap_err()
        };
        assert_eq!(ModelBatch::default().validate(&spec()), Err(BatchError::Empty));
        let meta = ConnectorMeta::default();
        let connector_only = ModelBatch { seqs: vec![], kv_connector_metadata: Some(&meta) };
        assert_eq!(connector_only.validate(&spec()), Ok(()), "a connector-only step is valid");
        assert!(matches!(check(vec![seq(1, &[], 0, &one)]), BatchError::NoTokens(_)));
        assert!(matches!(
            check(vec![seq(1, &[1], 0, &one), seq(1, &[2], 0, &one)]),
            BatchError::Duplicate(_)
        ));
        assert!(matches!(
            check(vec![seq(1, &[1, 2], 3, &one)]),
            BatchError::BlockTableShort { .. }
        ));
        assert!(matches!(
            check(vec![seq(1, &[1], 0, &outside)]),
            BatchError::BlockOutOfRange { .. }
        ));
        assert!(matches!(check(vec![seq(1, &[1], 32, &one)]), BatchError::TooLong { .. }));
    }

    #[test]
    fn prompt_logprob_rows_stop_before_the_last_prompt_token() {
        let blocks = [BlockId(0), BlockId(1)];
        let prompt = [1, 2, 3, 4, 5, 6];
        let seq = |computed: usize, n: usize, ask: bool| SeqInput {
            request_id: req(1),
            token_ids: &prompt[computed..computed + n],
            num_computed_tokens: computed,
            block_table: &blocks,
            sample: None,
            prompt_logprobs: ask
                .then_some(PromptLogprobsRequest { num_logprobs: 2, prompt_token_ids: &prompt }),
        };
        // Positions [0, 4): all four rows score prompt[1..5].
        assert_eq!(seq(0, 4, true).prompt_logprob_rows(), 0..4);
        // Positions [4, 6): only position 4 has a next prompt token.
        assert_eq!(seq(4, 2, true).prompt_logprob_rows(), 0..1);
        assert_eq!(seq(0, 6, true).prompt_logprob_rows(), 0..5);
        assert_eq!(seq(5, 1, true).prompt_logprob_rows(), 0..0);
        assert_eq!(seq(0, 4, false).prompt_logprob_rows(), 0..0);
    }
}
