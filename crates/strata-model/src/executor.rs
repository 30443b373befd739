//! [`ModelExecutor`]: a decoder model, its paged KV pool and a sampler
//! behind the [`Executor`] contract of `strata-core`.
//!
//! Per step: check the batch against the pool, hand the step's connector
//! metadata to the connector's worker side (loads and stores between the
//! pool and the connector), flatten the batch into
//! [`StepMetadata`] (token ids, positions, slot mapping, block tables),
//! run the forward pass computing logits only for rows that sample or
//! whose prompt logprobs a sequence asks for ([`LogitRows::Step`]), sample
//! each sampling row and turn each prompt row into the logprobs of the
//! prompt token after it (in parallel; no row looks at another); last,
//! collect the worker's report for the scheduler.

use rayon::prelude::*;
use strata_core::connector::{ConnectorWorker, WorkerHandle};
use strata_core::{
    BlockId, Executor, KvBlockIo, KvCacheSpec, ModelBatch, ModelOutput, PromptLogprobsChunk,
    SampledToken,
};

use crate::backend::{Backend, SeqAttention, StepMetadata};
use crate::error::{ModelError, Result};
use crate::models::DecoderModel;
use crate::sampler::{top_logprobs, Sampler};

/// Size of the device KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPoolConfig {
    pub block_size: usize,
    /// Exact number of blocks; when `None`, as many as fit in `memory_bytes`.
    pub num_blocks: Option<usize>,
    pub memory_bytes: u64,
}

impl Default for KvPoolConfig {
    fn default() -> Self {
        Self { block_size: 16, num_blocks: None, memory_bytes: 1 << 30 }
    }
}

/// Which token rows a forward pass returns logits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// The last token of each sequence that samples.
    Sampled,
    /// What `execute` uses: per sequence, in batch order, the rows whose
    /// prompt logprobs it asks for ([`SeqInput::prompt_logprob_rows`]),
    /// then its last row if it samples.
    ///
    /// [`SeqInput::prompt_logprob_rows`]: strata_core::SeqInput::prompt_logprob_rows
    Step,
    /// Every token of the batch (for tests and scoring).
    All,
}

pub struct ModelExecutor<B: Backend> {
    backend: B,
    model: DecoderModel<B>,
    kv: Vec<B::KvLayer>,
    spec: KvCacheSpec,
    sampler: Sampler,
    /// Identifies the model's KV bytes (see `ModelSource::kv_fingerprint`).
    kv_fingerprint: u64,
    /// A KV connector's worker side, reading and writing `kv`.
    connector: WorkerHandle,
}

/// The pool seen block by block, in the layout connectors store: for each
/// layer, the block's K rows then its V rows.
struct PoolIo<'a, B: Backend> {
    backend: &'a B,
    kv: &'a mut [B::KvLayer],
    spec: KvCacheSpec,
}

impl<B: Backend> KvBlockIo for PoolIo<'_, B> {
    fn bytes_per_block(&self) -> usize {
        self.spec.bytes_per_block
    }

    fn read_block(&self, block: BlockId, out: &mut [u8]) {
        let bs = self.spec.block_size;
        let slots = block.index() * bs..(block.index() + 1) * bs;
        let per_layer = self.spec.bytes_per_block / self.kv.len().max(1);
        for (layer, chunk) in self.kv.iter().zip(out.chunks_exact_mut(per_layer)) {
            self.backend.read_kv_slots(layer, slots.clone(), chunk);
        }
    }

    fn write_block(&mut self, block: BlockId, data: &[u8]) {
        let bs = self.spec.block_size;
        let slots = block.index() * bs..(block.index() + 1) * bs;
        let per_layer = self.spec.bytes_per_block / self.kv.len().max(1);
        for (layer, chunk) in self.kv.iter_mut().zip(data.chunks_exact(per_layer)) {
            self.backend.write_kv_slots(layer, slots.clone(), chunk);
        }
    }
}

impl<B: Backend> std::fmt::Debug for ModelExecutor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelExecutor")
            .field("backend", &self.backend.name())
            .field("model", &self.model)
            .field("spec", &self.spec)
            .finish()
    }
}

impl<B: Backend> ModelExecutor<B> {
    pub fn new(
        backend: B,
        model: DecoderModel<B>,
        pool: KvPoolConfig,
        max_model_len: usize,
        sampler_seed: u64,
    ) -> Result<Self> {
        let c = model.config();
        if pool.block_size == 0 {
            return Err(ModelError::KvCache("block size must be at least 1".into()));
        }
        let bytes_per_block = c.num_layers * 2 * pool.block_size * c.kv_width() * 4;
        let num_blocks =
            pool.num_blocks.unwrap_or((pool.memory_bytes / bytes_per_block as u64) as usize);
        if num_blocks == 0 {
            return Err(ModelError::KvCache(format!(
                "a KV pool of {} bytes holds no block of {bytes_per_block} bytes",
                pool.memory_bytes
            )));
        }
        let slots = num_blocks * pool.block_size;
        let kv = (0..c.num_layers)
            .map(|_| backend.alloc_kv_layer(slots, c.kv_width()))
            .collect::<Result<Vec<_>>>()?;
        let spec =
            KvCacheSpec { block_size: pool.block_size, num_blocks, bytes_per_block, max_model_len };
        Ok(Self {
            backend,
            model,
            kv,
            spec,
            sampler: Sampler::new(sampler_seed),
            kv_fingerprint: 0,
            connector: WorkerHandle::default(),
        })
    }

    /// Identifies this model's KV bytes across runs (keys the disk tier).
    pub fn kv_fingerprint(&self) -> u64 {
        self.kv_fingerprint
    }

    pub fn set_kv_fingerprint(&mut self, fingerprint: u64) {
        self.kv_fingerprint = fingerprint;
    }

    /// Gives the executor a KV connector's worker side.
    pub fn set_connector(&mut self, worker: Box<dyn ConnectorWorker>) {
        self.connector = WorkerHandle::new(worker);
    }

    /// Byte access to the pool, block by block (what connectors use).
    pub fn kv_block_io(&mut self) -> impl KvBlockIo + '_ {
        PoolIo { backend: &self.backend, kv: &mut self.kv, spec: self.spec }
    }

    pub fn model(&self) -> &DecoderModel<B> {
        &self.model
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn step_metadata(&self, batch: &ModelBatch<'_>) -> StepMetadata {
        let bs = self.spec.block_size;
        let n = batch.num_tokens();
        let mut meta = StepMetadata {
            token_ids: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            slot_mapping: Vec::with_capacity(n),
            token_seq: Vec::with_capacity(n),
            seqs: Vec::with_capacity(batch.seqs.len()),
            block_tables: Vec::new(),
            block_size: bs,
            graph: false,
        };
        for (s, seq) in batch.seqs.iter().enumerate() {
            let num_blocks = seq.context_len().div_ceil(bs);
            meta.seqs.push(SeqAttention {
                token_start: meta.token_ids.len(),
                num_tokens: seq.token_ids.len(),
                context_len: seq.context_len(),
                block_table_start: meta.block_tables.len(),
                num_blocks,
            });
            meta.block_tables.extend(seq.block_table[..num_blocks].iter().map(|b| b.0));
            for (i, &tok) in seq.token_ids.iter().enumerate() {
                let pos = seq.num_computed_tokens + i;
                meta.token_ids.push(tok);
                meta.positions.push(pos as u32);
                meta.slot_mapping.push((seq.block_table[pos / bs].index() * bs + pos % bs) as u32);
                meta.token_seq.push(s as u32);
            }
        }
        meta
    }

    fn check_token_ids(&self, batch: &ModelBatch<'_>) -> Result<()> {
        let vocab = self.model.config().vocab_size;
        for seq in &batch.seqs {
            // Prompt logprobs index their rows by the prompt's next tokens.
            let prompt = seq.prompt_logprobs.map_or(&[][..], |p| p.prompt_token_ids);
            if let Some(&bad) = seq.token_ids.iter().chain(prompt).find(|&&t| t as usize >= vocab) {
                return Err(ModelError::InvalidInput(format!(
                    "{}: token id {bad} is outside the vocabulary of {vocab}",
                    seq.request_id
                )));
            }
        }
        Ok(())
    }

    /// Runs the batch and returns logits, `[rows, vocab]` row-major.
    pub fn logits(&mut self, batch: &ModelBatch<'_>, rows: LogitRows) -> Result<Vec<f32>> {
        batch.validate(&self.spec)?;
        self.check_token_ids(batch)?;
        self.forward_logits(batch, rows)
    }

    /// [`Self::logits`] for a batch already checked against the pool and
    /// the vocabulary.
    fn forward_logits(&mut self, batch: &ModelBatch<'_>, rows: LogitRows) -> Result<Vec<f32>> {
        let (logits, n) = self.forward(batch, rows)?;
        let mut out = self.backend.to_host(&logits)?;
        out.truncate(n * self.model.config().vocab_size);
        Ok(out)
    }

    /// The forward pass: the logits where the backend keeps them, and how
    /// many of their rows are the ones asked for (the rest pad a graph
    /// bucket).
    fn forward(&mut self, batch: &ModelBatch<'_>, rows: LogitRows) -> Result<(B::Tensor, usize)> {
        let mut meta = self.step_metadata(batch);
        let mut rows: Vec<usize> = match rows {
            LogitRows::All => (0..meta.num_tokens()).collect(),
            LogitRows::Sampled => batch
                .seqs
                .iter()
                .zip(&meta.seqs)
                .filter(|(s, _)| s.sample.is_some())
                .map(|(_, m)| m.token_start + m.num_tokens - 1)
                .collect(),
            LogitRows::Step => batch
                .seqs
                .iter()
                .zip(&meta.seqs)
                .flat_map(|(s, m)| {
                    let start = m.token_start;
                    let last = s.sample.is_some().then_some(start + m.num_tokens - 1);
                    s.prompt_logprob_rows().map(move |i| start + i).chain(last)
                })
                .collect(),
        };
        // A decode step whose every token is a logit row may be padded to a
        // graph bucket; the padding rows' logits are dropped.
        let n = meta.num_tokens();
        let asked = rows.len();
        let all_decode = batch.seqs.iter().all(|s| s.token_ids.len() == 1);
        let bucket = if all_decode && rows.iter().copied().eq(0..n) {
            self.backend.graph_bucket(n)
        } else {
            None
        };
        if let Some(bucket) = bucket {
            meta.pad_for_graph(bucket);
            rows = (0..bucket).collect();
        }
        let step = self.backend.prepare_step(&meta)?;
        let (model, kv, backend) = (&self.model, &mut self.kv, &self.backend);
        let logits = backend.run_forward(&step, &mut || model.forward(backend, kv, &step, &rows));
        Ok((logits, asked))
    }
}

impl<B: Backend> Executor for ModelExecutor<B> {
    type Error = ModelError;

    fn kv_cache_spec(&self) -> KvCacheSpec {
        self.spec
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn wait_for_connector(&mut self, timeout: std::time::Duration) {
        self.connector.wait(timeout);
    }

    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput> {
        batch.validate(&self.spec)?;
        self.check_token_ids(batch)?;
        let mut io = PoolIo { backend: &self.backend, kv: &mut self.kv, spec: self.spec };
        self.connector.start(batch.kv_connector_metadata, &mut io);
        let sampled =
            if batch.seqs.is_empty() { Ok(Default::default()) } else { self.sample(batch) };
        let mut io = PoolIo { backend: &self.backend, kv: &mut self.kv, spec: self.spec };
        let kv_connector_output = self.connector.finish(&mut io);
        match sampled {
            Ok((sampled, prompt_logprobs)) => {
                Ok(ModelOutput { sampled, prompt_logprobs, kv_connector_output })
            }
            Err(e) => {
                self.connector.keep(kv_connector_output);
                Err(e)
            }
        }
    }
}

impl<B: Backend> ModelExecutor<B> {
    /// The forward pass over a non-empty batch, a token for each sequence
    /// that samples and the prompt logprobs of each sequence that asks for
    /// them (one chunk per sequence with prompt rows).
    fn sample(
        &mut self,
        batch: &ModelBatch<'_>,
    ) -> Result<(Vec<SampledToken>, Vec<PromptLogprobsChunk>)> {
        // `execute` checked the batch already.
        let (logits, n) = self.forward(batch, LogitRows::Step)?;
        // Every row greedy, nothing else asked: token ids from where the
        // logits are, when the backend can (a GPU then copies 4 bytes a
        // row instead of the vocabulary's logits).
        let plain_greedy = batch.seqs.iter().all(|s| {
            s.prompt_logprob_rows().is_empty()
                && s.sample.is_none_or(|r| Sampler::is_plain_greedy(&r))
        });
        if plain_greedy {
            if let Some(ids) = self.backend.argmax_rows(&logits) {
                let ids = ids?;
                let sampled = batch
                    .seqs
                    .iter()
                    .filter(|s| s.sample.is_some())
                    .zip(&ids[..n])
                    .map(|(s, &token_id)| SampledToken {
                        request_id: s.request_id,
                        token_id,
                        logprobs: None,
                    })
                    .collect();
                return Ok((sampled, Vec::new()));
            }
        }
        let mut logits = self.backend.to_host(&logits)?;
        let vocab = self.model.config().vocab_size;
        logits.truncate(n * vocab);
        let rows: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
        // Walk the rows in the order `LogitRows::Step` lays them out.
        let mut next = 0;
        let mut sampling = Vec::new();
        let mut prompt = Vec::new();
        for s in &batch.seqs {
            let prompt_rows = s.prompt_logprob_rows();
            if let (Some(p), false) = (s.prompt_logprobs, prompt_rows.is_empty()) {
                prompt.push((s, p, prompt_rows.clone(), next));
            }
            next += prompt_rows.len();
            if let Some(r) = s.sample {
                sampling.push((s.request_id, r, next));
                next += 1;
            }
        }
        debug_assert_eq!(next, rows.len());
        let sampled = sampling
            .par_iter()
            .map(|(id, req, row)| self.sampler.sample(*id, rows[*row], req))
            .collect();
        let prompt_logprobs = prompt
            .into_iter()
            .map(|(s, p, prompt_rows, first_row)| PromptLogprobsChunk {
                request_id: s.request_id,
                first_position: s.num_computed_tokens + prompt_rows.start + 1,
                logprobs: prompt_rows
                    .into_par_iter()
                    .enumerate()
                    .map(|(k, i)| {
                        let token = p.prompt_token_ids[s.num_computed_tokens + i + 1];
                        top_logprobs(rows[first_row + k], token, p.num_logprobs)
                    })
                    .collect(),
            })
            .collect();
        Ok((sampled, prompt_logprobs))
    }
}
