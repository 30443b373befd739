//! The executor's side of the CUDA backend's step hooks, checked on the
//! CPU backend through a wrapper that uses them as the CUDA backend does:
//! decode steps padded to a graph bucket give the logits of the unpadded
//! step, and greedy steps sampled from the backend's argmax give the
//! sampler's tokens.

#![allow(clippy::unwrap_used)]

mod common;

use common::seq;
use std::sync::atomic::{AtomicUsize, Ordering};

use strata_core::{
    BlockId, Executor, ModelBatch, RequestId, SampleRequest, SamplingParams, SeqInput,
};
use strata_model::backend::cpu::{CpuBackend, CpuKvLayer, CpuTensor, CpuWeight};
use strata_model::backend::{AttentionShape, Backend, StepMetadata};
use strata_model::error::Result;
use strata_model::loader::load_executor;
use strata_model::weights::HostTensor;
use strata_model::{KvPoolConfig, LoadOptions, LogitRows, ModelSource};

/// The CPU backend, padding decode steps to powers of two and taking
/// argmaxes itself; counts the padded steps and the argmax calls.
#[derive(Debug, Default)]
struct Padded(AtomicUsize, AtomicUsize);

impl Backend for Padded {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvLayer = CpuKvLayer;
    type Step = StepMetadata;
    fn name(&self) -> &'static str {
        "padded-cpu"
    }
    fn upload(&self, t: HostTensor) -> Result<CpuWeight> {
        CpuBackend.upload(t)
    }
    fn alloc_kv_layer(&self, n: usize, w: usize) -> Result<CpuKvLayer> {
        CpuBackend.alloc_kv_layer(n, w)
    }
    fn prepare_step(&self, m: &StepMetadata) -> Result<StepMetadata> {
        if m.graph {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        CpuBackend.prepare_step(m)
    }
    fn rows(&self, x: &CpuTensor) -> usize {
        x.rows
    }
    fn cols(&self, x: &CpuTensor) -> usize {
        x.cols
    }
    fn embedding(&self, t: &CpuWeight, s: &StepMetadata) -> CpuTensor {
        CpuBackend.embedding(t, s)
    }
    fn rms_norm(&self, x: &CpuTensor, w: &CpuWeight, eps: f32) -> CpuTensor {
        CpuBackend.rms_norm(x, w, eps)
    }
    fn rms_norm_heads(&self, x: &mut CpuTensor, w: &CpuWeight, hd: usize, eps: f32) {
        CpuBackend.rms_norm_heads(x, w, hd, eps)
    }
    fn linear(&self, x: &CpuTensor, w: &CpuWeight, b: Option<&CpuWeight>) -> CpuTensor {
        CpuBackend.linear(x, w, b)
    }
    fn split_cols(&self, x: &CpuTensor, w: &[usize]) -> Vec<CpuTensor> {
        CpuBackend.split_cols(x, w)
    }
    fn rope(&self, x: &mut CpuTensor, hd: usize, t: &CpuWeight, s: &StepMetadata, i: bool) {
        CpuBackend.rope(x, hd, t, s, i)
    }
    fn silu_mul(&self, x: &CpuTensor) -> CpuTensor {
        CpuBackend.silu_mul(x)
    }
    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) {
        CpuBackend.add_assign(x, y)
    }
    fn write_kv(&self, l: &mut CpuKvLayer, k: &CpuTensor, v: &CpuTensor, s: &StepMetadata) {
        CpuBackend.write_kv(l, k, v, s)
    }
    fn paged_attention(
        &self,
        q: &CpuTensor,
        l: &CpuKvLayer,
        a: AttentionShape,
        s: &StepMetadata,
    ) -> CpuTensor {
        CpuBackend.paged_attention(q, l, a, s)
    }
    fn read_kv_slots(&self, l: &CpuKvLayer, r: std::ops::Range<usize>, o: &mut [u8]) {
        CpuBackend.read_kv_slots(l, r, o)
    }
    fn write_kv_slots(&self, l: &mut CpuKvLayer, r: std::ops::Range<usize>, d: &[u8]) {
        CpuBackend.write_kv_slots(l, r, d)
    }
    fn select_rows(&self, x: &CpuTensor, r: &[usize]) -> CpuTensor {
        CpuBackend.select_rows(x, r)
    }
    fn to_host(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        CpuBackend.to_host(x)
    }
    fn graph_bucket(&self, n: usize) -> Option<usize> {
        Some(n.next_power_of_two())
    }
    fn argmax_rows(&self, x: &CpuTensor) -> Option<Result<Vec<u32>>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        // The first largest value, as the sampler's scan finds it.
        let first_max = |r: &[f32]| {
            r.iter().enumerate().fold(0, |best, (i, &v)| if v > r[best] { i } else { best }) as u32
        };
        Some(Ok((0..x.rows).map(|r| first_max(x.row(r))).collect()))
    }
}

/// A 64-block pool of 16-token blocks.
fn pool() -> LoadOptions {
    LoadOptions {
        kv: KvPoolConfig { block_size: 16, num_blocks: Some(64), memory_bytes: 0 },
        ..LoadOptions::default()
    }
}

#[test]
fn padded_decode_steps_give_the_unpadded_logits_and_write_no_padding_kv() {
    let opts = pool();
    let source = ModelSource::Builtin;
    let mut plain = load_executor(CpuBackend, &source, &opts, &mut |_, _| {}).unwrap();
    let mut padded = load_executor(Padded::default(), &source, &opts, &mut |_, _| {}).unwrap();
    // Three sequences (3 -> bucket 4: one padding token), prefilled, then
    // two decode steps. Block 0 is in no table: the padding reads it.
    let prompts: Vec<Vec<u32>> =
        (0..3u32).map(|s| (0..18 + 7 * s).map(|i| (i * 29 + s + 2) % 500).collect()).collect();
    let tables: Vec<Vec<BlockId>> =
        (0..3u32).map(|s| (0..4).map(|i| BlockId(1 + 4 * s + i)).collect()).collect();
    let batch = |step: usize| -> ModelBatch<'_> {
        let seqs = prompts
            .iter()
            .zip(&tables)
            .enumerate()
            .map(|(i, (p, t))| match step {
                0 => seq(i as u64 + 1, &p[..p.len() - 2], 0, t),
                _ => seq(i as u64 + 1, &p[p.len() - 3 + step..][..1], p.len() - 3 + step, t),
            })
            .collect();
        ModelBatch { seqs, kv_connector_metadata: None }
    };
    let block0 = |e: &mut strata_model::ModelExecutor<Padded>| {
        use strata_core::executor::KvBlockIo;
        let io = e.kv_block_io();
        let mut b = vec![0u8; io.bytes_per_block()];
        io.read_block(BlockId(0), &mut b);
        b
    };
    let untouched = block0(&mut padded);
    for step in 0..3 {
        let want = plain.logits(&batch(step), LogitRows::All).unwrap();
        let got = padded.logits(&batch(step), LogitRows::All).unwrap();
        assert_eq!(got.len(), want.len(), "step {step}: padding rows are dropped");
        // Padding changes no real row: each row's math is its own.
        assert!(got == want, "step {step}: padded logits equal the plain ones");
    }
    assert_eq!(
        padded.backend().0.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "two decode steps padded"
    );
    assert!(block0(&mut padded) == untouched, "padding tokens write no KV");
}

/// Continuous batching through `execute`: greedy requests without
/// logprobs take the backend's argmax (padded decode steps included), the
/// others the sampler's; the tokens are the plain CPU executor's. The
/// first sequence's prompt runs in two chunks, the first of which samples
/// nothing, so a row-less sequence comes before sampling ones.
#[test]
fn greedy_steps_sampled_from_the_backend_argmax_give_the_sampler_tokens() {
    let opts = pool();
    let source = ModelSource::Builtin;
    let greedy = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(64) };
    let with_logprobs = SamplingParams { logprobs: Some(2), ..greedy.clone() };
    for (params, fast) in [(&greedy, true), (&with_logprobs, false)] {
        let mut plain = load_executor(CpuBackend, &source, &opts, &mut |_, _| {}).unwrap();
        let mut padded = load_executor(Padded::default(), &source, &opts, &mut |_, _| {}).unwrap();
        let prompts: Vec<Vec<u32>> =
            (0..3u32).map(|s| (0..12 + 9 * s).map(|i| (i * 17 + s + 5) % 500).collect()).collect();
        let tables: Vec<Vec<BlockId>> =
            (0..3u32).map(|s| (0..4).map(|i| BlockId(1 + 4 * s + i)).collect()).collect();
        let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); 3];
        let mut computed = [0usize; 3];
        let mut differed = false;
        for step in 0..7 {
            let seqs: Vec<Vec<u32>> = prompts
                .iter()
                .zip(&outputs)
                .map(|(p, o)| p.iter().chain(o).copied().collect())
                .collect();
            // Sequence 0's first step is half its prompt, sampling nothing.
            let ends: Vec<usize> = (0..3)
                .map(|s| if s == 0 && step == 0 { prompts[0].len() / 2 } else { seqs[s].len() })
                .collect();
            let batch = ModelBatch {
                kv_connector_metadata: None,
                seqs: (0..3)
                    .map(|s| SeqInput {
                        request_id: RequestId::new(s as u64 + 1).unwrap(),
                        token_ids: &seqs[s][computed[s]..ends[s]],
                        num_computed_tokens: computed[s],
                        block_table: &tables[s],
                        sample: (ends[s] == seqs[s].len()).then_some(SampleRequest {
                            params,
                            prompt_token_ids: &prompts[s],
                            output_token_ids: &outputs[s],
                            token_mask: None,
                        }),
                        prompt_logprobs: None,
                    })
                    .collect(),
            };
            let want = plain.execute(&batch).unwrap().sampled;
            let got = padded.execute(&batch).unwrap().sampled;
            assert_eq!(got, want, "step {step}");
            differed |= want.windows(2).any(|w| w[0].token_id != w[1].token_id);
            drop(batch);
            for t in &got {
                let s = t.request_id.get() as usize - 1;
                outputs[s].push(t.token_id);
            }
            computed = [0, 1, 2].map(|s| ends[s]);
        }
        assert!(differed, "the sequences' tokens differ, so a row mix-up would show");
        let calls = padded.backend().1.load(Ordering::Relaxed);
        assert_eq!(calls, if fast { 7 } else { 0 }, "argmax on the backend: {calls} steps");
        assert_eq!(padded.backend().0.load(Ordering::Relaxed), 5, "five padded decode steps");
    }
}
