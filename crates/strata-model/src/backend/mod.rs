//! The tensor backend: exactly the operations a Llama-family forward pass
//! needs, and nothing else.
//!
//! Models are written once against [`Backend`]. Two implementations: the
//! CPU backend ([`cpu::CpuBackend`]: f32 activations, weights in their
//! stored dtype or GGUF blocks, `gemm` or hand-written AVX2 kernels,
//! rayon) and, with the `cuda` feature, the CUDA backend (`cuda`: NVRTC
//! kernels, cuBLAS, graphs for decode); `crate::device` picks one for
//! `--device`. The trait is shaped so that a device backend implements it
//! without changes to the model code:
//!
//! - activations are 2-D f32 tensors `[tokens, features]` owned by the
//!   backend (`Backend::Tensor`); the model never touches their memory;
//! - weights keep their stored dtype (`f32`, `f16`, `bf16`) inside the
//!   backend, which decides how to compute with them (f32 accumulation);
//! - per-step attention metadata (positions, slot mapping, block tables) is
//!   built on the host once per step and handed to the backend once
//!   (`prepare_step`), so a device backend would upload it once, not per
//!   layer;
//! - the KV cache is one K and one V store per layer, addressed by slot
//!   (`block_id * block_size + offset`): attention reads only through block
//!   tables, so a sequence's blocks can be anywhere in the pool.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::error::Result;
use crate::weights::HostTensor;

/// One sequence's view of a step, for attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqAttention {
    /// Index of the sequence's first token in the flattened batch.
    pub token_start: usize,
    /// Tokens of this sequence in the batch (the query length).
    pub num_tokens: usize,
    /// Tokens in the KV cache once this step's tokens are written.
    pub context_len: usize,
    /// Where the sequence's block table starts in `block_tables`.
    pub block_table_start: usize,
    pub num_blocks: usize,
}

/// Host-side description of one step, built by the executor.
#[derive(Clone, Debug, Default)]
pub struct StepMetadata {
    pub token_ids: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// KV slot each token's K/V is written to.
    pub slot_mapping: Vec<u32>,
    /// Index into `seqs` of each token.
    pub token_seq: Vec<u32>,
    pub seqs: Vec<SeqAttention>,
    /// Block tables of all sequences, concatenated.
    pub block_tables: Vec<u32>,
    pub block_size: usize,
    /// The step is a decode step padded to a graph bucket
    /// ([`Backend::graph_bucket`]): its last tokens are padding, with slot
    /// [`PAD_SLOT`] (nothing written) and one key each.
    pub graph: bool,
}

/// The slot of a padding token: `write_kv` skips it.
pub const PAD_SLOT: u32 = u32::MAX;

impl StepMetadata {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Pads a decode step to `bucket` tokens for graph replay: each padding
    /// token is position 0 of one shared dummy sequence whose block table
    /// is block 0 (read, never written: its slot is [`PAD_SLOT`]), and the
    /// sequences are padded to `bucket + 1` so every section of the step
    /// has a size fixed by the bucket.
    pub fn pad_for_graph(&mut self, bucket: usize) {
        let n = self.num_tokens();
        assert!(n <= bucket, "invariant: the bucket holds the step");
        let dummy = SeqAttention {
            token_start: n,
            num_tokens: bucket - n,
            context_len: 1,
            block_table_start: self.block_tables.len(),
            num_blocks: 1,
        };
        let dummy_index = self.seqs.len() as u32;
        self.block_tables.push(0);
        for _ in n..bucket {
            self.token_ids.push(0);
            self.positions.push(0);
            self.slot_mapping.push(PAD_SLOT);
            self.token_seq.push(dummy_index);
        }
        self.seqs.resize(bucket + 1, dummy);
        self.graph = true;
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier on q·k, `1/sqrt(head_dim)`.
    pub scale: f32,
}

pub trait Backend: Send + Sync + 'static {
    /// A 2-D f32 activation `[rows, cols]`.
    type Tensor: Send + Sync;
    /// A weight matrix `[out_features, in_features]` or a vector, in its
    /// stored dtype.
    type Weight: Send + Sync;
    /// One layer's K and V stores.
    type KvLayer: Send + Sync;
    /// Step metadata as the backend wants it.
    type Step: Send + Sync;

    fn name(&self) -> &'static str;

    /// Takes a host tensor. Matrices keep their dtype; 1-D tensors (norm
    /// weights, biases) are widened to f32.
    fn upload(&self, tensor: HostTensor) -> Result<Self::Weight>;
    fn alloc_kv_layer(&self, num_slots: usize, kv_width: usize) -> Result<Self::KvLayer>;
    fn prepare_step(&self, meta: &StepMetadata) -> Result<Self::Step>;

    fn rows(&self, x: &Self::Tensor) -> usize;
    fn cols(&self, x: &Self::Tensor) -> usize;

    /// Rows of `table` for the step's token ids.
    fn embedding(&self, table: &Self::Weight, step: &Self::Step) -> Self::Tensor;
    /// `x * rsqrt(mean(x^2) + eps) * w`, row by row.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Weight, eps: f32) -> Self::Tensor;
    /// RMSNorm over each `head_dim` slice of each row, in place (Qwen3's
    /// q/k norm).
    fn rms_norm_heads(&self, x: &mut Self::Tensor, w: &Self::Weight, head_dim: usize, eps: f32);
    /// `x @ w^T (+ bias)`.
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
    ) -> Self::Tensor;
    /// Splits columns into consecutive pieces of the given widths.
    fn split_cols(&self, x: &Self::Tensor, widths: &[usize]) -> Vec<Self::Tensor>;
    /// Rotary embedding of each `head_dim` slice, in place, at the step's
    /// positions. `table` is `[positions, head_dim]`: cosines in the first
    /// half of a row, sines in the second. Pair `i` is dimensions
    /// `(i, i + head_dim / 2)` (rotate-half), or `(2i, 2i + 1)` when
    /// `interleaved` (llama.cpp's layout for `llama` GGUF files).
    fn rope(
        &self,
        x: &mut Self::Tensor,
        head_dim: usize,
        table: &Self::Weight,
        step: &Self::Step,
        interleaved: bool,
    );
    /// `silu(gate) * up` where `gate_up = [gate | up]`.
    fn silu_mul(&self, gate_up: &Self::Tensor) -> Self::Tensor;
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// Writes each token's K and V rows to its slot.
    fn write_kv(
        &self,
        layer: &mut Self::KvLayer,
        k: &Self::Tensor,
        v: &Self::Tensor,
        step: &Self::Step,
    );
    /// Causal attention of each query token over its sequence's cached
    /// keys, read through the block tables.
    fn paged_attention(
        &self,
        q: &Self::Tensor,
        layer: &Self::KvLayer,
        shape: AttentionShape,
        step: &Self::Step,
    ) -> Self::Tensor;
    /// Copies the K and V of `slots` (K first, then V, each slot's row
    /// contiguous) into `out`, for KV connectors.
    fn read_kv_slots(&self, layer: &Self::KvLayer, slots: std::ops::Range<usize>, out: &mut [u8]);
    /// The inverse of [`Self::read_kv_slots`].
    fn write_kv_slots(&self, layer: &mut Self::KvLayer, slots: std::ops::Range<usize>, data: &[u8]);
    fn select_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Self::Tensor;
    fn to_host(&self, x: &Self::Tensor) -> Result<Vec<f32>>;

    /// The index of each row's largest value, the first of equal ones
    /// (NaN never wins, but a NaN first value gives 0, as the sampler's
    /// scan does), computed where the tensor lives, so that a greedy step
    /// copies token ids rather than logits. `None`: no such operation here
    /// (the executor reads the logits and the sampler takes the argmax).
    /// Like [`Self::to_host`], it ends a step.
    fn argmax_rows(&self, _x: &Self::Tensor) -> Option<Result<Vec<u32>>> {
        None
    }

    /// For a step of `num_tokens` tokens, each the one decode token of its
    /// sequence: the token count to pad it to so that the backend can
    /// replay a captured graph of the forward pass, or `None` to run it
    /// op by op (the CPU backend always does).
    fn graph_bucket(&self, _num_tokens: usize) -> Option<usize> {
        None
    }

    /// Runs one step's forward pass: `forward` issues its operations and
    /// returns the logits. A backend may capture it as a graph for a padded
    /// step ([`StepMetadata::graph`]) and replay that graph for later steps
    /// of the same bucket instead of calling `forward`.
    fn run_forward(
        &self,
        _step: &Self::Step,
        forward: &mut dyn FnMut() -> Self::Tensor,
    ) -> Self::Tensor {
        forward()
    }
}
