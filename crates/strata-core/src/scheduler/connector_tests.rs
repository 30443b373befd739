//! Connector scenarios of docs/accounting.md in the core, with the in-process
//! test connector: A5 (load failure, policy fail), A6 (partial failure,
//! recompute), A7 (total failure), A8 (shared invalid block), A10 (full
//! connector hit), A11 (abort while loading), A13 (async hits counted once).

use super::*;
use crate::connector::KvLoadFailurePolicy;
use crate::engine::EngineCore;
use crate::ids::BlockId;
use crate::records::TokenSource;
use crate::sampling::SamplingParams;
use crate::testing::{FakeExecutor, Harness, Run, TestConnector};

const B: usize = 4;

fn engine(policy: KvLoadFailurePolicy, connector: &TestConnector) -> Harness<FakeExecutor> {
    let config = SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 64,
        block_size: B,
        num_blocks: 64,
        kv_load_failure_policy: policy,
        ..SchedulerConfig::default()
    };
    let exec = FakeExecutor::new(64, B, 4096).with_connector(connector.clone());
    Harness::new(EngineCore::with_connector(exec, config, Some(Box::new(connector.clone()))))
}

fn new_req(prompt: Vec<u32>) -> NewRequest {
    NewRequest::new(prompt, SamplingParams { ignore_eos: true, ..SamplingParams::greedy(4) })
}

fn hashes(prompt: &[u32]) -> Vec<crate::kv::BlockHash> {
    TestConnector::new(TokenSource::Remote, B).hashes(prompt)
}

/// Runs everything to the end; no block may stay held.
fn drain(e: &mut Harness<FakeExecutor>) -> Run {
    let run = e.drain(1000);
    assert_eq!(e.num_free_blocks(), 64, "no block leaks");
    run
}

fn prompt(p: usize) -> Vec<u32> {
    (0..p as u32).map(|i| 10 + i % 500).collect()
}

/// A prompt sharing exactly the first two blocks of `p` (its next token
/// differs, so its outputs cannot extend the match).
fn warm_up(p: &[u32]) -> Vec<u32> {
    let mut w = p[..2 * B].to_vec();
    w.push(3);
    w
}

/// Tokens a run with no connector produces for `prompt`.
fn reference(prompt: &[u32]) -> Vec<u32> {
    let mut e = engine(KvLoadFailurePolicy::Fail, &TestConnector::new(TokenSource::Remote, B));
    e.add_request(new_req(prompt.to_vec()), 0.0).unwrap();
    drain(&mut e).only_tokens().to_vec()
}

#[test]
fn a10_full_connector_hit_leaves_one_token_computed() {
    let c = TestConnector::new(TokenSource::Remote, B);
    let p = prompt(8 * B);
    c.offer(&p, ..);
    let mut e = engine(KvLoadFailurePolicy::Fail, &c);
    e.add_request(new_req(p.clone()), 0.0).unwrap();
    let run = drain(&mut e);
    let r = run.prefill_records()[0];
    assert_eq!((r.remote, r.local_compute, r.local_cache_hit), (8 * B as u32 - 1, 1, 0));
    assert_eq!(run.only_tokens(), &reference(&p));
    // A2: the step that finished the load ran one prompt token, not P.
    let prefill_steps: Vec<u32> = run
        .results
        .iter()
        .filter_map(|r| r.step)
        .map(|s| s.num_prefill_tokens)
        .filter(|&n| n > 0)
        .collect();
    assert_eq!(prefill_steps, vec![1]);
    // A13: external queries = P - local hit, hits counted once.
    let ext_q: u32 =
        run.results.iter().filter_map(|r| r.step).map(|s| s.external_prefix_cache_queries).sum();
    let ext_h: u32 =
        run.results.iter().filter_map(|r| r.step).map(|s| s.external_prefix_cache_hits).sum();
    assert_eq!((ext_q, ext_h), (8 * B as u32, 8 * B as u32 - 1));
    assert_eq!(c.num_loads(), 1);
}

#[test]
fn a13_local_hit_then_external_hit_for_the_rest() {
    let c = TestConnector::new(TokenSource::Host, B);
    let p = prompt(6 * B + 2);
    let mut e = engine(KvLoadFailurePolicy::Fail, &c);
    // Warm the device cache with the first 2 blocks.
    e.add_request(new_req(warm_up(&p)), 0.0).unwrap();
    drain(&mut e);
    c.offer(&p, ..);
    c.set_delay_steps(3);
    e.add_request(new_req(p.clone()), 0.0).unwrap();
    let run = drain(&mut e);
    let r = run.prefill_records()[0];
    assert_eq!((r.local_cache_hit, r.host, r.local_compute), (2 * B as u32, 4 * B as u32, 2));
    let waits: Vec<u32> =
        run.results.iter().filter_map(|r| r.step).map(|s| s.num_waiting_for_remote_kv).collect();
    assert!(waits.contains(&1), "the request waited for its load: {waits:?}");
    let ext_q: u32 =
        run.results.iter().filter_map(|r| r.step).map(|s| s.external_prefix_cache_queries).sum();
    assert_eq!(ext_q, (p.len() - 2 * B) as u32);
    assert_eq!(run.only_tokens(), &reference(&p));
}

#[test]
fn a5_load_failure_with_policy_fail_ends_the_request_with_error_and_no_record() {
    let c = TestConnector::new(TokenSource::Remote, B);
    let p = prompt(8 * B);
    let h = hashes(&p);
    c.offer(&p, ..);
    c.fail(&h[5..6]);
    let mut e = engine(KvLoadFailurePolicy::Fail, &c);
    let id = e.add_request(new_req(p), 0.0).unwrap();
    let run = drain(&mut e);
    assert_eq!(run.reasons[&id], FinishReason::Error);
    assert!(run.prefill_records().is_empty(), "no record for a request without a first token");
    let fin: Vec<&FinishRecord> = run.results.iter().flat_map(|r| &r.finish_records).collect();
    assert_eq!((fin.len(), fin[0].first_token_time), (1, None));
    let failures: u32 =
        run.results.iter().filter_map(|r| r.step).map(|s| s.num_connector_load_failures).sum();
    assert_eq!(failures, 1);
}

#[test]
fn a6_partial_failure_with_recompute_keeps_good_blocks_and_recomputes_the_rest() {
    let c = TestConnector::new(TokenSource::Remote, B);
    let p = prompt(8 * B);
    let h = hashes(&p);
    c.offer(&p, ..);
    c.fail(&h[5..6]);
    let mut e = engine(KvLoadFailurePolicy::Recompute, &c);
    e.add_request(new_req(p.clone()), 0.0).unwrap();
    let run = drain(&mut e);
    let r = run.prefill_records()[0];
    assert_eq!(r.remote, 5 * B as u32, "blocks 0-4 stay remote");
    assert_eq!(r.local_compute, 3 * B as u32);
    assert_eq!(
        r.recomputed.kv_load_failure,
        3 * B as u32 - 1,
        "3B up to the prompt end, less the token always computed"
    );
    assert_eq!(run.only_tokens(), &reference(&p));
}

#[test]
fn a7_total_failure_attributes_nothing_to_the_tier() {
    let c = TestConnector::new(TokenSource::Disk, B);
    let p = prompt(5 * B);
    let h = hashes(&p);
    c.offer(&p, ..);
    c.fail(&h);
    let mut e = engine(KvLoadFailurePolicy::Recompute, &c);
    e.add_request(new_req(p.clone()), 0.0).unwrap();
    let run = drain(&mut e);
    let r = run.prefill_records()[0];
    assert_eq!((r.disk, r.local_compute), (0, 5 * B as u32));
    assert_eq!(r.recomputed.kv_load_failure, 5 * B as u32 - 1);
    assert_eq!(run.only_tokens(), &reference(&p));
}

#[test]
fn a8_a_failed_block_never_reaches_another_request() {
    let c = TestConnector::new(TokenSource::Remote, B);
    let p = prompt(6 * B);
    let h = hashes(&p);
    c.offer(&p, ..);
    c.fail(&h[2..3]);
    c.set_delay_steps(1);
    let mut e = engine(KvLoadFailurePolicy::Recompute, &c);
    let a = e.add_request(new_req(p.clone()), 0.0).unwrap();
    let b = e.add_request(new_req(p.clone()), 0.0).unwrap();
    let run = drain(&mut e);
    let expected = reference(&p);
    assert_eq!(run.tokens[&a], expected);
    assert_eq!(run.tokens[&b], expected);
    for r in run.prefill_records() {
        assert_eq!(r.remote, 2 * B as u32, "only blocks before the failed one are remote");
    }
}

#[test]
fn a11_abort_while_loading_frees_blocks_only_after_the_transfer_reports_done() {
    let c = TestConnector::new(TokenSource::Remote, B);
    let p = prompt(6 * B);
    c.offer(&p, ..);
    c.set_delay_steps(3);
    let mut e = engine(KvLoadFailurePolicy::Fail, &c);
    let id = e.add_request(new_req(p), 0.0).unwrap();
    e.step(); // admitted, blocks allocated, load handed over
    e.step(); // load in flight
    assert_eq!(c.num_in_flight(), 1);
    assert!(e.abort(id, 2.5));
    assert!(
        e.scheduler().kv().pool().num_free_blocks() < 64,
        "blocks held while the transfer runs"
    );
    let run = drain(&mut e);
    assert!(run.prefill_records().is_empty());
    assert_eq!(e.scheduler().kv().pool().num_free_blocks(), 64);
}

#[test]
fn a11_abort_before_the_load_starts_cancels_it() {
    let c = TestConnector::new(TokenSource::Remote, B);
    let p = prompt(6 * B);
    c.offer(&p, ..);
    let mut e = engine(KvLoadFailurePolicy::Fail, &c);
    let id = e.add_request(new_req(p), 0.0).unwrap();
    assert!(e.abort(id, 0.5));
    drain(&mut e);
    assert_eq!(c.num_loads(), 0);
}

#[test]
fn a3_record_set_once_across_preemption_with_local_and_remote_sources() {
    let c = TestConnector::new(TokenSource::Remote, B);
    let p = prompt(8 * B);
    let mut e = engine(KvLoadFailurePolicy::Fail, &c);
    // Local hit of 2 blocks, remote blocks 2-4 (3 blocks).
    e.add_request(new_req(warm_up(&p)), 0.0).unwrap();
    drain(&mut e);
    c.offer(&p, 2..5);
    e.scheduler_mut().config.max_num_batched_tokens = B;
    let id = e.add_request(new_req(p.clone()), 0.0).unwrap();
    // Admission and load, then one chunk of B computed tokens.
    while e.scheduler().request(id).unwrap().num_computed_tokens < 6 * B {
        let r = e.step();
        assert!(r.prefill_records.is_empty(), "no first token yet");
    }
    // Forget the computed block so the re-prefill has work to redo, then
    // preempt before the first token.
    let blocks = e.scheduler().kv().blocks(id).to_vec();
    e.scheduler_mut().kv.evict(&blocks[5..6]);
    e.scheduler_mut().preempt(id);
    // More of the prompt is now in the cache than at first admission.
    let run = drain(&mut e);
    let r = run.prefill_records().into_iter().find(|r| r.request_id == id).unwrap();
    assert_eq!(
        (r.local_cache_hit, r.remote, r.local_compute),
        (2 * B as u32, 3 * B as u32, 3 * B as u32)
    );
    assert_eq!(r.recomputed.preemption, B as u32, "the evicted block is computed again");
    assert_eq!(run.tokens[&id], reference(&p));
}

#[test]
fn a17_blocks_with_a_store_in_flight_are_reused_only_after_the_store() {
    let c = TestConnector::new(TokenSource::Host, B);
    c.store_blocks(3);
    let mut e = engine(KvLoadFailurePolicy::Fail, &c);
    let prompt: Vec<u32> = (10..22).collect(); // three full blocks
    let id = e.add_request(new_req(prompt.clone()), 0.0).unwrap();
    e.step(); // prompt computed: its three blocks are offered and held
    let blocks: Vec<BlockId> = e.scheduler().kv().blocks(id).to_vec();
    assert_eq!(blocks.len(), 3);
    // Preempted with the stores still to run: the request lets go of its
    // blocks, but the three being stored stay out of the free queue.
    e.scheduler_mut().preempt(id);
    assert_eq!(e.scheduler().kv().pool().num_free_blocks(), 64 - 3);
    assert!(blocks.iter().all(|&b| e.scheduler().kv().pool().ref_cnt(b) == 1));
    // A request finished with stores in flight: the same holds.
    let other = e.add_request(new_req((100..108).collect()), 1.0).unwrap();
    e.abort(id, 1.0);
    let run = drain(&mut e);
    assert!(run.reasons.contains_key(&other));
    assert_eq!(c.num_stores_in_flight(), 0);
    assert!(
        hashes(&prompt).iter().all(|h| c.stored().contains(h)),
        "the prompt's blocks were stored"
    );
    // Every hold was released once its store finished: nothing leaks.
    assert!(!e.has_unfinished());
    assert_eq!(e.scheduler().kv().pool().num_free_blocks(), 64);
    e.scheduler().check_invariants().unwrap();
}

#[test]
fn a17_a_held_block_is_not_handed_to_another_request_before_its_store_finishes() {
    let c = TestConnector::new(TokenSource::Host, B);
    c.store_blocks(5);
    let mut e = engine(KvLoadFailurePolicy::Fail, &c);
    let first = e.add_request(new_req((10..22).collect()), 0.0).unwrap();
    e.step();
    let held: Vec<BlockId> = e.scheduler().kv().blocks(first)[..3].to_vec();
    e.abort(first, 1.0);
    // Fill the pool with other requests while the stores are in flight.
    // 22 requests of 3 blocks each want more than the 61 blocks not held.
    for i in 0..22u32 {
        e.add(new_req((500 + i * 8..508 + i * 8).collect()));
    }
    for _ in 0..4 {
        e.step();
        if c.num_stores_in_flight() == 0 {
            break;
        }
        for id in (1..=23).filter_map(RequestId::new) {
            if id == first {
                continue;
            }
            let blocks = e.scheduler().kv().blocks(id);
            assert!(
                blocks.iter().all(|b| !held.contains(b)),
                "a block with a store in flight was reused"
            );
        }
    }
}
