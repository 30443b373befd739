//! Prompt logprobs through the scheduler, with the fake executor: gathered
//! across a chunked prefill and delivered once, with the first token; no
//! prefix-cache or connector match for a request that asks for them; no
//! second delivery after a preemption, whether it came before or after
//! the first token. And the admission checks of the sampling parameters
//! that name token ids.

use std::collections::BTreeMap;

use super::*;
use crate::engine::EngineCore;
use crate::executor::TopLogprobs;
use crate::ids::TokenId;
use crate::records::TokenSource;
use crate::sampling::{SamplingError, SamplingParams};
use crate::testing::{FakeExecutor, Harness, TestConnector};

const B: usize = 4;

fn config(num_blocks: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: budget,
        block_size: B,
        num_blocks,
        max_model_len: 4096,
        ..SchedulerConfig::default()
    }
}

fn harness(num_blocks: usize, budget: usize) -> Harness<FakeExecutor> {
    Harness::fake(config(num_blocks, budget))
}

fn plain(prompt: Vec<u32>, max_tokens: u32) -> NewRequest {
    NewRequest::new(
        prompt,
        SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) },
    )
}

fn asking(prompt: Vec<u32>, max_tokens: u32, n: u32) -> NewRequest {
    let mut r = plain(prompt, max_tokens);
    r.params.prompt_logprobs = Some(n);
    r
}

/// Per request, each output that carried prompt logprobs: its token and
/// the logprobs.
type Deliveries = BTreeMap<RequestId, Vec<(Option<TokenId>, Vec<Option<TopLogprobs>>)>>;

fn deliveries(results: &[StepResult]) -> Deliveries {
    let mut d = Deliveries::new();
    for o in results.iter().flat_map(|r| &r.outputs) {
        if let Some(p) = &o.prompt_logprobs {
            d.entry(o.request_id).or_default().push((o.new_token_id, p.clone()));
        }
    }
    d
}

fn first_tokens(results: &[StepResult]) -> BTreeMap<RequestId, TokenId> {
    let mut first = BTreeMap::new();
    for o in results.iter().flat_map(|r| &r.outputs) {
        if let Some(t) = o.new_token_id {
            first.entry(o.request_id).or_insert(t);
        }
    }
    first
}

/// What the fake executor gives for `prompt`: `None`, then its made-up
/// entry for every later prompt token.
fn expected(e: &FakeExecutor, prompt: &[u32], n: u32) -> Vec<Option<TopLogprobs>> {
    std::iter::once(None).chain(prompt[1..].iter().map(|&t| Some(e.prompt_logprob(t, n)))).collect()
}

fn prompt(start: u32, len: u32) -> Vec<u32> {
    (start..start + len).collect()
}

#[test]
fn prompt_logprobs_are_gathered_across_chunks_and_delivered_once_with_the_first_token() {
    let mut h = harness(64, 3);
    let p = prompt(100, 11);
    let id = h.add(asking(p.clone(), 3, 2));
    let other = h.add(plain(prompt(300, 5), 3));
    let run = h.drain(100);
    let prefill_steps =
        run.results.iter().filter_map(|r| r.step).filter(|s| s.num_prefill_tokens > 0).count();
    assert!(prefill_steps >= 4, "the prompt ran in chunks of at most 3 tokens");
    let d = deliveries(&run.results);
    assert!(!d.contains_key(&other), "a request that did not ask gets none");
    let got = &d[&id];
    assert_eq!(got.len(), 1, "delivered once");
    assert_eq!(got[0].0, Some(first_tokens(&run.results)[&id]), "with the first token");
    assert_eq!(got[0].1, expected(h.executor(), &p, 2));
    assert_eq!(run.tokens[&id].len(), 3);
}

#[test]
fn a_one_token_prompt_gets_a_single_none() {
    let mut h = harness(64, 64);
    let id = h.add(asking(vec![7], 2, 1));
    let run = h.drain(100);
    assert_eq!(deliveries(&run.results)[&id], vec![(run.tokens[&id].first().copied(), vec![None])]);
}

#[test]
fn requests_with_prompt_logprobs_skip_the_prefix_cache() {
    let mut h = harness(64, 64);
    let p = prompt(100, 4 * B as u32);
    h.add(plain(p.clone(), 1));
    h.drain(100);
    let id = h.add(asking(p.clone(), 1, 0));
    let run = h.drain(100);
    let rec = run.prefill_records()[0];
    assert_eq!(rec.request_id, id);
    assert_eq!((rec.local_cache_hit, rec.local_compute), (0, p.len() as u32), "all computed");
    let queries: u32 =
        run.results.iter().filter_map(|r| r.step).map(|s| s.prefix_cache_queries).sum();
    assert_eq!(queries, 0, "a skipped lookup is no query (as vLLM's stats)");
    assert_eq!(deliveries(&run.results)[&id][0].1, expected(h.executor(), &p, 0));
    // Its blocks still enter the cache: a later plain request hits them.
    h.add(plain(p.clone(), 1));
    let rec = h.drain(100).prefill_records()[0];
    assert_eq!(rec.local_cache_hit, 3 * B as u32);
}

#[test]
fn requests_with_prompt_logprobs_skip_connector_matches() {
    let c = TestConnector::new(TokenSource::Remote, B);
    let p = prompt(100, 6 * B as u32);
    c.offer(&p, ..);
    let exec = FakeExecutor::new(64, B, 4096).with_connector(c.clone());
    let mut h =
        Harness::new(EngineCore::with_connector(exec, config(64, 64), Some(Box::new(c.clone()))));
    let id = h.add(asking(p.clone(), 2, 3));
    let run = h.drain(100);
    assert_eq!(c.num_loads(), 0, "no load for a request that wants prompt logprobs");
    let rec = run.prefill_records()[0];
    assert_eq!((rec.remote, rec.local_compute), (0, p.len() as u32));
    assert_eq!(deliveries(&run.results)[&id][0].1, expected(h.executor(), &p, 3));
    // The same prompt without prompt logprobs loads from the connector.
    h.add(plain(prompt(100, 6 * B as u32), 2));
    h.drain(100);
    assert!(c.num_loads() > 0);
}

#[test]
fn a_preemption_before_the_first_token_delivers_each_position_once() {
    let mut e = EngineCore::new(FakeExecutor::new(64, B, 4096), config(64, 4));
    let p = prompt(100, 12);
    let id = e.add_request(asking(p.clone(), 2, 1), 0.0).unwrap();
    let mut results = vec![e.step(1.0), e.step(2.0)];
    assert_eq!(e.scheduler().request(id).unwrap().prompt_logprobs.len(), 8, "two chunks in");
    e.scheduler_mut().preempt(id);
    let mut t = 2.0;
    while e.has_unfinished() {
        t += 1.0;
        results.push(e.step(t));
    }
    let d = deliveries(&results);
    assert_eq!(d[&id].len(), 1);
    assert_eq!(d[&id][0].1, expected(e.executor(), &p, 1), "no position twice, none missing");
    let rec = crate::testing::prefill_records(&results)[0];
    assert_eq!(rec.local_cache_hit, 0, "the re-admission recomputed everything");
}

#[test]
fn a_preemption_after_the_first_token_does_not_deliver_again() {
    let mut e = EngineCore::new(FakeExecutor::new(64, B, 4096), config(64, 64));
    let p = prompt(100, 10);
    let id = e.add_request(asking(p.clone(), 6, 2), 0.0).unwrap();
    let first = e.step(1.0);
    assert_eq!(deliveries(std::slice::from_ref(&first))[&id].len(), 1);
    e.scheduler_mut().preempt(id);
    let mut results = Vec::new();
    let mut t = 1.0;
    while e.has_unfinished() {
        t += 1.0;
        results.push(e.step(t));
    }
    assert!(deliveries(&results).is_empty(), "delivered once only");
    // Delivered, the request uses the prefix cache again: its re-run
    // starts after the two cached blocks.
    let steps = &e.executor().steps;
    let rerun = steps[1].iter().find(|s| s.0 == id).unwrap();
    assert_eq!((rerun.1, rerun.2), (2 * B, p.len() + 1 - 2 * B));
}

#[test]
fn pool_pressure_preemptions_keep_prompt_logprobs_whole() {
    // 10 blocks of 4 cannot hold both requests (28 tokens each): one is
    // preempted and recomputed, at any point of its life.
    let mut h = harness(10, 8);
    let (p1, p2) = (prompt(100, 16), prompt(200, 16));
    let a = h.add(asking(p1.clone(), 12, 2));
    let b = h.add(asking(p2.clone(), 12, 0));
    let run = h.drain(500);
    let preemptions: u32 =
        run.results.iter().filter_map(|r| r.step).map(|s| s.num_preemptions).sum();
    assert!(preemptions > 0);
    let d = deliveries(&run.results);
    assert_eq!(d[&a], vec![(run.tokens[&a].first().copied(), expected(h.executor(), &p1, 2))]);
    assert_eq!(d[&b], vec![(run.tokens[&b].first().copied(), expected(h.executor(), &p2, 0))]);
}

#[test]
fn admission_checks_the_token_ids_of_sampling_parameters_against_the_vocabulary() {
    let mut e = EngineCore::new(FakeExecutor::new(64, B, 4096), config(64, 64));
    let vocab = e.executor().vocab_size as u32;
    let with = |params: SamplingParams| NewRequest::new(vec![1, 2, 3], params);
    let d = || SamplingParams { ignore_eos: true, ..SamplingParams::greedy(2) };
    let cases = [
        ("logit_bias", SamplingParams { logit_bias: vec![(5, 1.0), (vocab, 1.0)], ..d() }),
        ("allowed_token_ids", SamplingParams { allowed_token_ids: Some(vec![1, vocab]), ..d() }),
        (
            "bad_words_token_ids",
            SamplingParams { bad_words_token_ids: vec![vec![2], vec![3, vocab + 7]], ..d() },
        ),
    ];
    for (field, params) in cases {
        let err = e.add_request(with(params), 0.0).unwrap_err();
        assert!(
            matches!(err, AdmissionError::ParamTokenOutOfVocabulary { field: f, .. } if f == field),
            "{field}: {err:?}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }
    let refused = |e: &mut EngineCore<FakeExecutor>, p| match e.add_request(with(p), 0.0) {
        Err(AdmissionError::Sampling(s)) => s,
        other => panic!("{other:?}"),
    };
    let rp = SamplingParams { repetition_penalty: 0.0, ..d() };
    assert!(matches!(refused(&mut e, rp), SamplingError::RepetitionPenalty(_)));
    let empty = SamplingParams { allowed_token_ids: Some(vec![]), ..d() };
    assert_eq!(refused(&mut e, empty), SamplingError::AllowedTokenIdsEmpty);
    let many = SamplingParams { prompt_logprobs: Some(21), ..d() };
    assert_eq!(refused(&mut e, many), SamplingError::PromptLogprobs(21));
    // In range, everything is admitted.
    let ok = SamplingParams {
        logit_bias: vec![(vocab - 1, -100.0)],
        allowed_token_ids: Some(vec![0, vocab - 1]),
        bad_words_token_ids: vec![vec![vocab - 1, 0]],
        ..d()
    };
    assert!(e.add_request(with(ok), 0.0).is_ok());
}
