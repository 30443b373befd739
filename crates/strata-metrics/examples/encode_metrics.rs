//! How long `/metrics` takes to encode: the engine's registry with every
//! family and series `strata serve` creates (offload and P/D series
//! included) after thousands of scripted requests through the fake
//! engine, encoded to Prometheus text again and again. Prints the size and
//! the encode time per scrape (mean, p50, p99, max).
//!
//! `cargo run --release -p strata-metrics --example encode_metrics`

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::Harness;
use strata_core::{NewRequest, SamplingParams};
use strata_metrics::{CacheConfigInfo, EngineMetrics};
use strata_offload::OffloadTier;

const REQUESTS: u32 = 4_000;
const SCRAPES: usize = 2_000;

fn main() {
    let config = SchedulerConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 512,
        block_size: 16,
        num_blocks: 4096,
        max_model_len: 4096,
        ..SchedulerConfig::default()
    };
    let cache = CacheConfigInfo {
        num_cpu_blocks: 8192,
        tiers: "device,host,disk".into(),
        ..CacheConfigInfo::device(16, 4096)
    };
    let mut m = EngineMetrics::new("builtin", "0", 4096, &cache);
    m.enable_offload_series(&[OffloadTier::Host, OffloadTier::Disk]);
    m.enable_pd_series();
    let exporter = m.exporter();
    let started = Instant::now();
    let mut steps = 0u64;
    {
        let mut h = Harness::fake(config).observed(|r, t| {
            m.observe(r, t);
            steps += 1;
        });
        for i in 0..REQUESTS {
            // Prompts of 20..600 tokens sharing a prefix, outputs of 1..64.
            let len = 20 + (i as usize * 37) % 580;
            let prompt: Vec<u32> =
                (0..len as u32).map(|t| if t < 16 { t } else { (t + i) % 999 }).collect();
            let params =
                SamplingParams { ignore_eos: true, ..SamplingParams::greedy(1 + (i * 13) % 64) };
            h.add(NewRequest::new(prompt, params));
            if i % 8 == 7 {
                h.step();
            }
        }
        h.drain(1_000_000);
    }
    eprintln!("{REQUESTS} requests, {steps} steps observed in {:.1?}", started.elapsed());
    let text = exporter.encode_prometheus();
    let mut times: Vec<Duration> = (0..SCRAPES)
        .map(|_| {
            let t = Instant::now();
            let text = exporter.encode_prometheus();
            let took = t.elapsed();
            std::hint::black_box(text);
            took
        })
        .collect();
    times.sort_unstable();
    let mean = times.iter().sum::<Duration>() / SCRAPES as u32;
    let pct = |p: f64| times[((SCRAPES as f64 * p) as usize).min(SCRAPES - 1)];
    println!(
        "/metrics encode: {} bytes, {} lines; {SCRAPES} scrapes: mean {mean:.1?}, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        text.len(),
        text.lines().count(),
        pct(0.5),
        pct(0.99),
        times[SCRAPES - 1],
    );
}
