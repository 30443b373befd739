//! The prefill/decode families and the KV transfer log line from connector
//! stats and step records: transfer bytes and seconds by direction,
//! failures by reason and the tokens they cost, the lease gauge and expired
//! leases (A12), KV-fetch stages, series at zero only when enabled, bad
//! durations never exported, log-line averages that are totals over
//! totals, and the decode side of A1/A2 (transferred prompt tokens are
//! neither prompt throughput nor iteration tokens).

#![allow(clippy::unwrap_used)]

mod common;

use common::{series, value};
use strata_core::connector::ConnectorStats;
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::TestConnector;
use strata_core::testing::{FakeExecutor, Harness};
use strata_core::{
    EngineCore, NewRequest, PrefillRecord, Provenance, RequestId, SamplingParams, StepRecord,
    StepResult, TokenSource,
};
use strata_metrics::{CacheConfigInfo, EngineMetrics, LogReporter};
use strata_pd::{KvTransferDirection, KvTransferFailure, KvTransferRecord, PdStats};

use KvTransferDirection::{Recv, Send};

/// The one series `name{model_name="m",engine="0",<labels>}`, if present.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!(r#"{name}{{model_name="m",engine="0"}}"#)
    } else {
        format!(r#"{name}{{model_name="m",engine="0",{labels}}}"#)
    };
    series(text).into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn metrics() -> EngineMetrics {
    let cache = CacheConfigInfo::device(16, 1024);
    EngineMetrics::new("m", "0", 4096, &cache)
}

fn with_stats(stats: PdStats) -> StepResult {
    StepResult { connector_stats: ConnectorStats::of(stats), ..StepResult::default() }
}

fn xfer(direction: KvTransferDirection, bytes: u64, seconds: f64) -> KvTransferRecord {
    KvTransferRecord { direction, bytes, seconds, num_blocks: 1 }
}

fn kv_transfers(list: Vec<KvTransferRecord>) -> StepResult {
    with_stats(PdStats { transfers: list, ..PdStats::default() })
}

fn step(record: StepRecord) -> StepResult {
    StepResult { step: Some(record), ..StepResult::default() }
}

const RECV: &str = r#"direction="recv""#;
const SEND: &str = r#"direction="send""#;

/// Every series is finite and non-negative.
fn assert_clean(text: &str) {
    for (k, v) in series(text) {
        assert!(v.is_finite() && v >= 0.0, "{k} = {v}");
    }
}

#[test]
fn transfer_bytes_and_seconds_add_up_per_direction() {
    let mut m = metrics();
    let recvs = [(2_000u64, 0.0002), (3_000_000, 0.003), (250_000_000, 0.2)];
    let sends = [(4_000_000u64, 0.004), (1_500u64, 0.00015)];
    let mut list: Vec<KvTransferRecord> = recvs.iter().map(|&(b, s)| xfer(Recv, b, s)).collect();
    list.extend(sends.iter().map(|&(b, s)| xfer(Send, b, s)));
    // Spread over two steps, as connectors report them.
    let later = list.split_off(2);
    m.observe(&kv_transfers(list), 1.0);
    m.observe(&kv_transfers(later), 2.0);
    let text = m.encode();
    for (labels, expected) in [(RECV, &recvs[..]), (SEND, &sends[..])] {
        let bytes: u64 = expected.iter().map(|x| x.0).sum();
        let seconds: f64 = expected.iter().map(|x| x.1).sum();
        let get = |name: &str| sample(&text, name, labels).unwrap();
        let n = expected.len() as f64;
        assert_eq!(get("strata:kv_transfer_bytes_count"), n, "{labels}");
        assert_eq!(get("strata:kv_transfer_bytes_sum"), bytes as f64, "{labels}");
        assert_eq!(get("strata:kv_transfer_seconds_count"), n, "{labels}");
        assert!((get("strata:kv_transfer_seconds_sum") - seconds).abs() < 1e-12, "{labels}");
    }
    // Adding the directions adds disjoint transfers.
    assert_eq!(value(&text, "strata:kv_transfer_bytes_count{"), 5.0);
    // Buckets: the 2 kB receive is under 2.5 kB, the 0.2 s one under 0.25 s.
    let le = |name: &str, le: &str| {
        value(&text, &format!(r#"{name}{{le="{le}",model_name="m",engine="0",{RECV}}}"#))
    };
    assert_eq!(le("strata:kv_transfer_bytes_bucket", "1000.0"), 0.0, "{text}");
    assert_eq!(le("strata:kv_transfer_bytes_bucket", "2500.0"), 1.0, "{text}");
    assert_eq!(le("strata:kv_transfer_bytes_bucket", "10000000000.0"), 3.0, "{text}");
    assert_eq!(le("strata:kv_transfer_seconds_bucket", "0.1"), 2.0, "{text}");
    assert_eq!(le("strata:kv_transfer_seconds_bucket", "0.25"), 3.0, "{text}");
    assert_clean(&text);
}

#[test]
fn failures_by_reason_and_the_tokens_they_cost() {
    let mut m = metrics();
    let stats = PdStats {
        failures: vec![
            KvTransferFailure::Timeout,
            KvTransferFailure::Transport,
            KvTransferFailure::Timeout,
        ],
        failed_tokens: 96,
        ..PdStats::default()
    };
    m.observe(&with_stats(stats), 1.0);
    let more = PdStats {
        failures: vec![KvTransferFailure::Handshake],
        failed_tokens: 32,
        ..PdStats::default()
    };
    m.observe(&with_stats(more), 2.0);
    let text = m.encode();
    let reason =
        |r: &str| sample(&text, "strata:kv_transfer_failures_total", &format!(r#"reason="{r}""#));
    assert_eq!(reason("timeout"), Some(2.0));
    assert_eq!(reason("transport"), Some(1.0));
    assert_eq!(reason("handshake"), Some(1.0));
    // Not enabled: a reason that never happened has no series.
    assert_eq!(reason("auth"), None);
    assert_eq!(value(&text, "strata:kv_transfer_failures_total{"), 4.0);
    assert_eq!(sample(&text, "strata:kv_transfer_failed_tokens_total", ""), Some(128.0));
}

#[test]
fn lease_gauge_keeps_its_last_reading_and_expiries_add_up() {
    let mut m = metrics();
    let reading = |held: Option<u64>, expired: u32| {
        with_stats(PdStats {
            leases_held_tokens: held,
            leases_expired: expired,
            ..PdStats::default()
        })
    };
    m.observe(&reading(Some(1024), 0), 1.0);
    let held = |m: &EngineMetrics| sample(&m.encode(), "strata:kv_leases_held_tokens", "");
    assert_eq!(held(&m), Some(1024.0));
    // No new reading: the last one stands.
    m.observe(&reading(None, 0), 2.0);
    m.observe(&StepResult::default(), 3.0);
    assert_eq!(held(&m), Some(1024.0));
    // A12: the lease expires without a pull; the blocks are freed.
    m.observe(&reading(Some(0), 1), 4.0);
    assert_eq!(held(&m), Some(0.0));
    m.observe(&reading(Some(2048), 2), 5.0);
    let text = m.encode();
    assert_eq!(sample(&text, "strata:kv_leases_held_tokens", ""), Some(2048.0));
    assert_eq!(sample(&text, "strata:kv_leases_expired_total", ""), Some(3.0));
    // A reading beyond i64 saturates instead of wrapping negative.
    m.observe(&reading(Some(u64::MAX), 0), 6.0);
    let text = m.encode();
    assert_eq!(sample(&text, "strata:kv_leases_held_tokens", ""), Some(i64::MAX as f64));
    assert_clean(&text);
}

#[test]
fn a12_expired_lease_then_a_late_pull_fails_cleanly() {
    // Prefill engine: 512 tokens leased, never pulled, expired.
    let mut prefill = metrics();
    prefill.enable_pd_series();
    prefill
        .observe(&with_stats(PdStats { leases_held_tokens: Some(512), ..PdStats::default() }), 1.0);
    prefill.observe(
        &with_stats(PdStats {
            leases_held_tokens: Some(0),
            leases_expired: 1,
            ..PdStats::default()
        }),
        2.0,
    );
    let text = prefill.encode();
    assert_eq!(sample(&text, "strata:kv_leases_expired_total", ""), Some(1.0));
    assert_eq!(sample(&text, "strata:kv_leases_held_tokens", ""), Some(0.0));
    assert_eq!(sample(&text, "strata:kv_transfer_bytes_count", SEND), Some(0.0));
    // Decode engine: the late pull fails with lease_expired and costs the
    // prompt's tokens; nothing was received.
    let mut decode = metrics();
    decode.enable_pd_series();
    decode.observe(
        &with_stats(PdStats {
            failures: vec![KvTransferFailure::LeaseExpired],
            failed_tokens: 512,
            ..PdStats::default()
        }),
        3.0,
    );
    let text = decode.encode();
    let failures = |r: &str| {
        sample(&text, "strata:kv_transfer_failures_total", &format!(r#"reason="{r}""#)).unwrap()
    };
    assert_eq!(failures("lease_expired"), 1.0);
    assert_eq!(failures("timeout"), 0.0);
    assert_eq!(sample(&text, "strata:kv_transfer_failed_tokens_total", ""), Some(512.0));
    assert_eq!(sample(&text, "strata:kv_transfer_bytes_count", RECV), Some(0.0));
    assert_clean(&text);
}

#[test]
fn kv_fetch_by_stage_follows_the_step_record() {
    let mut m = metrics();
    let stage = |m: &EngineMetrics, s: &str| {
        sample(&m.encode(), "vllm:num_requests_kv_fetch_by_stage", &format!(r#"stage="{s}""#))
    };
    // An engine family: there at zero from the start.
    for s in ["waiting_to_start", "in_progress", "completed_waiting"] {
        assert_eq!(stage(&m, s), Some(0.0), "{s}");
    }
    m.observe(
        &step(StepRecord {
            num_waiting: 6,
            kv_fetch_waiting_to_start: 3,
            kv_fetch_in_progress: 2,
            kv_fetch_completed_waiting: 1,
            ..StepRecord::default()
        }),
        1.0,
    );
    assert_eq!(stage(&m, "waiting_to_start"), Some(3.0));
    assert_eq!(stage(&m, "in_progress"), Some(2.0));
    assert_eq!(stage(&m, "completed_waiting"), Some(1.0));
    // Gauges: every step record sets them, also back to zero.
    m.observe(&step(StepRecord { kv_fetch_in_progress: 4, ..StepRecord::default() }), 2.0);
    assert_eq!(stage(&m, "waiting_to_start"), Some(0.0));
    assert_eq!(stage(&m, "in_progress"), Some(4.0));
    assert_eq!(stage(&m, "completed_waiting"), Some(0.0));
    // A result without a step record (stats only) leaves them alone.
    m.observe(&StepResult::default(), 3.0);
    assert_eq!(stage(&m, "in_progress"), Some(4.0));
}

#[test]
fn pd_series_exist_at_zero_only_when_enabled() {
    let mut m = metrics();
    assert!(!m.pd_enabled());
    let text = m.encode();
    assert!(
        !series(&text)
            .iter()
            .any(|(k, _)| k.starts_with("strata:kv_transfer") || k.starts_with("strata:kv_leases")),
        "{text}"
    );
    m.enable_pd_series();
    assert!(m.pd_enabled());
    let text = m.encode();
    for labels in [RECV, SEND] {
        for name in [
            "strata:kv_transfer_bytes_count",
            "strata:kv_transfer_bytes_sum",
            "strata:kv_transfer_seconds_count",
            "strata:kv_transfer_seconds_sum",
        ] {
            assert_eq!(sample(&text, name, labels), Some(0.0), "{name} {labels}");
        }
    }
    for reason in KvTransferFailure::ALL {
        let labels = format!(r#"reason="{}""#, reason.as_str());
        assert_eq!(sample(&text, "strata:kv_transfer_failures_total", &labels), Some(0.0));
    }
    for name in [
        "strata:kv_transfer_failed_tokens_total",
        "strata:kv_leases_held_tokens",
        "strata:kv_leases_expired_total",
    ] {
        assert_eq!(sample(&text, name, ""), Some(0.0), "{name}");
    }
    // Prometheus text: counters with `_total`, the gauge without.
    let prom = m.encode_prometheus();
    assert!(prom.contains("# TYPE strata:kv_transfer_failures_total counter"), "{prom}");
    assert!(prom.contains("# TYPE strata:kv_leases_expired_total counter"), "{prom}");
    assert!(prom.contains("# TYPE strata:kv_leases_held_tokens gauge"), "{prom}");
}

#[test]
fn enabling_after_events_changes_no_value() {
    let mut m = metrics();
    m.observe(
        &with_stats(PdStats {
            transfers: vec![xfer(Recv, 10_000, 0.5)],
            failures: vec![KvTransferFailure::Auth],
            failed_tokens: 16,
            leases_held_tokens: Some(64),
            leases_expired: 1,
        }),
        1.0,
    );
    let before = m.encode();
    m.enable_pd_series();
    m.enable_pd_series();
    let after = m.encode();
    // Every series that existed keeps its value; the new ones are zero.
    let after_series = series(&after);
    for (k, v) in series(&before) {
        let now = after_series.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
        assert_eq!(now, Some(v), "{k}");
    }
    assert_eq!(sample(&after, "strata:kv_transfer_bytes_sum", RECV), Some(10_000.0));
    assert_eq!(sample(&after, "strata:kv_transfer_bytes_count", SEND), Some(0.0));
    assert_eq!(sample(&after, "strata:kv_leases_held_tokens", ""), Some(64.0));
    assert_eq!(
        sample(&after, "strata:kv_transfer_failures_total", r#"reason="invalid""#),
        Some(0.0)
    );
}

#[test]
fn bad_seconds_never_export_negative_or_nan() {
    let mut m = metrics();
    m.enable_pd_series();
    let list = vec![
        xfer(Recv, 1_000, f64::NAN),
        xfer(Recv, 2_000, -1.0),
        xfer(Recv, 3_000, f64::INFINITY),
        xfer(Recv, 4_000, f64::NEG_INFINITY),
        xfer(Recv, 5_000, -0.0),
        xfer(Recv, 6_000, 0.0),
        xfer(Recv, 7_000, 0.25),
    ];
    m.observe(&kv_transfers(list), 1.0);
    let text = m.encode();
    assert_clean(&text);
    assert!(!text.lines().any(|l| !l.starts_with('#') && l.contains(" -")), "{text}");
    let get = |name: &str| sample(&text, name, RECV).unwrap();
    // Bytes moved whatever the clock said.
    assert_eq!(get("strata:kv_transfer_bytes_count"), 7.0);
    assert_eq!(get("strata:kv_transfer_bytes_sum"), 28_000.0);
    // Only the usable durations are seconds samples (the zeros are).
    assert_eq!(get("strata:kv_transfer_seconds_count"), 3.0);
    assert_eq!(get("strata:kv_transfer_seconds_sum"), 0.25);
}

#[test]
fn deltas_are_applied_once_and_counters_never_decrease() {
    let mut m = metrics();
    let stats = PdStats {
        transfers: vec![xfer(Recv, 4096, 0.001), xfer(Send, 8192, 0.002)],
        failures: vec![KvTransferFailure::Invalid],
        failed_tokens: 16,
        leases_held_tokens: Some(32),
        leases_expired: 1,
    };
    let r = with_stats(stats);
    let mut previous: Vec<(String, f64)> = Vec::new();
    for i in 1..=3 {
        m.observe(&r, f64::from(i));
        let now = series(&m.encode());
        for (k, v) in &now {
            assert!(v.is_finite() && *v >= 0.0, "{k} = {v}");
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
    let text = m.encode();
    assert_eq!(sample(&text, "strata:kv_transfer_bytes_sum", RECV), Some(3.0 * 4096.0));
    assert_eq!(sample(&text, "strata:kv_transfer_bytes_count", SEND), Some(3.0));
    assert_eq!(
        sample(&text, "strata:kv_transfer_failures_total", r#"reason="invalid""#),
        Some(3.0)
    );
    assert_eq!(sample(&text, "strata:kv_transfer_failed_tokens_total", ""), Some(48.0));
    assert_eq!(sample(&text, "strata:kv_leases_expired_total", ""), Some(3.0));
    // A reading, not a delta.
    assert_eq!(sample(&text, "strata:kv_leases_held_tokens", ""), Some(32.0));
}

fn record(id: u64, prompt_tokens: u32, p: Provenance) -> PrefillRecord {
    PrefillRecord::new(RequestId::new(id).unwrap(), prompt_tokens, &p).unwrap()
}

#[test]
fn a1_a2_decode_engine_counts_only_what_it_ran() {
    // A decode-engine step that finishes loading a 1000-token prompt (999
    // received, 1 computed for its logits) and decodes 7 other requests.
    let decode_step = StepResult {
        step: Some(StepRecord {
            num_prefill_tokens: 1,
            num_decode_tokens: 7,
            num_running: 8,
            external_prefix_cache_queries: 1000,
            external_prefix_cache_hits: 999,
            external_hits_remote: 999,
            ..StepRecord::default()
        }),
        prefill_records: vec![record(1, 1000, Provenance { remote: 999, ..Provenance::default() })],
        ..StepResult::default()
    };
    let mut m = metrics();
    m.observe(&decode_step, 1.0);
    let text = m.encode();
    // A2: the iteration histogram observes 8, not ~1008.
    assert_eq!(value(&text, "vllm:iteration_tokens_total_count{"), 1.0);
    assert_eq!(value(&text, "vllm:iteration_tokens_total_sum{"), 8.0);
    let by_source = |s: &str| {
        sample(&text, "vllm:prompt_tokens_by_source_total", &format!(r#"source="{s}""#)).unwrap()
    };
    assert_eq!(by_source("local_compute"), 1.0);
    assert_eq!(by_source("external_kv_transfer"), 999.0);
    assert_eq!(value(&text, "vllm:request_prefill_kv_computed_tokens_sum{"), 1.0);
    // A1: the log line's prompt throughput counts the 1 computed token.
    let mut log = LogReporter::new(0, 1.0);
    assert_eq!(log.maybe_log(0.0), None);
    log.observe(&decode_step);
    let line = log.maybe_log(1.0).unwrap();
    assert!(line.starts_with("Engine 000: Avg prompt throughput: 1.0 tokens/s,"), "{line}");
    assert!(line.contains("remote 99.9%"), "{line}");

    // A2, chunked: a 5000-token prefill with chunk 2048 is 2048, 2048, 904;
    // a step in which nothing ran (only waiting for KV) is not observed.
    let mut m = metrics();
    for (i, n) in [2048u32, 2048, 0, 904].into_iter().enumerate() {
        m.observe(&step(StepRecord { num_prefill_tokens: n, ..StepRecord::default() }), i as f64);
    }
    let text = m.encode();
    assert_eq!(value(&text, "vllm:iteration_tokens_total_count{"), 3.0);
    assert_eq!(value(&text, "vllm:iteration_tokens_total_sum{"), 5000.0);
    let bucket = |le: &str| {
        value(
            &text,
            &format!(
                r#"vllm:iteration_tokens_total_bucket{{le="{le}",model_name="m",engine="0"}}"#
            ),
        )
    };
    assert_eq!(bucket("512.0"), 0.0);
    assert_eq!(bucket("1024.0"), 1.0);
    assert_eq!(bucket("2048.0"), 3.0);
}

#[test]
fn a1_decode_engine_run_with_a_remote_connector() {
    const B: usize = 4;
    let config = SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 64,
        block_size: B,
        num_blocks: 128,
        max_model_len: 1024,
        ..SchedulerConfig::default()
    };
    let c = TestConnector::new(TokenSource::Remote, B);
    let exec = FakeExecutor::new(128, B, 1024).with_connector(c.clone());
    let mut m = metrics();
    let mut log = LogReporter::new(0, 1000.0);
    assert_eq!(log.maybe_log(0.0), None);
    // The whole prompt is on the peer.
    let prompt: Vec<u32> = (10..10 + 40 * B as u32).collect();
    c.offer(&prompt, ..);
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(3) };
    let mut ran = 0u64;
    let mut h = Harness::new(EngineCore::with_connector(exec, config, Some(Box::new(c.clone()))))
        .observed(|r, t| {
            m.observe(r, t);
            log.observe(r);
            ran += r.step.map_or(0, |s| u64::from(s.num_tokens()));
        });
    h.add(NewRequest::new(prompt.clone(), params));
    let records = h.drain(1000).prefill_records();
    drop(h);
    assert_eq!(records.len(), 1);
    let rec = records[0];
    assert!(rec.remote >= (prompt.len() - B) as u32, "{rec:?}");
    assert!(rec.local_compute >= 1, "{rec:?}");
    let text = m.encode();
    // The histogram holds what the model ran: the computed prompt tail and
    // the decodes, never the received tokens.
    assert_eq!(value(&text, "vllm:iteration_tokens_total_sum{"), ran as f64);
    assert!(ran < u64::from(rec.remote), "ran {ran}, received {}", rec.remote);
    // A1: prompt throughput over the interval is local_compute / elapsed.
    let line = log.maybe_log(1000.0).unwrap();
    let expected =
        format!("Avg prompt throughput: {:.1} tokens/s", f64::from(rec.local_compute) / 1000.0);
    assert!(line.contains(&expected), "{expected} in {line}");
}

/// A step in which one request runs (so the interval is not idle).
fn busy() -> StepResult {
    step(StepRecord { num_running: 1, ..StepRecord::default() })
}

/// Observes `results` in the first interval of a fresh `log` and returns
/// its line.
fn log_interval(log: &mut LogReporter, results: &[StepResult]) -> Option<String> {
    assert_eq!(log.maybe_log(0.0), None);
    for r in results {
        log.observe(r);
    }
    log.maybe_log(10.0)
}

/// The `KV Transfer metrics:` line of a logged interval.
fn kv_line(line: &str) -> &str {
    line.lines().find(|l| l.contains("KV Transfer metrics:")).unwrap()
}

#[test]
fn kv_transfer_line_averages_are_totals_over_totals() {
    // Ten receives of 2.4 MB taking 1, 2, ... 9 and 55 ms: 24 MB in 0.1 s.
    // Totals over totals: avg 10.0 ms and 240.0 MB/s. The mean of the
    // per-transfer rates would say 683.3 MB/s.
    let mut list: Vec<KvTransferRecord> =
        (1..=9).map(|ms| xfer(Recv, 2_400_000, f64::from(ms) * 1e-3)).collect();
    list.push(xfer(Recv, 2_400_000, 0.055));
    list.push(xfer(Send, 4_000_000, 0.002));
    let stats = PdStats {
        transfers: list,
        failures: vec![
            KvTransferFailure::Timeout,
            KvTransferFailure::Transport,
            KvTransferFailure::Timeout,
        ],
        failed_tokens: 64,
        leases_held_tokens: Some(1024),
        leases_expired: 1,
    };
    let mut log = LogReporter::new(0, 5.0);
    let line = log_interval(&mut log, &[busy(), with_stats(stats)]).unwrap();
    let mut lines = line.lines();
    assert!(lines.next().unwrap().starts_with("Engine 000: Avg prompt throughput: "), "{line}");
    // p90 of 1..9, 55 ms (linear between ranks): 9 + 0.1 * 46 = 13.6.
    assert_eq!(
        lines.next().unwrap(),
        "Engine 000: KV Transfer metrics: \
         recv 10 transfers, avg 10.0 ms, p90 13.6 ms, avg 2.4 MB, 240.0 MB/s; \
         send 1 transfers, avg 2.0 ms, p90 2.0 ms, avg 4.0 MB, 2000.0 MB/s; \
         failures 3 (transport 1, timeout 2), failed tokens 64, leases held 1024 tokens, expired 1"
    );
    assert_eq!(lines.next(), None);
    assert!(!line.contains("683.3"), "{line}");
}

#[test]
fn kv_transfer_line_p90_is_over_the_interval_and_bounded() {
    let mut log = LogReporter::new(0, 5.0);
    // Interval 1: 2000 slow transfers, then 10,000 fast ones. The p90 is
    // over the latest 10,000 samples (all fast); the averages over all.
    let mut list: Vec<KvTransferRecord> = (0..2000).map(|_| xfer(Recv, 1_000_000, 1.0)).collect();
    list.extend((0..10_000).map(|_| xfer(Recv, 1_000_000, 0.001)));
    let line = log_interval(&mut log, &[kv_transfers(list)]).unwrap();
    // (2000 s + 10 s) / 12,000 = 167.5 ms; 12,000 MB / 2010 s = 5.97 MB/s.
    assert!(
        kv_line(&line).contains(
            "recv 12000 transfers, avg 167.5 ms, p90 1.0 ms, avg 1.0 MB, 6.0 MB/s; send 0 transfers;"
        ),
        "{line}"
    );
    // Interval 2 starts afresh: its own transfers only.
    let list = vec![xfer(Recv, 500_000, 0.0005), xfer(Recv, 500_000, 0.0015)];
    log.observe(&kv_transfers(list));
    let line = log.maybe_log(20.0).unwrap();
    // p90 of 0.5 and 1.5 ms: 0.5 + 0.9 * 1.0 = 1.4 ms; 1 MB / 2 ms = 500 MB/s.
    assert!(
        kv_line(&line).contains(
            "recv 2 transfers, avg 1.0 ms, p90 1.4 ms, avg 0.500 MB, 500.0 MB/s; send 0 transfers;"
        ),
        "{line}"
    );
}

#[test]
fn kv_transfer_line_leaves_bad_durations_out_of_its_times() {
    let list = vec![
        xfer(Send, 3_000_000, f64::NAN),
        xfer(Send, 1_000_000, -2.0),
        xfer(Send, 2_000_000, 0.004),
    ];
    let line = log_interval(&mut LogReporter::new(0, 5.0), &[kv_transfers(list)]).unwrap();
    // Three transfers, 6 MB; the time figures from the one timed transfer.
    assert!(
        kv_line(&line).contains(
            "recv 0 transfers; send 3 transfers, avg 4.0 ms, p90 4.0 ms, avg 2.0 MB, 500.0 MB/s;"
        ),
        "{line}"
    );
    let list = vec![xfer(Recv, 1_000, f64::NAN), xfer(Recv, 1_000, f64::INFINITY)];
    let line = log_interval(&mut LogReporter::new(0, 5.0), &[kv_transfers(list)]).unwrap();
    assert!(
        kv_line(&line)
            .contains("recv 2 transfers, avg n/a ms, p90 n/a ms, avg 0.001 MB, n/a MB/s;"),
        "{line}"
    );
    let zero = vec![xfer(Recv, 1_000_000, 0.0)];
    let line = log_interval(&mut LogReporter::new(0, 5.0), &[kv_transfers(zero)]).unwrap();
    assert!(
        kv_line(&line).contains("recv 1 transfers, avg 0.0 ms, p90 0.0 ms, avg 1.0 MB, n/a MB/s;"),
        "{line}"
    );
    assert!(!line.contains("NaN") && !line.contains("inf") && !line.contains(" -"), "{line}");
}

#[test]
fn kv_transfer_line_follows_activity_or_the_enabled_flag_and_is_quiet_when_idle() {
    // Not in a P/D pair: the main line alone.
    let mut log = LogReporter::new(0, 5.0);
    let line = log_interval(&mut log, &[busy()]).unwrap();
    assert!(!line.contains('\n') && !line.contains("KV Transfer"), "{line}");
    // Sends finishing after the last request are activity: both lines.
    let mut log = LogReporter::new(0, 5.0);
    let late = kv_transfers(vec![xfer(Send, 1_000_000, 0.001)]);
    let line = log_interval(&mut log, &[late]).unwrap();
    assert_eq!(line.lines().count(), 2, "{line}");
    assert!(kv_line(&line).starts_with("Engine 000: KV Transfer metrics: recv 0 transfers; send 1"));
    // So are an expired lease and a failure alone.
    for stats in [
        PdStats { leases_expired: 1, ..PdStats::default() },
        PdStats { failures: vec![KvTransferFailure::Auth], ..PdStats::default() },
    ] {
        let line = log_interval(&mut LogReporter::new(0, 5.0), &[with_stats(stats)]).unwrap();
        assert_eq!(line.lines().count(), 2, "{line}");
    }
    // Enabled: the line with every logged interval, even without P/D
    // activity; still nothing for an idle interval.
    let mut log = LogReporter::new(2, 5.0);
    log.enable_kv_transfer_line();
    let line = log_interval(&mut log, &[busy()]).unwrap();
    assert_eq!(
        kv_line(&line),
        "Engine 002: KV Transfer metrics: recv 0 transfers; send 0 transfers; \
         failures 0, failed tokens 0, leases held n/a, expired 0"
    );
    log.observe(&step(StepRecord::default()));
    assert_eq!(log.maybe_log(20.0), None);
    // A lease reading alone is not activity ...
    log.observe(&with_stats(PdStats { leases_held_tokens: Some(256), ..PdStats::default() }));
    assert_eq!(log.maybe_log(30.0), None);
    // ... but it is kept for the next logged interval.
    log.observe(&busy());
    let line = log.maybe_log(40.0).unwrap();
    assert!(kv_line(&line).ends_with("leases held 256 tokens, expired 0"), "{line}");
}

#[test]
fn kv_transfer_line_comes_after_the_offload_line() {
    use strata_offload::{OffloadStats, OffloadTier, TransferRecord, TransferType};
    let mut log = LogReporter::new(0, 5.0);
    log.enable_offload_line(&[OffloadTier::Host]);
    log.enable_kv_transfer_line();
    // One step's stats with a report of each connector (a MultiConnector).
    let mut stats = ConnectorStats::of(OffloadStats {
        transfers: vec![TransferRecord {
            transfer_type: TransferType::HostToDevice,
            bytes: 1_000_000,
            seconds: 0.001,
            num_blocks: 1,
        }],
        ..OffloadStats::default()
    });
    stats.push(PdStats { transfers: vec![xfer(Recv, 1_000_000, 0.001)], ..PdStats::default() });
    let step = StepResult { connector_stats: stats, ..StepResult::default() };
    let line = log_interval(&mut log, &[busy(), step]).unwrap();
    let lines: Vec<&str> = line.lines().collect();
    assert_eq!(lines.len(), 3, "{line}");
    assert!(lines[0].contains("Avg prompt throughput"), "{line}");
    assert!(lines[1].starts_with("Engine 000: KV offload: "), "{line}");
    assert!(lines[2].starts_with("Engine 000: KV Transfer metrics: recv 1 transfers"), "{line}");
}

#[test]
fn main_line_reports_kv_fetch_stages() {
    let mut log = LogReporter::new(0, 5.0);
    let record = StepRecord {
        num_running: 1,
        num_waiting: 7,
        num_waiting_for_remote_kv: 3,
        kv_fetch_waiting_to_start: 2,
        kv_fetch_in_progress: 2,
        kv_fetch_completed_waiting: 1,
        ..StepRecord::default()
    };
    let line = log_interval(&mut log, &[step(record)]).unwrap();
    assert!(line.contains("Waiting: 4 reqs, KV fetch: 2 waiting, 3 in progress,"), "{line}");
}
