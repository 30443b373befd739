//! `config.json` of a Hugging Face checkpoint, reduced to what the
//! Llama-family decoder needs.
//!
//! Parsing is explicit rather than a derived struct so that each problem is
//! reported with the file and the field: a missing required field, a value
//! of the wrong type, an unsupported activation or rope scheme. Both the
//! transformers 4 layout (`rope_theta` + `rope_scaling`) and the
//! transformers 5 layout (`rope_parameters`) are accepted.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};
use crate::weights::DType;

/// The model families strata implements, by `architectures` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
}

impl Architecture {
    pub const SUPPORTED: [(&'static str, Architecture); 4] = [
        ("LlamaForCausalLM", Architecture::Llama),
        ("MistralForCausalLM", Architecture::Llama),
        ("Qwen2ForCausalLM", Architecture::Qwen2),
        ("Qwen3ForCausalLM", Architecture::Qwen3),
    ];

    fn from_names(path: &Path, names: &[String]) -> Result<Self> {
        names
            .iter()
            .find_map(|n| Self::SUPPORTED.iter().find(|(s, _)| s == n).map(|(_, a)| *a))
            .ok_or_else(|| ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: names.to_vec(),
                supported: Self::SUPPORTED.iter().map(|(s, _)| *s).collect(),
            })
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// How rotary frequencies are derived.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
    /// Each inverse frequency divided by its own factor: how llama.cpp's
    /// converter stores Llama 3 scaling in a GGUF file (`rope_freqs.weight`).
    Factors {
        factors: Vec<f32>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Rotary pairs are adjacent dimensions `(2i, 2i + 1)` instead of the
    /// two halves `(i, i + head_dim / 2)`: the layout of `llama` GGUF files,
    /// whose converter permutes the q/k rows into it.
    pub rope_interleaved: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2, some Llamas).
    pub attention_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The dtype the checkpoint declares (`torch_dtype` / `dtype`), if any.
    pub dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

struct Fields<'a> {
    path: PathBuf,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, message: String) -> ModelError {
        ModelError::config(&self.path, message)
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(format!("`{key}` must be a positive integer, got {v}"))),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.err(format!("missing required field `{key}`")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, got {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| self.err(format!("`{key}` must be a boolean")))
            }
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_str().map(Some).ok_or_else(|| self.err(format!("`{key}` must be a string")))
            }
        }
    }
}

/// Token ids given as one integer or a list (`eos_token_id` is either).
pub(crate) fn token_id_list(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => {
            items.iter().filter_map(|v| v.as_u64()).map(|n| n as u32).collect()
        }
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads and validates `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
        Self::from_json(path, &value)
    }

    pub fn from_json(path: &Path, value: &Value) -> Result<Self> {
        let map =
            value.as_object().ok_or_else(|| ModelError::config(path, "expected a JSON object"))?;
        let f = Fields { path: path.to_path_buf(), map };
        let names: Vec<String> = match map.get("architectures") {
            Some(Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            }
            _ => return Err(f.err("missing required field `architectures`".into())),
        };
        let architecture = Architecture::from_names(path, &names)?;

        if let Some(act) = f.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(f.err(format!("hidden_act `{act}` is not supported (only silu)")));
            }
        }
        if f.opt_bool("mlp_bias")? == Some(true) {
            return Err(f.err("mlp_bias = true is not supported".into()));
        }
        if f.opt_bool("use_sliding_window")? == Some(true) {
            return Err(f.err("sliding-window attention is not supported".into()));
        }

        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(f.err(format!(
                "num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(f.err("hidden_size is not a multiple of num_attention_heads".into()))
            }
        };
        if head_dim % 2 != 0 {
            return Err(
                f.err(format!("head_dim must be even for rotary embeddings, got {head_dim}"))
            );
        }
        let (rope_theta, rope_scaling) = parse_rope(&f)?;
        let dtype = match f.opt_str("torch_dtype")?.or(f.opt_str("dtype")?) {
            None => None,
            Some(s) => Some(DType::from_torch_name(s).ok_or_else(|| {
                f.err(format!("dtype `{s}` is not supported (float32, float16, bfloat16)"))
            })?),
        };
        Ok(Self {
            architecture,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_layers: f.usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            rope_interleaved: false,
            max_position_embeddings: f.usize("max_position_embeddings")?,
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: match architecture {
                Architecture::Qwen2 => true,
                _ => f.opt_bool("attention_bias")?.unwrap_or(false),
            },
            qk_norm: architecture == Architecture::Qwen3,
            dtype,
            bos_token_id: token_id_list(map.get("bos_token_id")).first().copied(),
            eos_token_ids: token_id_list(map.get("eos_token_id")),
        })
    }

    /// The config as `config.json` would hold it (used to write the built-in
    /// model to disk so it loads through the same path as any checkpoint).
    pub fn to_json(&self) -> Value {
        let mut rope = serde_json::json!({ "rope_type": "default", "rope_theta": self.rope_theta });
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                rope = serde_json::json!({"rope_type": "linear", "factor": factor, "rope_theta": self.rope_theta});
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                rope = serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": *original_max_position as u64,
                    "rope_theta": self.rope_theta,
                });
            }
            // Not a transformers rope type: only GGUF files have these, and
            // the JSON serves to fingerprint their KV.
            RopeScaling::Factors { factors } => {
                rope = serde_json::json!({"rope_type": "strata_factors", "factors": factors,
                    "rope_theta": self.rope_theta});
            }
        }
        let mut config = serde_json::json!({
            "architectures": [self.architecture.hf_name()],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
        });
        if let Some(dtype) = self.dtype {
            config["torch_dtype"] = dtype.torch_name().into();
        }
        if self.rope_interleaved {
            config["strata_rope_interleaved"] = true.into();
        }
        config
    }

    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn parse_rope(f: &Fields<'_>) -> Result<(f64, RopeScaling)> {
    // transformers 5 keeps theta and scaling together in `rope_parameters`;
    // transformers 4 has `rope_theta` and an optional `rope_scaling`.
    let params = match f.map.get("rope_parameters").or_else(|| f.map.get("rope_scaling")) {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return Err(f.err("`rope_parameters` / `rope_scaling` must be an object".into())),
    };
    let theta_in_params = params.and_then(|m| m.get("rope_theta")).and_then(Value::as_f64);
    let theta = theta_in_params.or(f.opt_f64("rope_theta")?).unwrap_or(10_000.0);
    let Some(p) = params else { return Ok((theta, RopeScaling::None)) };
    let sub = Fields { path: f.path.clone(), map: p };
    let kind = sub.opt_str("rope_type")?.or(sub.opt_str("type")?).unwrap_or("default");
    let factor =
        || sub.opt_f64("factor")?.ok_or_else(|| sub.err("rope scaling needs `factor`".into()));
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: sub.opt_f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: sub.opt_f64("high_freq_factor")?.unwrap_or(4.0),
            original_max_position: sub.opt_usize("original_max_position_embeddings")?.ok_or_else(
                || sub.err("llama3 rope scaling needs `original_max_position_embeddings`".into()),
            )? as f64,
        },
        other => {
            return Err(
                sub.err(format!("rope type `{other}` is not supported (default, linear, llama3)"))
            )
        }
    };
    if let Some(p) = sub.opt_f64("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(sub.err("partial_rotary_factor != 1 is not supported".into()));
        }
    }
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 128, "eos_token_id": [5, 6]
        })
    }

    fn parse(v: &Value) -> Result<ModelConfig> {
        ModelConfig::from_json(Path::new("dir/config.json"), v)
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let c = parse(&base()).expect("valid");
        assert_eq!((c.num_kv_heads, c.head_dim), (4, 8));
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.eos_token_ids, vec![5, 6]);
        assert!(!c.attention_bias && !c.qk_norm && !c.tie_word_embeddings);
    }

    #[test]
    fn round_trips_through_to_json() {
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
            "original_max_position_embeddings": 64});
        let c = parse(&v).expect("valid");
        assert_eq!(parse(&c.to_json()).expect("valid"), c);
    }

    #[test]
    fn problems_name_the_file_and_field() {
        let mut v = base();
        v.as_object_mut().expect("object").remove("hidden_size");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("dir/config.json") && e.contains("hidden_size"), "{e}");

        let mut v = base();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("GPT2LMHeadModel") && e.contains("Qwen3ForCausalLM"), "{e}");

        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(parse(&v).unwrap_err().to_string().contains("num_key_value_heads"));

        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        assert!(parse(&v).unwrap_err().to_string().contains("yarn"));

        let mut v = base();
        v["hidden_size"] = json!("big");
        assert!(parse(&v).unwrap_err().to_string().contains("positive integer"));
    }
}
