//! Decode steps padded to a graph bucket give the logits of the unpadded
//! step: the executor's side of CUDA graphs, checked on the CPU backend
//! (a wrapper that asks for buckets as the CUDA backend does).

#![allow(clippy::unwrap_used)]

mod common;

use common::seq;
use strata_core::{BlockId, ModelBatch};
use strata_model::backend::cpu::{CpuBackend, CpuKvLayer, CpuTensor, CpuWeight};
use strata_model::backend::{AttentionShape, Backend, StepMetadata};
use strata_model::error::Result;
use strata_model::loader::load_executor;
use strata_model::weights::HostTensor;
use strata_model::{KvPoolConfig, LoadOptions, LogitRows, ModelSource};

/// The CPU backend, padding decode steps to powers of two; counts the
/// padded steps it ran.
#[derive(Debug, Default)]
struct Padded(std::sync::atomic::AtomicUsize);

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
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
}

#[test]
fn padded_decode_steps_give_the_unpadded_logits_and_write_no_padding_kv() {
    let opts = LoadOptions {
        kv: KvPoolConfig { block_size: 16, num_blocks: Some(64), memory_bytes: 0 },
        ..LoadOptions::default()
    };
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
