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
use crate::quant::QuantType;
use crate::rope::rope_table;
use crate::weights::{DType, HostData, HostTensor, QuantData, WeightSource};

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

/// Stacks tensors along rows: dense parts in the first part's dtype, or,
/// when any part is a GGUF matrix, as a stack of row blocks that keeps
/// each part's storage type.
fn concat_rows(name: &str, parts: Vec<HostTensor>) -> HostTensor {
    let cols = parts[0].cols();
    let rows: usize = parts.iter().map(HostTensor::rows).sum();
    let shape = if parts[0].shape.len() == 1 { vec![rows * cols] } else { vec![rows, cols] };
    let data = match parts[0].data.dtype() {
        Some(dtype) if parts.iter().all(|p| p.data.dtype().is_some()) => {
            let mut f32s = Vec::new();
            let mut bits = Vec::new();
            for part in parts {
                match part.data.convert(dtype) {
                    HostData::F32(v) => f32s.extend(v),
                    HostData::F16(v) | HostData::BF16(v) => bits.extend(v),
                    HostData::Quant(_) => unreachable!("invariant: dense parts convert densely"),
                }
            }
            match dtype {
                DType::F32 => HostData::F32(f32s),
                DType::F16 => HostData::F16(bits),
                DType::BF16 => HostData::BF16(bits),
            }
        }
        _ => HostData::Quant(QuantData::concat(
            parts
                .into_iter()
                .map(|p| {
                    let rows = p.rows();
                    QuantData::from_dense_or_quant(p.data, rows)
                })
                .collect(),
        )),
    };
    HostTensor { name: name.to_owned(), shape, data }
}

struct Loader<'a, B: Backend> {
    backend: &'a B,
    source: &'a dyn WeightSource,
    dtype: Option<DType>,
    quantization: Option<QuantType>,
    progress: &'a mut dyn FnMut(u64),
    bytes: u64,
}

impl<B: Backend> Loader<'_, B> {
    fn host(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let mut t = self.source.load(name, shape)?;
        (self.progress)(t.data.byte_len() as u64);
        if let (Some(dtype), 2) = (self.dtype, shape.len()) {
            t.data = t.data.convert(dtype);
        }
        Ok(t)
    }

    fn upload(&mut self, t: HostTensor) -> Result<B::Weight> {
        self.bytes += if t.shape.len() == 1 { t.data.len() * 4 } else { t.data.byte_len() } as u64;
        self.backend.upload(t)
    }

    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.host(name, shape)?;
        self.upload(t)
    }

    /// A decoder layer's linear weight or bias, fused from `parts` (one
    /// part: as it is); matrices are quantized first when `--quantization`
    /// asks for it.
    fn linear(&mut self, name: &str, parts: &[(String, Vec<usize>)]) -> Result<B::Weight> {
        let hosts =
            parts.iter().map(|(n, s)| self.host(n, s)).collect::<Result<Vec<HostTensor>>>()?;
        let mut t = if hosts.len() == 1 {
            hosts.into_iter().next().expect("invariant: one part")
        } else {
            concat_rows(name, hosts)
        };
        if let (Some(q), Some(_), 2) = (self.quantization, t.data.dtype(), t.shape.len()) {
            let (rows, cols) = (t.rows(), t.cols());
            if let Some(target) = quantization_target(q, cols) {
                t.data = HostData::Quant(QuantData::quantize(target, &t.data.to_f32(), rows, cols));
            }
        }
        self.upload(t)
    }
}

/// The block type `--quantization q` gives a matrix of `cols` columns:
/// `q` itself when the columns fill its blocks, else llama.cpp's fallback
/// for K types (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, 32-element blocks),
/// else none (the matrix keeps its dtype).
pub fn quantization_target(q: QuantType, cols: usize) -> Option<QuantType> {
    let fallback = match q {
        QuantType::Q4K => QuantType::Q5_0,
        QuantType::Q5K => QuantType::Q5_1,
        QuantType::Q6K => QuantType::Q8_0,
        other => other,
    };
    [q, fallback].into_iter().find(|t| t.row_bytes(cols).is_some())
}

impl<B: Backend> DecoderModel<B> {
    /// Loads every tensor the config calls for, checking shapes. `dtype`
    /// converts matrices (e.g. a bf16 checkpoint run in f32, or a GGUF
    /// file dequantized); `quantization` quantizes the decoder layers'
    /// linear weights after that; `progress` receives the bytes of each
    /// tensor read.
    pub fn load(
        backend: &B,
        config: &ModelConfig,
        source: &dyn WeightSource,
        dtype: Option<DType>,
        quantization: Option<QuantType>,
        max_model_len: usize,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Self> {
        let c = config;
        let (h, v, i) = (c.hidden_size, c.vocab_size, c.intermediate_size);
        let (qw, kvw) = (c.q_width(), c.kv_width());
        let mut ld = Loader { backend, source, dtype, quantization, progress, bytes: 0 };
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
            let qkv = ld.linear(
                &format!("{p}.self_attn.qkv_proj.weight"),
                &[
                    attn("q_proj.weight", qw, h),
                    attn("k_proj.weight", kvw, h),
                    attn("v_proj.weight", kvw, h),
                ],
            )?;
            let qkv_bias = if c.attention_bias {
                Some(ld.linear(
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
                o_proj: ld.linear(
                    &format!("{p}.self_attn.o_proj.weight"),
                    &[attn("o_proj.weight", h, qw)],
                )?,
                post_norm: ld.weight(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up: ld.linear(
                    &format!("{p}.mlp.gate_up_proj.weight"),
                    &[
                        (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                        (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                    ],
                )?,
                down: ld.linear(
                    &format!("{p}.mlp.down_proj.weight"),
                    &[(format!("{p}.mlp.down_proj.weight"), vec![h, i])],
                )?,
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
            backend.rope(&mut q, c.head_dim, &self.rope, step, c.rope_interleaved);
            backend.rope(&mut k, c.head_dim, &self.rope, step, c.rope_interleaved);
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
