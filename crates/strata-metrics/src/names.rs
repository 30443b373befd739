//! Every metric family name and label key strata exports, in one place:
//! the engine's families (fed by [`crate::EngineMetrics`]) and the router's
//! (`strata-server`'s router metrics use these constants too). Names are
//! given as registered: Prometheus' text format adds `_total` to counters
//! and `_bucket`/`_sum`/`_count` to histograms. `vllm:` names are vLLM's
//! own (same meaning, labels and buckets, see docs/metrics.md); `strata:`
//! names are strata's additions. Bucket bounds are in [`crate::buckets`].

/// Engine families: requests, tokens, latencies, prefix cache, accounting.
pub mod engine {
    pub const NUM_REQUESTS_RUNNING: &str = "vllm:num_requests_running";
    pub const NUM_REQUESTS_WAITING: &str = "vllm:num_requests_waiting";
    pub const NUM_REQUESTS_KV_FETCH_BY_STAGE: &str = "vllm:num_requests_kv_fetch_by_stage";
    pub const KV_CACHE_USAGE_PERC: &str = "vllm:kv_cache_usage_perc";
    pub const PREFIX_CACHE_QUERIES: &str = "vllm:prefix_cache_queries";
    pub const PREFIX_CACHE_HITS: &str = "vllm:prefix_cache_hits";
    pub const EXTERNAL_PREFIX_CACHE_QUERIES: &str = "vllm:external_prefix_cache_queries";
    pub const EXTERNAL_PREFIX_CACHE_HITS: &str = "vllm:external_prefix_cache_hits";
    pub const NUM_PREEMPTIONS: &str = "vllm:num_preemptions";
    pub const PROMPT_TOKENS: &str = "vllm:prompt_tokens";
    pub const PROMPT_TOKENS_BY_SOURCE: &str = "vllm:prompt_tokens_by_source";
    pub const PROMPT_TOKENS_CACHED: &str = "vllm:prompt_tokens_cached";
    pub const PROMPT_TOKENS_CACHED_BY_SOURCE: &str = "vllm:prompt_tokens_cached_by_source";
    pub const GENERATION_TOKENS: &str = "vllm:generation_tokens";
    pub const REQUEST_SUCCESS: &str = "vllm:request_success";
    pub const REQUEST_PROMPT_TOKENS: &str = "vllm:request_prompt_tokens";
    pub const REQUEST_GENERATION_TOKENS: &str = "vllm:request_generation_tokens";
    pub const REQUEST_PARAMS_MAX_TOKENS: &str = "vllm:request_params_max_tokens";
    pub const REQUEST_PARAMS_N: &str = "vllm:request_params_n";
    pub const ITERATION_TOKENS_TOTAL: &str = "vllm:iteration_tokens_total";
    pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "vllm:time_to_first_token_seconds";
    pub const INTER_TOKEN_LATENCY_SECONDS: &str = "vllm:inter_token_latency_seconds";
    /// vLLM's name for the inter-token latency before 0.11, still read by
    /// llm-d's workload-variant-autoscaler (`_sum`/`_count`): the same
    /// observations as [`INTER_TOKEN_LATENCY_SECONDS`].
    pub const TIME_PER_OUTPUT_TOKEN_SECONDS: &str = "vllm:time_per_output_token_seconds";
    pub const REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS: &str =
        "vllm:request_time_per_output_token_seconds";
    pub const REQUEST_QUEUE_TIME_SECONDS: &str = "vllm:request_queue_time_seconds";
    pub const REQUEST_INFERENCE_TIME_SECONDS: &str = "vllm:request_inference_time_seconds";
    pub const REQUEST_PREFILL_TIME_SECONDS: &str = "vllm:request_prefill_time_seconds";
    pub const REQUEST_DECODE_TIME_SECONDS: &str = "vllm:request_decode_time_seconds";
    pub const REQUEST_NUM_PREEMPTIONS: &str = "vllm:request_num_preemptions";
    pub const REQUEST_PREFILL_KV_COMPUTED_TOKENS: &str = "vllm:request_prefill_kv_computed_tokens";
    pub const PROMPT_TOKENS_BY_TIER: &str = "strata:prompt_tokens_by_tier";
    pub const PROMPT_TOKENS_RECOMPUTED: &str = "strata:prompt_tokens_recomputed";
    pub const PREFILL_TOKENS_COMPUTED: &str = "strata:prefill_tokens_computed";
    pub const ACCOUNTING_VIOLATIONS: &str = "strata:accounting_violations";
    pub const CACHE_CONFIG_INFO: &str = "vllm:cache_config_info";
    pub const DEVICE_INFO: &str = "strata:device_info";
}

/// KV offload families (host and disk tiers).
pub mod offload {
    pub const KV_OFFLOAD_TOTAL_BYTES: &str = "vllm:kv_offload_total_bytes";
    pub const KV_OFFLOAD_TOTAL_TIME: &str = "vllm:kv_offload_total_time";
    pub const KV_OFFLOAD_SIZE: &str = "vllm:kv_offload_size";
    pub const KV_OFFLOAD_THROUGHPUT_BYTES_PER_SECOND: &str =
        "strata:kv_offload_throughput_bytes_per_second";
    pub const KV_OFFLOAD_QUERIES: &str = "vllm:kv_offload_queries";
    pub const KV_OFFLOAD_HITS: &str = "vllm:kv_offload_hits";
    pub const KV_OFFLOAD_RESIDENCY_PERC: &str = "strata:kv_offload_residency_perc";
    pub const KV_OFFLOAD_INFLIGHT_PERC: &str = "strata:kv_offload_inflight_perc";
    pub const KV_OFFLOAD_ALLOCATION_FAILURE: &str = "vllm:kv_offload_allocation_failure";
    pub const KV_OFFLOAD_EVICTIONS: &str = "strata:kv_offload_evictions";
    pub const KV_OFFLOAD_FAILURES: &str = "strata:kv_offload_failures";
}

/// Prefill/decode disaggregation families.
pub mod pd {
    pub const KV_TRANSFER_BYTES: &str = "strata:kv_transfer_bytes";
    pub const KV_TRANSFER_SECONDS: &str = "strata:kv_transfer_seconds";
    pub const KV_TRANSFER_FAILURES: &str = "strata:kv_transfer_failures";
    pub const KV_TRANSFER_FAILED_TOKENS: &str = "strata:kv_transfer_failed_tokens";
    pub const KV_LEASES_HELD_TOKENS: &str = "strata:kv_leases_held_tokens";
    pub const KV_LEASES_EXPIRED: &str = "strata:kv_leases_expired";
}

/// The KV-event publisher's families (`--kv-events-config`).
pub mod kv_events {
    pub const PUBLISHED_BATCHES: &str = "strata:kv_events_published_batches";
    pub const PUBLISHED: &str = "strata:kv_events_published";
    pub const DROPPED_BATCHES: &str = "strata:kv_events_dropped_batches";
    pub const DROPPED: &str = "strata:kv_events_dropped";
    pub const QUEUED_BATCHES: &str = "strata:kv_events_queued_batches";
}

/// Structured outputs' families.
pub mod structured {
    pub const REQUESTS: &str = "strata:structured_output_requests";
    pub const MASK_SECONDS: &str = "strata:structured_output_mask_seconds";
}

/// The P/D router's own families (`strata router`).
pub mod router {
    pub const ROUTER_REQUESTS: &str = "strata:router_requests";
    pub const ROUTER_ERRORS: &str = "strata:router_errors";
    pub const ROUTER_HOP_SECONDS: &str = "strata:router_hop_seconds";
    pub const ROUTER_ENGINE_IN_FLIGHT: &str = "strata:router_engine_in_flight";
}

/// Label keys.
pub mod label {
    pub const MODEL_NAME: &str = "model_name";
    pub const ENGINE: &str = "engine";
    pub const SOURCE: &str = "source";
    pub const REASON: &str = "reason";
    pub const TIER: &str = "tier";
    pub const TRANSFER_TYPE: &str = "transfer_type";
    pub const DIRECTION: &str = "direction";
    pub const STAGE: &str = "stage";
    pub const FINISHED_REASON: &str = "finished_reason";
    pub const OP: &str = "op";
    pub const KIND: &str = "kind";
    pub const ENDPOINT: &str = "endpoint";
    pub const HOP: &str = "hop";
    pub const ROLE: &str = "role";
    pub const URL: &str = "url";
    pub const BLOCK_SIZE: &str = "block_size";
    pub const NUM_GPU_BLOCKS: &str = "num_gpu_blocks";
    pub const NUM_CPU_BLOCKS: &str = "num_cpu_blocks";
    pub const CACHE_DTYPE: &str = "cache_dtype";
    pub const ENABLE_PREFIX_CACHING: &str = "enable_prefix_caching";
    pub const TIERS: &str = "tiers";
}
