//! The KV offload families and the offload log line from connector stats:
//! A14 (cached tokens by source partition local + external hits), A15
//! (transfer bytes, sizes and times add up per direction, no double
//! counting), A16 (residency and in-flight are separate gauges), deltas
//! applied once, bad readings never exported, and log-line averages that
//! are totals over totals.

#![allow(clippy::unwrap_used)]

mod common;

use common::{series, value};
use strata_core::connector::ConnectorStats;
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::TestConnector;
use strata_core::testing::{FakeExecutor, Harness};
use strata_core::{EngineCore, NewRequest, SamplingParams, StepRecord, StepResult, TokenSource};
use strata_metrics::{CacheConfigInfo, EngineMetrics, LogReporter};
use strata_offload::{
    OffloadFailure, OffloadOp, OffloadStats, OffloadTier, TierUsage, TransferRecord, TransferType,
};

/// The one series `name{model_name="m",engine="0",<labels>}`, if present.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!(r#"{name}{{model_name="m",engine="0",{labels}}}"#);
    series(text).into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn metrics() -> EngineMetrics {
    let cache = CacheConfigInfo {
        num_cpu_blocks: 32,
        tiers: "device,host,disk".into(),
        ..CacheConfigInfo::device(4, 64)
    };
    EngineMetrics::new("m", "0", 1024, &cache)
}

fn with_stats(stats: OffloadStats) -> StepResult {
    StepResult { connector_stats: ConnectorStats::of(stats), ..StepResult::default() }
}

fn transfer(transfer_type: TransferType, bytes: u64, seconds: f64, blocks: u32) -> TransferRecord {
    TransferRecord { transfer_type, bytes, seconds, num_blocks: blocks }
}

fn transfers(list: Vec<TransferRecord>) -> StepResult {
    with_stats(OffloadStats { transfers: list, ..OffloadStats::default() })
}

fn usage(tier: OffloadTier, residency: f64, inflight: f64) -> TierUsage {
    TierUsage { tier, residency, inflight }
}

const HOST_TO_DEVICE: &str = r#"transfer_type="host_to_device""#;
const DEVICE_TO_HOST: &str = r#"transfer_type="device_to_host""#;

#[test]
fn a14_cached_by_source_sums_to_local_and_external_hits() {
    let mut m = metrics();
    // (device, host, disk, remote) hits per step.
    let steps = [(16, 8, 0, 0), (0, 4, 12, 0), (4, 0, 0, 20), (0, 0, 0, 0), (8, 4, 4, 4)];
    for (i, &(device, host, disk, remote)) in steps.iter().enumerate() {
        let step = StepRecord {
            step: i as u64,
            prefix_cache_queries: 64,
            prefix_cache_hits: device,
            external_prefix_cache_queries: 48,
            external_prefix_cache_hits: host + disk + remote,
            external_hits_host: host,
            external_hits_disk: disk,
            external_hits_remote: remote,
            ..StepRecord::default()
        };
        m.observe(&StepResult { step: Some(step), ..StepResult::default() }, i as f64);
    }
    let text = m.encode();
    let by_source = |s: &str| {
        sample(&text, "vllm:prompt_tokens_cached_by_source_total", &format!(r#"source="{s}""#))
            .unwrap()
    };
    assert_eq!(by_source("device"), 28.0);
    assert_eq!(by_source("host"), 16.0);
    assert_eq!(by_source("disk"), 16.0);
    assert_eq!(by_source("p2p"), 24.0);
    let total = value(&text, "vllm:prompt_tokens_cached_by_source_total{");
    let hits = value(&text, "vllm:prefix_cache_hits_total{")
        + value(&text, "vllm:external_prefix_cache_hits_total{");
    assert_eq!(total, hits);
    assert_eq!(total, 84.0);
}

#[test]
fn a14_cached_by_source_from_an_engine_with_a_host_connector() {
    const B: usize = 4;
    let config = SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 64,
        block_size: B,
        num_blocks: 64,
        max_model_len: 1024,
        ..SchedulerConfig::default()
    };
    let c = TestConnector::new(TokenSource::Host, B);
    let exec = FakeExecutor::new(64, B, 1024).with_connector(c.clone());
    let mut m = metrics();
    let prompt: Vec<u32> = (10..10 + 6 * B as u32 + 2).collect();
    let req = |p: Vec<u32>| {
        NewRequest::new(p, SamplingParams { ignore_eos: true, ..SamplingParams::greedy(2) })
    };
    let mut h = Harness::new(EngineCore::with_connector(exec, config, Some(Box::new(c.clone()))))
        .observed(|r, t| m.observe(r, t));
    // Two blocks land in the device cache, then the host tier has the rest.
    let mut warm = prompt[..2 * B].to_vec();
    warm.push(3);
    h.add(req(warm));
    h.drain(100);
    c.offer(&prompt, ..);
    h.add(req(prompt));
    h.drain(100);
    drop(h);
    let text = m.encode();
    let by_source = |s: &str| {
        sample(&text, "vllm:prompt_tokens_cached_by_source_total", &format!(r#"source="{s}""#))
            .unwrap()
    };
    assert_eq!(by_source("device"), (2 * B) as f64);
    assert_eq!(by_source("host"), (4 * B) as f64);
    assert_eq!((by_source("disk"), by_source("p2p")), (0.0, 0.0));
    assert_eq!(
        value(&text, "vllm:prompt_tokens_cached_by_source_total{"),
        value(&text, "vllm:prefix_cache_hits_total{")
            + value(&text, "vllm:external_prefix_cache_hits_total{")
    );
}

#[test]
fn a15_transfer_bytes_sizes_and_times_add_up_per_direction() {
    let mut m = metrics();
    let loads = [(3_000_000u64, 0.002), (500_000, 0.0005), (64_000_000, 0.02)];
    let stores = [(1_000u64, 0.0001), (2_000_000, 0.004)];
    let mut list: Vec<TransferRecord> =
        loads.iter().map(|&(b, s)| transfer(TransferType::HostToDevice, b, s, 4)).collect();
    list.extend(stores.iter().map(|&(b, s)| transfer(TransferType::DeviceToHost, b, s, 2)));
    // Spread over two steps, as connectors report them.
    let later = list.split_off(2);
    m.observe(&transfers(list), 1.0);
    m.observe(&transfers(later), 2.0);
    let text = m.encode();
    for (labels, expected) in [(HOST_TO_DEVICE, &loads[..]), (DEVICE_TO_HOST, &stores[..])] {
        let bytes: u64 = expected.iter().map(|x| x.0).sum();
        let seconds: f64 = expected.iter().map(|x| x.1).sum();
        let get = |name: &str| sample(&text, name, labels).unwrap();
        assert_eq!(get("vllm:kv_offload_total_bytes_total"), bytes as f64, "{labels}");
        assert_eq!(get("vllm:kv_offload_size_count"), expected.len() as f64, "{labels}");
        assert_eq!(get("vllm:kv_offload_size_sum"), bytes as f64, "{labels}");
        assert!((get("vllm:kv_offload_total_time_total") - seconds).abs() < 1e-12, "{labels}");
        assert_eq!(
            get("strata:kv_offload_throughput_bytes_per_second_count"),
            expected.len() as f64
        );
    }
    // Adding the directions adds disjoint transfers.
    let all_bytes: u64 = loads.iter().chain(&stores).map(|x| x.0).sum();
    assert_eq!(value(&text, "vllm:kv_offload_total_bytes_total{"), all_bytes as f64);
    assert_eq!(value(&text, "vllm:kv_offload_size_count{"), 5.0);
    // The 1 kB store sits in the smallest bucket, below vLLM's 1e6 bound.
    let smallest = r#"vllm:kv_offload_size_bucket{le="1000.0",model_name="m",engine="0",transfer_type="device_to_host"}"#;
    assert_eq!(value(&text, smallest), 1.0, "{text}");
    // No disk transfer happened, and none was enabled: no disk series.
    assert!(!text.contains("disk_to_host") && !text.contains("host_to_disk"), "{text}");
}

#[test]
fn a16_residency_and_inflight_are_separate_gauges() {
    let mut m = metrics();
    let stats = OffloadStats {
        usage: vec![usage(OffloadTier::Host, 1.0, 0.0), usage(OffloadTier::Disk, 0.25, 0.125)],
        ..OffloadStats::default()
    };
    m.observe(&with_stats(stats), 1.0);
    let text = m.encode();
    let gauge = |name: &str, tier: &str| sample(&text, name, &format!(r#"tier="{tier}""#));
    // A full idle tier.
    assert_eq!(gauge("strata:kv_offload_residency_perc", "host"), Some(1.0));
    assert_eq!(gauge("strata:kv_offload_inflight_perc", "host"), Some(0.0));
    assert_eq!(gauge("strata:kv_offload_residency_perc", "disk"), Some(0.25));
    assert_eq!(gauge("strata:kv_offload_inflight_perc", "disk"), Some(0.125));
}

#[test]
fn empty_stats_keep_the_last_usage_reading() {
    let mut m = metrics();
    let reading = OffloadStats {
        usage: vec![usage(OffloadTier::Host, 0.5, 0.25)],
        ..OffloadStats::default()
    };
    m.observe(&with_stats(reading), 1.0);
    m.observe(&StepResult::default(), 2.0);
    // Another tier's reading leaves this one alone too.
    let other =
        OffloadStats { usage: vec![usage(OffloadTier::Disk, 0.1, 0.0)], ..OffloadStats::default() };
    m.observe(&with_stats(other), 3.0);
    let text = m.encode();
    assert_eq!(sample(&text, "strata:kv_offload_residency_perc", r#"tier="host""#), Some(0.5));
    assert_eq!(sample(&text, "strata:kv_offload_inflight_perc", r#"tier="host""#), Some(0.25));
    // A later reading of the same tier in one report wins.
    let twice = OffloadStats {
        usage: vec![usage(OffloadTier::Host, 0.6, 0.0), usage(OffloadTier::Host, 0.7, 0.1)],
        ..OffloadStats::default()
    };
    m.observe(&with_stats(twice), 4.0);
    let text = m.encode();
    assert_eq!(sample(&text, "strata:kv_offload_residency_perc", r#"tier="host""#), Some(0.7));
}

#[test]
fn deltas_are_applied_once_per_observation() {
    let mut m = metrics();
    let stats = OffloadStats {
        transfers: vec![transfer(TransferType::DiskToHost, 4096, 0.001, 1)],
        tier_queries: vec![(OffloadTier::Disk, 32)],
        tier_hits: vec![(OffloadTier::Disk, 16)],
        evictions: vec![(OffloadTier::Host, 3)],
        allocation_failures: 1,
        failures: vec![(OffloadTier::Disk, OffloadOp::Load, OffloadFailure::Corrupt)],
        usage: vec![],
    };
    let r = with_stats(stats);
    m.observe(&r, 1.0);
    let once = m.encode();
    m.observe(&r, 2.0);
    let twice = m.encode();
    for (name, labels) in [
        ("vllm:kv_offload_total_bytes_total", r#"transfer_type="disk_to_host""#),
        ("vllm:kv_offload_total_time_total", r#"transfer_type="disk_to_host""#),
        ("vllm:kv_offload_size_count", r#"transfer_type="disk_to_host""#),
        ("vllm:kv_offload_queries_total", r#"tier="disk""#),
        ("vllm:kv_offload_hits_total", r#"tier="disk""#),
        ("strata:kv_offload_evictions_total", r#"tier="host""#),
        ("strata:kv_offload_failures_total", r#"tier="disk",op="load",reason="corrupt""#),
    ] {
        let a = sample(&once, name, labels).unwrap();
        let b = sample(&twice, name, labels).unwrap();
        assert!(a > 0.0, "{name}");
        assert!((b - 2.0 * a).abs() < 1e-12, "{name}: {a} then {b}");
    }
    assert_eq!(value(&twice, "vllm:kv_offload_allocation_failure_total{"), 2.0);
    assert_eq!(value(&once, "vllm:kv_offload_queries_total{"), 32.0);
    assert_eq!(value(&once, "vllm:kv_offload_hits_total{"), 16.0);
}

#[test]
fn bad_durations_and_readings_never_export_negative_or_nan() {
    let mut m = metrics();
    let list = vec![
        transfer(TransferType::HostToDevice, 1000, f64::NAN, 1),
        transfer(TransferType::HostToDevice, 2000, -1.0, 1),
        transfer(TransferType::HostToDevice, 3000, f64::INFINITY, 1),
        transfer(TransferType::HostToDevice, 4000, f64::NEG_INFINITY, 1),
        // Positive but so small that bytes / seconds overflows to inf.
        transfer(TransferType::HostToDevice, 5000, 1e-320, 1),
        // Measured as zero: time 0, no rate.
        transfer(TransferType::HostToDevice, 6000, 0.0, 1),
        transfer(TransferType::HostToDevice, 7000, 0.5, 1),
    ];
    let stats = OffloadStats {
        transfers: list,
        usage: vec![usage(OffloadTier::Host, f64::NAN, -0.5), usage(OffloadTier::Disk, 1.5, 2.0)],
        ..OffloadStats::default()
    };
    m.observe(&with_stats(stats), 1.0);
    let text = m.encode();
    for (k, v) in series(&text) {
        assert!(v.is_finite() && v >= 0.0, "{k} = {v}");
    }
    let get = |name: &str| sample(&text, name, HOST_TO_DEVICE).unwrap();
    // Bytes moved whatever the clock said.
    assert_eq!(get("vllm:kv_offload_total_bytes_total"), 28000.0);
    assert_eq!(get("vllm:kv_offload_size_count"), 7.0);
    assert!((get("vllm:kv_offload_total_time_total") - 0.5).abs() < 1e-12);
    assert_eq!(get("strata:kv_offload_throughput_bytes_per_second_count"), 1.0);
    assert_eq!(get("strata:kv_offload_throughput_bytes_per_second_sum"), 14000.0);
    // A non-finite reading is no reading; out-of-range ones are clamped.
    assert_eq!(sample(&text, "strata:kv_offload_residency_perc", r#"tier="host""#), None);
    assert_eq!(sample(&text, "strata:kv_offload_inflight_perc", r#"tier="host""#), Some(0.0));
    assert_eq!(sample(&text, "strata:kv_offload_residency_perc", r#"tier="disk""#), Some(1.0));
    assert_eq!(sample(&text, "strata:kv_offload_inflight_perc", r#"tier="disk""#), Some(1.0));
    // Negative zero reads as zero, without a minus sign.
    let zero = OffloadStats {
        usage: vec![usage(OffloadTier::Host, -0.0, -0.0)],
        ..OffloadStats::default()
    };
    m.observe(&with_stats(zero), 2.0);
    let text = m.encode();
    assert!(!text.contains(r#"tier="host"} -"#), "{text}");
}

#[test]
fn offload_series_exist_at_zero_only_when_enabled() {
    let mut m = metrics();
    let text = m.encode();
    assert!(!series(&text).iter().any(|(k, _)| k.contains("kv_offload")), "{text}");
    // The cached-by-source split is an engine family: always there.
    for s in ["device", "host", "disk", "p2p"] {
        let labels = format!(r#"source="{s}""#);
        assert_eq!(sample(&text, "vllm:prompt_tokens_cached_by_source_total", &labels), Some(0.0));
    }
    m.enable_offload_series(&[OffloadTier::Host]);
    let text = m.encode();
    for name in [
        "vllm:kv_offload_total_bytes_total",
        "vllm:kv_offload_total_time_total",
        "vllm:kv_offload_size_count",
        "strata:kv_offload_throughput_bytes_per_second_count",
    ] {
        assert_eq!(sample(&text, name, HOST_TO_DEVICE), Some(0.0), "{name}");
        assert_eq!(sample(&text, name, DEVICE_TO_HOST), Some(0.0), "{name}");
    }
    for name in [
        "vllm:kv_offload_queries_total",
        "vllm:kv_offload_hits_total",
        "strata:kv_offload_residency_perc",
        "strata:kv_offload_inflight_perc",
        "strata:kv_offload_evictions_total",
    ] {
        assert_eq!(sample(&text, name, r#"tier="host""#), Some(0.0), "{name}");
    }
    assert_eq!(
        sample(&text, "strata:kv_offload_failures_total", r#"tier="host",op="store",reason="io""#),
        Some(0.0)
    );
    assert_eq!(value(&text, "vllm:kv_offload_allocation_failure_total{"), 0.0);
    assert!(text.contains("vllm:kv_offload_allocation_failure_total{"), "{text}");
    // No disk tier configured: no disk series.
    assert!(
        !series(&text).iter().any(|(k, _)| k.contains("disk") && k.contains("kv_offload")),
        "{text}"
    );
    // Prometheus text names the float counter with `_total` like the others.
    let prom = m.encode_prometheus();
    assert!(prom.contains("# TYPE vllm:kv_offload_total_time_total counter"), "{prom}");
    assert!(prom.contains("# TYPE strata:kv_offload_residency_perc gauge"), "{prom}");
}

#[test]
fn enabling_after_events_changes_no_value() {
    let mut m = metrics();
    m.observe(&transfers(vec![transfer(TransferType::HostToDisk, 10, 0.5, 1)]), 1.0);
    m.enable_offload_series(&[OffloadTier::Host, OffloadTier::Disk]);
    m.enable_offload_series(&[OffloadTier::Host, OffloadTier::Disk]);
    let text = m.encode();
    let labels = r#"transfer_type="host_to_disk""#;
    assert_eq!(sample(&text, "vllm:kv_offload_total_bytes_total", labels), Some(10.0));
    assert_eq!(sample(&text, "vllm:kv_offload_total_time_total", labels), Some(0.5));
    assert_eq!(
        sample(&text, "vllm:kv_offload_total_bytes_total", r#"transfer_type="disk_to_host""#),
        Some(0.0)
    );
}

/// A step in which one request runs (so the interval is not idle).
fn busy() -> StepResult {
    StepResult {
        step: Some(StepRecord { num_running: 1, ..StepRecord::default() }),
        ..StepResult::default()
    }
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

#[test]
fn offload_log_line_averages_are_totals_over_totals() {
    let mut log = LogReporter::new(0, 5.0);
    // 1 GB in 1 s over 100 blocks, then 1 GB in 0.25 s over 900 blocks.
    // Totals: 2 GB / 1.25 s = 1.60 GB/s and 1250 ms / 1000 blocks. The
    // means of the per-transfer numbers would say 2.50 GB/s and 5.139 ms.
    let list = vec![
        transfer(TransferType::HostToDevice, 1_000_000_000, 1.0, 100),
        transfer(TransferType::HostToDevice, 1_000_000_000, 0.25, 900),
        transfer(TransferType::DeviceToHost, 3_000_000, 0.001, 3),
    ];
    let line = log_interval(&mut log, &[busy(), transfers(list)]).unwrap();
    let (main, offload) = line.split_once('\n').unwrap();
    assert!(main.starts_with("Engine 000: Avg prompt throughput: "), "{main}");
    assert!(offload.starts_with("Engine 000: KV offload: "), "{offload}");
    assert!(
        offload.contains("host_to_device 2 transfers 2.0 GB (1.250 ms/block, 1.60 GB/s)"),
        "{offload}"
    );
    assert!(!offload.contains("2.50 GB/s") && !offload.contains("5.139"), "{offload}");
    assert!(
        offload.contains("device_to_host 1 transfers 3.0 MB (0.333 ms/block, 3.00 GB/s)"),
        "{offload}"
    );
    assert!(offload.contains("Host tier: "), "{offload}");
    assert!(!offload.contains("Disk tier"), "{offload}");
}

#[test]
fn offload_log_line_reports_tiers_hits_and_failures() {
    let mut log = LogReporter::new(3, 5.0);
    let stats = OffloadStats {
        tier_queries: vec![(OffloadTier::Host, 1024), (OffloadTier::Disk, 512)],
        tier_hits: vec![(OffloadTier::Host, 512), (OffloadTier::Disk, 128)],
        evictions: vec![(OffloadTier::Disk, 7)],
        allocation_failures: 2,
        failures: vec![
            (OffloadTier::Disk, OffloadOp::Load, OffloadFailure::Corrupt),
            (OffloadTier::Disk, OffloadOp::Load, OffloadFailure::Corrupt),
            (OffloadTier::Host, OffloadOp::Store, OffloadFailure::NoSpace),
        ],
        usage: vec![usage(OffloadTier::Host, 0.412, 0.0), usage(OffloadTier::Disk, 1.0, 0.05)],
        ..OffloadStats::default()
    };
    let line = log_interval(&mut log, &[busy(), with_stats(stats)]).unwrap();
    let offload = line.lines().nth(1).unwrap();
    assert_eq!(
        offload,
        "Engine 003: KV offload: no transfers, \
         Host tier: residency 41.2%, in flight 0.0%, hits 512/1024 tokens, evictions 0, \
         Disk tier: residency 100.0%, in flight 5.0%, hits 128/512 tokens, evictions 7, \
         Allocation failures: 2, \
         Failures: 3 (host store no_space 1, disk load corrupt 2)"
    );
}

#[test]
fn offload_log_line_ignores_bad_durations_in_its_averages() {
    let mut log = LogReporter::new(0, 5.0);
    let list = vec![
        transfer(TransferType::DiskToHost, 4_000_000, f64::NAN, 4),
        transfer(TransferType::DiskToHost, 1_000_000, -3.0, 1),
        transfer(TransferType::DiskToHost, 2_000_000, 0.002, 2),
    ];
    let line = log_interval(&mut log, &[transfers(list)]).unwrap();
    assert!(line.contains("disk_to_host 3 transfers 7.0 MB (1.000 ms/block, 1.00 GB/s)"), "{line}");
    let zero = vec![transfer(TransferType::HostToDisk, 1_000, 0.0, 1)];
    let line = log_interval(&mut LogReporter::new(0, 5.0), &[transfers(zero)]).unwrap();
    assert!(line.contains("host_to_disk 1 transfers 1.0 kB (0.000 ms/block, n/a B/s)"), "{line}");
}

#[test]
fn offload_log_line_follows_activity_or_the_enabled_flag_and_is_quiet_when_idle() {
    // Without offloading: the main line alone.
    let mut log = LogReporter::new(0, 5.0);
    let line = log_interval(&mut log, &[busy()]).unwrap();
    assert!(!line.contains('\n') && !line.contains("KV offload"), "{line}");
    // Stores finishing after the last request are activity: both lines.
    let mut log = LogReporter::new(0, 5.0);
    let late = transfers(vec![transfer(TransferType::DeviceToHost, 1_000_000, 0.001, 1)]);
    let line = log_interval(&mut log, &[late]).unwrap();
    assert_eq!(line.lines().count(), 2, "{line}");
    // Enabled: the offload line with every logged interval, even without
    // offload activity; still nothing for an idle interval.
    let mut log = LogReporter::new(0, 5.0);
    log.enable_offload_line(&[OffloadTier::Host, OffloadTier::Disk]);
    let line = log_interval(&mut log, &[busy()]).unwrap();
    let offload = line.lines().nth(1).unwrap();
    assert!(offload.contains("KV offload: no transfers, Host tier: residency n/a"), "{offload}");
    assert!(offload.contains("Disk tier: "), "{offload}");
    let idle = StepResult { step: Some(StepRecord::default()), ..StepResult::default() };
    log.observe(&idle);
    assert_eq!(log.maybe_log(20.0), None);
    // A usage reading alone is not activity.
    log.observe(&with_stats(OffloadStats {
        usage: vec![usage(OffloadTier::Host, 1.0, 0.0)],
        ..OffloadStats::default()
    }));
    assert_eq!(log.maybe_log(30.0), None);
    // ... but the reading is kept for the next logged interval.
    log.observe(&busy());
    let line = log.maybe_log(40.0).unwrap();
    assert!(line.contains("Host tier: residency 100.0%, in flight 0.0%"), "{line}");
}
