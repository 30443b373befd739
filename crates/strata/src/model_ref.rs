//! Turning `--model` and friends into a loaded executor and tokenizer.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use strata_model::backend::cpu::CpuBackend;
use strata_model::config::{Architecture, RopeScaling};
use strata_model::weights::DType;
use strata_model::{builtin, KvPoolConfig, LoadOptions, ModelConfig, ModelExecutor, ModelSource};
use strata_tokenizer::Tokenizer;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// `builtin`, a Hugging Face checkpoint directory, or a named dummy
    /// shape (`qwen2.5-0.5b-shape`) with deterministic random weights.
    #[arg(long, default_value = "builtin")]
    pub model: String,
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
        max_position_embeddings: 32_768,
        tie_word_embeddings: true,
        attention_bias: true,
        qk_norm: false,
        dtype: Some(DType::BF16),
        bos_token_id: None,
        eos_token_ids: vec![151_643],
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
    pub executor: ModelExecutor<CpuBackend>,
    /// `None` for dummy shapes, which have no tokenizer.
    pub tokenizer: Option<Tokenizer>,
}

impl ModelArgs {
    pub fn source(&self) -> Result<ModelSource> {
        let dtype = parse_dtype(&self.dtype)?;
        Ok(match self.model.as_str() {
            "qwen2.5-0.5b-shape" => ModelSource::Dummy {
                config: Box::new(qwen25_05b_shape()),
                seed: builtin::SEED,
                dtype: dtype.unwrap_or(DType::BF16),
            },
            other => ModelSource::parse(other),
        })
    }

    pub fn load(&self) -> Result<Loaded> {
        let source = self.source()?;
        let opts = LoadOptions {
            dtype: parse_dtype(&self.dtype)?,
            kv: KvPoolConfig {
                block_size: self.block_size,
                num_blocks: self.num_kv_blocks,
                memory_bytes: (self.kv_cache_memory * (1u64 << 30) as f64) as u64,
            },
            max_model_len: self.max_model_len,
            sampler_seed: 0,
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
        let executor =
            strata_model::loader::load_cpu_executor(&source, &opts, &mut |done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            })
            .with_context(|| format!("loading model `{}`", self.model))?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        // After the weights, so a wrong directory is reported by its config.json.
        let tokenizer = match &source {
            ModelSource::Builtin => Some(Tokenizer::builtin()),
            ModelSource::Dir(dir) => Some(Tokenizer::from_dir(dir)?),
            ModelSource::Dummy { .. } => None,
        };
        tracing::info!(
            model = %self.model,
            weight_mib = executor.model().weight_bytes() as f64 / (1 << 20) as f64,
            secs = started.elapsed().as_secs_f64(),
            "model loaded"
        );
        Ok(Loaded { executor, tokenizer })
    }
}

pub fn export_builtin(dir: &Path) -> Result<()> {
    let config = builtin::config();
    strata_model::loader::write_checkpoint(dir, &config, &builtin::weights())?;
    strata_tokenizer::builtin::write_files(dir)?;
    println!("wrote the built-in model to {}", PathBuf::from(dir).display());
    Ok(())
}
