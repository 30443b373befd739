//! A simple offline batch driver over any [`Executor`]: it admits as many
//! requests as the KV pool can hold for their whole length (prompt plus
//! `max_tokens`), prefills them in chunks under a per-step token budget
//! while already-admitted requests decode, and stops each at EOS, a stop
//! token or `max_tokens`. Admission is first come, first served; a request
//! that can never fit is rejected up front, never left waiting.
//!
//! This is the engine-foundation driver for `strata generate` and the
//! executor tests. It reserves blocks for the worst case, so it never
//! preempts and has no prefix cache; the scheduler of the engine core
//! supersedes it for serving.

use std::collections::VecDeque;

use thiserror::Error;

use crate::executor::{Executor, ModelBatch, SampleRequest, SeqInput, TopLogprobs};
use crate::ids::{BlockId, RequestId, TokenId};
use crate::sampling::{SamplingError, SamplingParams};

#[derive(Clone, Debug)]
pub struct OfflineRequest {
    pub prompt_token_ids: Vec<TokenId>,
    pub params: SamplingParams,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop token.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OfflineOutput {
    pub token_ids: Vec<TokenId>,
    pub logprobs: Vec<TopLogprobs>,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Error)]
pub enum OfflineError<E: std::error::Error> {
    #[error("request {index}: the prompt is empty")]
    EmptyPrompt { index: usize },
    #[error("request {index}: {source}")]
    Sampling { index: usize, source: SamplingError },
    #[error("request {index}: prompt ({prompt}) plus max_tokens ({max_tokens}) exceeds the model's {limit} tokens")]
    TooLong { index: usize, prompt: usize, max_tokens: u32, limit: usize },
    #[error("request {index} needs {needed} KV blocks but the pool has {available}")]
    PoolTooSmall { index: usize, needed: usize, available: usize },
    #[error("executor: {0}")]
    Executor(#[source] E),
}

struct Running {
    index: usize,
    id: RequestId,
    tokens: Vec<TokenId>,
    num_prompt: usize,
    num_computed: usize,
    blocks: Vec<BlockId>,
    output: OfflineOutput,
    finished: bool,
}

/// Runs every request to completion; outputs come back in request order.
/// `max_num_batched_tokens` bounds the tokens of one step (decodes first,
/// then prefill chunks).
pub fn run_offline<E: Executor>(
    executor: &mut E,
    requests: &[OfflineRequest],
    eos_token_ids: &[TokenId],
    max_num_batched_tokens: usize,
) -> Result<Vec<OfflineOutput>, OfflineError<E::Error>> {
    let spec = executor.kv_cache_spec();
    let mut waiting = VecDeque::new();
    for (index, r) in requests.iter().enumerate() {
        let prompt = r.prompt_token_ids.len();
        if prompt == 0 {
            return Err(OfflineError::EmptyPrompt { index });
        }
        r.params.validate().map_err(|source| OfflineError::Sampling { index, source })?;
        let total = prompt + r.params.max_tokens as usize;
        if total > spec.max_model_len {
            return Err(OfflineError::TooLong {
                index,
                prompt,
                max_tokens: r.params.max_tokens,
                limit: spec.max_model_len,
            });
        }
        let needed = spec.num_blocks_for_tokens(total);
        if needed > spec.num_blocks {
            return Err(OfflineError::PoolTooSmall { index, needed, available: spec.num_blocks });
        }
        waiting.push_back(index);
    }
    let budget = max_num_batched_tokens.max(1);
    let mut free: Vec<BlockId> = (0..spec.num_blocks as u32).rev().map(BlockId).collect();
    let mut outputs: Vec<Option<OfflineOutput>> = vec![None; requests.len()];
    let mut running: Vec<Running> = Vec::new();
    let mut next_id = 1u64;
    while !waiting.is_empty() || !running.is_empty() {
        while let Some(&index) = waiting.front() {
            let r = &requests[index];
            let needed =
                spec.num_blocks_for_tokens(r.prompt_token_ids.len() + r.params.max_tokens as usize);
            if needed > free.len() {
                break;
            }
            waiting.pop_front();
            let blocks = free.split_off(free.len() - needed);
            running.push(Running {
                index,
                id: RequestId::new(next_id).expect("invariant: ids start at 1"),
                tokens: r.prompt_token_ids.clone(),
                num_prompt: r.prompt_token_ids.len(),
                num_computed: 0,
                blocks,
                output: OfflineOutput {
                    token_ids: Vec::new(),
                    logprobs: Vec::new(),
                    finish_reason: FinishReason::Length,
                },
                finished: false,
            });
            next_id += 1;
        }
        // Decodes first (one token each), then prefill chunks in arrival order.
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut left = budget;
        for (i, r) in running.iter().enumerate() {
            if r.num_computed >= r.num_prompt && left > 0 {
                plan.push((i, 1));
                left -= 1;
            }
        }
        for (i, r) in running.iter().enumerate() {
            if r.num_computed < r.num_prompt && left > 0 {
                let n = (r.num_prompt - r.num_computed).min(left);
                plan.push((i, n));
                left -= n;
            }
        }
        let batch = ModelBatch {
            seqs: plan
                .iter()
                .map(|&(i, n)| {
                    let r = &running[i];
                    let reaches_end = r.num_computed + n >= r.tokens.len();
                    SeqInput {
                        request_id: r.id,
                        token_ids: &r.tokens[r.num_computed..r.num_computed + n],
                        num_computed_tokens: r.num_computed,
                        block_table: &r.blocks,
                        sample: reaches_end.then(|| SampleRequest {
                            params: &requests[r.index].params,
                            output_token_ids: &r.output.token_ids,
                        }),
                    }
                })
                .collect(),
        };
        let out = executor.execute(&batch).map_err(OfflineError::Executor)?;
        drop(batch);
        let mut sampled = out.sampled.into_iter();
        for &(i, n) in &plan {
            let r = &mut running[i];
            r.num_computed += n;
            if r.num_computed < r.tokens.len() {
                continue;
            }
            let s = sampled.next().expect("invariant: one sample per sequence that asked");
            debug_assert_eq!(s.request_id, r.id);
            let params = &requests[r.index].params;
            r.tokens.push(s.token_id);
            r.output.token_ids.push(s.token_id);
            r.output.logprobs.extend(s.logprobs);
            let is_stop = !params.ignore_eos && eos_token_ids.contains(&s.token_id)
                || params.stop_token_ids.contains(&s.token_id);
            if is_stop {
                r.output.finish_reason = FinishReason::Stop;
                r.finished = true;
            } else if r.output.token_ids.len() >= params.max_tokens as usize {
                r.finished = true;
            }
        }
        for r in running.iter_mut().filter(|r| r.finished) {
            free.append(&mut r.blocks);
            outputs[r.index] = Some(std::mem::replace(
                &mut r.output,
                OfflineOutput {
                    token_ids: Vec::new(),
                    logprobs: Vec::new(),
                    finish_reason: FinishReason::Length,
                },
            ));
        }
        running.retain(|r| !r.finished);
    }
    Ok(outputs.into_iter().map(|o| o.expect("invariant: every request finishes")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{BatchError, KvCacheSpec, ModelOutput, SampledToken};

    /// Echoes "last token + 1" and records what each step ran.
    struct Echo {
        spec: KvCacheSpec,
        steps: Vec<Vec<(RequestId, usize, usize)>>,
    }

    impl Executor for Echo {
        type Error = BatchError;
        fn kv_cache_spec(&self) -> KvCacheSpec {
            self.spec
        }
        fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput, BatchError> {
            batch.validate(&self.spec)?;
            self.steps.push(
                batch
                    .seqs
                    .iter()
                    .map(|s| (s.request_id, s.num_computed_tokens, s.token_ids.len()))
                    .collect(),
            );
            let sampled = batch
                .seqs
                .iter()
                .filter(|s| s.sample.is_some())
                .map(|s| SampledToken {
                    request_id: s.request_id,
                    token_id: s.token_ids.last().copied().unwrap_or(0) + 1,
                    logprobs: None,
                })
                .collect();
            Ok(ModelOutput { sampled })
        }
    }

    fn echo(num_blocks: usize) -> Echo {
        Echo {
            spec: KvCacheSpec { block_size: 4, num_blocks, bytes_per_block: 1, max_model_len: 64 },
            steps: Vec::new(),
        }
    }

    fn req(prompt: Vec<u32>, max_tokens: u32) -> OfflineRequest {
        OfflineRequest { prompt_token_ids: prompt, params: SamplingParams::greedy(max_tokens) }
    }

    #[test]
    fn chunks_prefill_under_the_budget_and_stops_at_eos_or_length() {
        let mut ex = echo(32);
        let reqs = [req((10..20).collect(), 3), req(vec![40], 5)];
        // EOS is 43: the second request stops after 41, 42, 43.
        let out = run_offline(&mut ex, &reqs, &[43], 4).unwrap();
        assert_eq!(out[0].token_ids, vec![20, 21, 22]);
        assert_eq!(out[0].finish_reason, FinishReason::Length);
        assert_eq!(out[1].token_ids, vec![41, 42, 43]);
        assert_eq!(out[1].finish_reason, FinishReason::Stop);
        assert!(ex.steps.iter().all(|s| s.iter().map(|&(_, _, n)| n).sum::<usize>() <= 4));
        // The 10-token prompt was split into chunks of at most 4.
        assert!(ex.steps[0].contains(&(RequestId::new(1).unwrap(), 0, 4)));
    }

    #[test]
    fn a_small_pool_admits_in_waves_and_frees_blocks() {
        // Each request needs 2 blocks (5 tokens + 3 outputs); 3 blocks fit one.
        let mut ex = echo(3);
        let reqs: Vec<_> = (0..4).map(|i| req(vec![i * 10; 5], 3)).collect();
        let out = run_offline(&mut ex, &reqs, &[], 64).unwrap();
        for (i, o) in out.iter().enumerate() {
            let last = i as u32 * 10;
            assert_eq!(o.token_ids, vec![last + 1, last + 2, last + 3]);
        }
        assert!(ex.steps.iter().all(|s| s.len() == 1), "one request at a time");
    }

    #[test]
    fn impossible_requests_are_rejected_up_front() {
        let mut ex = echo(4);
        let check = |ex: &mut Echo, r: OfflineRequest| {
            run_offline(ex, &[r], &[], 8).unwrap_err().to_string()
        };
        assert!(check(&mut ex, req(vec![], 3)).contains("empty"));
        assert!(check(&mut ex, req(vec![1; 60], 10)).contains("exceeds"));
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
        let params = SamplingParams {
            ignore_eos: true,
            stop_token_ids: vec![4],
            ..SamplingParams::greedy(10)
        };
        let out =
            run_offline(&mut ex, &[OfflineRequest { prompt_token_ids: vec![1], params }], &[2], 8)
                .unwrap();
        assert_eq!(out[0].token_ids, vec![2, 3, 4]);
        assert_eq!(out[0].finish_reason, FinishReason::Stop);
    }
}
