//! Turning MODEL (`--model`) and friends into a loaded executor and
//! tokenizer: built-in, dummy shapes, checkpoint directories and Hugging
//! Face hub ids (through [`crate::hub`]); `docs/models.md` has the rules.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use strata_model::config::{Architecture, RopeScaling};
use strata_model::gguf::GgufFile;
use strata_model::loader::is_gguf_path;
use strata_model::quant::QuantType;
use strata_model::weights::DType;
use strata_model::{
    builtin, Device, DeviceExecutor, GpuOptions, KvPoolConfig, LoadOptions, ModelConfig,
    ModelSource,
};
use strata_tokenizer::gguf::GgufVocab;
use strata_tokenizer::Tokenizer;

use crate::hub;

/// The model flags of `serve`, `generate` and `bench`. The model is given
/// as the positional MODEL (`strata serve Qwen/Qwen2.5-0.5B-Instruct`, as
/// `vllm serve`) or with `--model`; [`ModelArgs::model`] holds whichever
/// was given (clap parses [`ModelFlags`], then the two are merged).
#[derive(Debug, Clone)]
pub struct ModelArgs {
    /// `builtin`, a checkpoint directory, a hub id or a dummy shape name.
    pub model: String,
    /// Branch, tag or commit of a hub model (`None`: `main`).
    pub revision: Option<String>,
    /// Where the tokenizer comes from, when not from the model.
    pub tokenizer: Option<String>,
    /// Branch, tag or commit of a hub tokenizer (`None`: `main`).
    pub tokenizer_revision: Option<String>,
    pub dtype: String,
    pub block_size: usize,
    pub num_kv_blocks: Option<usize>,
    pub kv_cache_memory: f64,
    pub max_model_len: Option<usize>,
    /// The GGUF file to load from a model directory (or hub repo) that
    /// holds several.
    pub gguf_file: Option<String>,
    /// Quantize the linear weights at load (`q8_0`, `q4_k`, ...).
    pub quantization: Option<QuantType>,
    /// Where the model runs (`--device`).
    pub device: Device,
    /// Share of GPU memory strata may use (`--gpu-memory-utilization`;
    /// `None`: vLLM's 0.9).
    pub gpu_memory_utilization: Option<f64>,
    /// No CUDA graphs (`--enforce-eager`).
    pub enforce_eager: bool,
    /// The first successful [`ModelArgs::resolve`], so a second call (the
    /// server's generation defaults) neither asks the hub again nor can
    /// land on another commit.
    resolved: std::sync::OnceLock<Resolved>,
}

/// What clap parses into [`ModelArgs`].
#[derive(Args, Debug, Clone)]
pub struct ModelFlags {
    /// The model: `builtin` (default), a Hugging Face checkpoint directory,
    /// a Hugging Face hub id `org/name` (downloaded into the Hugging Face
    /// cache, or taken from it), or a named dummy shape
    /// (`qwen2.5-0.5b-shape`, `llama-3-8b-shape`) with deterministic random
    /// weights.
    #[arg(value_name = "MODEL")]
    pub model_positional: Option<String>,
    /// The model, as the positional MODEL (give one of the two).
    #[arg(long = "model", value_name = "MODEL")]
    pub model: Option<String>,
    /// Branch, tag or commit of a hub model [default: main].
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// Tokenizer from another hub id or directory (tokenizer.json and its
    /// configs) instead of the model's.
    #[arg(long, value_name = "ID_OR_DIR")]
    pub tokenizer: Option<String>,
    /// Branch, tag or commit of a hub tokenizer [default: main].
    #[arg(long, value_name = "REV", requires = "tokenizer")]
    pub tokenizer_revision: Option<String>,
    /// Weight dtype to compute with: auto (as stored), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV pool size in blocks (overrides --kv-cache-memory).
    #[arg(long)]
    pub num_kv_blocks: Option<usize>,
    /// KV pool size in GiB.
    #[arg(long, default_value_t = 1.0)]
    pub kv_cache_memory: f64,
    /// Cap on prompt plus output length (default: the model's maximum).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// The GGUF file to load from MODEL when MODEL is a directory or a hub
    /// repo (`strata serve org/name-GGUF --gguf-file name-Q4_K_M.gguf`); a
    /// MODEL that is itself a `.gguf` path needs none.
    #[arg(long, value_name = "NAME")]
    pub gguf_file: Option<String>,
    /// Quantize the decoder's linear weights at load time with llama.cpp's
    /// block formats: q8_0, q4_k (also q4_0, q4_1, q5_0, q5_1, q5_k,
    /// q6_k). K types fall back to q5_0/q5_1/q8_0 for matrices whose input
    /// width is not a multiple of 256, as llama.cpp does.
    #[arg(long, value_name = "TYPE", value_parser = parse_quantization)]
    pub quantization: Option<QuantType>,
    /// Where the model runs: cpu, or an NVIDIA GPU as cuda or cuda:N (the
    /// CUDA driver, NVRTC and cuBLAS 12 or 13 are found at start-up:
    /// STRATA_CUDA_LIB_DIR, LD_LIBRARY_PATH, or a pip install of torch or
    /// of NVIDIA's wheels).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: Device,
    /// On a GPU, the share of its memory strata may use; the KV cache gets
    /// what is left of it after the weights (vLLM's flag) [default: 0.9].
    /// --num-kv-blocks overrides it; on the CPU the pool is sized by
    /// --kv-cache-memory, and only vLLM's default 0.9 is accepted here.
    #[arg(long, value_name = "FRACTION")]
    pub gpu_memory_utilization: Option<f64>,
    /// On a GPU, run every step op by op: no CUDA graphs for decode steps
    /// (vLLM's flag). No effect on the CPU, which has no graphs.
    #[arg(long)]
    pub enforce_eager: bool,
}

fn parse_quantization(s: &str) -> Result<QuantType, String> {
    QuantType::from_name(s).ok_or_else(|| {
        let names: Vec<String> =
            QuantType::ALL.iter().map(|q| q.name().to_ascii_lowercase()).collect();
        format!("unknown quantization `{s}` (one of: {})", names.join(", "))
    })
}

impl TryFrom<ModelFlags> for ModelArgs {
    type Error = clap::Error;

    fn try_from(f: ModelFlags) -> Result<Self, clap::Error> {
        let model = match (f.model_positional, f.model) {
            (Some(a), Some(b)) if a != b => {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "the model is given twice, as MODEL `{a}` and as --model `{b}`: give one"
                    ),
                ))
            }
            (Some(m), _) | (None, Some(m)) => m,
            (None, None) => "builtin".to_owned(),
        };
        Ok(Self {
            model,
            revision: f.revision,
            tokenizer: f.tokenizer,
            tokenizer_revision: f.tokenizer_revision,
            dtype: f.dtype,
            block_size: f.block_size,
            num_kv_blocks: f.num_kv_blocks,
            kv_cache_memory: f.kv_cache_memory,
            max_model_len: f.max_model_len,
            gguf_file: f.gguf_file,
            quantization: f.quantization,
            device: f.device,
            gpu_memory_utilization: f.gpu_memory_utilization,
            enforce_eager: f.enforce_eager,
            resolved: std::sync::OnceLock::new(),
        })
    }
}

impl clap::FromArgMatches for ModelArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        ModelFlags::from_arg_matches(m)?.try_into()
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ModelArgs {
    fn group_id() -> Option<clap::Id> {
        ModelFlags::group_id()
    }

    fn augment_args(cmd: clap::Command) -> clap::Command {
        ModelFlags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        ModelFlags::augment_args_for_update(cmd)
    }
}

/// Where a model or tokenizer comes from, before any download.
#[derive(Debug, Clone, PartialEq)]
enum Location {
    Builtin,
    /// A named dummy shape: its config.
    Shape(Box<ModelConfig>),
    /// `strata serve`'s simulated executor (handled by serve.rs).
    Sim,
    Dir(PathBuf),
    Hub(String),
}

/// How `vllm serve MODEL` reads MODEL: a path that exists is local; else a
/// hub id is fetched; anything else is a directory the loader will report
/// missing.
fn locate(spec: &str) -> Location {
    match spec {
        "builtin" => Location::Builtin,
        "qwen2.5-0.5b-shape" | "llama-3-8b-shape" => Location::Shape(shape_config(spec)),
        "sim" => Location::Sim,
        s if Path::new(s).exists() || !hub::is_repo_id(s) => Location::Dir(PathBuf::from(s)),
        s => Location::Hub(s.to_owned()),
    }
}

/// A model and tokenizer resolved to what loads them.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub source: ModelSource,
    /// The tokenizer's directory when `--tokenizer` names one (`None`: the
    /// model's own: the checkpoint directory, or none for a dummy shape).
    pub tokenizer_dir: Option<PathBuf>,
}

/// The Qwen2.5-0.5B architecture, for benchmarks with dummy weights.
pub fn qwen25_05b_shape() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Qwen2,
        vocab_size: 151_936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_layers: 24,
        num_heads: 14,
        num_kv_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_scaling: RopeScaling::None,
        rope_interleaved: false,
        max_position_embeddings: 32_768,
        tie_word_embeddings: true,
        attention_bias: true,
        qk_norm: false,
        dtype: Some(DType::BF16),
        bos_token_id: None,
        eos_token_ids: vec![151_643],
    }
}

/// vLLM's `--gpu-memory-utilization` default.
const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// The config of a named dummy shape.
fn shape_config(name: &str) -> Box<ModelConfig> {
    Box::new(if name == "llama-3-8b-shape" { llama3_8b_shape() } else { qwen25_05b_shape() })
}

/// The Llama-3-8B architecture, for benchmarks with dummy weights (the
/// GPU bandwidth target's model).
pub fn llama3_8b_shape() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 128_256,
        hidden_size: 4096,
        intermediate_size: 14_336,
        num_layers: 32,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: RopeScaling::None,
        rope_interleaved: false,
        max_position_embeddings: 8192,
        tie_word_embeddings: false,
        attention_bias: false,
        qk_norm: false,
        dtype: Some(DType::BF16),
        bos_token_id: Some(128_000),
        eos_token_ids: vec![128_001, 128_009],
    }
}

pub fn parse_dtype(s: &str) -> Result<Option<DType>> {
    match s {
        "auto" => Ok(None),
        other => DType::from_torch_name(other)
            .map(Some)
            .with_context(|| format!("unknown dtype `{other}` (auto, f32, bf16, f16)")),
    }
}

pub struct Loaded {
    pub executor: DeviceExecutor,
    /// `None` for dummy shapes, which have no tokenizer.
    pub tokenizer: Option<Tokenizer>,
}

impl ModelArgs {
    /// The model, with hub ids downloaded (or found in the cache).
    pub fn source(&self) -> Result<ModelSource> {
        Ok(self.resolve()?.source)
    }

    /// Resolves the model and `--tokenizer`: hub ids become snapshot
    /// directories of the Hugging Face cache (see `docs/models.md`).
    pub fn resolve(&self) -> Result<Resolved> {
        if let Some(r) = self.resolved.get() {
            return Ok(r.clone());
        }
        let resolved = self.resolve_uncached()?;
        Ok(self.resolved.get_or_init(|| resolved).clone())
    }

    fn resolve_uncached(&self) -> Result<Resolved> {
        let dtype = parse_dtype(&self.dtype)?;
        let location = locate(&self.model);
        if self.revision.is_some() && !matches!(location, Location::Hub(_)) {
            bail!("--revision applies to hub models (`org/name`), not to `{}`", self.model);
        }
        let tokenizer_dir = match &self.tokenizer {
            None => None,
            Some(spec) => Some(match locate(spec) {
                Location::Dir(dir) => {
                    if self.tokenizer_revision.is_some() {
                        bail!("--tokenizer-revision applies to hub tokenizers, not to `{spec}`");
                    }
                    dir
                }
                Location::Hub(id) => {
                    let rev = self.tokenizer_revision.as_deref().unwrap_or("main");
                    hub::resolve(&hub::HubEnv::from_env()?, &id, rev, hub::Want::Tokenizer)
                        .with_context(|| format!("resolving the tokenizer `{spec}`"))?
                }
                Location::Builtin | Location::Shape(_) | Location::Sim => {
                    bail!("--tokenizer takes a hub id or a directory, not `{spec}`")
                }
            }),
        };
        // A directory (local or a hub snapshot): the GGUF file `--gguf-file`
        // names in it, or the directory as a checkpoint; a `.gguf` path as
        // it is.
        let in_dir = |path: PathBuf| match &self.gguf_file {
            Some(name) => ModelSource::Gguf(path.join(name)),
            None if is_gguf_path(&path) => ModelSource::Gguf(path),
            None => ModelSource::Dir(path),
        };
        let source = match location {
            // The simulated executor has no weights; it speaks the built-in
            // model's tokenizer and vocabulary (no generation config).
            Location::Builtin | Location::Sim => ModelSource::Builtin,
            Location::Shape(config) => ModelSource::Dummy {
                config,
                seed: builtin::SEED,
                dtype: dtype.unwrap_or(DType::BF16),
            },
            Location::Dir(path) => in_dir(path),
            Location::Hub(id) => {
                let rev = self.revision.as_deref().unwrap_or("main");
                let want = match &self.gguf_file {
                    Some(name) => hub::Want::Gguf(name.clone()),
                    None => hub::Want::Model { tokenizer: tokenizer_dir.is_none() },
                };
                let snapshot = hub::resolve(&hub::HubEnv::from_env()?, &id, rev, want)?;
                tracing::info!(
                    model = %id,
                    revision = rev,
                    dir = %snapshot.display(),
                    "resolved hub model"
                );
                in_dir(snapshot)
            }
        };
        if let Some(name) = &self.gguf_file {
            if !matches!(source, ModelSource::Gguf(_)) {
                bail!(
                    "--gguf-file `{name}` needs MODEL to be a directory or a hub repo holding it"
                );
            }
        }
        Ok(Resolved { source, tokenizer_dir })
    }

    pub fn load(&self) -> Result<Loaded> {
        self.load_seeded(0)
    }

    /// As [`Self::load`], with `seed` for the random stream of requests
    /// that bring no seed of their own (vLLM's `--seed`).
    pub fn load_seeded(&self, seed: u64) -> Result<Loaded> {
        if locate(&self.model) == Location::Sim {
            bail!("`sim` (the simulated executor) is a model of `strata serve` only");
        }
        let Resolved { source, tokenizer_dir } = self.resolve()?;
        let opts = LoadOptions {
            dtype: parse_dtype(&self.dtype)?,
            kv: KvPoolConfig {
                block_size: self.block_size,
                num_blocks: self.num_kv_blocks,
                memory_bytes: (self.kv_cache_memory * (1u64 << 30) as f64) as u64,
            },
            max_model_len: self.max_model_len,
            sampler_seed: seed,
            quantization: self.quantization,
        };
        let started = std::time::Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "loading {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
                )
                .expect("invariant: valid template")
                .progress_chars("=> "),
            );
            bar.set_message(self.model.clone());
            bar
        });
        let utilization = match (self.device, self.gpu_memory_utilization) {
            (_, None) => DEFAULT_GPU_MEMORY_UTILIZATION,
            (Device::Cuda(_), Some(u)) => u,
            (Device::Cpu, Some(u)) if (u - DEFAULT_GPU_MEMORY_UTILIZATION).abs() < 1e-9 => {
                tracing::warn!(
                    "--gpu-memory-utilization has no effect on the CPU: the KV pool is sized by \
                     --kv-cache-memory"
                );
                u
            }
            (Device::Cpu, Some(u)) => bail!(
                "--gpu-memory-utilization {u} sizes the KV pool on a GPU (--device cuda); on the \
                 CPU strata sizes it with --kv-cache-memory GiB or --num-kv-blocks"
            ),
        };
        if self.enforce_eager && self.device == Device::Cpu {
            tracing::warn!("--enforce-eager has no effect on the CPU: it captures no graphs");
        }
        let gpu = GpuOptions { memory_utilization: utilization, enforce_eager: self.enforce_eager };
        let executor =
            strata_model::load_on_device(self.device, &source, &opts, gpu, &mut |done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            })
            .with_context(|| format!("loading model `{}` on {}", self.model, self.device))?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        // After the weights, so a wrong directory is reported by its config.json.
        let tokenizer = match (&tokenizer_dir, &source) {
            (Some(dir), _) => {
                let tokenizer = Tokenizer::from_dir(dir)?;
                let vocab = executor.config().vocab_size;
                if tokenizer.vocab_size() > vocab {
                    bail!(
                        "the tokenizer from `{}` has {} tokens, more than the model's \
                         vocabulary of {vocab}",
                        self.tokenizer.as_deref().unwrap_or_default(),
                        tokenizer.vocab_size()
                    );
                }
                Some(tokenizer)
            }
            (None, ModelSource::Builtin) => Some(Tokenizer::builtin()),
            (None, ModelSource::Dir(dir)) => Some(Tokenizer::from_dir(dir)?),
            (None, ModelSource::Gguf(path)) => Some(gguf_tokenizer(path)?),
            (None, ModelSource::Dummy { .. }) => None,
        };
        tracing::info!(
            model = %self.model,
            device = %executor.device_description(),
            quantized_kernels = strata_model::quant::kernel_isa(),
            weight_mib = executor.weight_bytes() as f64 / (1 << 20) as f64,
            secs = started.elapsed().as_secs_f64(),
            "model loaded"
        );
        Ok(Loaded { executor, tokenizer })
    }
}

/// The tokenizer a GGUF file carries in its `tokenizer.*` metadata.
fn gguf_tokenizer(path: &Path) -> Result<Tokenizer> {
    let file = GgufFile::open(path)?;
    let vocab = gguf_vocab(&file).with_context(|| format!("{}: tokenizer", path.display()))?;
    Tokenizer::from_gguf(&vocab).with_context(|| format!("{}: tokenizer", path.display()))
}

/// Reads llama.cpp's tokenizer keys into [`GgufVocab`].
fn gguf_vocab(file: &GgufFile) -> Result<GgufVocab> {
    use strata_model::gguf::GgufValue;
    let get = |key: &str| file.get(&format!("tokenizer.{key}"));
    let array = |key: &str| -> Result<&[GgufValue]> {
        match get(key) {
            None => Ok(&[]),
            Some(v) => v.as_array().with_context(|| format!("tokenizer.{key} is not an array")),
        }
    };
    let strings = |key: &str| -> Result<Vec<String>> {
        array(key)?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .with_context(|| format!("tokenizer.{key} holds a non-string"))
    };
    let id = |key: &str| -> Result<Option<u32>> {
        get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .with_context(|| format!("tokenizer.{key} is not a token id"))
            })
            .transpose()
    };
    let flag = |key: &str| get(key).and_then(GgufValue::as_bool);
    let model = get("ggml.model")
        .and_then(GgufValue::as_str)
        .context("the file has no tokenizer (tokenizer.ggml.model); give one with --tokenizer")?;
    Ok(GgufVocab {
        model: model.to_owned(),
        pre: get("ggml.pre").and_then(GgufValue::as_str).map(str::to_owned),
        tokens: strings("ggml.tokens")?,
        token_types: array("ggml.token_type")?
            .iter()
            .map(|v| v.as_i64().and_then(|n| i32::try_from(n).ok()))
            .collect::<Option<_>>()
            .context("tokenizer.ggml.token_type holds a non-integer")?,
        scores: array("ggml.scores")?
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()
            .context("tokenizer.ggml.scores holds a non-number")?,
        merges: strings("ggml.merges")?,
        bos_token_id: id("ggml.bos_token_id")?,
        eos_token_id: id("ggml.eos_token_id")?,
        eot_token_id: id("ggml.eot_token_id")?,
        eom_token_id: id("ggml.eom_token_id")?,
        unknown_token_id: id("ggml.unknown_token_id")?,
        padding_token_id: id("ggml.padding_token_id")?,
        add_bos_token: flag("ggml.add_bos_token"),
        add_eos_token: flag("ggml.add_eos_token"),
        add_space_prefix: flag("ggml.add_space_prefix"),
        chat_template: get("chat_template").and_then(GgufValue::as_str).map(str::to_owned),
    })
}

pub fn export_builtin(dir: &Path) -> Result<()> {
    let config = builtin::config();
    strata_model::loader::write_checkpoint(dir, &config, &builtin::weights())?;
    strata_tokenizer::builtin::write_files(dir)?;
    println!("wrote the built-in model to {}", PathBuf::from(dir).display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
    }

    fn parse(args: &[&str]) -> Result<ModelArgs, clap::Error> {
        Cli::try_parse_from([&["strata"], args].concat()).map(|c| c.model)
    }

    #[test]
    fn model_is_positional_or_a_flag() {
        assert_eq!(parse(&[]).unwrap().model, "builtin");
        assert_eq!(parse(&["Qwen/Qwen2.5-0.5B"]).unwrap().model, "Qwen/Qwen2.5-0.5B");
        assert_eq!(parse(&["--model", "Qwen/Qwen2.5-0.5B"]).unwrap().model, "Qwen/Qwen2.5-0.5B");
        assert_eq!(parse(&["a/b", "--model", "a/b"]).unwrap().model, "a/b");
        let e = parse(&["a/b", "--model", "c/d"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(e.to_string().contains("given twice"), "{e}");
        let m =
            parse(&["a/b", "--revision", "v1", "--tokenizer", "t/k", "--dtype", "f32"]).unwrap();
        assert_eq!(
            (m.revision.as_deref(), m.tokenizer.as_deref(), m.dtype.as_str()),
            (Some("v1"), Some("t/k"), "f32")
        );
        assert!(parse(&["--tokenizer-revision", "v1"]).is_err(), "needs --tokenizer");
    }

    #[test]
    fn locations() {
        assert_eq!(locate("builtin"), Location::Builtin);
        assert!(matches!(locate("qwen2.5-0.5b-shape"), Location::Shape(_)));
        assert!(matches!(locate("llama-3-8b-shape"), Location::Shape(_)));
        assert_eq!(locate("sim"), Location::Sim);
        assert_eq!(locate("Qwen/Qwen2.5-0.5B"), Location::Hub("Qwen/Qwen2.5-0.5B".into()));
        assert_eq!(locate("/nonexistent/dir"), Location::Dir("/nonexistent/dir".into()));
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join("org/name");
        std::fs::create_dir_all(&here).unwrap();
        // An existing directory wins over the hub id it spells.
        let cwd_relative = here.to_str().unwrap();
        assert_eq!(locate(cwd_relative), Location::Dir(here.clone()));
    }

    /// `--gguf-file` is refused, not ignored, where MODEL holds no GGUF
    /// file (built-in, simulated and shape models).
    #[test]
    fn gguf_file_needs_a_directory_or_a_hub_repo() {
        for model in ["builtin", "sim", "qwen2.5-0.5b-shape"] {
            let e = parse(&[model, "--gguf-file", "m.gguf"]).unwrap().resolve().unwrap_err();
            assert!(e.to_string().contains("--gguf-file `m.gguf` needs MODEL"), "{model}: {e}");
        }
    }

    /// The tokenizer read from GGUF metadata against llama.cpp's
    /// `llama-tokenize` on the same files (special tokens parsed, as a
    /// server's prompts are): `fixtures/gguf/llama_cpp_reference.json`.
    #[test]
    fn gguf_tokenization_equals_llama_cpp() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf");
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join("llama_cpp_reference.json")).unwrap(),
        )
        .unwrap();
        let mut checked = 0;
        for case in reference["tokenize"].as_array().unwrap() {
            if !case["parse_special"].as_bool().unwrap() {
                continue;
            }
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
                .collect();
            let prompt = case["prompt"].as_str().unwrap();
            for file in case["same_tokenizer_files"].as_array().unwrap() {
                let tokenizer = gguf_tokenizer(&fixtures.join(file.as_str().unwrap())).unwrap();
                assert_eq!(tokenizer.encode(prompt, true).unwrap(), want, "{file} {prompt:?}");
                checked += 1;
            }
        }
        assert!(checked >= 300, "{checked} cases");
    }
}
