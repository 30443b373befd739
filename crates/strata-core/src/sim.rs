//! Executors without a model (feature `sim`, also part of `testing`).
//!
//! - [`FakeExecutor`] writes each token id into its slot of a byte pool
//!   ([`FakeKv`]) and samples a token derived from the KV it reads back
//!   for the whole context (a position-weighted sum of the token ids found
//!   in the sequence's blocks), so a block that a connector filled with
//!   the wrong bytes, or one the scheduler never computed, changes the
//!   output. It records what each step ran and checks every batch against
//!   the pool, so scheduler bugs (a token without a slot, a block outside
//!   the pool) surface as errors. Prompt logprobs, when asked for, are
//!   made up but well formed (see [`FakeExecutor::prompt_logprob`]).
//! - [`SimExecutor`] wraps it with a latency model (cost per step, per
//!   prefill token, per decode sequence), like dynamo's mocker: it adds the
//!   simulated time to a counter and, if asked, sleeps for it. It serves
//!   `strata serve --model sim`.

use std::time::Duration;

use crate::connector::{ConnectorWorker, WorkerHandle};
use crate::executor::{
    BatchError, Executor, KvBlockIo, KvCacheSpec, ModelBatch, ModelOutput, PromptLogprobsChunk,
    SampledToken, TokenLogprob, TopLogprobs,
};
use crate::ids::{BlockId, RequestId, TokenId};

/// A byte pool standing in for the device pool, indexed by block id: slot
/// `i` of a block holds a token id as a little-endian u32 at byte `4 i`
/// (bytes past the block's slots are padding, never read). Each block's
/// position-weighted token sum is kept up to date, so reading a context
/// back costs one load per block. Writing a block's first slot clears the
/// rest of it (the block starts over for a new owner), so a block's sum
/// only ever covers tokens written for the request that holds it.
#[derive(Debug, Default)]
pub struct FakeKv {
    pub bytes_per_block: usize,
    pub block_size: usize,
    /// Block contents, allocated on first write.
    bytes: Vec<Option<Box<[u8]>>>,
    /// `sum over slots of (slot + 1) * token`, wrapping, per block.
    sums: Vec<u64>,
}

fn slot_weight(slot: usize, token: TokenId) -> u64 {
    (slot as u64 + 1).wrapping_mul(token as u64)
}

impl FakeKv {
    pub fn new(bytes_per_block: usize, block_size: usize) -> Self {
        assert!(bytes_per_block >= block_size * 4, "four bytes per slot at least");
        Self { bytes_per_block, block_size, bytes: Vec::new(), sums: Vec::new() }
    }

    /// Token ids in this layout (one block's worth or less).
    pub fn encode(tokens: &[TokenId]) -> Vec<u8> {
        tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
    }

    fn token_at(bytes: &[u8], slot: usize) -> TokenId {
        bytes
            .get(slot * 4..slot * 4 + 4)
            .map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    fn block_sum(&self, bytes: &[u8]) -> u64 {
        (0..self.block_size)
            .fold(0u64, |s, k| s.wrapping_add(slot_weight(k, Self::token_at(bytes, k))))
    }

    /// Blocks written so far, in id order.
    pub fn block_ids(&self) -> impl Iterator<Item = BlockId> + '_ {
        (0..self.bytes.len() as u32).map(BlockId).filter(|b| self.bytes[b.index()].is_some())
    }

    /// The token ids held by a block (`block_size` slots; zeros where
    /// nothing was written).
    pub fn tokens(&self, block: BlockId, block_size: usize) -> Vec<TokenId> {
        match self.bytes.get(block.index()) {
            Some(Some(b)) => (0..block_size).map(|i| Self::token_at(b, i)).collect(),
            _ => vec![0; block_size],
        }
    }

    /// The block's bytes, allocated (zeros) on first use.
    fn block_mut(&mut self, block: BlockId) -> &mut [u8] {
        let i = block.index();
        if i >= self.bytes.len() {
            self.bytes.resize_with(i + 1, || None);
            self.sums.resize(i + 1, 0);
        }
        let bpb = self.bytes_per_block;
        self.bytes[i].get_or_insert_with(|| vec![0; bpb].into_boxed_slice())
    }

    fn write_token(&mut self, block: BlockId, slot: usize, token: TokenId) {
        let b = self.block_mut(block);
        if slot == 0 {
            b.fill(0);
            b[..4].copy_from_slice(&token.to_le_bytes());
            self.sums[block.index()] = slot_weight(0, token);
            return;
        }
        let old = Self::token_at(b, slot);
        b[slot * 4..slot * 4 + 4].copy_from_slice(&token.to_le_bytes());
        let sum = &mut self.sums[block.index()];
        *sum = sum.wrapping_sub(slot_weight(slot, old)).wrapping_add(slot_weight(slot, token));
    }

    /// A digest of the first `len` tokens of a sequence, read from its
    /// blocks (the slots past `len` in its last block are clear).
    fn digest(&self, block_table: &[BlockId], block_size: usize, len: usize) -> u64 {
        block_table.iter().take(len.div_ceil(block_size)).fold(0u64, |acc, b| {
            let sum = self.sums.get(b.index()).copied().unwrap_or(0);
            acc.wrapping_mul(1_000_003).wrapping_add(sum)
        })
    }
}

impl KvBlockIo for FakeKv {
    fn bytes_per_block(&self) -> usize {
        self.bytes_per_block
    }

    fn read_block(&self, block: BlockId, out: &mut [u8]) {
        match self.bytes.get(block.index()) {
            Some(Some(b)) => out.copy_from_slice(b),
            _ => out.fill(0),
        }
    }

    fn write_block(&mut self, block: BlockId, data: &[u8]) {
        let sum = self.block_sum(data);
        self.block_mut(block).copy_from_slice(data);
        self.sums[block.index()] = sum;
    }
}

pub struct FakeExecutor {
    pub spec: KvCacheSpec,
    pub vocab_size: usize,
    /// Per step: (request, tokens computed before, tokens run) of each
    /// sequence, while `record_steps` is set (the default; benches clear it
    /// so the log does not grow).
    pub steps: Vec<Vec<(RequestId, usize, usize)>>,
    pub record_steps: bool,
    /// The worker side of a connector, if one is configured.
    pub connector: WorkerHandle,
    pub kv: FakeKv,
}

impl std::fmt::Debug for FakeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeExecutor")
            .field("spec", &self.spec)
            .field("steps", &self.steps.len())
            .finish()
    }
}

impl FakeExecutor {
    pub fn new(num_blocks: usize, block_size: usize, max_model_len: usize) -> Self {
        // Four bytes a slot, so any block size up to 256 fits.
        let bytes_per_block = (block_size * 4).max(1024);
        Self {
            spec: KvCacheSpec { block_size, num_blocks, bytes_per_block, max_model_len },
            vocab_size: 1000,
            steps: Vec::new(),
            record_steps: true,
            connector: WorkerHandle::default(),
            kv: FakeKv::new(bytes_per_block, block_size),
        }
    }

    /// Sets the bytes a block occupies (at least four per slot).
    pub fn with_bytes_per_block(mut self, bytes_per_block: usize) -> Self {
        self.spec.bytes_per_block = bytes_per_block;
        self.kv = FakeKv::new(bytes_per_block, self.spec.block_size);
        self
    }

    pub fn with_connector(mut self, worker: impl ConnectorWorker + 'static) -> Self {
        self.connector = WorkerHandle::new(Box::new(worker));
        self
    }

    /// The token sampled for a context whose KV digest is `digest`: ids
    /// 0 and 1 are never produced (they stand for special tokens).
    pub fn token_for(&self, digest: u64) -> TokenId {
        2 + (digest % (self.vocab_size as u64 - 2)) as TokenId
    }

    /// The token the fake samples after `context` (computed from the token
    /// ids themselves: what a correct KV cache makes it read).
    pub fn expected_next(&self, context: &[TokenId]) -> TokenId {
        let mut kv = FakeKv::new(self.spec.bytes_per_block, self.spec.block_size);
        let bs = self.spec.block_size;
        let table: Vec<BlockId> = (0..context.len().div_ceil(bs) as u32).map(BlockId).collect();
        for (pos, &t) in context.iter().enumerate() {
            kv.write_token(table[pos / bs], pos % bs, t);
        }
        self.token_for(kv.digest(&table, bs, context.len()))
    }

    /// The fake's prompt logprob for a prompt token: `token` itself with
    /// logprob -1, and as alternatives `token`, `token + 1`, ... (modulo
    /// the vocabulary) with logprobs -1, -2, ... (a well-formed made-up
    /// distribution: ordered, the prompt token first, probabilities below 1).
    pub fn prompt_logprob(&self, token: TokenId, num_logprobs: u32) -> TopLogprobs {
        let vocab = self.vocab_size as u64;
        TopLogprobs {
            sampled: TokenLogprob { token_id: token, logprob: -1.0 },
            top: (0..num_logprobs)
                .map(|i| TokenLogprob {
                    token_id: ((token as u64 + i as u64) % vocab) as TokenId,
                    logprob: -1.0 - i as f32,
                })
                .collect(),
        }
    }

    /// A chunk of [`FakeExecutor::prompt_logprob`]s for each sequence that
    /// asks for prompt logprobs and has rows followed by a prompt token.
    fn prompt_logprobs(&self, batch: &ModelBatch<'_>) -> Vec<PromptLogprobsChunk> {
        batch
            .seqs
            .iter()
            .filter_map(|s| {
                let p = s.prompt_logprobs?;
                let rows = s.prompt_logprob_rows();
                (!rows.is_empty()).then(|| PromptLogprobsChunk {
                    request_id: s.request_id,
                    first_position: s.num_computed_tokens + rows.start + 1,
                    logprobs: rows
                        .map(|i| {
                            let token = p.prompt_token_ids[s.num_computed_tokens + i + 1];
                            self.prompt_logprob(token, p.num_logprobs)
                        })
                        .collect(),
                })
            })
            .collect()
    }

    fn forward(&mut self, batch: &ModelBatch<'_>) -> Vec<SampledToken> {
        let bs = self.spec.block_size;
        for seq in &batch.seqs {
            for (i, &t) in seq.token_ids.iter().enumerate() {
                let pos = seq.num_computed_tokens + i;
                self.kv.write_token(seq.block_table[pos / bs], pos % bs, t);
            }
        }
        if self.record_steps {
            self.steps.push(
                batch
                    .seqs
                    .iter()
                    .map(|s| (s.request_id, s.num_computed_tokens, s.token_ids.len()))
                    .collect(),
            );
        }
        batch
            .seqs
            .iter()
            .filter(|s| s.sample.is_some())
            .map(|s| {
                let digest = self.kv.digest(s.block_table, bs, s.context_len());
                let mut token_id = self.token_for(digest);
                // A grammar's mask: the first allowed id from the KV's
                // choice on, wrapping (an empty mask imposes nothing, as in
                // the model's sampler).
                if let Some(mask) = s.sample.and_then(|r| r.token_mask) {
                    if !mask.is_allowed(token_id) && !mask.is_empty() {
                        let v = self.vocab_size as TokenId;
                        token_id = (0..v)
                            .map(|k| (token_id + k) % v)
                            .find(|&t| mask.is_allowed(t))
                            .expect("invariant: a non-empty mask allows a token");
                    }
                }
                // A made-up but well-formed distribution: the sampled token
                // is the most likely, other ids follow.
                let logprobs = s.sample.and_then(|r| r.params.logprobs).map(|n| TopLogprobs {
                    sampled: TokenLogprob { token_id, logprob: -0.5 },
                    top: (0..n)
                        .map(|i| TokenLogprob {
                            token_id: self.token_for(digest.wrapping_add(i as u64)),
                            logprob: -0.5 - i as f32,
                        })
                        .collect(),
                });
                SampledToken { request_id: s.request_id, token_id, logprobs }
            })
            .collect()
    }
}

impl Executor for FakeExecutor {
    type Error = BatchError;

    fn kv_cache_spec(&self) -> KvCacheSpec {
        self.spec
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn wait_for_connector(&mut self, timeout: std::time::Duration) {
        self.connector.wait(timeout);
    }

    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput, BatchError> {
        batch.validate(&self.spec)?;
        self.connector.start(batch.kv_connector_metadata, &mut self.kv);
        let sampled = self.forward(batch);
        let prompt_logprobs = self.prompt_logprobs(batch);
        let kv_connector_output = self.connector.finish(&mut self.kv);
        Ok(ModelOutput { sampled, prompt_logprobs, kv_connector_output })
    }
}

/// Cost model of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyModel {
    pub per_step: Duration,
    pub per_prefill_token: Duration,
    pub per_decode_seq: Duration,
}

#[derive(Debug)]
pub struct SimExecutor {
    pub inner: FakeExecutor,
    pub latency: LatencyModel,
    /// Sleep for the simulated time (for end-to-end benches).
    pub real_time: bool,
    pub simulated: Duration,
}

impl SimExecutor {
    pub fn new(inner: FakeExecutor, latency: LatencyModel, real_time: bool) -> Self {
        Self { inner, latency, real_time, simulated: Duration::ZERO }
    }

    /// What the batch costs (nothing when it runs no token: a step that
    /// only drives the connector).
    pub fn step_cost(&self, batch: &ModelBatch<'_>) -> Duration {
        if batch.seqs.is_empty() {
            return Duration::ZERO;
        }
        let (mut prefill, mut decode) = (0u32, 0u32);
        for s in &batch.seqs {
            if s.token_ids.len() == 1 && s.sample.is_some_and(|r| !r.output_token_ids.is_empty()) {
                decode += 1;
            } else {
                prefill += s.token_ids.len() as u32;
            }
        }
        self.latency.per_step
            + self.latency.per_prefill_token * prefill
            + self.latency.per_decode_seq * decode
    }
}

impl Executor for SimExecutor {
    type Error = BatchError;

    fn kv_cache_spec(&self) -> KvCacheSpec {
        self.inner.spec
    }

    fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    fn wait_for_connector(&mut self, timeout: std::time::Duration) {
        self.inner.wait_for_connector(timeout);
    }

    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput, BatchError> {
        let cost = self.step_cost(batch);
        self.simulated += cost;
        if self.real_time {
            std::thread::sleep(cost);
        }
        self.inner.execute(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineCore;
    use crate::request::NewRequest;
    use crate::sampling::SamplingParams;
    use crate::scheduler::SchedulerConfig;

    #[test]
    fn sim_executor_charges_prefill_tokens_decode_sequences_and_steps() {
        let latency = LatencyModel {
            per_step: Duration::from_micros(100),
            per_prefill_token: Duration::from_micros(10),
            per_decode_seq: Duration::from_micros(50),
        };
        let sim = SimExecutor::new(FakeExecutor::new(64, 4, 1024), latency, false);
        let config = SchedulerConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: 64,
            block_size: 4,
            num_blocks: 64,
            max_model_len: 1024,
            ..SchedulerConfig::default()
        };
        let mut e = EngineCore::new(sim, config);
        for _ in 0..2 {
            let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(3) };
            let new = NewRequest::new(vec![5; 10], params);
            e.add_request(new, 0.0).unwrap();
        }
        let mut t = 0.0;
        while e.has_unfinished() {
            t += 1.0;
            e.step(t);
        }
        // Step 1: two prefills of 10 tokens (admitted together, so neither
        // hits the other's blocks); steps 2 and 3: two decodes each.
        let expected =
            3 * latency.per_step + 20 * latency.per_prefill_token + 4 * latency.per_decode_seq;
        assert_eq!(e.executor().simulated, expected);
    }
}
