//! `strata serve`: the OpenAI-compatible server on one engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
#[cfg(feature = "sim")]
use strata_core::connector::WorkerHandle;
use strata_core::connector::{ConnectorScheduler, KvLoadFailurePolicy};
use strata_core::scheduler::{SchedulerConfig, SchedulingPolicy};
#[cfg(feature = "sim")]
use strata_core::sim::{FakeExecutor, LatencyModel, SimExecutor};
use strata_core::{EngineCore, Executor};
use strata_metrics::{CacheConfigInfo, EngineMetrics};
use strata_server::accounting_log::AccountingLog;
use strata_server::defaults::GenerationDefaults;
use strata_server::{app, AppState, EngineHandle};
use strata_tokenizer::Tokenizer;

use crate::model_ref::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind; loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Names clients use for the model (default: the model argument); the
    /// first is the one in metrics and in answers to requests naming none.
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// Seed of the random stream of requests that bring no `seed` (the
    /// same seed and requests give the same samples).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A chat template for every chat request, instead of the model's: a
    /// file, or the template itself (as vLLM's --chat-template).
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Let requests bring their own `chat_template` (as vLLM's flag; a
    /// request's template runs sandboxed, with an instruction budget).
    #[arg(long)]
    pub trust_request_chat_template: bool,
    /// Serve a thinking model's `<think>…</think>` as the chat answer's
    /// `reasoning`, apart from its `content` (vLLM's parsers: `deepseek_r1`,
    /// `qwen3`).
    #[arg(long, value_name = "NAME")]
    pub reasoning_parser: Option<strata_server::chat::reasoning::ReasoningParser>,
    /// Serve `tool_choice: "auto"` (needs --tool-call-parser), as vLLM.
    #[arg(long)]
    pub enable_auto_tool_choice: bool,
    /// How tool calls are read from a model's answer (vLLM's names:
    /// hermes, llama3_json, mistral, qwen3_xml, qwen3_coder, pythonic).
    #[arg(long, value_name = "NAME", value_parser = tool_call_parser_name)]
    pub tool_call_parser: Option<String>,
    /// Sampling defaults: `auto` reads the model's generation_config.json,
    /// `vllm` uses none, or a directory holding a generation_config.json.
    #[arg(long, default_value = "auto")]
    pub generation_config: String,
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Seconds between stats log lines.
    #[arg(long, default_value_t = 10.0)]
    pub log_stats_interval: f64,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests in flight beyond which new ones get 503.
    #[arg(long, default_value_t = 4096)]
    pub max_queued_requests: usize,
    /// Append one JSON line per finished request (tokens, sources, times).
    #[arg(long)]
    pub accounting_log: Option<std::path::PathBuf>,
    /// vLLM's KV cache events, as JSON: `{"enable_kv_cache_events": true,
    /// "publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint":
    /// "tcp://*:5558", "topic": "kv@POD_IP:8000@MODEL"}` (vLLM's fields and
    /// defaults; strata adds `"format": "map"|"array"`). See docs/kubernetes.md.
    #[arg(long, value_name = "JSON")]
    pub kv_events_config: Option<String>,
    /// Automatic prefix caching (on by default, as in vLLM).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
    /// `fcfs`, or `priority` (the request's `priority`: lower runs first).
    #[arg(long, value_enum, default_value_t = Policy::Fcfs)]
    pub scheduling_policy: Policy,
    /// vLLM's switch to stop logging each request; strata logs no request
    /// contents, so it changes nothing.
    #[arg(long)]
    pub disable_log_requests: bool,
    /// No periodic stats log line.
    #[arg(long)]
    pub disable_log_stats: bool,
    /// Seconds the engine thread may go without finishing a step (or an
    /// idle wait) before /health and /ping answer 503. Longer than any
    /// legitimate step, a full prefill chunk on a CPU included (minimum 1).
    #[arg(long, default_value_t = 60.0, value_parser = health_stall_timeout)]
    pub health_stall_timeout: f64,
    /// A YAML file of flags (handled before parsing; listed for --help).
    #[arg(long, value_name = "FILE.yaml")]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub offload: OffloadArgs,
    #[command(flatten)]
    pub pd: PdArgs,
    #[command(flatten)]
    pub vllm: VllmCompatArgs,
}

/// `--tool-call-parser`: one of the parsers strata has.
fn tool_call_parser_name(s: &str) -> Result<String, String> {
    let known = strata_server::chat::tools::PARSERS;
    if known.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("unknown tool call parser {s:?} (known: {})", known.join(", ")))
    }
}

/// `--health-stall-timeout`: finite seconds, at least 1 (an idle engine
/// beats every 0.25 s; below a second a busy machine could flap the probe).
fn health_stall_timeout(s: &str) -> Result<f64, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    let min = strata_server::health::MIN_STALL_TIMEOUT.as_secs_f64();
    if secs.is_finite() && secs >= min && secs <= 1e9 {
        Ok(secs)
    } else {
        Err(format!("{s}: must be seconds between {min} and 1e9"))
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    #[default]
    Fcfs,
    Priority,
}

/// vLLM flags that mean nothing on strata's one CPU device: accepted with a
/// warning when they ask for vLLM's default (so a vLLM command line runs
/// unchanged), refused otherwise.
#[derive(Args, Debug, Clone, Default)]
pub struct VllmCompatArgs {
    #[arg(long, hide = true)]
    pub tensor_parallel_size: Option<u32>,
    #[arg(long, hide = true)]
    pub pipeline_parallel_size: Option<u32>,
    #[arg(long, hide = true)]
    pub data_parallel_size: Option<u32>,
    #[arg(long, hide = true)]
    pub kv_cache_dtype: Option<String>,
    #[arg(long, hide = true)]
    pub max_logprobs: Option<u32>,
    #[arg(long, hide = true)]
    pub trust_remote_code: bool,
}

impl VllmCompatArgs {
    /// Warns about each flag given with vLLM's default; refuses the others.
    pub fn check(&self) -> Result<()> {
        let mut warn = |flag: &str, why: &str| {
            tracing::warn!("{flag} has no effect in strata: {why}");
        };
        let one = |flag: &str, v: Option<u32>, warn: &mut dyn FnMut(&str, &str)| -> Result<()> {
            match v {
                None => Ok(()),
                Some(1) => {
                    warn(flag, "strata runs on one device");
                    Ok(())
                }
                Some(n) => {
                    anyhow::bail!("{flag} {n}: strata runs on one device (only 1 is accepted)")
                }
            }
        };
        one("--tensor-parallel-size", self.tensor_parallel_size, &mut warn)?;
        one("--pipeline-parallel-size", self.pipeline_parallel_size, &mut warn)?;
        one("--data-parallel-size", self.data_parallel_size, &mut warn)?;
        match self.kv_cache_dtype.as_deref() {
            None => {}
            Some("auto") => warn("--kv-cache-dtype auto", "the KV cache has the compute dtype"),
            Some(d) => anyhow::bail!(
                "--kv-cache-dtype {d}: strata keeps the KV cache in the compute dtype (only auto)"
            ),
        }
        match self.max_logprobs {
            None => {}
            Some(n) if n == strata_core::sampling::MAX_LOGPROBS => {
                warn("--max-logprobs", "strata's limit is vLLM's default")
            }
            Some(n) => anyhow::bail!(
                "--max-logprobs {n}: strata's limit is fixed at {}",
                strata_core::sampling::MAX_LOGPROBS
            ),
        }
        if self.trust_remote_code {
            warn("--trust-remote-code", "strata never runs code from a model repository");
        }
        Ok(())
    }
}

/// Prefill/decode disaggregation.
#[derive(Args, Debug, Clone, Default)]
pub struct PdArgs {
    /// `pd`: this engine takes part in P/D (with --kv-role). Offloading is
    /// configured with the --kv-offload-* flags; with both, P/D requests
    /// use their peer and every other request the offload tiers.
    #[arg(long, value_parser = ["pd"])]
    pub kv_connector: Option<String>,
    #[arg(long, value_enum, default_value_t = KvRole::Both)]
    pub kv_role: KvRole,
    /// Port this engine serves KV on (prefill and both roles; 0: any free
    /// port). 5600 is vLLM's NIXL side-channel default.
    #[arg(long, default_value_t = 5600)]
    pub kv_transfer_port: u16,
    /// Address the KV port binds to (an IP address; 0.0.0.0 or :: for
    /// every interface, which needs --kv-transfer-advertise-host).
    #[arg(long, default_value = "127.0.0.1")]
    pub kv_transfer_host: String,
    /// The host decode engines are told to pull KV from (default: the
    /// bind address), e.g. the pod's IP.
    #[arg(long)]
    pub kv_transfer_advertise_host: Option<String>,
    /// Shared secret both engines must know (HMAC challenge; nobody
    /// without it can read or inject KV). Required when the KV port binds
    /// beyond loopback, unless --kv-transfer-insecure.
    #[arg(long, env = "STRATA_KV_TRANSFER_SECRET", hide_env_values = true)]
    pub kv_transfer_secret: Option<String>,
    /// Serve KV beyond loopback without a secret: anyone who reaches the
    /// port can read the KV of leased prompts. For trusted networks only.
    #[arg(long)]
    pub kv_transfer_insecure: bool,
    /// Seconds a prefill engine holds KV for a pull before freeing it.
    #[arg(long, default_value_t = 30.0)]
    pub kv_lease_timeout: f64,
    /// Seconds a pull may take before it counts as failed.
    #[arg(long, default_value_t = 30.0)]
    pub kv_transfer_timeout: f64,
    /// This engine's name in `kv_transfer_params` (default: a random id).
    #[arg(long)]
    pub engine_id: Option<String>,
    /// Fault injection for tests: `drop-after=N,corrupt=N,delay-ms=N`.
    #[arg(long, hide = true)]
    pub kv_transfer_fault: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvRole {
    Prefill,
    Decode,
    #[default]
    Both,
}

impl PdArgs {
    fn enabled(&self) -> bool {
        self.kv_connector.as_deref() == Some("pd")
    }

    fn open(
        &self,
        spec: &strata_core::KvCacheSpec,
        fingerprint: u64,
    ) -> Result<Option<(strata_pd::PdScheduler, strata_pd::PdWorker)>> {
        if !self.enabled() {
            return Ok(None);
        }
        let fault = match &self.kv_transfer_fault {
            Some(f) => strata_pd::Fault::parse(f).map_err(anyhow::Error::msg)?,
            None => strata_pd::Fault::default(),
        };
        let (listen, advertise_host) = self.transfer_addresses()?;
        let engine_id = self.engine_id.clone().unwrap_or_else(|| {
            let mut n = [0u8; 4];
            let _ = getrandom::fill(&mut n);
            format!("engine-{:08x}", u32::from_le_bytes(n))
        });
        let config = strata_pd::PdConfig {
            role: match self.kv_role {
                KvRole::Prefill => strata_pd::Role::Prefill,
                KvRole::Decode => strata_pd::Role::Decode,
                KvRole::Both => strata_pd::Role::Both,
            },
            engine_id,
            listen,
            advertise_host,
            secret: self.kv_transfer_secret.clone(),
            lease_timeout: Duration::from_secs_f64(self.kv_lease_timeout.max(0.001)),
            transfer_timeout: Duration::from_secs_f64(self.kv_transfer_timeout.max(0.001)),
            layout: strata_pd::Layout {
                fingerprint,
                block_size: spec.block_size as u32,
                bytes_per_block: spec.bytes_per_block as u32,
            },
            fault,
        };
        let (sched, worker, _port) = strata_pd::open(config)
            .with_context(|| format!("starting the KV transfer server on {listen}"))?;
        Ok(Some((sched, worker)))
    }

    /// The KV port's bind address and the host decode engines are told,
    /// refusing what would serve KV to anyone: an unspecified address with
    /// nothing to advertise, or a port beyond loopback without a secret
    /// (unless --kv-transfer-insecure, which warns).
    fn transfer_addresses(&self) -> Result<(SocketAddr, String)> {
        let host = self.kv_transfer_host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host.parse().with_context(|| {
            format!("--kv-transfer-host `{}` is not an IP address", self.kv_transfer_host)
        })?;
        let listen = SocketAddr::new(ip, self.kv_transfer_port);
        if self.kv_transfer_secret.as_deref() == Some("") {
            anyhow::bail!("--kv-transfer-secret (or STRATA_KV_TRANSFER_SECRET) is empty");
        }
        // Only a prefill (or both) engine binds the port and advertises it.
        let serves = matches!(self.kv_role, KvRole::Prefill | KvRole::Both);
        let advertise = match self.kv_transfer_advertise_host.as_deref() {
            Some("") => anyhow::bail!("--kv-transfer-advertise-host is empty"),
            Some(h) => h.to_owned(),
            None if serves && ip.is_unspecified() => anyhow::bail!(
                "--kv-transfer-host {ip} binds every interface, so it names none that decode \
                 engines can pull from: set --kv-transfer-advertise-host (e.g. the pod IP)"
            ),
            None => host.to_owned(),
        };
        if serves && !ip.is_loopback() && self.kv_transfer_secret.is_none() {
            if !self.kv_transfer_insecure {
                anyhow::bail!(
                    "the KV transfer port binds {ip}, beyond loopback, without a secret: anyone \
                     who reaches it could read or inject KV. Set --kv-transfer-secret (or \
                     STRATA_KV_TRANSFER_SECRET), or pass --kv-transfer-insecure on a trusted network"
                );
            }
            tracing::warn!(
                "--kv-transfer-insecure: serving KV on {listen} without a secret; anyone who \
                 reaches the port can read the KV of leased prompts"
            );
        }
        Ok((listen, advertise))
    }
}

/// The connector configured by the flags (offload or P/D), as its two
/// halves.
/// A connector's scheduler side and worker side.
type ConnectorPair =
    (Box<dyn ConnectorScheduler>, Box<dyn strata_core::connector::ConnectorWorker>);

fn connector(
    args: &ServeArgs,
    spec: &strata_core::KvCacheSpec,
    fingerprint: u64,
) -> Result<Option<ConnectorPair>> {
    let mut parts: Vec<ConnectorPair> = Vec::new();
    // P/D first: a request with remote KV takes it from its peer; every
    // other request looks in the offload tiers (vLLM's MultiConnector).
    if let Some((s, w)) = args.pd.open(spec, fingerprint)? {
        parts.push((Box::new(s), Box::new(w)));
    }
    if let Some((s, w)) = args.offload.open(spec, fingerprint)? {
        parts.push((Box::new(s), Box::new(w)));
    }
    Ok(match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => {
            let (s, w) = strata_core::connector::multi(parts);
            Some((Box::new(s), Box::new(w)))
        }
    })
}

/// The KV offload tiers (host RAM, local disk).
#[derive(Args, Debug, Clone, Default)]
pub struct OffloadArgs {
    /// Host-RAM tier size in GB (0: no offloading). Blocks computed on the
    /// device are copied here and loaded back on a later prefix hit.
    #[arg(long, default_value_t = 0.0)]
    pub kv_offload_host_gb: f64,
    /// Directory of the disk tier (needs a host tier). Blocks are written
    /// through to it and survive restarts.
    #[arg(long)]
    pub kv_offload_disk_dir: Option<std::path::PathBuf>,
    /// Disk tier size in GB.
    #[arg(long, default_value_t = 10.0)]
    pub kv_offload_disk_gb: f64,
    /// Read the disk tier with O_DIRECT, bypassing the page cache (for
    /// fast NVMe whose page cache would only duplicate the host tier).
    /// Falls back to buffered reads, with a warning, where the file
    /// system refuses it (tmpfs).
    #[arg(long)]
    pub kv_offload_disk_direct_io: bool,
    /// What a failed KV load does to its request: `fail` ends it with
    /// finish_reason `error`; `recompute` computes the failed blocks.
    #[arg(long, value_enum, default_value_t = FailurePolicy::Fail)]
    pub kv_load_failure_policy: FailurePolicy,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    #[default]
    Fail,
    Recompute,
}

impl OffloadArgs {
    fn enabled(&self) -> bool {
        self.kv_offload_host_gb > 0.0 || self.kv_offload_disk_dir.is_some()
    }

    /// The connector's halves for a pool of this shape, if offloading is on.
    fn open(
        &self,
        spec: &strata_core::KvCacheSpec,
        fingerprint: u64,
    ) -> Result<Option<(strata_offload::OffloadScheduler, strata_offload::OffloadWorker)>> {
        if self.kv_offload_disk_direct_io && self.kv_offload_disk_dir.is_none() {
            anyhow::bail!("--kv-offload-disk-direct-io needs --kv-offload-disk-dir");
        }
        if !self.enabled() {
            return Ok(None);
        }
        let gb = |x: f64| (x.max(0.0) * 1e9) as u64;
        let host_bytes = gb(self.kv_offload_host_gb);
        if host_bytes < spec.bytes_per_block as u64 {
            anyhow::bail!(
                "--kv-offload-host-gb {} holds no block of {} bytes (the disk tier is reached through the host tier)",
                self.kv_offload_host_gb,
                spec.bytes_per_block
            );
        }
        let disk = self.kv_offload_disk_dir.as_ref().map(|dir| strata_offload::DiskConfig {
            dir: dir.clone(),
            capacity_bytes: gb(self.kv_offload_disk_gb),
            direct_io: self.kv_offload_disk_direct_io,
        });
        let halves = strata_offload::open(strata_offload::OffloadConfig {
            host_bytes,
            disk,
            fingerprint,
            bytes_per_block: spec.bytes_per_block,
            block_size: spec.block_size,
        })?;
        Ok(Some(halves))
    }

    fn tiers(&self) -> String {
        let mut t = String::from("device");
        if self.enabled() {
            t.push_str(",host");
        }
        if self.kv_offload_disk_dir.is_some() {
            t.push_str(",disk");
        }
        t
    }
}

/// The simulated executor: the HTTP stack, scheduler and metrics under
/// load without model math (a latency model instead), with the built-in
/// tokenizer. For load tests and benchmarks.
#[cfg(feature = "sim")]
fn serve_sim(args: ServeArgs) -> Result<()> {
    let mut fake = FakeExecutor::new(65_536, args.model.block_size, 4096);
    fake.vocab_size = strata_model::builtin::VOCAB_SIZE;
    let connector = match connector(&args, &fake.spec, 0)? {
        Some((sched, worker)) => {
            fake.connector = WorkerHandle::new(worker);
            Some(sched)
        }
        None => None,
    };
    let latency = LatencyModel {
        per_step: Duration::from_micros(500),
        per_prefill_token: Duration::from_micros(20),
        per_decode_seq: Duration::from_micros(10),
    };
    let device = vec![("device".to_owned(), "sim".to_owned())];
    serve(args, SimExecutor::new(fake, latency, true), connector, Tokenizer::builtin(), device)
}

#[cfg(not(feature = "sim"))]
fn serve_sim(_: ServeArgs) -> Result<()> {
    anyhow::bail!("`--model sim` needs strata built with the `sim` feature (on by default)")
}

pub fn run(args: ServeArgs) -> Result<()> {
    args.vllm.check()?;
    // Checked before a model download, not after.
    kv_events_config(&args)?;
    if args.model.model == "sim" {
        return serve_sim(args);
    }
    let mut loaded = args.model.load_seeded(args.seed)?;
    let mut tokenizer =
        loaded.tokenizer.take().context("the server needs a model with a tokenizer")?;
    if let Some(arg) = &args.chat_template {
        let template = strata_tokenizer::load_chat_template_arg(arg)
            .with_context(|| format!("--chat-template {arg}"))?;
        tokenizer.set_chat_template(template);
    }
    let mut executor = loaded.executor;
    let spec = executor.kv_cache_spec();
    let connector = match connector(&args, &spec, executor.kv_fingerprint())? {
        Some((sched, worker)) => {
            executor.set_connector(worker);
            Some(sched)
        }
        None => None,
    };
    let device_labels = executor.device_labels();
    serve(args, executor, connector, tokenizer, device_labels)
}

fn serve<E: Executor + Send + 'static>(
    args: ServeArgs,
    executor: E,
    connector: Option<Box<dyn ConnectorScheduler>>,
    tokenizer: Tokenizer,
    device_labels: Vec<(String, String)>,
) -> Result<()> {
    let spec = executor.kv_cache_spec();
    let vocab_size = executor.vocab_size();
    let config = SchedulerConfig {
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        block_size: spec.block_size,
        num_blocks: spec.num_blocks,
        max_model_len: spec.max_model_len,
        policy: match args.scheduling_policy {
            Policy::Fcfs => SchedulingPolicy::Fcfs,
            Policy::Priority => SchedulingPolicy::Priority,
        },
        enable_prefix_caching: !args.no_enable_prefix_caching,
        kv_load_failure_policy: match args.offload.kv_load_failure_policy {
            FailurePolicy::Fail => KvLoadFailurePolicy::Fail,
            FailurePolicy::Recompute => KvLoadFailurePolicy::Recompute,
        },
    };
    let mut names = args.served_model_name.clone();
    if names.is_empty() {
        names.push(args.model.model.clone());
    }
    let name = names.remove(0);
    let generation_defaults = generation_defaults(&args)?;
    if !generation_defaults.is_empty() {
        tracing::info!(
            "default sampling parameters from the model's generation config: {generation_defaults:?} (--generation-config vllm turns them off)"
        );
    }
    // vLLM's cache config labels (llm-d reads block_size and
    // num_gpu_blocks). num_cpu_blocks: the host tier's slots, sized as
    // strata-offload sizes them.
    let num_cpu_blocks = if args.offload.enabled() {
        let host_bytes = (args.offload.kv_offload_host_gb.max(0.0) * 1e9) as u64;
        (host_bytes / (spec.bytes_per_block as u64).max(1)) as usize
    } else {
        0
    };
    let cache = CacheConfigInfo {
        block_size: spec.block_size,
        num_gpu_blocks: spec.num_blocks,
        num_cpu_blocks,
        // --kv-cache-dtype accepts only auto: the KV has the compute dtype.
        cache_dtype: "auto".into(),
        enable_prefix_caching: !args.no_enable_prefix_caching,
        tiers: args.offload.tiers(),
        device: device_labels,
    };
    let mut metrics = EngineMetrics::new(&name, "0", spec.max_model_len, &cache);
    if args.offload.enabled() {
        let mut tiers = vec![strata_offload::OffloadTier::Host];
        if args.offload.kv_offload_disk_dir.is_some() {
            tiers.push(strata_offload::OffloadTier::Disk);
        }
        metrics.enable_offload_series(&tiers);
    }
    if args.pd.enabled() {
        metrics.enable_pd_series();
    }
    let accounting = match &args.accounting_log {
        Some(path) => Some((
            AccountingLog::open(path.clone())
                .with_context(|| format!("opening {}", path.display()))?,
            name.clone(),
        )),
        None => None,
    };
    // With --disable-log-stats the line's interval is longer than any run.
    let log_interval = if args.disable_log_stats {
        Duration::from_secs(u32::MAX as u64)
    } else {
        Duration::from_secs_f64(args.log_stats_interval.max(0.1))
    };
    let kv_events = match kv_events_config(&args)? {
        Some(config) => Some(
            strata_server::kv_events::start(config, metrics.kv_event_counters())
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let engine = EngineHandle::spawn_publishing(
        EngineCore::with_connector(executor, config, connector),
        metrics,
        log_interval,
        accounting,
        kv_events,
    );
    engine.set_health_stall_timeout(Duration::from_secs_f64(args.health_stall_timeout));
    let tokenizer = Arc::new(tokenizer);
    let grammars = strata_structured::GrammarCompiler::new(tokenizer.clone(), vocab_size)
        .map(|c| Arc::new(c.observed(structured_observer(&engine))))
        .inspect_err(|why| tracing::warn!("structured outputs are off for this model: {why}"));
    if args.enable_auto_tool_choice && args.tool_call_parser.is_none() {
        anyhow::bail!("--enable-auto-tool-choice needs --tool-call-parser (as in vLLM)");
    }
    // vLLM refuses a reasoning parser whose tags the tokenizer lacks.
    if let Some(parser) = args.reasoning_parser {
        let missing =
            parser.required_tokens().into_iter().find(|t| tokenizer.token_to_id(t).is_none());
        if let Some(tag) = missing {
            let name = parser.name();
            anyhow::bail!("--reasoning-parser {name}: the tokenizer has no `{tag}` token");
        }
    }
    let state = Arc::new(AppState {
        engine: engine.clone(),
        tokenizer,
        served_model_name: name,
        model_aliases: names,
        max_model_len: spec.max_model_len,
        generation_defaults,
        trust_request_chat_template: args.trust_request_chat_template,
        api_key: args.api_key.clone(),
        max_queued_requests: args.max_queued_requests,
        reasoning_parser: args.reasoning_parser,
        grammars,
        tool_call_parser: args
            .tool_call_parser
            .as_deref()
            .and_then(strata_server::chat::tools::parser)
            .map(Arc::from),
        enable_auto_tool_choice: args.enable_auto_tool_choice,
    });
    let addr: SocketAddr =
        format!("{}:{}", args.host, args.port).parse().context("invalid --host/--port")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!("serving on http://{}", listener.local_addr()?);
        axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal()).await?;
        engine.shutdown();
        tracing::info!("stopped");
        Ok(())
    })
}

/// Structured outputs report to the engine's metrics.
fn structured_observer(engine: &EngineHandle) -> strata_structured::Observer {
    let metrics = engine.metrics.lock().map(|m| m.structured_output_metrics()).ok();
    match metrics {
        Some(m) => {
            let mask = m.clone();
            strata_structured::Observer {
                request: Arc::new(move |kind| m.count_request(kind)),
                mask_seconds: Arc::new(move |s| mask.observe_mask_seconds(s)),
            }
        }
        None => strata_structured::Observer::default(),
    }
}

/// `--kv-events-config`, parsed and checked (`None`: no events).
fn kv_events_config(args: &ServeArgs) -> Result<Option<strata_server::kv_events::KvEventsConfig>> {
    match &args.kv_events_config {
        Some(json) => {
            strata_server::kv_events::KvEventsConfig::parse(json).map_err(anyhow::Error::msg)
        }
        None => Ok(None),
    }
}

/// The sampling defaults `--generation-config` asks for.
fn generation_defaults(args: &ServeArgs) -> Result<GenerationDefaults> {
    let dir = match args.generation_config.as_str() {
        "vllm" => return Ok(GenerationDefaults::default()),
        "auto" => match args.model.source()? {
            strata_model::ModelSource::Dir(dir) => dir,
            // The built-in model and dummy shapes have no generation config.
            _ => return Ok(GenerationDefaults::default()),
        },
        dir => std::path::PathBuf::from(dir),
    };
    GenerationDefaults::from_dir(&dir).map_err(anyhow::Error::msg)
}

/// SIGINT or SIGTERM: stop accepting, let in-flight responses finish.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
