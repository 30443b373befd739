//! A batch of different prompts decodes to the same tokens as each prompt
//! alone: prefill chunks split across steps, decodes mixed with prefills,
//! requests admitted in waves when the KV pool is small.

#![allow(clippy::unwrap_used)]

use strata_core::offline::{run_offline, OfflineOutput, OfflineRequest};
use strata_core::SamplingParams;
use strata_model::weights::DType;
use strata_model::{builtin, load_cpu_executor, KvPoolConfig, LoadOptions, ModelSource};

fn prompts() -> Vec<Vec<u32>> {
    // Lengths 1 to 70, overlapping prefixes included.
    let base: Vec<u32> = (0..70).map(|i| 4 + (i * 37 % 500) as u32).collect();
    vec![
        base[..1].to_vec(),
        base[..17].to_vec(),
        base[..70].to_vec(),
        base[5..40].to_vec(),
        base[..33].to_vec(),
    ]
}

/// What a user sees of an output: tokens, logprobs, finish reason (the
/// prompt sources legitimately differ between runs, by prefix caching).
fn seen(outputs: Vec<OfflineOutput>) -> Vec<(Vec<u32>, usize, &'static str)> {
    outputs.into_iter().map(|o| (o.token_ids, o.logprobs.len(), o.finish_reason.as_str())).collect()
}

fn run(
    requests: &[OfflineRequest],
    num_blocks: usize,
    budget: usize,
    dtype: Option<DType>,
) -> Vec<OfflineOutput> {
    let opts = LoadOptions {
        kv: KvPoolConfig { block_size: 16, num_blocks: Some(num_blocks), memory_bytes: 0 },
        dtype,
        ..LoadOptions::default()
    };
    let mut exec = load_cpu_executor(&ModelSource::Builtin, &opts, &mut |_, _| {}).unwrap();
    run_offline(&mut exec, requests, &builtin::EOS_TOKEN_IDS, budget).unwrap()
}

fn requests(params: SamplingParams) -> Vec<OfflineRequest> {
    prompts()
        .into_iter()
        .map(|p| OfflineRequest { prompt_token_ids: p, params: params.clone() })
        .collect()
}

fn check_batch_equals_alone(params: SamplingParams, dtype: Option<DType>) {
    let reqs = requests(params);
    let alone: Vec<OfflineOutput> =
        reqs.iter().map(|r| run(std::slice::from_ref(r), 64, 4096, dtype).remove(0)).collect();
    assert!(alone.iter().all(|o| !o.token_ids.is_empty()));
    let alone = seen(alone);
    // Together in a large pool with a large budget; then with a budget of
    // 7 tokens (chunked prefill interleaved with decodes); then in a pool of
    // 7 blocks where requests wait and are preempted.
    for (blocks, budget) in [(64, 4096), (64, 7), (7, 32)] {
        let together = run(&reqs, blocks, budget, dtype);
        if blocks == 7 {
            assert!(
                together.iter().any(|o| o.num_preemptions > 0),
                "the small pool forces preemptions"
            );
        }
        if budget == 7 {
            // Admitted one after another: shared prefixes come from the
            // prefix cache.
            assert!(together.iter().any(|o| o.prefill.is_some_and(|p| p.local_cache_hit > 0)));
        }
        assert_eq!(seen(together), alone, "pool {blocks} blocks, budget {budget}");
    }
}

#[test]
fn greedy_batch_equals_each_prompt_alone() {
    check_batch_equals_alone(
        SamplingParams { ignore_eos: true, ..SamplingParams::greedy(12) },
        None,
    );
}

#[test]
fn greedy_batch_equals_alone_with_bf16_weights() {
    check_batch_equals_alone(
        SamplingParams { ignore_eos: true, ..SamplingParams::greedy(12) },
        Some(DType::BF16),
    );
}

#[test]
fn seeded_sampling_does_not_depend_on_the_batch() {
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 50,
        seed: Some(1234),
        ignore_eos: true,
        max_tokens: 12,
        ..SamplingParams::default()
    };
    check_batch_equals_alone(params, None);
}

#[test]
fn different_seeds_give_different_samples() {
    let with_seed = |seed| SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        ignore_eos: true,
        max_tokens: 16,
        ..SamplingParams::default()
    };
    let reqs: Vec<OfflineRequest> = [1, 2]
        .iter()
        .map(|&s| OfflineRequest { prompt_token_ids: vec![5, 6, 7], params: with_seed(s) })
        .collect();
    let out = run(&reqs, 16, 64, None);
    assert_ne!(out[0].token_ids, out[1].token_ids);
}

#[test]
fn logprobs_come_with_each_token() {
    let params =
        SamplingParams { logprobs: Some(3), ignore_eos: true, ..SamplingParams::greedy(5) };
    let out = run(&requests(params), 64, 4096, None);
    for o in &out {
        assert_eq!(o.logprobs.len(), o.token_ids.len());
        for (lp, &tok) in o.logprobs.iter().zip(&o.token_ids) {
            assert_eq!(lp.top.len(), 3);
            // Greedy: the sampled token is the most likely one.
            assert_eq!(lp.top[0].token_id, tok);
            assert_eq!(lp.sampled.token_id, tok);
            assert!(
                lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob) && lp.top[0].logprob <= 0.0
            );
        }
    }
}
