//! Executors without a model, for tests and benchmarks (feature
//! `testing`).
//!
//! - [`FakeExecutor`] samples "last token + 1" (wrapping inside the
//!   vocabulary, above the two lowest ids), records what each step ran, and
//!   checks every batch against the pool, so scheduler bugs (a token
//!   without a slot, a block outside the pool) surface as errors.
//! - [`SimExecutor`] wraps it with a latency model (cost per step, per
//!   prefill token, per decode sequence), like dynamo's mocker: it adds the
//!   simulated time to a counter and, if asked, sleeps for it.

use std::time::Duration;

use crate::connector::{ConnectorMeta, ConnectorOutput, ConnectorStats, ConnectorWorker};
use crate::executor::{
    BatchError, Executor, KvBlockIo, KvCacheSpec, ModelBatch, ModelOutput, SampledToken,
    TokenLogprob, TopLogprobs,
};
use crate::ids::{BlockId, RequestId, TokenId};
use crate::records::PrefillRecord;
use crate::scheduler::StepResult;

pub struct FakeExecutor {
    pub spec: KvCacheSpec,
    pub vocab_size: usize,
    /// Per step: (request, tokens computed before, tokens run) of each
    /// sequence, while `record_steps` is set (the default; benches clear it
    /// so the log does not grow).
    pub steps: Vec<Vec<(RequestId, usize, usize)>>,
    pub record_steps: bool,
    /// The worker side of a connector, if one is configured.
    pub connector: Option<Box<dyn ConnectorWorker>>,
    /// Block contents as connectors see them (the fake computes no KV:
    /// blocks hold what connectors wrote, zeros otherwise).
    pub kv: FakeKv,
}

/// A sparse byte store standing in for the device pool. With
/// `write_tokens` set, `execute` writes each token id (little-endian u32)
/// at its slot, so a test can check that a connector moved the right
/// bytes.
#[derive(Debug, Default)]
pub struct FakeKv {
    pub bytes_per_block: usize,
    pub blocks: rustc_hash::FxHashMap<BlockId, Vec<u8>>,
    pub write_tokens: bool,
}

impl FakeKv {
    /// The token ids held by a block (`block_size` slots).
    pub fn tokens(&self, block: BlockId, block_size: usize) -> Vec<TokenId> {
        let Some(data) = self.blocks.get(&block) else { return vec![0; block_size] };
        data.chunks_exact(4)
            .take(block_size)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn write_token(&mut self, block: BlockId, offset: usize, token: TokenId) {
        let bpb = self.bytes_per_block;
        let data = self.blocks.entry(block).or_insert_with(|| vec![0; bpb]);
        data[offset * 4..offset * 4 + 4].copy_from_slice(&token.to_le_bytes());
    }
}

impl KvBlockIo for FakeKv {
    fn bytes_per_block(&self) -> usize {
        self.bytes_per_block
    }

    fn read_block(&self, block: BlockId, out: &mut [u8]) {
        match self.blocks.get(&block) {
            Some(data) => out.copy_from_slice(data),
            None => out.fill(0),
        }
    }

    fn write_block(&mut self, block: BlockId, data: &[u8]) {
        self.blocks.insert(block, data.to_vec());
    }
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
        Self {
            spec: KvCacheSpec { block_size, num_blocks, bytes_per_block: 1024, max_model_len },
            vocab_size: 1000,
            steps: Vec::new(),
            record_steps: true,
            connector: None,
            kv: FakeKv { bytes_per_block: 1024, ..FakeKv::default() },
        }
    }

    pub fn with_connector(mut self, worker: impl ConnectorWorker + 'static) -> Self {
        self.connector = Some(Box::new(worker));
        self
    }

    /// The token the fake samples after `last`.
    pub fn next_token(&self, last: TokenId) -> TokenId {
        let v = self.vocab_size as u32;
        if last + 1 < v {
            last + 1
        } else {
            2
        }
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

    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput, BatchError> {
        batch.validate(&self.spec)?;
        if self.kv.write_tokens {
            let bs = self.spec.block_size;
            for seq in &batch.seqs {
                for (i, &t) in seq.token_ids.iter().enumerate() {
                    let pos = seq.num_computed_tokens + i;
                    self.kv.write_token(seq.block_table[pos / bs], pos % bs, t);
                }
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
        let sampled = batch
            .seqs
            .iter()
            .filter(|s| s.sample.is_some())
            .map(|s| {
                let token_id = self.next_token(*s.token_ids.last().expect("validated"));
                // A made-up but well-formed distribution: the sampled token
                // is the most likely, the next ids follow.
                let logprobs = s.sample.and_then(|r| r.params.logprobs).map(|n| TopLogprobs {
                    sampled: TokenLogprob { token_id, logprob: -0.5 },
                    top: (0..n)
                        .map(|i| TokenLogprob {
                            token_id: self.next_token(token_id + i).saturating_sub(1),
                            logprob: -0.5 - i as f32,
                        })
                        .collect(),
                });
                SampledToken { request_id: s.request_id, token_id, logprobs }
            })
            .collect();
        Ok(ModelOutput { sampled })
    }

    fn start_load_kv(&mut self, meta: &ConnectorMeta) {
        if let Some(c) = &mut self.connector {
            c.start_load_kv(meta, &mut self.kv);
        }
    }

    fn get_finished(&mut self) -> ConnectorOutput {
        self.connector.as_mut().map(|c| c.get_finished(&mut self.kv)).unwrap_or_default()
    }
}

/// A contiguous byte pool standing in for a device pool (benches of
/// connectors, where the bytes are what is measured).
#[derive(Debug)]
pub struct VecKv {
    pub bytes_per_block: usize,
    pub data: Vec<u8>,
}

impl KvBlockIo for VecKv {
    fn bytes_per_block(&self) -> usize {
        self.bytes_per_block
    }

    fn read_block(&self, block: BlockId, out: &mut [u8]) {
        let start = block.index() * self.bytes_per_block;
        out.copy_from_slice(&self.data[start..start + self.bytes_per_block]);
    }

    fn write_block(&mut self, block: BlockId, data: &[u8]) {
        let start = block.index() * self.bytes_per_block;
        self.data[start..start + self.bytes_per_block].copy_from_slice(data);
    }
}

/// Every PrefillRecord of a run's steps, in order.
pub fn prefill_records(results: &[StepResult]) -> Vec<PrefillRecord> {
    results.iter().flat_map(|r| r.prefill_records.iter().copied()).collect()
}

/// The connector stats of a run's steps, merged.
pub fn connector_stats(results: &[StepResult]) -> ConnectorStats {
    let mut all = ConnectorStats::default();
    for r in results {
        all.merge(r.connector_stats.clone());
    }
    all
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

    pub fn step_cost(&self, batch: &ModelBatch<'_>) -> Duration {
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

    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput, BatchError> {
        let cost = self.step_cost(batch);
        self.simulated += cost;
        if self.real_time {
            std::thread::sleep(cost);
        }
        self.inner.execute(batch)
    }

    fn start_load_kv(&mut self, meta: &ConnectorMeta) {
        self.inner.start_load_kv(meta)
    }

    fn get_finished(&mut self) -> ConnectorOutput {
        self.inner.get_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineCore;
    use crate::request::NewRequest;
    use crate::sampling::SamplingParams;
    use crate::scheduler::{SchedulerConfig, SchedulingPolicy};

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
            policy: SchedulingPolicy::Fcfs,
            enable_prefix_caching: true,
            kv_load_failure_policy: crate::connector::KvLoadFailurePolicy::Fail,
        };
        let mut e = EngineCore::new(sim, config);
        for _ in 0..2 {
            let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(3) };
            let new = NewRequest {
                prompt_token_ids: vec![5; 10],
                params,
                priority: 0,
                cache_salt: None,
                eos_token_ids: vec![],
                kv_transfer_params: None,
            };
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
