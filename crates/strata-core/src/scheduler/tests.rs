//! Scheduler tests: acceptance scenarios of docs/accounting.md that live in the
//! core without connectors (A3 partly, A4, A9, A13, A19, A20, A21), a
//! proptest state machine over random add/abort/step sequences, and
//! admission errors.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::connector::KvLoadFailurePolicy;
use crate::engine::EngineCore;
use crate::records::TokenSource;
use crate::sampling::SamplingParams;
use crate::testing::FakeExecutor;

fn config(budget: usize, max_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: max_seqs,
        max_num_batched_tokens: budget,
        block_size: 0,
        num_blocks: 0,
        max_model_len: usize::MAX,
        ..SchedulerConfig::default()
    }
}

fn engine(num_blocks: usize, block_size: usize, budget: usize) -> EngineCore<FakeExecutor> {
    EngineCore::new(FakeExecutor::new(num_blocks, block_size, 4096), config(budget, 64))
}

fn new_req(prompt: Vec<u32>, max_tokens: u32) -> NewRequest {
    NewRequest::new(
        prompt,
        SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) },
    )
}

/// Steps until nothing is left, collecting every result.
fn drain(e: &mut EngineCore<FakeExecutor>, t: &mut f64) -> Vec<StepResult> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        if !e.has_unfinished() {
            break;
        }
        *t += 1.0;
        out.push(e.step(*t));
    }
    assert!(!e.has_unfinished(), "the engine did not finish");
    out
}

fn records(results: &[StepResult]) -> Vec<PrefillRecord> {
    results.iter().flat_map(|r| r.prefill_records.iter().copied()).collect()
}

fn sum(r: &PrefillRecord) -> u32 {
    TokenSource::ALL.iter().map(|&s| r.tokens(s)).sum()
}

#[test]
fn a9_full_local_hit_leaves_the_last_block_or_token_computed() {
    let b = 4;
    let mut e = engine(64, b, 64);
    let mut t = 0.0;
    let prompt: Vec<u32> = (10..10 + 4 * b as u32).collect();
    e.add_request(new_req(prompt.clone(), 2), t).unwrap();
    drain(&mut e, &mut t);
    // P = 4B: three blocks hit, the last block is computed.
    e.add_request(new_req(prompt.clone(), 2), t).unwrap();
    let r = records(&drain(&mut e, &mut t))[0];
    assert_eq!((r.local_cache_hit, r.local_compute), (3 * b as u32, b as u32));
    // P = 4B + 1: four blocks hit, one token computed.
    let mut longer = prompt.clone();
    longer.push(99);
    e.add_request(new_req(longer, 2), t).unwrap();
    let results = drain(&mut e, &mut t);
    let r = records(&results)[0];
    assert_eq!((r.local_cache_hit, r.local_compute), (4 * b as u32, 1));
    // A2-style: the step that ran the request ran exactly one prompt token.
    assert_eq!(results[0].step.unwrap().num_prefill_tokens, 1);
    e.scheduler().check_invariants().unwrap();
}

#[test]
fn a19_parallel_samples_are_separate_requests_with_their_own_records() {
    let mut e = engine(256, 16, 512);
    let mut t = 0.0;
    let prompt: Vec<u32> = (0..58).map(|i| 3 + i).collect();
    for _ in 0..4 {
        e.add_request(new_req(prompt.clone(), 3), t).unwrap();
    }
    let recs = records(&drain(&mut e, &mut t));
    assert_eq!(recs.len(), 4);
    assert_eq!(recs.iter().map(|r| r.prompt_tokens).sum::<u32>(), 232);
    assert_eq!(recs.iter().map(sum).sum::<u32>(), 232);
}

#[test]
fn a20_requests_that_never_ran_have_no_first_token_and_no_negative_durations() {
    let mut e = engine(64, 4, 64);
    let id = e.add_request(new_req(vec![5, 6, 7], 4), 10.0).unwrap();
    assert!(e.abort(id, 12.0));
    let r = e.step(13.0);
    assert!(r.prefill_records.is_empty());
    let f = &r.finish_records[0];
    assert_eq!(
        (f.reason, f.first_scheduled_time, f.first_token_time),
        (FinishReason::Abort, None, None)
    );
    assert!(f.finished_time >= f.arrival_time);
    assert_eq!(e.scheduler().kv().pool().num_free_blocks(), 64);
}

/// Two long requests in a pool that cannot hold both: the later one is
/// preempted, re-admitted, and still finishes with the right tokens.
fn preemption_engine() -> (EngineCore<FakeExecutor>, Vec<StepResult>, f64) {
    // 10 blocks of 4 = 40 slots; each request needs 16 + 12 = 28 tokens.
    let mut e = engine(10, 4, 8);
    let mut t = 0.0;
    e.add_request(new_req((100..116).collect(), 12), t).unwrap();
    e.add_request(new_req((200..216).collect(), 12), t).unwrap();
    let results = drain(&mut e, &mut t);
    (e, results, t)
}

#[test]
fn a21_preemption_is_reported_in_its_own_step_and_earlier_records_stand() {
    let (e, results, _) = preemption_engine();
    let preempting: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.step.is_some_and(|s| s.num_preemptions > 0))
        .map(|(i, _)| i)
        .collect();
    assert!(!preempting.is_empty(), "the pool is too small for both: someone is preempted");
    let first = preempting[0];
    assert!(results[..first].iter().all(|r| r.step.map_or(0, |s| s.num_preemptions) == 0));
    // Both requests produce their full output, and the one preempted says so.
    let fin: Vec<&FinishRecord> = results.iter().flat_map(|r| &r.finish_records).collect();
    assert_eq!(fin.len(), 2);
    assert!(fin.iter().all(|f| f.num_generation_tokens == 12 && f.reason == FinishReason::Length));
    assert!(fin.iter().any(|f| f.num_preemptions > 0));
    assert_eq!(e.scheduler().kv().pool().num_free_blocks(), 10);
}

#[test]
fn preempted_output_equals_an_unpressured_run() {
    let (_, results, _) = preemption_engine();
    let mut tokens: BTreeMap<RequestId, Vec<u32>> = BTreeMap::new();
    for r in &results {
        for o in &r.outputs {
            tokens.entry(o.request_id).or_default().extend(o.new_token_id);
        }
    }
    let mut e = engine(64, 4, 8);
    let mut t = 0.0;
    e.add_request(new_req((100..116).collect(), 12), t).unwrap();
    e.add_request(new_req((200..216).collect(), 12), t).unwrap();
    let mut free_run: BTreeMap<RequestId, Vec<u32>> = BTreeMap::new();
    for r in drain(&mut e, &mut t) {
        for o in r.outputs {
            free_run.entry(o.request_id).or_default().extend(o.new_token_id);
        }
    }
    assert_eq!(tokens, free_run);
}

#[test]
fn a4_and_a13_prefix_counters_count_each_admission_once_and_skip_readmissions() {
    let (_, results, _) = preemption_engine();
    let queries: u32 = results.iter().filter_map(|r| r.step).map(|s| s.prefix_cache_queries).sum();
    // Two prompts of 16 tokens, each counted once, although one was
    // admitted twice and admission attempts failed on blocks in between.
    assert_eq!(queries, 32);
}

#[test]
fn a3_first_attribution_stands_across_preemption() {
    let b = 4;
    let mut e = engine(64, b, 4);
    let mut t = 0.0;
    let shared: Vec<u32> = (50..58).collect(); // two blocks
    e.add_request(new_req(shared.clone(), 1), t).unwrap();
    drain(&mut e, &mut t);
    let mut prompt = shared.clone();
    prompt.extend(300..312);
    let id = e.add_request(new_req(prompt.clone(), 2), t).unwrap();
    t += 1.0;
    e.step(t); // admitted with 8 cached tokens, computes 4 of its 12
    e.scheduler_mut().preempt(id);
    // Another request now computes more of the same prompt, so a new
    // lookup would find more cached tokens.
    e.add_request(new_req(prompt.clone(), 1), t).unwrap();
    let results = drain(&mut e, &mut t);
    let rec = records(&results).into_iter().find(|r| r.request_id == id).unwrap();
    assert_eq!(rec.local_cache_hit, 8, "the hit found at first admission stands");
    assert_eq!(sum(&rec), 20);
}

#[test]
fn preemption_after_the_first_token_counts_the_reprefill_in_the_step_not_the_record() {
    let mut e = engine(64, 4, 64);
    let mut t = 0.0;
    // 10 prompt tokens: two full blocks (8 tokens) reach the prefix cache.
    let id = e.add_request(new_req((10..20).collect(), 6), t).unwrap();
    t += 1.0;
    let first = e.step(t);
    assert_eq!(first.prefill_records.len(), 1, "the whole prompt ran and a token came out");
    e.scheduler_mut().preempt(id);
    let results = drain(&mut e, &mut t);
    assert!(results.iter().all(|r| r.prefill_records.is_empty()), "the record is never re-emitted");
    assert_eq!(first.prefill_records[0].recomputed.preemption, 0);
    // The re-admission finds the 8 cached tokens; the other 2 prompt
    // tokens are computed again, and only the step says so.
    let steps: Vec<StepRecord> = results.iter().filter_map(|r| r.step).collect();
    let recomputed: u32 = steps.iter().map(|s| s.num_recomputed_preemption_tokens).sum();
    assert_eq!(recomputed, 2);
    let queries: u32 = steps.iter().map(|s| s.prefix_cache_queries).sum();
    assert_eq!(queries, 0, "a re-admission is not a prefix-cache query (A13)");
}

#[test]
fn chunked_prefill_splits_long_prompts_by_the_budget() {
    // A2: a 5000-token prompt with budget 2048 runs as 2048, 2048, 904.
    let mut e = EngineCore::new(FakeExecutor::new(1024, 16, 8192), config(2048, 64));
    let mut t = 0.0;
    e.add_request(new_req((0..5000).map(|i| i % 900 + 2).collect(), 1), t).unwrap();
    let steps: Vec<u32> =
        drain(&mut e, &mut t).iter().filter_map(|r| r.step).map(|s| s.num_tokens()).collect();
    assert_eq!(steps, vec![2048, 2048, 904]);
}

#[test]
fn priority_policy_runs_urgent_requests_first_and_preempts_the_least_urgent() {
    let mut cfg = config(64, 64);
    cfg.policy = SchedulingPolicy::Priority;
    let mut e = EngineCore::new(FakeExecutor::new(64, 4, 4096), cfg);
    let low = e.add_request(NewRequest { priority: 5, ..new_req(vec![7; 8], 1) }, 0.0).unwrap();
    let high = e.add_request(NewRequest { priority: -1, ..new_req(vec![8; 8], 1) }, 1.0).unwrap();
    e.step(2.0);
    let order: Vec<RequestId> = e.executor().steps[0].iter().map(|s| s.0).collect();
    assert_eq!(order, vec![high, low]);
}

#[test]
fn admission_rejects_what_can_never_run() {
    let mut e = engine(4, 4, 64);
    let err = |e: &mut EngineCore<FakeExecutor>, r: NewRequest| e.add_request(r, 0.0).unwrap_err();
    assert_eq!(err(&mut e, new_req(vec![], 3)), AdmissionError::EmptyPrompt);
    assert!(matches!(err(&mut e, new_req(vec![1; 4096], 3)), AdmissionError::PromptTooLong { .. }));
    assert!(matches!(
        err(&mut e, new_req(vec![1; 4000], 200)),
        AdmissionError::ContextExceeded { .. }
    ));
    assert!(matches!(
        err(&mut e, new_req(vec![1; 10], 10)),
        AdmissionError::NeverFits { needed: 5, .. }
    ));
    assert!(matches!(
        err(&mut e, new_req(vec![1, 5000], 1)),
        AdmissionError::TokenOutOfVocabulary { token: 5000, .. }
    ));
    let mut bad = new_req(vec![1], 1);
    bad.params.temperature = -1.0;
    assert!(matches!(err(&mut e, bad), AdmissionError::Sampling(_)));
    let mut bad = new_req(vec![1], 1);
    bad.params.max_tokens = 0;
    assert!(matches!(err(&mut e, bad), AdmissionError::Sampling(_)));
    assert!(!e.has_unfinished());
}

#[derive(Clone, Debug)]
enum Op {
    Add {
        prefix: usize,
        len: usize,
        max_tokens: u32,
    },
    Abort(usize),
    Step,
    /// The connector gets the blocks of a prefix.
    Offer(usize),
    /// Loads of one block of a prefix fail.
    FailBlock(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..3, 1usize..30, 1u32..8).prop_map(|(prefix, len, max_tokens)| Op::Add { prefix, len, max_tokens }),
        1 => (0usize..64).prop_map(Op::Abort),
        5 => Just(Op::Step),
        1 => (0usize..3).prop_map(Op::Offer),
        1 => (0usize..3, 0usize..5).prop_map(|(p, b)| Op::FailBlock(p, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_keeps_every_invariant(
        ops in prop::collection::vec(op(), 1..80),
        budget in 1usize..24,
        recompute in any::<bool>(),
        delay in 0u32..3,
    ) {
        let (num_blocks, bs) = (12, 4);
        let connector = crate::testing::TestConnector::new(TokenSource::Remote, bs);
        connector.set_delay_steps(delay);
        let mut cfg = config(budget, 4);
        cfg.kv_load_failure_policy = if recompute { KvLoadFailurePolicy::Recompute } else { KvLoadFailurePolicy::Fail };
        let exec = FakeExecutor::new(num_blocks, bs, 4096).with_connector(connector.clone());
        let mut e = EngineCore::with_connector(exec, cfg, Some(Box::new(connector.clone())));
        let prefixes: [Vec<u32>; 3] = [(10..30).collect(), (40..60).collect(), (10..20).chain(70..80).collect()];
        let mut ids: Vec<RequestId> = Vec::new();
        let mut prompt_len: BTreeMap<RequestId, u32> = BTreeMap::new();
        let mut finished: BTreeSet<RequestId> = BTreeSet::new();
        let mut recorded: BTreeSet<RequestId> = BTreeSet::new();
        // Per request: computed tokens and preemptions at the last check.
        let mut computed: BTreeMap<RequestId, (usize, u32)> = BTreeMap::new();
        let mut t = 0.0;
        let check = |e: &EngineCore<FakeExecutor>, r: StepResult, prompt_len: &BTreeMap<RequestId, u32>, finished: &mut BTreeSet<RequestId>,
                         recorded: &mut BTreeSet<RequestId>, computed: &mut BTreeMap<RequestId, (usize, u32)>| -> Result<(), TestCaseError> {
            prop_assert!(r.accounting_violations.is_empty());
            if let Some(s) = r.step {
                prop_assert!(s.num_tokens() as usize <= budget, "budget exceeded");
                prop_assert!(s.num_blocks_used <= s.num_blocks_total);
            }
            for f in &r.finish_records {
                prop_assert!(finished.insert(f.request_id), "finished twice");
            }
            for p in &r.prefill_records {
                prop_assert!(recorded.insert(p.request_id), "record emitted twice");
                prop_assert_eq!(sum(p), prompt_len[&p.request_id]);
                prop_assert!(p.local_compute >= 1);
            }
            for (&id, (c, preemptions)) in computed.iter_mut() {
                if let Some(req) = e.scheduler().request(id) {
                    let preempted = req.num_preemptions > *preemptions;
                    prop_assert!(req.num_computed_tokens >= *c || preempted, "num_computed_tokens went back");
                    (*c, *preemptions) = (req.num_computed_tokens, req.num_preemptions);
                }
            }
            prop_assert_eq!(e.scheduler().check_invariants(), Ok(()));
            Ok(())
        };
        for op in ops {
            match op {
                Op::Add { prefix, len, max_tokens } => {
                    let mut prompt = prefixes[prefix].clone();
                    prompt.truncate(len.min(prompt.len()));
                    prompt.extend((0..len.saturating_sub(prompt.len())).map(|i| 100 + i as u32));
                    match e.add_request(new_req(prompt.clone(), max_tokens), t) {
                        Ok(id) => {
                            ids.push(id);
                            prompt_len.insert(id, prompt.len() as u32);
                            computed.insert(id, (0, 0));
                        }
                        Err(AdmissionError::NeverFits { .. }) => {}
                        Err(other) => prop_assert!(false, "unexpected admission error {other}"),
                    }
                }
                Op::Abort(k) => {
                    if let Some(&id) = ids.get(k % ids.len().max(1)) {
                        e.abort(id, t);
                    }
                }
                Op::Offer(p) => connector.offer(&prefixes[p], ..),
                Op::FailBlock(p, b) => {
                    let mut h = Vec::new();
                    crate::kv::hash::extend_block_hashes(&mut h, &prefixes[p], bs, None);
                    connector.fail(&h[b.min(h.len() - 1)..=b.min(h.len() - 1)]);
                }
                Op::Step => {
                    t += 1.0;
                    let r = e.step(t);
                    check(&e, r, &prompt_len, &mut finished, &mut recorded, &mut computed)?;
                }
            }
        }
        for _ in 0..5_000 {
            if !e.has_unfinished() {
                break;
            }
            t += 1.0;
            let r = e.step(t);
            check(&e, r, &prompt_len, &mut finished, &mut recorded, &mut computed)?;
        }
        let r = e.step(t + 1.0);
        check(&e, r, &prompt_len, &mut finished, &mut recorded, &mut computed)?;
        if e.has_unfinished() {
            let s = e.scheduler();
            let mut dump = format!("free {} delayed {:?} waiting {:?} running {:?}\n", s.kv().pool().num_free_blocks(), s.delayed_free, s.waiting, s.running);
            for id in &ids {
                if let Some(r) = s.request(*id) {
                    dump += &format!("{id}: {:?} computed {} tokens {} ext {} done {} blocks {}\n", r.status, r.num_computed_tokens, r.num_tokens(), r.num_external_tokens, r.load_done, s.kv().blocks(*id).len());
                }
            }
            prop_assert!(false, "stuck:\n{}", dump);
        }
        prop_assert_eq!(finished.len(), ids.len(), "every request finishes exactly once");
        prop_assert_eq!(e.scheduler().kv().pool().num_free_blocks(), num_blocks, "no block leaks");
    }
}

#[test]
fn blocks_computed_over_several_chunks_enter_the_prefix_cache() {
    // Chunks of 6 tokens over blocks of 4: blocks fill across chunks.
    let mut e = engine(64, 4, 6);
    let mut t = 0.0;
    let prompt: Vec<u32> = (20..32).collect();
    e.add_request(new_req(prompt.clone(), 2), t).unwrap();
    drain(&mut e, &mut t);
    let mut longer = prompt;
    longer.push(7);
    e.add_request(new_req(longer, 2), t).unwrap();
    let r = records(&drain(&mut e, &mut t))[0];
    assert_eq!((r.local_cache_hit, r.local_compute), (12, 1));
}

/// A compact table of a scripted run: what each step scheduled
/// (`request:computed+new`, `*` when it samples), who was preempted, and
/// the step record's counters.
fn schedule_table(
    e: &mut EngineCore<FakeExecutor>,
    steps: std::ops::RangeInclusive<usize>,
) -> String {
    use std::fmt::Write;
    let mut out =
        String::from("step | scheduled | preempted | run wait | blocks | prefix q/h | finished\n");
    for t in steps {
        if !e.has_unfinished() {
            break;
        }
        let plan = e.scheduler_mut().schedule(t as f64);
        let batch = e.scheduler().batch(&plan);
        let model = crate::Executor::execute(
            &mut FakeExecutor::new(
                e.scheduler().config().num_blocks,
                e.scheduler().config().block_size,
                4096,
            ),
            &batch,
        );
        drop(batch);
        let r =
            e.scheduler_mut().update_from_output(&plan, model.map_err(|e| e.to_string()), t as f64);
        let s = r.step.unwrap();
        let sched: Vec<String> = plan
            .seqs
            .iter()
            .map(|q| {
                format!(
                    "{}:{}+{}{}",
                    q.request_id.get(),
                    q.num_computed_tokens,
                    q.num_scheduled_tokens,
                    if q.samples { "*" } else { "" }
                )
            })
            .collect();
        let pre: Vec<String> = plan.preempted.iter().map(|p| p.get().to_string()).collect();
        let fin: Vec<String> = r
            .finish_records
            .iter()
            .map(|f| format!("{}:{}", f.request_id.get(), f.reason.as_str()))
            .collect();
        writeln!(
            out,
            "{t:>4} | {} | {} | {} {} | {}/{} | {}/{} | {}",
            sched.join(" "),
            pre.join(" "),
            s.num_running,
            s.num_waiting,
            s.num_blocks_used,
            s.num_blocks_total,
            s.prefix_cache_queries,
            s.prefix_cache_hits,
            fin.join(" ")
        )
        .unwrap();
    }
    out
}

#[test]
fn scripted_schedule_with_chunking_prefix_hits_and_preemption() {
    // 8 blocks of 4 tokens, budget 6: three requests sharing an 8-token
    // prefix; the third arrives once the first has cached it.
    let mut e = EngineCore::new(FakeExecutor::new(8, 4, 4096), config(6, 8));
    let shared: Vec<u32> = (10..18).collect();
    let with =
        |tail: std::ops::Range<u32>| shared.iter().copied().chain(tail).collect::<Vec<u32>>();
    e.add_request(new_req(with(30..33), 6), 0.0).unwrap();
    e.add_request(new_req(with(40..42), 8), 0.0).unwrap();
    let mut table = schedule_table(&mut e, 1..=3);
    e.add_request(new_req(with(50..53), 4), 3.0).unwrap();
    table.push_str(
        &schedule_table(&mut e, 4..=40)
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    insta::assert_snapshot!(table);
    assert!(!e.has_unfinished());
}

#[test]
fn cache_salt_isolates_tenants() {
    let mut e = engine(64, 4, 64);
    let mut t = 0.0;
    let prompt: Vec<u32> = (10..27).collect();
    let salted =
        |salt: &str| NewRequest { cache_salt: Some(salt.into()), ..new_req(prompt.clone(), 2) };
    e.add_request(salted("tenant-a"), t).unwrap();
    drain(&mut e, &mut t);
    e.add_request(salted("tenant-b"), t).unwrap();
    assert_eq!(
        records(&drain(&mut e, &mut t))[0].local_cache_hit,
        0,
        "another tenant's blocks are invisible"
    );
    e.add_request(salted("tenant-a"), t).unwrap();
    assert_eq!(records(&drain(&mut e, &mut t))[0].local_cache_hit, 16, "the same tenant hits");
}
