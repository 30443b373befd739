//! The engine's Prometheus families (vLLM-compatible names, strata
//! extensions under `strata:`), updated from step results only. The KV
//! offload tier families live in [`offload`], the prefill/decode transfer
//! families in [`pd`].
//!
//! Every family is registered in [`EngineMetrics::new`]; the registry is
//! then frozen behind an `Arc` and shared with [`MetricsExporter`], so
//! `/metrics` encodes the live atomics without the engine's lock on this
//! struct (which only the engine thread's `observe` needs).

mod kv_events;
mod offload;
mod pd;
mod structured;

pub use kv_events::KvEventCounters;
pub use structured::{StructuredOutputMetrics, KINDS as STRUCTURED_KINDS};

use crate::names::{engine, label};
use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use strata_core::{FinishReason, RequestId, StepResult, TokenSource};

use crate::buckets;
use crate::exposition::MetricsExporter;

type Labels = Vec<(String, String)>;

/// What `vllm:cache_config_info` reports, as labels named after vLLM's
/// `CacheConfig` fields (llm-d's EPP and autoscaler read `block_size` and
/// `num_gpu_blocks`), plus strata's `tiers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfigInfo {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the device KV pool (vLLM's `num_gpu_blocks`).
    pub num_gpu_blocks: usize,
    /// Blocks the host-RAM offload tier holds, 0 without one (vLLM's
    /// `num_cpu_blocks`, which its V1 engine always reports as 0).
    pub num_cpu_blocks: usize,
    /// vLLM's `cache_dtype`: `auto` is the model's compute dtype.
    pub cache_dtype: String,
    pub enable_prefix_caching: bool,
    /// e.g. "device" or "device,host,disk".
    pub tiers: String,
    /// Labels of `strata:device_info`: where the model runs (`device`:
    /// `cpu` or `cuda:N`) and, on a GPU, its name, compute capability and
    /// the driver, NVRTC and cuBLAS versions.
    pub device: Vec<(String, String)>,
}

impl CacheConfigInfo {
    /// A device-only pool with prefix caching in the compute dtype.
    pub fn device(block_size: usize, num_gpu_blocks: usize) -> Self {
        Self {
            block_size,
            num_gpu_blocks,
            num_cpu_blocks: 0,
            cache_dtype: "auto".into(),
            enable_prefix_caching: true,
            tiers: "device".into(),
            device: vec![("device".into(), "cpu".into())],
        }
    }
}

/// Per-request times the metrics need between steps.
#[derive(Clone, Copy, Debug, Default)]
struct Timeline {
    last_token_time: Option<f64>,
}

#[derive(Debug)]
pub struct EngineMetrics {
    /// Frozen after `new`: every family is registered there.
    registry: Arc<Registry>,
    base: Labels,
    timelines: HashMap<RequestId, Timeline>,
    num_requests_running: Family<Labels, Gauge>,
    num_requests_waiting: Family<Labels, Gauge>,
    num_requests_kv_fetch_by_stage: Family<Labels, Gauge>,
    kv_cache_usage_perc: Family<Labels, F64Gauge>,
    prefix_cache_queries: Family<Labels, Counter>,
    prefix_cache_hits: Family<Labels, Counter>,
    external_prefix_cache_queries: Family<Labels, Counter>,
    external_prefix_cache_hits: Family<Labels, Counter>,
    num_preemptions: Family<Labels, Counter>,
    prompt_tokens: Family<Labels, Counter>,
    prompt_tokens_by_source: Family<Labels, Counter>,
    prompt_tokens_cached: Family<Labels, Counter>,
    prompt_tokens_cached_by_source: Family<Labels, Counter>,
    generation_tokens: Family<Labels, Counter>,
    request_success: Family<Labels, Counter>,
    request_prompt_tokens: HistFamily,
    request_generation_tokens: HistFamily,
    request_params_max_tokens: HistFamily,
    request_params_n: HistFamily,
    iteration_tokens: HistFamily,
    ttft: HistFamily,
    itl: HistFamily,
    tpot: HistFamily,
    e2e: HistFamily,
    queue_time: HistFamily,
    inference_time: HistFamily,
    prefill_time: HistFamily,
    decode_time: HistFamily,
    request_num_preemptions: HistFamily,
    request_prefill_kv_computed_tokens: HistFamily,
    prompt_tokens_by_tier: Family<Labels, Counter>,
    prompt_tokens_recomputed: Family<Labels, Counter>,
    prefill_tokens_computed: Family<Labels, Counter>,
    accounting_violations: Family<Labels, Counter>,
    offload: offload::OffloadFamilies,
    /// Tiers given to `enable_offload_series` (the log line lists them).
    offload_tiers: Vec<strata_offload::OffloadTier>,
    pd: pd::PdFamilies,
    kv_events: kv_events::KvEventFamilies,
    structured: structured::StructuredFamilies,
}

/// Makes each labelled histogram of a family with the family's buckets.
#[derive(Clone, Debug)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type HistFamily = Family<Labels, Histogram, Buckets>;
/// A gauge of fractions (usage, residency).
type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// `source` values of `vllm:prompt_tokens_cached_by_source`, in the order
/// of the step record's hit fields: the device prefix cache, the two
/// offload tiers, and a peer engine (the record's `remote`).
const CACHED_SOURCES: [&str; 4] = ["device", "host", "disk", "p2p"];

/// `stage` values of `vllm:num_requests_kv_fetch_by_stage`.
const KV_FETCH_STAGES: [&str; 3] = ["waiting_to_start", "in_progress", "completed_waiting"];

fn histograms(buckets: &[f64]) -> HistFamily {
    Family::new_with_constructor(Buckets(buckets.into()))
}

impl EngineMetrics {
    pub fn new(
        model_name: &str,
        engine: &str,
        max_model_len: usize,
        cache: &CacheConfigInfo,
    ) -> Self {
        let base: Labels = vec![
            (label::MODEL_NAME.into(), model_name.into()),
            (label::ENGINE.into(), engine.into()),
        ];
        let token_buckets = buckets::one_two_five(max_model_len);
        let token_family = || histograms(&token_buckets);
        let mut m = Self {
            registry: Arc::default(),
            timelines: HashMap::new(),
            num_requests_running: Family::default(),
            num_requests_waiting: Family::default(),
            num_requests_kv_fetch_by_stage: Family::default(),
            kv_cache_usage_perc: Family::default(),
            prefix_cache_queries: Family::default(),
            prefix_cache_hits: Family::default(),
            external_prefix_cache_queries: Family::default(),
            external_prefix_cache_hits: Family::default(),
            num_preemptions: Family::default(),
            prompt_tokens: Family::default(),
            prompt_tokens_by_source: Family::default(),
            prompt_tokens_cached: Family::default(),
            prompt_tokens_cached_by_source: Family::default(),
            generation_tokens: Family::default(),
            request_success: Family::default(),
            request_prompt_tokens: token_family(),
            request_generation_tokens: token_family(),
            request_params_max_tokens: token_family(),
            request_params_n: histograms(buckets::PARAMS_N),
            iteration_tokens: histograms(buckets::ITERATION_TOKENS),
            ttft: histograms(buckets::TTFT),
            itl: histograms(buckets::ITL),
            tpot: histograms(buckets::ITL),
            e2e: histograms(buckets::REQUEST_LATENCY),
            queue_time: histograms(buckets::REQUEST_LATENCY),
            inference_time: histograms(buckets::REQUEST_LATENCY),
            prefill_time: histograms(buckets::REQUEST_LATENCY),
            decode_time: histograms(buckets::REQUEST_LATENCY),
            request_num_preemptions: histograms(buckets::PREEMPTIONS),
            request_prefill_kv_computed_tokens: token_family(),
            prompt_tokens_by_tier: Family::default(),
            prompt_tokens_recomputed: Family::default(),
            prefill_tokens_computed: Family::default(),
            accounting_violations: Family::default(),
            offload: offload::OffloadFamilies::new(),
            offload_tiers: Vec::new(),
            pd: pd::PdFamilies::new(),
            kv_events: kv_events::KvEventFamilies::default(),
            structured: structured::StructuredFamilies::new(),
            base,
        };
        let mut registry = Registry::default();
        m.register_all(&mut registry, cache);
        m.register_offload(&mut registry);
        m.register_pd(&mut registry);
        m.register_kv_events(&mut registry);
        m.register_structured(&mut registry);
        m.registry = Arc::new(registry);
        m
    }

    /// A handle that encodes these families without borrowing `self`: the
    /// families are shared atomics, so what it encodes is always current.
    pub fn exporter(&self) -> MetricsExporter {
        MetricsExporter::new(self.registry.clone())
    }

    fn labels(&self, extra: &[(&str, &str)]) -> Labels {
        let mut l = self.base.clone();
        l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l
    }

    fn register_all(&self, r: &mut Registry, cache: &CacheConfigInfo) {
        r.register(
            engine::NUM_REQUESTS_RUNNING,
            "Requests in the running batch",
            self.num_requests_running.clone(),
        );
        r.register(
            engine::NUM_REQUESTS_WAITING,
            "Requests waiting (including those waiting for remote KV)",
            self.num_requests_waiting.clone(),
        );
        r.register(
            engine::NUM_REQUESTS_KV_FETCH_BY_STAGE,
            "Requests fetching KV from a peer, by stage",
            self.num_requests_kv_fetch_by_stage.clone(),
        );
        r.register(
            engine::KV_CACHE_USAGE_PERC,
            "Fraction of the device KV pool in use (0-1)",
            self.kv_cache_usage_perc.clone(),
        );
        r.register(
            engine::PREFIX_CACHE_QUERIES,
            "Prompt tokens looked up in the prefix cache at admission",
            self.prefix_cache_queries.clone(),
        );
        r.register(
            engine::PREFIX_CACHE_HITS,
            "Prompt tokens found in the prefix cache at admission",
            self.prefix_cache_hits.clone(),
        );
        r.register(
            engine::EXTERNAL_PREFIX_CACHE_QUERIES,
            "Prompt tokens looked up by connectors beyond the local hit",
            self.external_prefix_cache_queries.clone(),
        );
        r.register(
            engine::EXTERNAL_PREFIX_CACHE_HITS,
            "Prompt tokens connectors supplied beyond the local hit",
            self.external_prefix_cache_hits.clone(),
        );
        r.register(engine::NUM_PREEMPTIONS, "Preemptions", self.num_preemptions.clone());
        r.register(
            engine::PROMPT_TOKENS,
            "Prompt tokens of requests that produced a first token",
            self.prompt_tokens.clone(),
        );
        r.register(
            engine::PROMPT_TOKENS_BY_SOURCE,
            "Prompt tokens by where their KV came from",
            self.prompt_tokens_by_source.clone(),
        );
        r.register(
            engine::PROMPT_TOKENS_CACHED,
            "Prompt tokens not computed here (local cache hit + external)",
            self.prompt_tokens_cached.clone(),
        );
        r.register(
            engine::PROMPT_TOKENS_CACHED_BY_SOURCE,
            "Prompt tokens found at admission, by the tier that held them",
            self.prompt_tokens_cached_by_source.clone(),
        );
        r.register(engine::GENERATION_TOKENS, "Generated tokens", self.generation_tokens.clone());
        r.register(
            engine::REQUEST_SUCCESS,
            "Finished requests by finish reason",
            self.request_success.clone(),
        );
        r.register(
            engine::REQUEST_PROMPT_TOKENS,
            "Prompt tokens per finished request",
            self.request_prompt_tokens.clone(),
        );
        r.register(
            engine::REQUEST_GENERATION_TOKENS,
            "Generated tokens per finished request",
            self.request_generation_tokens.clone(),
        );
        r.register(
            engine::REQUEST_PARAMS_MAX_TOKENS,
            "max_tokens of finished requests",
            self.request_params_max_tokens.clone(),
        );
        r.register(
            engine::REQUEST_PARAMS_N,
            "n of API requests (each choice is its own engine request)",
            self.request_params_n.clone(),
        );
        r.register(
            engine::ITERATION_TOKENS_TOTAL,
            "Tokens the model ran per step",
            self.iteration_tokens.clone(),
        );
        r.register(engine::TIME_TO_FIRST_TOKEN_SECONDS, "Time to first token", self.ttft.clone());
        r.register(
            engine::INTER_TOKEN_LATENCY_SECONDS,
            "Time between consecutive output tokens",
            self.itl.clone(),
        );
        // vLLM before 0.11 named the inter-token latency
        // `time_per_output_token_seconds`; llm-d's autoscaler still reads
        // that name. The same family under both names: one observation,
        // two identical expositions that can never disagree.
        r.register(
            engine::TIME_PER_OUTPUT_TOKEN_SECONDS,
            "Time between consecutive output tokens (vLLM's name before 0.11; same samples as vllm:inter_token_latency_seconds)",
            self.itl.clone(),
        );
        r.register(
            engine::REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS,
            "Mean time per output token after the first, per request",
            self.tpot.clone(),
        );
        r.register("vllm:e2e_request_latency_seconds", "Arrival to finish", self.e2e.clone());
        r.register(
            engine::REQUEST_QUEUE_TIME_SECONDS,
            "Arrival to first scheduled",
            self.queue_time.clone(),
        );
        r.register(
            engine::REQUEST_INFERENCE_TIME_SECONDS,
            "First scheduled to finish",
            self.inference_time.clone(),
        );
        r.register(
            engine::REQUEST_PREFILL_TIME_SECONDS,
            "First scheduled to first token",
            self.prefill_time.clone(),
        );
        r.register(
            engine::REQUEST_DECODE_TIME_SECONDS,
            "First token to finish",
            self.decode_time.clone(),
        );
        r.register(
            engine::REQUEST_NUM_PREEMPTIONS,
            "Preemptions per finished request",
            self.request_num_preemptions.clone(),
        );
        r.register(
            engine::REQUEST_PREFILL_KV_COMPUTED_TOKENS,
            "Prompt tokens computed locally per request",
            self.request_prefill_kv_computed_tokens.clone(),
        );
        r.register(
            engine::PROMPT_TOKENS_BY_TIER,
            "Prompt tokens by source, the full partition",
            self.prompt_tokens_by_tier.clone(),
        );
        r.register(
            engine::PROMPT_TOKENS_RECOMPUTED,
            "Tokens computed a second time, by reason",
            self.prompt_tokens_recomputed.clone(),
        );
        r.register(
            engine::PREFILL_TOKENS_COMPUTED,
            "Prefill tokens the model ran (recomputes included)",
            self.prefill_tokens_computed.clone(),
        );
        r.register(
            engine::ACCOUNTING_VIOLATIONS,
            "Records that failed the accounting identity (should stay 0)",
            self.accounting_violations.clone(),
        );
        let info: Family<Labels, Gauge> = Family::default();
        let block_size = cache.block_size.to_string();
        let num_gpu_blocks = cache.num_gpu_blocks.to_string();
        let num_cpu_blocks = cache.num_cpu_blocks.to_string();
        info.get_or_create(&self.labels(&[
            (label::BLOCK_SIZE, &block_size),
            (label::NUM_GPU_BLOCKS, &num_gpu_blocks),
            (label::NUM_CPU_BLOCKS, &num_cpu_blocks),
            (label::CACHE_DTYPE, &cache.cache_dtype),
            // vLLM writes each field with Python's str(): True / False.
            (label::ENABLE_PREFIX_CACHING, python_bool(cache.enable_prefix_caching)),
            (label::TIERS, &cache.tiers),
        ]))
        .set(1);
        r.register(engine::CACHE_CONFIG_INFO, "Information of the LLMEngine CacheConfig", info);
        let device: Family<Labels, Gauge> = Family::default();
        let device_labels: Vec<(&str, &str)> =
            cache.device.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        device.get_or_create(&self.labels(&device_labels)).set(1);
        r.register(
            engine::DEVICE_INFO,
            "The device the model runs on, with driver and library versions on a GPU",
            device,
        );
        // Every series exists from the start (at zero), so dashboards and
        // rates see each family before the first request.
        let base = self.base.clone();
        for c in [
            &self.prefix_cache_queries,
            &self.prefix_cache_hits,
            &self.external_prefix_cache_queries,
            &self.external_prefix_cache_hits,
            &self.num_preemptions,
            &self.prompt_tokens,
            &self.prompt_tokens_cached,
            &self.generation_tokens,
            &self.prefill_tokens_computed,
            &self.accounting_violations,
        ] {
            let _ = c.get_or_create(&base);
        }
        let _ = self.num_requests_running.get_or_create(&base);
        let _ = self.num_requests_waiting.get_or_create(&base);
        let _ = self.kv_cache_usage_perc.get_or_create(&base);
        for stage in KV_FETCH_STAGES {
            let _ = self
                .num_requests_kv_fetch_by_stage
                .get_or_create(&self.labels(&[(label::STAGE, stage)]));
        }
        for h in [
            &self.request_prompt_tokens,
            &self.request_generation_tokens,
            &self.request_params_max_tokens,
            &self.request_params_n,
            &self.iteration_tokens,
            &self.ttft,
            &self.itl,
            &self.tpot,
            &self.e2e,
            &self.queue_time,
            &self.inference_time,
            &self.prefill_time,
            &self.decode_time,
            &self.request_num_preemptions,
            &self.request_prefill_kv_computed_tokens,
        ] {
            let _ = h.get_or_create(&base);
        }
        for s in TokenSource::ALL {
            let _ = self
                .prompt_tokens_by_tier
                .get_or_create(&self.labels(&[(label::SOURCE, s.as_str())]));
        }
        for s in ["local_compute", "local_cache_hit", "external_kv_transfer"] {
            let _ = self.prompt_tokens_by_source.get_or_create(&self.labels(&[(label::SOURCE, s)]));
        }
        for s in CACHED_SOURCES {
            let _ = self
                .prompt_tokens_cached_by_source
                .get_or_create(&self.labels(&[(label::SOURCE, s)]));
        }
        for r in ["kv_load_failure", "preemption"] {
            let _ =
                self.prompt_tokens_recomputed.get_or_create(&self.labels(&[(label::REASON, r)]));
        }
        for f in
            [FinishReason::Stop, FinishReason::Length, FinishReason::Abort, FinishReason::Error]
        {
            let _ = self
                .request_success
                .get_or_create(&self.labels(&[(label::FINISHED_REASON, f.as_str())]));
        }
    }

    /// Updates every family from one step's records, at time `now` (the
    /// same clock the engine was given).
    pub fn observe(&mut self, result: &StepResult, now: f64) {
        let base = self.base.clone();
        let inc = |f: &Family<Labels, Counter>, labels: &Labels, v: u64| {
            if v > 0 {
                f.get_or_create(labels).inc_by(v);
            }
        };
        if let Some(s) = result.step {
            self.num_requests_running.get_or_create(&base).set(s.num_running as i64);
            self.num_requests_waiting.get_or_create(&base).set(s.num_waiting as i64);
            let usage = if s.num_blocks_total == 0 {
                0.0
            } else {
                s.num_blocks_used as f64 / s.num_blocks_total as f64
            };
            self.kv_cache_usage_perc.get_or_create(&base).set(usage);
            let stages =
                [s.kv_fetch_waiting_to_start, s.kv_fetch_in_progress, s.kv_fetch_completed_waiting];
            for (stage, n) in KV_FETCH_STAGES.into_iter().zip(stages) {
                self.num_requests_kv_fetch_by_stage
                    .get_or_create(&self.labels(&[(label::STAGE, stage)]))
                    .set(n.into());
            }
            inc(&self.prefix_cache_queries, &base, s.prefix_cache_queries.into());
            inc(&self.prefix_cache_hits, &base, s.prefix_cache_hits.into());
            inc(&self.external_prefix_cache_queries, &base, s.external_prefix_cache_queries.into());
            inc(&self.external_prefix_cache_hits, &base, s.external_prefix_cache_hits.into());
            // A14: the four sources partition local + external hits.
            let by_source = [
                s.prefix_cache_hits,
                s.external_hits_host,
                s.external_hits_disk,
                s.external_hits_remote,
            ];
            for (source, tokens) in CACHED_SOURCES.into_iter().zip(by_source) {
                inc(
                    &self.prompt_tokens_cached_by_source,
                    &self.labels(&[(label::SOURCE, source)]),
                    tokens.into(),
                );
            }
            inc(&self.num_preemptions, &base, s.num_preemptions.into());
            inc(&self.prefill_tokens_computed, &base, s.num_prefill_tokens.into());
            inc(
                &self.prompt_tokens_recomputed,
                &self.labels(&[(label::REASON, "preemption")]),
                s.num_recomputed_preemption_tokens.into(),
            );
            if s.num_tokens() > 0 {
                // Rule 6: tokens the model ran, never transferred or cached ones.
                self.iteration_tokens.get_or_create(&base).observe(s.num_tokens() as f64);
            }
        }
        inc(&self.accounting_violations, &base, result.accounting_violations.len() as u64);
        self.observe_offload(&result.connector_stats);
        self.observe_pd(&result.connector_stats);
        for r in &result.prefill_records {
            inc(&self.prompt_tokens, &base, r.prompt_tokens.into());
            for s in TokenSource::ALL {
                inc(
                    &self.prompt_tokens_by_tier,
                    &self.labels(&[(label::SOURCE, s.as_str())]),
                    r.tokens(s).into(),
                );
            }
            let external = u64::from(r.external_tokens());
            inc(
                &self.prompt_tokens_by_source,
                &self.labels(&[(label::SOURCE, "local_compute")]),
                r.local_compute.into(),
            );
            inc(
                &self.prompt_tokens_by_source,
                &self.labels(&[(label::SOURCE, "local_cache_hit")]),
                r.local_cache_hit.into(),
            );
            inc(
                &self.prompt_tokens_by_source,
                &self.labels(&[(label::SOURCE, "external_kv_transfer")]),
                external,
            );
            inc(&self.prompt_tokens_cached, &base, u64::from(r.local_cache_hit) + external);
            inc(
                &self.prompt_tokens_recomputed,
                &self.labels(&[(label::REASON, "kv_load_failure")]),
                r.recomputed.kv_load_failure.into(),
            );
            inc(
                &self.prompt_tokens_recomputed,
                &self.labels(&[(label::REASON, "preemption")]),
                r.recomputed.preemption.into(),
            );
            self.request_prefill_kv_computed_tokens
                .get_or_create(&base)
                .observe(r.local_compute as f64);
        }
        let mut generated = 0u64;
        for o in &result.outputs {
            if o.new_token_id.is_none() {
                continue;
            }
            generated += 1;
            let t = self.timelines.entry(o.request_id).or_default();
            if let Some(last) = t.last_token_time {
                self.itl.get_or_create(&base).observe((now - last).max(0.0));
            }
            t.last_token_time = Some(now);
        }
        inc(&self.generation_tokens, &base, generated);
        for f in &result.finish_records {
            self.timelines.remove(&f.request_id);
            inc(
                &self.request_success,
                &self.labels(&[(label::FINISHED_REASON, f.reason.as_str())]),
                1,
            );
            self.request_prompt_tokens.get_or_create(&base).observe(f.num_prompt_tokens as f64);
            self.request_generation_tokens
                .get_or_create(&base)
                .observe(f.num_generation_tokens as f64);
            self.request_params_max_tokens.get_or_create(&base).observe(f.max_tokens as f64);
            self.request_num_preemptions.get_or_create(&base).observe(f.num_preemptions as f64);
            let since = |a: f64, b: f64| (b - a).max(0.0);
            self.e2e.get_or_create(&base).observe(since(f.arrival_time, f.finished_time));
            if let Some(sched) = f.first_scheduled_time {
                self.queue_time.get_or_create(&base).observe(since(f.arrival_time, sched));
                self.inference_time.get_or_create(&base).observe(since(sched, f.finished_time));
                if let Some(first) = f.first_token_time {
                    self.prefill_time.get_or_create(&base).observe(since(sched, first));
                }
            }
            // A20: TTFT only when a token was produced.
            if let Some(first) = f.first_token_time {
                self.ttft.get_or_create(&base).observe(since(f.arrival_time, first));
                self.decode_time.get_or_create(&base).observe(since(first, f.finished_time));
                if f.num_generation_tokens > 1 {
                    let per = since(first, f.finished_time) / (f.num_generation_tokens - 1) as f64;
                    self.tpot.get_or_create(&base).observe(per);
                }
            }
        }
    }

    /// An API request asked for `n` choices. The engine sees `n` requests,
    /// so this one family comes from the server rather than the records.
    pub fn observe_request_params_n(&self, n: u32) {
        self.request_params_n.get_or_create(&self.base).observe(f64::from(n));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        self.exporter().encode()
    }

    /// The Prometheus text format 0.0.4 exposition, as vLLM serves it on
    /// `/metrics` (see [`MetricsExporter::encode_prometheus`]).
    pub fn encode_prometheus(&self) -> String {
        self.exporter().encode_prometheus()
    }
}

fn python_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}
