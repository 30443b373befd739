//! Scheduler hot paths with the fake executor (no model): one full step
//! (`schedule` + building the batch + `update_from_output`) at 64, 256 and
//! 1024 running decodes and with mixed prefill; prefix lookup with hashing
//! of an 8k-token prompt; block alloc/free.
//!
//! `cargo bench -p strata-core --features testing --bench scheduler`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use strata_core::connector::KvLoadFailurePolicy;
use strata_core::kv::hash::extend_block_hashes;
use strata_core::kv::BlockPool;
use strata_core::scheduler::{Scheduler, SchedulerConfig, SchedulingPolicy};
use strata_core::testing::FakeExecutor;
use strata_core::{Executor, ModelOutput, NewRequest, RequestId, SampledToken, SamplingParams};

fn config(num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 2048,
        max_num_batched_tokens: 8192,
        block_size: 16,
        num_blocks,
        max_model_len: 1 << 20,
        policy: SchedulingPolicy::Fcfs,
        enable_prefix_caching: true,
        kv_load_failure_policy: KvLoadFailurePolicy::Fail,
    }
}

fn request(i: u32, prompt_len: u32) -> NewRequest {
    NewRequest::new(
        (0..prompt_len).map(|t| (i * 7919 + t) % 900 + 2).collect(),
        SamplingParams { ignore_eos: true, ..SamplingParams::greedy(500) },
    )
}

/// A scheduler with `n` requests already decoding, and its executor.
fn decoding(n: u32, extra_prefills: u32) -> (Scheduler, FakeExecutor, f64) {
    let blocks = (n as usize + extra_prefills as usize) * 64 + 64;
    let mut s = Scheduler::new(config(blocks));
    let mut ex = FakeExecutor::new(blocks, 16, 1 << 20);
    ex.record_steps = false;
    for i in 0..n {
        s.add_request(RequestId::new(i as u64 + 1).unwrap(), request(i, 100), 0.0).unwrap();
    }
    let mut t = 0.0;
    // Prefill everyone (bounded), then a few decode steps.
    for _ in 0..1000 {
        if s.num_waiting() == 0 {
            break;
        }
        t += 1.0;
        let plan = s.schedule(t);
        let out = ex.execute(&s.batch(&plan)).unwrap();
        s.update_from_output(&plan, Ok(out), t);
    }
    assert_eq!((s.num_running(), s.num_waiting()), (n as usize, 0), "every request is decoding");
    for _ in 0..4 {
        t += 1.0;
        let plan = s.schedule(t);
        let out = ex.execute(&s.batch(&plan)).unwrap();
        s.update_from_output(&plan, Ok(out), t);
    }
    for i in 0..extra_prefills {
        s.add_request(RequestId::new((n + i) as u64 + 1).unwrap(), request(n + i, 2000), t)
            .unwrap();
    }
    (s, ex, t)
}

fn step(c: &mut Criterion) {
    let mut g = c.benchmark_group("schedule+update");
    for (n, prefills) in [(64, 0), (256, 0), (1024, 0), (256, 4)] {
        let name = if prefills == 0 {
            format!("{n} decodes")
        } else {
            format!("{n} decodes + {prefills} prefills")
        };
        g.bench_function(name, |b| {
            // Steps run back to back on one engine, as in a serving loop
            // (warm caches); a fresh engine every 256 steps keeps every
            // request decoding. Setup time is not measured.
            b.iter_custom(|iters| {
                let mut measured = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let (mut s, mut ex, mut t) = decoding(n, prefills);
                    let chunk = left.min(256);
                    let start = std::time::Instant::now();
                    for _ in 0..chunk {
                        t += 1.0;
                        let plan = s.schedule(t);
                        let out = ex.execute(&s.batch(&plan)).unwrap();
                        black_box(s.update_from_output(&plan, Ok(out), t));
                    }
                    measured += start.elapsed();
                    left -= chunk;
                }
                measured
            })
        });
    }
    // The scheduler alone: the model output is made directly from the
    // plan (one token per sampling sequence), without the fake executor's
    // batch validation.
    g.bench_function("1024 decodes, scheduler only", |b| {
        b.iter_custom(|iters| {
            let mut measured = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let (mut s, _, mut t) = decoding(1024, 0);
                let chunk = left.min(256);
                let start = std::time::Instant::now();
                for _ in 0..chunk {
                    t += 1.0;
                    let plan = s.schedule(t);
                    let sampled = plan
                        .seqs
                        .iter()
                        .filter(|q| q.samples)
                        .map(|q| SampledToken {
                            request_id: q.request_id,
                            token_id: 7,
                            logprobs: None,
                        })
                        .collect();
                    black_box(s.batch(&plan));
                    black_box(s.update_from_output(
                        &plan,
                        Ok(ModelOutput {
                            sampled,
                            prompt_logprobs: Vec::new(),
                            kv_connector_output: None,
                        }),
                        t,
                    ));
                }
                measured += start.elapsed();
                left -= chunk;
            }
            measured
        })
    });
    g.finish();
}

fn prefix(c: &mut Criterion) {
    let tokens: Vec<u32> = (0..8192).map(|t| t % 50_000).collect();
    c.bench_function("hash 8k-token prompt", |b| {
        b.iter(|| {
            let mut h = Vec::new();
            extend_block_hashes(&mut h, black_box(&tokens), 16, Some("tenant"));
            black_box(h)
        })
    });
    let mut pool = BlockPool::new(1024, true);
    let mut hashes = Vec::new();
    extend_block_hashes(&mut hashes, &tokens, 16, None);
    let blocks = pool.get_new_blocks(hashes.len()).unwrap();
    for (b, h) in blocks.iter().zip(&hashes) {
        pool.cache_full_block(*b, *h);
    }
    pool.free_blocks(blocks.into_iter().rev());
    c.bench_function("prefix lookup 8k tokens (512 blocks, all hit)", |b| {
        b.iter(|| black_box(hashes.iter().map_while(|h| pool.get_cached_block(*h)).count()))
    });
    c.bench_function("alloc + free 64 blocks", |b| {
        b.iter(|| {
            let got = pool.get_new_blocks(64).unwrap();
            pool.free_blocks(black_box(got).into_iter().rev());
        })
    });
}

criterion_group!(benches, step, prefix);
criterion_main!(benches);
