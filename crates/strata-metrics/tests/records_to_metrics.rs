//! Metrics and the log line from a scripted engine run: counters equal the
//! sums of the records, the partition adds up, iteration tokens are what
//! the model ran, and nothing decreases between scrapes.

#![allow(clippy::unwrap_used)]

mod common;

use common::{series, value};
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::Harness;
use strata_core::{NewRequest, PrefillRecord, SamplingParams, StepResult};
use strata_metrics::{CacheConfigInfo, EngineMetrics, LogReporter};

fn run() -> (Vec<(StepResult, f64)>, EngineMetrics, LogReporter) {
    let config = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 16,
        block_size: 4,
        num_blocks: 24,
        max_model_len: 256,
        ..SchedulerConfig::default()
    };
    let cache = CacheConfigInfo::device(4, 24);
    let mut m = EngineMetrics::new("builtin", "0", 256, &cache);
    let mut log = LogReporter::new(0, 5.0);
    let mut results = Vec::new();
    let mut h = Harness::fake(config).observed(|r, t| {
        m.observe(r, t);
        log.observe(r);
        results.push((r.clone(), t));
    });
    let shared: Vec<u32> = (10..30).collect();
    for i in 0..6u32 {
        let mut prompt = shared.clone();
        prompt.extend(100 + i * 10..105 + i * 10);
        let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(6) };
        h.add(NewRequest::new(prompt, params));
        for _ in 0..3 {
            h.step();
        }
    }
    let id = h.add(NewRequest::new(vec![5; 9], SamplingParams::greedy(3)));
    let now = h.now;
    h.abort(id, now);
    h.drain(1000);
    drop(h);
    (results, m, log)
}

fn records(results: &[(StepResult, f64)]) -> Vec<PrefillRecord> {
    results.iter().flat_map(|(r, _)| r.prefill_records.iter().copied()).collect()
}

#[test]
fn counters_equal_the_sums_of_the_records() {
    let (results, m, _) = run();
    let text = m.encode();
    let recs = records(&results);
    assert_eq!(recs.len(), 6);
    let sum = |f: fn(&PrefillRecord) -> u32| recs.iter().map(|r| f(r) as f64).sum::<f64>();
    assert_eq!(value(&text, "vllm:prompt_tokens_total{"), sum(|r| r.prompt_tokens));
    assert_eq!(value(&text, "strata:prompt_tokens_by_tier_total{"), sum(|r| r.prompt_tokens));
    assert_eq!(value(&text, "vllm:prompt_tokens_by_source_total{"), sum(|r| r.prompt_tokens));
    let hits = sum(|r| r.local_cache_hit);
    assert!(hits > 0.0, "the shared prefix was hit");
    assert_eq!(
        value(
            &text,
            r#"strata:prompt_tokens_by_tier_total{model_name="builtin",engine="0",source="local_cache_hit"}"#
        ),
        hits
    );
    assert_eq!(
        value(
            &text,
            r#"vllm:prompt_tokens_by_source_total{model_name="builtin",engine="0",source="local_compute"}"#
        ),
        sum(|r| r.local_compute)
    );
    assert_eq!(value(&text, "vllm:prompt_tokens_cached_total{"), hits);
    let generated: usize = results
        .iter()
        .map(|(r, _)| r.outputs.iter().filter(|o| o.new_token_id.is_some()).count())
        .sum();
    assert_eq!(value(&text, "vllm:generation_tokens_total{"), generated as f64);
    assert_eq!(
        value(
            &text,
            r#"vllm:request_success_total{model_name="builtin",engine="0",finished_reason="length"}"#
        ),
        6.0
    );
    assert_eq!(
        value(
            &text,
            r#"vllm:request_success_total{model_name="builtin",engine="0",finished_reason="abort"}"#
        ),
        1.0
    );
    // A20: six TTFT samples (the aborted request produced no token).
    assert_eq!(value(&text, "vllm:time_to_first_token_seconds_count{"), 6.0);
    assert_eq!(value(&text, "vllm:e2e_request_latency_seconds_count{"), 7.0);
    assert_eq!(value(&text, "strata:accounting_violations_total{"), 0.0);
    assert!(text.contains(r#"vllm:cache_config_info{model_name="builtin",engine="0",block_size="4",num_gpu_blocks="24",num_cpu_blocks="0",cache_dtype="auto",enable_prefix_caching="True",tiers="device"} 1"#), "{text}");
}

/// vLLM's pre-0.11 name of the inter-token latency carries exactly the
/// same buckets, sum and count (llm-d's autoscaler reads its sum/count).
#[test]
fn time_per_output_token_is_the_inter_token_latency_under_its_old_name() {
    let (_, m, _) = run();
    let text = m.encode_prometheus();
    let itl: Vec<(String, f64)> = series(&text)
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("vllm:inter_token_latency_seconds").map(|rest| (rest.to_string(), v))
        })
        .collect();
    let tpot: Vec<(String, f64)> = series(&text)
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("vllm:time_per_output_token_seconds").map(|rest| (rest.to_string(), v))
        })
        .collect();
    assert_eq!(itl.len(), 19 + 1 + 2, "vLLM's 19 ITL bounds, +Inf, _sum and _count");
    assert_eq!(itl, tpot);
    // Six requests of six tokens each: five gaps per request.
    assert_eq!(value(&text, "vllm:time_per_output_token_seconds_count{"), 30.0);
    assert!(text.contains("# TYPE vllm:time_per_output_token_seconds histogram\n"), "{text}");
}

/// An exporter taken at start-up (as the server does) encodes from
/// another thread while steps are observed: every scrape parses, and no
/// counter, bucket, sum or count is ever lower than in the scrape before.
#[test]
fn an_exporter_on_another_thread_sees_only_growing_counters() {
    let (results, _, _) = run();
    let mut m = EngineMetrics::new("builtin", "0", 256, &CacheConfigInfo::device(4, 24));
    let exporter = m.exporter();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::sync::Arc::new(std::sync::Barrier::new(2));
    let scraper = {
        let (done, started) = (done.clone(), started.clone());
        std::thread::spawn(move || {
            let mut scrapes = vec![series(&exporter.encode_prometheus())];
            started.wait();
            // Bounded: stops when the observer is done, or after 100k scrapes.
            while !done.load(std::sync::atomic::Ordering::SeqCst) && scrapes.len() < 100_000 {
                scrapes.push(series(&exporter.encode_prometheus()));
            }
            scrapes.push(series(&exporter.encode_prometheus()));
            scrapes
        })
    };
    started.wait();
    for (r, t) in &results {
        m.observe(r, *t);
        std::thread::yield_now();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let scrapes = scraper.join().unwrap();
    assert!(scrapes.len() >= 3, "{} scrapes", scrapes.len());
    for pair in scrapes.windows(2) {
        let old: std::collections::HashMap<&str, f64> =
            pair[0].iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for (k, v) in &pair[1] {
            assert!(*v >= 0.0, "{k} is negative");
            let monotone = ["_total", "_count", "_sum", "_bucket"].iter().any(|s| k.contains(s));
            if let Some(o) = old.get(k.as_str()) {
                assert!(!monotone || v >= o, "{k} decreased from {o} to {v}");
            }
        }
    }
    // The last scrape is the final state, as the struct itself encodes it.
    assert_eq!(scrapes.last().unwrap(), &series(&m.encode_prometheus()));
}

#[test]
fn iteration_tokens_observe_only_what_the_model_ran() {
    let (results, m, _) = run();
    let text = m.encode();
    let steps: Vec<u32> = results
        .iter()
        .filter_map(|(r, _)| r.step)
        .map(|s| s.num_tokens())
        .filter(|&n| n > 0)
        .collect();
    assert_eq!(value(&text, "vllm:iteration_tokens_total_count{"), steps.len() as f64);
    assert_eq!(
        value(&text, "vllm:iteration_tokens_total_sum{"),
        steps.iter().map(|&n| n as f64).sum::<f64>()
    );
    assert!(steps.iter().all(|&n| n <= 16), "the budget bounds every step");
}

#[test]
fn nothing_decreases_or_goes_negative_between_scrapes() {
    let (results, _, _) = run();
    let cache = CacheConfigInfo::device(4, 24);
    let mut m = EngineMetrics::new("builtin", "0", 256, &cache);
    let mut previous: Vec<(String, f64)> = Vec::new();
    for (r, t) in &results {
        m.observe(r, *t);
        let now = series(&m.encode());
        for (k, v) in &now {
            assert!(*v >= 0.0, "{k} is negative");
            let monotone = k.contains("_total")
                || k.contains("_count")
                || k.contains("_sum")
                || k.contains("_bucket");
            if let Some((_, old)) = previous.iter().find(|(pk, _)| pk == k) {
                assert!(!monotone || v >= old, "{k} decreased from {old} to {v}");
            }
        }
        previous = now;
    }
}

#[test]
fn the_log_line_reports_the_interval_and_is_quiet_when_idle() {
    let (results, _, _) = run();
    let mut log = LogReporter::new(0, 5.0);
    assert_eq!(log.maybe_log(0.0), None, "the first call starts the interval");
    let mut lines = Vec::new();
    for (r, t) in &results {
        log.observe(r);
        lines.extend(log.maybe_log(*t));
    }
    assert!(!lines.is_empty());
    let first = &lines[0];
    assert!(first.starts_with("Engine 000: Avg prompt throughput: "), "{first}");
    for part in [
        "Avg generation throughput:",
        "Running:",
        "Waiting:",
        "KV fetch:",
        "Preemptions:",
        "KV cache usage:",
        "Prefix cache hit rate:",
        "External prefix cache hit rate:",
        "Prompt sources: compute",
        "Recomputed:",
    ] {
        assert!(first.contains(part), "{part} missing in {first}");
    }
    // Idle: nothing observed for a whole interval.
    let end = results.last().unwrap().1;
    log.maybe_log(end + 100.0);
    assert_eq!(log.maybe_log(end + 200.0), None);
}
