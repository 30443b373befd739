//! Turning MODEL (`--model`) and friends into a loaded executor and
//! tokenizer: built-in, dummy shapes, checkpoint directories and Hugging
//! Face hub ids (through [`crate::hub`]); `docs/models.md` has the rules.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use strata_model::backend::cpu::CpuBackend;
use strata_model::config::{Architecture, RopeScaling};
use strata_model::weights::DType;
use strata_model::{builtin, KvPoolConfig, LoadOptions, ModelConfig, ModelExecutor, ModelSource};
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
    /// (`qwen2.5-0.5b-shape`) with deterministic random weights.
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
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Builtin,
    Shape,
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
        "qwen2.5-0.5b-shape" => Location::Shape,
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
                Location::Builtin | Location::Shape | Location::Sim => {
                    bail!("--tokenizer takes a hub id or a directory, not `{spec}`")
                }
            }),
        };
        let source = match location {
            // The simulated executor has no weights; it speaks the built-in
            // model's tokenizer and vocabulary (no generation config).
            Location::Builtin | Location::Sim => ModelSource::Builtin,
            Location::Shape => ModelSource::Dummy {
                config: Box::new(qwen25_05b_shape()),
                seed: builtin::SEED,
                dtype: dtype.unwrap_or(DType::BF16),
            },
            Location::Dir(dir) => ModelSource::Dir(dir),
            Location::Hub(id) => {
                let rev = self.revision.as_deref().unwrap_or("main");
                let want = hub::Want::Model { tokenizer: tokenizer_dir.is_none() };
                let snapshot = hub::resolve(&hub::HubEnv::from_env()?, &id, rev, want)?;
                tracing::info!(
                    model = %id,
                    revision = rev,
                    dir = %snapshot.display(),
                    "resolved hub model"
                );
                ModelSource::Dir(snapshot)
            }
        };
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
        let tokenizer = match (&tokenizer_dir, &source) {
            (Some(dir), _) => {
                let tokenizer = Tokenizer::from_dir(dir)?;
                let vocab = executor.model().config().vocab_size;
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
            (None, ModelSource::Dummy { .. }) => None,
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
        assert_eq!(locate("qwen2.5-0.5b-shape"), Location::Shape);
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
}
