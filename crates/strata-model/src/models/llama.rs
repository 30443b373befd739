//! The Llama-family decoder (Llama 2/3, Mistral without sliding window,
//! Qwen2, Qwen3), written once against [`Backend`].
//!
//! Per layer, top to bottom:
//! `x += o_proj(attn(rope(norm_qk(split(qkv_proj(rms(x)))))))`, then
//! `x += down_proj(silu(gate) * up)` of `gate_up_proj(rms(x))`.
//! q/k/v and gate/up are fused into one matrix each at load time, so a
//! decode step streams each layer's weights in four products.

use crate::backend::{AttentionShape, Backend};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::rope::rope_table;
use crate::weights::{DType, HostData, HostTensor, WeightSource};

struct Layer<B: Backend> {
    input_norm: B::Weight,
    qkv: B::Weight,
    qkv_bias: Option<B::Weight>,
    q_norm: Option<B::Weight>,
    k_norm: Option<B::Weight>,
    o_proj: B::Weight,
    post_norm: B::Weight,
    gate_up: B::Weight,
    down: B::Weight,
}

pub struct DecoderModel<B: Backend> {
    config: ModelConfig,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<B::Weight>,
    rope: B::Weight,
    weight_bytes: u64,
}

impl<B: Backend> std::fmt::Debug for DecoderModel<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderModel")
            .field("architecture", &self.config.architecture)
            .field("layers", &self.layers.len())
            .field("weight_bytes", &self.weight_bytes)
            .finish()
    }
}

/// Stacks tensors along rows (all in the first part's dtype).
fn concat_rows(name: &str, parts: Vec<HostTensor>) -> HostTensor {
    let cols = parts[0].cols();
    let rows: usize = parts.iter().map(HostTensor::rows).sum();
    let shape = if parts[0].shape.len() == 1 { vec![rows * cols] } else { vec![rows, cols] };
    let dtype = parts[0].data.dtype();
    let mut f32s = Vec::new();
    let mut bits = Vec::new();
    for part in parts {
        match part.data.convert(dtype) {
            HostData::F32(v) => f32s.extend(v),
            HostData::F16(v) | HostData::BF16(v) => bits.extend(v),
        }
    }
    let data = match dtype {
        DType::F32 => HostData::F32(f32s),
        DType::F16 => HostData::F16(bits),
        DType::BF16 => HostData::BF16(bits),
    };
    HostTensor { name: name.to_owned(), shape, data }
}

struct Loader<'a, B: Backend> {
    backend: &'a B,
    source: &'a dyn WeightSource,
    dtype: Option<DType>,
    progress: &'a mut dyn FnMut(u64),
    bytes: u64,
}

impl<B: Backend> Loader<'_, B> {
    fn host(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let mut t = self.source.load(name, shape)?;
        let stored = t.data.len() as u64 * t.data.dtype().size_in_bytes() as u64;
        (self.progress)(stored);
        if let (Some(dtype), 2) = (self.dtype, shape.len()) {
            t.data = t.data.convert(dtype);
        }
        Ok(t)
    }

    fn upload(&mut self, t: HostTensor) -> Result<B::Weight> {
        let size = if t.shape.len() == 1 { 4 } else { t.data.dtype().size_in_bytes() };
        self.bytes += (t.data.len() * size) as u64;
        self.backend.upload(t)
    }

    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.host(name, shape)?;
        self.upload(t)
    }

    fn fused(&mut self, name: &str, parts: &[(String, Vec<usize>)]) -> Result<B::Weight> {
        let hosts =
            parts.iter().map(|(n, s)| self.host(n, s)).collect::<Result<Vec<HostTensor>>>()?;
        let fused = concat_rows(name, hosts);
        self.upload(fused)
    }
}

impl<B: Backend> DecoderModel<B> {
    /// Loads every tensor the config calls for, checking shapes. `dtype`
    /// converts matrices (e.g. a bf16 checkpoint run in f32); `progress`
    /// receives the bytes of each tensor read.
    pub fn load(
        backend: &B,
        config: &ModelConfig,
        source: &dyn WeightSource,
        dtype: Option<DType>,
        max_model_len: usize,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Self> {
        let c = config;
        let (h, v, i) = (c.hidden_size, c.vocab_size, c.intermediate_size);
        let (qw, kvw) = (c.q_width(), c.kv_width());
        let mut ld = Loader { backend, source, dtype, progress, bytes: 0 };
        let embed = ld.weight("model.embed_tokens.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let attn = |n: &str, rows: usize, cols: usize| {
                (
                    format!("{p}.self_attn.{n}"),
                    if cols == 0 { vec![rows] } else { vec![rows, cols] },
                )
            };
            let qkv = ld.fused(
                &format!("{p}.self_attn.qkv_proj.weight"),
                &[
                    attn("q_proj.weight", qw, h),
                    attn("k_proj.weight", kvw, h),
                    attn("v_proj.weight", kvw, h),
                ],
            )?;
            let qkv_bias = if c.attention_bias {
                Some(ld.fused(
                    &format!("{p}.self_attn.qkv_proj.bias"),
                    &[
                        attn("q_proj.bias", qw, 0),
                        attn("k_proj.bias", kvw, 0),
                        attn("v_proj.bias", kvw, 0),
                    ],
                )?)
            } else {
                None
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(ld.weight(&format!("{p}.self_attn.q_norm.weight"), &[c.head_dim])?),
                    Some(ld.weight(&format!("{p}.self_attn.k_norm.weight"), &[c.head_dim])?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                input_norm: ld.weight(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv,
                qkv_bias,
                q_norm,
                k_norm,
                o_proj: ld.weight(&format!("{p}.self_attn.o_proj.weight"), &[h, qw])?,
                post_norm: ld.weight(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up: ld.fused(
                    &format!("{p}.mlp.gate_up_proj.weight"),
                    &[
                        (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                        (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                    ],
                )?,
                down: ld.weight(&format!("{p}.mlp.down_proj.weight"), &[h, i])?,
            });
        }
        let norm = ld.weight("model.norm.weight", &[h])?;
        // Some tied checkpoints still ship lm_head.weight; the config decides.
        let lm_head = if c.tie_word_embeddings {
            None
        } else if source.contains("lm_head.weight") {
            Some(ld.weight("lm_head.weight", &[v, h])?)
        } else {
            return Err(ModelError::MissingTensor {
                name: "lm_head.weight".into(),
                location: "the checkpoint (config says tie_word_embeddings = false)".into(),
            });
        };
        let table = rope_table(c, max_model_len);
        let rope = backend.upload(HostTensor {
            name: "rope".into(),
            shape: vec![max_model_len, c.head_dim],
            data: HostData::F32(table),
        })?;
        Ok(Self { config: c.clone(), embed, layers, norm, lm_head, rope, weight_bytes: ld.bytes })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes of weights held by the backend.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Runs the step's tokens through the decoder, writing their K/V into
    /// `kv`, and returns the logits `[logit_rows.len(), vocab]` of the
    /// requested token rows (for sampling only the last token of each
    /// sequence needs them).
    pub fn forward(
        &self,
        backend: &B,
        kv: &mut [B::KvLayer],
        step: &B::Step,
        logit_rows: &[usize],
    ) -> B::Tensor {
        let c = &self.config;
        let eps = c.rms_norm_eps as f32;
        let shape = AttentionShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        };
        let mut x = backend.embedding(&self.embed, step);
        for (layer, cache) in self.layers.iter().zip(kv.iter_mut()) {
            let normed = backend.rms_norm(&x, &layer.input_norm, eps);
            let qkv = backend.linear(&normed, &layer.qkv, layer.qkv_bias.as_ref());
            let mut parts = backend.split_cols(&qkv, &[c.q_width(), c.kv_width(), c.kv_width()]);
            let v = parts.pop().expect("invariant: three parts");
            let mut k = parts.pop().expect("invariant: three parts");
            let mut q = parts.pop().expect("invariant: three parts");
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                backend.rms_norm_heads(&mut q, qn, c.head_dim, eps);
                backend.rms_norm_heads(&mut k, kn, c.head_dim, eps);
            }
            backend.rope(&mut q, c.head_dim, &self.rope, step);
            backend.rope(&mut k, c.head_dim, &self.rope, step);
            backend.write_kv(cache, &k, &v, step);
            let attn = backend.paged_attention(&q, cache, shape, step);
            let o = backend.linear(&attn, &layer.o_proj, None);
            backend.add_assign(&mut x, &o);

            let normed = backend.rms_norm(&x, &layer.post_norm, eps);
            let gate_up = backend.linear(&normed, &layer.gate_up, None);
            let act = backend.silu_mul(&gate_up);
            let down = backend.linear(&act, &layer.down, None);
            backend.add_assign(&mut x, &down);
        }
        let last = backend.select_rows(&x, logit_rows);
        let normed = backend.rms_norm(&last, &self.norm, eps);
        backend.linear(&normed, self.lm_head.as_ref().unwrap_or(&self.embed), None)
    }
}
