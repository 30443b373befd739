//! A GGUF file as a [`WeightSource`], and its metadata as a
//! [`ModelConfig`].
//!
//! Tensors are looked up by their Hugging Face names and found under
//! llama.cpp's (`model.layers.3.self_attn.q_proj.weight` is
//! `blk.3.attn_q.weight`), so the decoder loads a GGUF file through the
//! same code as a safetensors checkpoint. Quantized matrices stay in the
//! memory map ([`Bytes::Mapped`]); 16/32-bit tensors are copied out like
//! safetensors ones, and their pages released.
//!
//! Two layout facts of llama.cpp's converter matter here:
//! - for the `llama` architecture it permutes the rows of `attn_q` and
//!   `attn_k` (and their biases) so that rotary pairs are adjacent
//!   dimensions; rather than permuting them back, the config says
//!   `rope_interleaved` and the rotary embedding follows llama.cpp's
//!   layout. Attention scores are the same either way (q and k are
//!   permuted alike), and the quantized rows are used as stored.
//! - Llama 3's frequency-dependent RoPE scaling is stored as per-dimension
//!   divisors in the `rope_freqs.weight` tensor, not as parameters.

use memmap2::UncheckedAdvice;

use super::{decode_row, Bytes, HostData, HostTensor, QuantData, WeightSource};
use crate::config::{Architecture, ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufValue, TensorInfo, TensorType};

/// The llama.cpp name of a Hugging Face tensor name, for the tensors the
/// decoder loads.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (stem, suffix) = name.rsplit_once('.')?;
    let mapped = match stem {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}.{suffix}"))
}

pub struct GgufWeights {
    file: GgufFile,
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.file.fmt(f)
    }
}

impl GgufWeights {
    pub fn new(file: GgufFile) -> Self {
        Self { file }
    }

    fn info(&self, hf: &str) -> Option<(String, &TensorInfo)> {
        let name = gguf_name(hf)?;
        let info = self.file.tensors.get(&name)?;
        Some((name, info))
    }
}

/// Copies dense little-endian values out of the map.
fn dense(ty: TensorType, bytes: &[u8]) -> HostData {
    let words2 = || bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    match ty {
        TensorType::F32 => HostData::F32(
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        ),
        TensorType::F16 => HostData::F16(words2()),
        TensorType::BF16 => HostData::BF16(words2()),
        TensorType::Quant(_) => unreachable!("invariant: only called for dense types"),
    }
}

impl WeightSource for GgufWeights {
    fn contains(&self, name: &str) -> bool {
        self.info(name).is_some()
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let path = self.file.path();
        let (gname, info) = self.info(name).ok_or_else(|| ModelError::MissingTensor {
            name: gguf_name(name).unwrap_or_else(|| name.to_owned()),
            location: path.display().to_string(),
        })?;
        if info.shape() != shape {
            return Err(ModelError::TensorShape {
                path: path.to_path_buf(),
                name: gname,
                expected: shape.to_vec(),
                found: info.shape(),
            });
        }
        let bytes = self.file.tensor_bytes(info);
        let data = match info.ty {
            TensorType::Quant(_) if shape.len() == 2 => HostData::Quant(QuantData::single(
                info.ty,
                shape[0],
                shape[1],
                Bytes::Mapped { map: self.file.map().clone(), start: info.offset, len: info.len },
            )),
            // A quantized vector (no converter writes one): widened.
            TensorType::Quant(_) => {
                let mut values = vec![0.0f32; info.num_elements()];
                decode_row(info.ty, bytes, &mut values);
                HostData::F32(values)
            }
            ty => {
                let data = dense(ty, bytes);
                // Copied out: release the mapped pages, as for safetensors.
                // SAFETY: a read-only file map; a later read faults the
                // same contents back in, and no slice of the range is
                // alive past this point.
                let _ = unsafe {
                    self.file.map().unchecked_advise_range(
                        UncheckedAdvice::DontNeed,
                        info.offset,
                        info.len,
                    )
                };
                data
            }
        };
        Ok(HostTensor { name: name.to_owned(), shape: shape.to_vec(), data })
    }

    fn total_bytes(&self) -> u64 {
        self.file.data_bytes()
    }
}

struct Meta<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl Meta<'_> {
    fn err(&self, message: String) -> ModelError {
        ModelError::Gguf { path: self.file.path().to_path_buf(), message }
    }

    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.file.get(&format!("{}.{key}", self.arch))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().filter(|&n| n > 0).map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(format!("`{}.{key}` must be a positive integer, got {v:?}", self.arch))
            }),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("missing metadata `{}.{key}`", self.arch)))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{}.{key}` must be a number", self.arch))),
        }
    }

    fn token_id(&self, key: &str) -> Option<u32> {
        self.file.get(key).and_then(GgufValue::as_u64).and_then(|v| u32::try_from(v).ok())
    }
}

/// The decoder config a GGUF file describes (llama.cpp's metadata keys).
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let err = |message: String| ModelError::Gguf { path: file.path().to_path_buf(), message };
    let arch = file
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| err("missing metadata `general.architecture`".into()))?;
    let architecture = match arch {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        other => {
            return Err(err(format!(
                "architecture `{other}` is not supported (llama, qwen2, qwen3)"
            )))
        }
    };
    let m = Meta { file, arch };
    let hidden_size = m.usize("embedding_length")?;
    let num_heads = m.usize("attention.head_count")?;
    let num_kv_heads = m.opt_usize("attention.head_count_kv")?.unwrap_or(num_heads);
    if num_heads % num_kv_heads != 0 {
        return Err(err(format!(
            "{num_heads} attention heads are not a multiple of {num_kv_heads} KV heads"
        )));
    }
    let head_dim = match m.opt_usize("attention.key_length")? {
        Some(d) => d,
        None if hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => return Err(err("embedding_length is not a multiple of head_count".into())),
    };
    if m.opt_usize("attention.value_length")?.is_some_and(|v| v != head_dim) {
        return Err(err("value_length != key_length is not supported".into()));
    }
    if m.opt_usize("rope.dimension_count")?.is_some_and(|d| d != head_dim) {
        return Err(err("partial rotary embeddings (rope.dimension_count < head dim) are not \
                        supported"
            .into()));
    }
    if head_dim % 2 != 0 {
        return Err(err(format!("head dim must be even for rotary embeddings, got {head_dim}")));
    }
    let rope_scaling = match file
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(GgufValue::as_str)
        .unwrap_or("none")
    {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: m
                .opt_f64("rope.scaling.factor")?
                .ok_or_else(|| err("linear rope scaling needs rope.scaling.factor".into()))?,
        },
        other => {
            return Err(err(format!("rope scaling `{other}` is not supported (none, linear)")))
        }
    };
    let rope_scaling = match file.tensors.get("rope_freqs.weight") {
        None => rope_scaling,
        Some(info) if info.ty == TensorType::F32 && info.num_elements() == head_dim / 2 => {
            if rope_scaling != RopeScaling::None {
                return Err(err("rope_freqs.weight together with rope.scaling.type".into()));
            }
            let mut factors = vec![0.0f32; head_dim / 2];
            decode_row(TensorType::F32, file.tensor_bytes(info), &mut factors);
            RopeScaling::Factors { factors }
        }
        Some(info) => {
            return Err(err(format!(
                "rope_freqs.weight must be {} F32 values, is {} {}",
                head_dim / 2,
                info.num_elements(),
                info.ty.name()
            )))
        }
    };
    let vocab_size = match m.opt_usize("vocab_size")? {
        Some(v) => v,
        None => file
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map(<[GgufValue]>::len)
            .ok_or_else(|| err("neither vocab_size nor tokenizer.ggml.tokens".into()))?,
    };
    let eos_token_ids: Vec<u32> = {
        let mut ids: Vec<u32> = [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ]
        .iter()
        .filter_map(|k| m.token_id(k))
        .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    Ok(ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: m.usize("feed_forward_length")?,
        num_layers: m.usize("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: m.opt_f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: m.opt_f64("rope.freq_base")?.unwrap_or(10_000.0),
        rope_scaling,
        rope_interleaved: architecture == Architecture::Llama,
        max_position_embeddings: m.usize("context_length")?,
        tie_word_embeddings: !file.tensors.contains_key("output.weight"),
        attention_bias: file.tensors.contains_key("blk.0.attn_q.bias"),
        qk_norm: file.tensors.contains_key("blk.0.attn_q_norm.weight"),
        dtype: None,
        bos_token_id: m.token_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_names_map_to_llama_cpp_names() {
        for (hf, gg) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"),
            ("model.layers.11.self_attn.k_norm.weight", "blk.11.attn_k_norm.weight"),
            ("model.layers.2.mlp.down_proj.weight", "blk.2.ffn_down.weight"),
            ("model.layers.2.post_attention_layernorm.weight", "blk.2.ffn_norm.weight"),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(gg), "{hf}");
        }
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_name("vision.patch_embed"), None);
    }
}
