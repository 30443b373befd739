//! Offline generation: run a list of requests to completion through an
//! [`EngineCore`] (continuous batching, chunked prefill, prefix caching,
//! preemption), as `strata generate` and the executor tests do. Time is
//! the step count, so runs are deterministic.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::connector::KvLoadFailurePolicy;
use crate::engine::EngineCore;
use crate::executor::{Executor, TopLogprobs};
use crate::ids::{RequestId, TokenId};
use crate::records::PrefillRecord;
use crate::request::{FinishReason, NewRequest};
use crate::sampling::SamplingParams;
use crate::scheduler::{AdmissionError, SchedulerConfig, SchedulingPolicy};

#[derive(Clone, Debug)]
pub struct OfflineRequest {
    pub prompt_token_ids: Vec<TokenId>,
    pub params: SamplingParams,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OfflineOutput {
    pub token_ids: Vec<TokenId>,
    pub logprobs: Vec<TopLogprobs>,
    pub finish_reason: FinishReason,
    /// Where the prompt's KV came from (`None` if no token was produced).
    pub prefill: Option<PrefillRecord>,
    /// Times the request was preempted (and recomputed).
    pub num_preemptions: u32,
}

#[derive(Debug, Error)]
pub enum OfflineError {
    #[error("request {index}: {source}")]
    Admission { index: usize, source: AdmissionError },
    #[error("request {index} failed in the executor: {message}")]
    Executor { index: usize, message: String },
}

/// Engine settings for offline runs.
pub fn offline_config(max_num_batched_tokens: usize, max_num_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: max_num_batched_tokens.max(1),
        // Block size, pool size and max length come from the executor.
        block_size: 1,
        num_blocks: 0,
        max_model_len: usize::MAX,
        policy: SchedulingPolicy::Fcfs,
        enable_prefix_caching: true,
        kv_load_failure_policy: KvLoadFailurePolicy::Fail,
    }
}

/// Runs every request to completion; outputs come back in request order.
pub fn run_offline<E: Executor>(
    executor: E,
    requests: &[OfflineRequest],
    eos_token_ids: &[TokenId],
    max_num_batched_tokens: usize,
) -> Result<Vec<OfflineOutput>, OfflineError> {
    let mut engine = EngineCore::new(executor, offline_config(max_num_batched_tokens, 256));
    let mut index_of: BTreeMap<RequestId, usize> = BTreeMap::new();
    for (index, r) in requests.iter().enumerate() {
        let new = NewRequest::new(r.prompt_token_ids.clone(), r.params.clone())
            .with_eos(eos_token_ids.to_vec());
        let id = engine
            .add_request(new, 0.0)
            .map_err(|source| OfflineError::Admission { index, source })?;
        index_of.insert(id, index);
    }
    let mut outputs: Vec<OfflineOutput> = requests
        .iter()
        .map(|_| OfflineOutput {
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Abort,
            prefill: None,
            num_preemptions: 0,
        })
        .collect();
    let mut step = 0u64;
    while engine.has_unfinished() {
        step += 1;
        let result = engine.step(step as f64);
        for r in result.prefill_records {
            outputs[index_of[&r.request_id]].prefill = Some(r);
        }
        for f in &result.finish_records {
            outputs[index_of[&f.request_id]].num_preemptions = f.num_preemptions;
        }
        for o in result.outputs {
            let index = index_of[&o.request_id];
            let out = &mut outputs[index];
            out.token_ids.extend(o.new_token_id);
            out.logprobs.extend(o.logprobs);
            if let Some(reason) = o.finish_reason {
                out.finish_reason = reason;
                if reason == FinishReason::Error {
                    let message = result.executor_error.clone().unwrap_or_default();
                    return Err(OfflineError::Executor { index, message });
                }
            }
        }
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeExecutor;

    fn echo(num_blocks: usize) -> FakeExecutor {
        FakeExecutor::new(num_blocks, 4, 64)
    }

    fn req(prompt: Vec<u32>, max_tokens: u32) -> OfflineRequest {
        OfflineRequest { prompt_token_ids: prompt, params: SamplingParams::greedy(max_tokens) }
    }

    /// The `n` tokens the fake generates after `prompt` when nothing stops
    /// it.
    fn generated(ex: &FakeExecutor, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut context = prompt.to_vec();
        for _ in 0..n {
            context.push(ex.expected_next(&context));
        }
        context.split_off(prompt.len())
    }

    #[test]
    fn chunks_prefill_under_the_budget_and_stops_at_eos_or_length() {
        let mut ex = echo(32);
        let reqs = [req((10..20).collect(), 3), req(vec![40], 5)];
        let first = generated(&ex, &reqs[0].prompt_token_ids, 3);
        let second = generated(&ex, &reqs[1].prompt_token_ids, 5);
        // EOS is the second request's third token: it stops there.
        let eos = second[2];
        assert!(!second[..2].contains(&eos) && !first.contains(&eos), "pick another prompt");
        let out = run_offline(&mut ex, &reqs, &[eos], 4).unwrap();
        assert!(out.iter().all(|o| o.prefill.is_some_and(|p| p.local_compute == p.prompt_tokens)));
        assert_eq!(out[0].token_ids, first);
        assert_eq!(out[0].finish_reason, FinishReason::Length);
        assert_eq!(out[1].token_ids, second[..3]);
        assert_eq!(out[1].finish_reason, FinishReason::Stop);
        assert!(ex.steps.iter().all(|s| s.iter().map(|&(_, _, n)| n).sum::<usize>() <= 4));
        // The 10-token prompt was split into chunks of at most 4.
        assert!(ex.steps[0].contains(&(RequestId::new(1).unwrap(), 0, 4)));
    }

    #[test]
    fn a_small_pool_runs_everything_to_completion() {
        // Each request needs 2 blocks (5 tokens + 3 outputs); 3 blocks hold
        // one and a half: requests wait or are preempted, and all finish
        // with the tokens of an unconstrained run.
        let mut ex = echo(3);
        let reqs: Vec<_> = (0..4).map(|i| req(vec![i * 10 + 2; 5], 3)).collect();
        let out = run_offline(&mut ex, &reqs, &[], 64).unwrap();
        for (r, o) in reqs.iter().zip(&out) {
            assert_eq!(o.token_ids, generated(&ex, &r.prompt_token_ids, 3));
        }
    }

    #[test]
    fn impossible_requests_are_rejected_up_front() {
        let mut ex = echo(4);
        let check = |ex: &mut FakeExecutor, r: OfflineRequest| {
            run_offline(ex, &[r], &[], 8).unwrap_err().to_string()
        };
        assert!(check(&mut ex, req(vec![], 3)).contains("empty"));
        assert!(check(&mut ex, req(vec![1; 60], 10)).contains("maximum context length"));
        assert!(check(&mut ex, req(vec![1; 14], 10)).contains("KV blocks"));
        let bad = OfflineRequest {
            prompt_token_ids: vec![1],
            params: SamplingParams { top_p: 0.0, ..SamplingParams::default() },
        };
        assert!(check(&mut ex, bad).contains("top_p"));
        assert!(ex.steps.is_empty());
    }

    #[test]
    fn stop_token_ids_and_ignore_eos() {
        let mut ex = echo(8);
        let expected = generated(&ex, &[1], 3);
        assert!(!expected[..2].contains(&expected[2]), "pick another prompt");
        // EOS is the first token (ignored); the third is a stop token.
        let params = SamplingParams {
            ignore_eos: true,
            stop_token_ids: vec![expected[2]],
            ..SamplingParams::greedy(10)
        };
        let request = OfflineRequest { prompt_token_ids: vec![1], params };
        let out = run_offline(&mut ex, &[request], &[expected[0]], 8).unwrap();
        assert_eq!(out[0].token_ids, expected);
        assert_eq!(out[0].finish_reason, FinishReason::Stop);
    }
}
