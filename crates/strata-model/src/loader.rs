//! From a model reference (the built-in model, a checkpoint directory, or
//! dummy weights for a config) to a ready [`ModelExecutor`], and back: any
//! model can be written out as a checkpoint directory that loads through
//! the same path (`config.json` + `model.safetensors`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::builtin;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::executor::{KvPoolConfig, ModelExecutor};
use crate::gguf::GgufFile;
use crate::models::DecoderModel;
use crate::quant::QuantType;
use crate::weights::{
    config_from_gguf, DType, DummyWeights, GgufWeights, HostData, SafetensorsWeights, WeightSource,
};

/// Whether `path` names a GGUF file (by its extension, as llama.cpp and
/// vLLM decide).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// The built-in default model.
    Builtin,
    /// A Hugging Face checkpoint directory.
    Dir(PathBuf),
    /// A GGUF file (llama.cpp's format).
    Gguf(PathBuf),
    /// Deterministic random weights for `config` (vLLM's `load_format=dummy`).
    Dummy { config: Box<ModelConfig>, seed: u64, dtype: DType },
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Convert weight matrices to this dtype (`None`: keep the stored one).
    pub dtype: Option<DType>,
    /// Quantize the decoder layers' linear weights at load
    /// (`--quantization`), after any `dtype` conversion.
    pub quantization: Option<QuantType>,
    pub kv: KvPoolConfig,
    /// Cap on sequence length (`None`: the config's max_position_embeddings).
    pub max_model_len: Option<usize>,
    /// Seeds sampling of requests that carry no seed of their own.
    pub sampler_seed: u64,
}

impl ModelSource {
    /// `builtin`, a `.gguf` file, or a directory path.
    pub fn parse(spec: &str) -> Self {
        if spec == "builtin" {
            Self::Builtin
        } else if is_gguf_path(Path::new(spec)) {
            Self::Gguf(PathBuf::from(spec))
        } else {
            Self::Dir(PathBuf::from(spec))
        }
    }

    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            Self::Builtin => Ok(builtin::config()),
            Self::Dir(dir) => ModelConfig::from_file(&dir.join("config.json")),
            Self::Gguf(path) => config_from_gguf(&GgufFile::open(path)?),
            Self::Dummy { config, .. } => Ok((**config).clone()),
        }
    }

    fn weights(&self) -> Result<Box<dyn WeightSource>> {
        Ok(match self {
            Self::Builtin => Box::new(builtin::weights()),
            Self::Dir(dir) => Box::new(SafetensorsWeights::open(dir)?),
            Self::Gguf(path) => Box::new(GgufWeights::new(GgufFile::open(path)?)),
            Self::Dummy { config, seed, dtype } => {
                let bytes = tensor_manifest(config)
                    .iter()
                    .map(|(_, s)| s.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64)
                    .sum();
                Box::new(DummyWeights::new(*seed, *dtype, bytes))
            }
        })
    }
}

/// Loads a model onto `backend`. `progress(done, total)` is called with
/// bytes of weights read so far.
pub fn load_executor<B: Backend>(
    backend: B,
    source: &ModelSource,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ModelExecutor<B>> {
    load_executor_with_kv(backend, source, opts, progress, &mut |_| Ok(opts.kv))
}

/// [`load_executor`], with the KV pool's configuration decided once the
/// weights are on the backend (`kv` sees it), as a GPU's pool is sized
/// from the memory the weights left free.
pub fn load_executor_with_kv<B: Backend>(
    backend: B,
    source: &ModelSource,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(u64, u64),
    kv: &mut dyn FnMut(&B) -> Result<KvPoolConfig>,
) -> Result<ModelExecutor<B>> {
    let config = source.config()?;
    let weights = source.weights()?;
    let max_model_len = opts
        .max_model_len
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    let total = weights.total_bytes();
    let mut done = 0u64;
    let mut on_tensor = |bytes: u64| {
        done += bytes;
        progress(done, total);
    };
    let model = DecoderModel::load(
        &backend,
        &config,
        weights.as_ref(),
        opts.dtype,
        opts.quantization,
        max_model_len,
        &mut on_tensor,
    )?;
    let pool = kv(&backend)?;
    let mut executor = ModelExecutor::new(backend, model, pool, max_model_len, opts.sampler_seed)?;
    executor.set_kv_fingerprint(source.kv_fingerprint(opts)?);
    Ok(executor)
}

/// FNV-1a, 64-bit: stable across runs and builds (unlike std's hasher),
/// which a fingerprint stored on disk needs.
#[derive(Debug)]
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl ModelSource {
    /// Identifies the KV this model computes, for caches that outlive the
    /// process (the disk tier): the config, the KV layout, the weight
    /// dtype, and the weights themselves (for a checkpoint: each
    /// safetensors file's size, header and samples of its data, so two
    /// fine-tunes of one architecture differ).
    pub fn kv_fingerprint(&self, opts: &LoadOptions) -> Result<u64> {
        let mut h = Fnv64::new();
        h.write(b"strata-kv-f32-v1");
        h.write(self.config()?.to_json().to_string().as_bytes());
        h.write(&(opts.kv.block_size as u64).to_le_bytes());
        h.write(opts.dtype.map_or("stored", |d| d.torch_name()).as_bytes());
        if let Some(q) = opts.quantization {
            h.write(q.name().as_bytes());
        }
        match self {
            Self::Builtin => h.write(concat!("builtin-", env!("CARGO_PKG_VERSION")).as_bytes()),
            Self::Dummy { seed, dtype, .. } => {
                h.write(&seed.to_le_bytes());
                h.write(dtype.torch_name().as_bytes());
            }
            Self::Dir(dir) => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| ModelError::io(dir, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                files.sort();
                for path in files {
                    sample_file(&mut h, &path).map_err(|e| ModelError::io(&path, e))?;
                }
            }
            Self::Gguf(path) => sample_file(&mut h, path).map_err(|e| ModelError::io(path, e))?,
        }
        Ok(h.0)
    }
}

/// Hashes a file's name, size, first 64 KiB (the safetensors header) and
/// 4 KiB at a quarter, half, three quarters and the end.
fn sample_file(h: &mut Fnv64, path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    h.write(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
    h.write(&len.to_le_bytes());
    let mut buf = Vec::with_capacity(64 << 10);
    let samples = [(0, 64 << 10), (len / 4, 4096), (len / 2, 4096), (len * 3 / 4, 4096)];
    for (at, size) in samples.into_iter().chain([(len.saturating_sub(4096), 4096)]) {
        f.seek(SeekFrom::Start(at))?;
        buf.clear();
        (&mut f).take(size).read_to_end(&mut buf)?;
        h.write(&buf);
    }
    Ok(())
}

pub fn load_cpu_executor(
    source: &ModelSource,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ModelExecutor<CpuBackend>> {
    load_executor(CpuBackend, source, opts, progress)
}

/// Every tensor a checkpoint of `config` holds, with its shape, in the
/// Hugging Face naming.
pub fn tensor_manifest(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let mut out = vec![("model.embed_tokens.weight".to_owned(), vec![v, h])];
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let mut add = |n: &str, s: Vec<usize>| out.push((format!("{p}.{n}"), s));
        add("input_layernorm.weight", vec![h]);
        add("self_attn.q_proj.weight", vec![c.q_width(), h]);
        add("self_attn.k_proj.weight", vec![c.kv_width(), h]);
        add("self_attn.v_proj.weight", vec![c.kv_width(), h]);
        if c.attention_bias {
            add("self_attn.q_proj.bias", vec![c.q_width()]);
            add("self_attn.k_proj.bias", vec![c.kv_width()]);
            add("self_attn.v_proj.bias", vec![c.kv_width()]);
        }
        if c.qk_norm {
            add("self_attn.q_norm.weight", vec![c.head_dim]);
            add("self_attn.k_norm.weight", vec![c.head_dim]);
        }
        add("self_attn.o_proj.weight", vec![h, c.q_width()]);
        add("post_attention_layernorm.weight", vec![h]);
        add("mlp.gate_proj.weight", vec![i, h]);
        add("mlp.up_proj.weight", vec![i, h]);
        add("mlp.down_proj.weight", vec![h, i]);
    }
    out.push(("model.norm.weight".to_owned(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_owned(), vec![v, h]));
    }
    out
}

/// Writes `config.json` and `model.safetensors` for `config` with the
/// tensors of `source` into `dir` (created if needed).
pub fn write_checkpoint(dir: &Path, config: &ModelConfig, source: &dyn WeightSource) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config.to_json())
        .map_err(|source| ModelError::Json { path: config_path.clone(), source })?;
    std::fs::write(&config_path, text).map_err(|e| ModelError::io(&config_path, e))?;

    let mut buffers: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, shape) in tensor_manifest(config) {
        let t = source.load(&name, &shape)?;
        let (dtype, bytes) = match &t.data {
            HostData::Quant(q) => {
                return Err(ModelError::InvalidInput(format!(
                    "`{name}` is {q:?}: a quantized model cannot be written as safetensors"
                )))
            }
            HostData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            HostData::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            HostData::BF16(v) => (Dtype::BF16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        buffers.insert(name, (dtype, shape, bytes));
    }
    let path = dir.join("model.safetensors");
    let views = buffers
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Safetensors { path: path.clone(), message: e.to_string() })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| ModelError::Safetensors { path: path.clone(), message: e.to_string() })
}
