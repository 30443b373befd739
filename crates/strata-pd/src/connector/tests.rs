//! Two engines in one process (fake executors whose "KV" is the token ids
//! at their slots), a real TCP transport on loopback between them.

use std::collections::BTreeMap;

use strata_core::connector::KvLoadFailurePolicy;
use strata_core::scheduler::{SchedulerConfig, StepResult};
use strata_core::testing::FakeExecutor;
use strata_core::{EngineCore, NewRequest, PrefillRecord, SamplingParams};

use super::*;

const B: usize = 4;
const BPB: usize = 64;

fn pd(
    role: Role,
    fingerprint: u64,
    secret: Option<&str>,
    fault: Fault,
    lease: Duration,
) -> PdConfig {
    PdConfig {
        role,
        engine_id: format!("{role:?}").to_lowercase(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_host: "127.0.0.1".into(),
        secret: secret.map(str::to_owned),
        lease_timeout: lease,
        transfer_timeout: Duration::from_millis(500),
        layout: Layout { fingerprint, block_size: B as u32, bytes_per_block: BPB as u32 },
        fault,
    }
}

fn engine(config: PdConfig, policy: KvLoadFailurePolicy) -> EngineCore<FakeExecutor> {
    let (sched, worker, _) = open(config).unwrap();
    let exec = FakeExecutor::new(64, B, 4096).with_bytes_per_block(BPB).with_connector(worker);
    let config = SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 256,
        block_size: B,
        num_blocks: 64,
        max_model_len: 4096,
        kv_load_failure_policy: policy,
        ..SchedulerConfig::default()
    };
    EngineCore::with_connector(exec, config, Some(Box::new(sched)))
}

/// A prefill and a decode engine that agree on everything (no secret,
/// no fault, a 30 s lease).
fn pair(
    decode_policy: KvLoadFailurePolicy,
) -> (EngineCore<FakeExecutor>, EngineCore<FakeExecutor>) {
    let lease = Duration::from_secs(30);
    (
        engine(pd(Role::Prefill, 9, None, Fault::default(), lease), KvLoadFailurePolicy::Fail),
        engine(pd(Role::Decode, 9, None, Fault::default(), lease), decode_policy),
    )
}

fn req(prompt: &[u32], max_tokens: u32, params: Option<KvTransferParams>) -> NewRequest {
    NewRequest {
        kv_transfer_params: params,
        ..NewRequest::new(
            prompt.to_vec(),
            SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) },
        )
    }
}

fn prompt(seed: u32, len: u32) -> Vec<u32> {
    (0..len).map(|i| (seed * 37 + i * 11) % 900 + 2).collect()
}

#[derive(Default)]
struct Run {
    results: Vec<StepResult>,
    tokens: BTreeMap<RequestId, Vec<u32>>,
    params: Option<KvTransferParams>,
    reasons: BTreeMap<RequestId, FinishReason>,
}

impl Run {
    fn records(&self) -> Vec<PrefillRecord> {
        strata_core::testing::prefill_records(&self.results)
    }

    fn stats(&self) -> PdStats {
        strata_core::testing::connector_stats(&self.results).merged::<PdStats>()
    }
}

/// Steps the engines until both are idle (bounded in time); `a` is the one
/// whose results are returned.
fn drain(a: &mut EngineCore<FakeExecutor>, others: &mut [&mut EngineCore<FakeExecutor>]) -> Run {
    let mut run = Run::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut t = 0.0;
    while (a.has_unfinished() || others.iter().any(|e| e.has_unfinished()))
        && Instant::now() < deadline
    {
        t += 1.0;
        let r = a.step(t);
        for o in &r.outputs {
            run.tokens.entry(o.request_id).or_default().extend(o.new_token_id);
            if let Some(reason) = o.finish_reason {
                run.reasons.insert(o.request_id, reason);
            }
            if o.kv_transfer_params.is_some() {
                run.params.clone_from(&o.kv_transfer_params);
            }
        }
        run.results.push(r);
        for e in others.iter_mut() {
            e.step(t);
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    assert!(!a.has_unfinished(), "the engine finished within the bound");
    run
}

/// Prefill `p` on its own engine; returns the params its answer carries.
fn prefill(e: &mut EngineCore<FakeExecutor>, p: &[u32], pulls: u32) -> KvTransferParams {
    let ask =
        KvTransferParams { do_remote_decode: true, num_pulls: Some(pulls), ..Default::default() };
    e.add_request(req(p, 1, Some(ask)), 0.0).unwrap();
    let mut t = 0.0;
    for _ in 0..100 {
        t += 1.0;
        let r = e.step(t);
        if let Some(params) = r.outputs.iter().find_map(|o| o.kv_transfer_params.clone()) {
            return params;
        }
    }
    panic!("the prefill engine answered with kv_transfer_params");
}

fn free_blocks(e: &EngineCore<FakeExecutor>) -> usize {
    e.scheduler().kv().pool().num_free_blocks()
}

#[test]
fn a1_decode_pulls_the_prompt_and_attributes_it_to_remote() {
    let (mut p_eng, mut d_eng) = pair(KvLoadFailurePolicy::Fail);
    let p = prompt(1, 30);
    let params = prefill(&mut p_eng, &p, 1);
    assert_eq!(params.remote_num_tokens, Some(30));
    assert_eq!(params.remote_block_ids.len(), 8, "30 prompt tokens and the sampled one");
    assert!(free_blocks(&p_eng) < 64, "the lease holds the blocks");

    d_eng.add_request(req(&p, 5, Some(params)), 0.0).unwrap();
    let run = drain(&mut d_eng, &mut [&mut p_eng]);
    let rec = run.records()[0];
    assert_eq!((rec.remote, rec.local_compute, rec.local_cache_hit), (29, 1, 0), "A1");
    // Same tokens as one engine computing everything.
    let mut single = engine(
        pd(Role::Both, 9, None, Fault::default(), Duration::from_secs(30)),
        KvLoadFailurePolicy::Fail,
    );
    single.add_request(req(&p, 5, None), 0.0).unwrap();
    let alone = drain(&mut single, &mut []);
    assert_eq!(run.tokens.values().next(), alone.tokens.values().next());
    // The pulled blocks hold the prompt's tokens (the fake's KV).
    let kv = &d_eng.executor().kv;
    for chunk in p.chunks(B).take(7) {
        assert!(kv.block_ids().any(|b| kv.tokens(b, B) == chunk), "block {chunk:?} arrived");
    }
    // Both engines free everything: the lease ended with the pull.
    assert_eq!((free_blocks(&p_eng), free_blocks(&d_eng)), (64, 64));
    let stats = run.stats();
    assert_eq!(stats.transfers.len(), 1);
    assert_eq!(stats.transfers[0].bytes, 8 * BPB as u64);
    // A2: the decode engine's steps ran 1 prompt token, never 30.
    let prefill_tokens: u32 =
        run.results.iter().filter_map(|r| r.step).map(|s| s.num_prefill_tokens).sum();
    assert_eq!(prefill_tokens, 1);
}

#[test]
fn a_decode_side_prefix_hit_is_not_pulled_again() {
    let (mut p_eng, mut d_eng) = pair(KvLoadFailurePolicy::Fail);
    let p = prompt(2, 30);
    // The decode engine computed the first 16 tokens itself earlier.
    d_eng.add_request(req(&p[..17], 1, None), 0.0).unwrap();
    drain(&mut d_eng, &mut []);
    let params = prefill(&mut p_eng, &p, 1);
    d_eng.add_request(req(&p, 3, Some(params)), 0.0).unwrap();
    let run = drain(&mut d_eng, &mut [&mut p_eng]);
    let rec = run.records()[0];
    assert_eq!((rec.local_cache_hit, rec.remote, rec.local_compute), (16, 13, 1));
    assert_eq!(run.stats().transfers[0].num_blocks, 4, "blocks 4..8 only");
    assert_eq!(free_blocks(&p_eng), 64);
}

#[test]
fn transport_faults_end_in_correct_output_or_a_clean_error() {
    let p = prompt(3, 30);
    let mut single = engine(
        pd(Role::Both, 9, None, Fault::default(), Duration::from_secs(30)),
        KvLoadFailurePolicy::Fail,
    );
    single.add_request(req(&p, 4, None), 0.0).unwrap();
    let expected = drain(&mut single, &mut []).tokens.into_values().next().unwrap();
    let faults = [
        ("drop-after=3", KvTransferFailure::Transport, 3),
        ("corrupt=2", KvTransferFailure::Invalid, 2),
        ("delay-ms=1500", KvTransferFailure::Timeout, 0),
    ];
    for (spec, reason, blocks_kept) in faults {
        for policy in [KvLoadFailurePolicy::Recompute, KvLoadFailurePolicy::Fail] {
            let fault = Fault::parse(spec).unwrap();
            let mut p_eng = engine(
                pd(Role::Prefill, 9, None, fault, Duration::from_secs(30)),
                KvLoadFailurePolicy::Fail,
            );
            let mut d_eng = engine(
                pd(Role::Decode, 9, None, Fault::default(), Duration::from_secs(30)),
                policy,
            );
            let params = prefill(&mut p_eng, &p, 1);
            let id = d_eng.add_request(req(&p, 4, Some(params)), 0.0).unwrap();
            let run = drain(&mut d_eng, &mut [&mut p_eng]);
            let stats = run.stats();
            assert_eq!(stats.failures, vec![reason], "{spec}");
            match policy {
                KvLoadFailurePolicy::Recompute => {
                    assert_eq!(
                        run.tokens[&id], expected,
                        "{spec}: recompute gives the right output"
                    );
                    let rec = run.records()[0];
                    assert_eq!(
                        rec.remote as usize,
                        blocks_kept * B,
                        "{spec}: blocks before the failure stay remote"
                    );
                    assert_eq!(
                        rec.recomputed.kv_load_failure as usize,
                        29 - blocks_kept * B,
                        "{spec}"
                    );
                }
                KvLoadFailurePolicy::Fail => {
                    assert_eq!(run.reasons[&id], FinishReason::Error, "{spec}: A5");
                    assert!(run.records().is_empty(), "{spec}: no record");
                }
            }
            assert_eq!(free_blocks(&d_eng), 64, "{spec}: nothing leaks on decode");
            assert_eq!(free_blocks(&p_eng), 64, "{spec}: nothing leaks on prefill");
        }
    }
}

#[test]
fn a12_an_unpulled_lease_expires_and_a_late_pull_fails_cleanly() {
    let mut p_eng = engine(
        pd(Role::Prefill, 9, None, Fault::default(), Duration::from_millis(100)),
        KvLoadFailurePolicy::Fail,
    );
    let p = prompt(4, 20);
    let params = prefill(&mut p_eng, &p, 1);
    let run = {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut results = Vec::new();
        while p_eng.has_unfinished() && Instant::now() < deadline {
            results.push(p_eng.step(0.0));
            std::thread::sleep(Duration::from_millis(5));
        }
        Run { results, ..Run::default() }
    };
    assert_eq!(run.stats().leases_expired, 1);
    assert_eq!(free_blocks(&p_eng), 64, "the expired lease freed its blocks");
    let mut d_eng = engine(
        pd(Role::Decode, 9, None, Fault::default(), Duration::from_secs(30)),
        KvLoadFailurePolicy::Recompute,
    );
    d_eng.add_request(req(&p, 2, Some(params)), 0.0).unwrap();
    let run = drain(&mut d_eng, &mut [&mut p_eng]);
    assert_eq!(run.stats().failures, vec![KvTransferFailure::LeaseExpired]);
    assert_eq!(run.records()[0].local_compute, 20, "recomputed in full");
}

#[test]
fn a11_a_decode_abort_before_admission_releases_the_lease_at_once() {
    let (mut p_eng, mut d_eng) = pair(KvLoadFailurePolicy::Fail);
    let p = prompt(5, 20);
    let params = prefill(&mut p_eng, &p, 1);
    let id = d_eng.add_request(req(&p, 2, Some(params)), 0.0).unwrap();
    assert!(d_eng.abort(id, 0.0));
    let run = drain(&mut d_eng, &mut [&mut p_eng]);
    assert!(run.records().is_empty());
    // The release reaches the prefill engine, which frees without waiting
    // for the 30 s lease.
    let deadline = Instant::now() + Duration::from_secs(5);
    while p_eng.has_unfinished() && Instant::now() < deadline {
        p_eng.step(0.0);
        d_eng.step(0.0);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(free_blocks(&p_eng), 64);
}

#[test]
fn mismatched_engines_and_wrong_secrets_are_refused_and_counted() {
    let p = prompt(6, 20);
    for (fingerprint, secret, reason) in [
        (10, Some("s3cret"), KvTransferFailure::Handshake),
        (9, Some("wrong"), KvTransferFailure::Auth),
        (9, None, KvTransferFailure::Auth),
    ] {
        let mut p_eng = engine(
            pd(Role::Prefill, 9, Some("s3cret"), Fault::default(), Duration::from_millis(300)),
            KvLoadFailurePolicy::Fail,
        );
        let mut d_eng = engine(
            pd(Role::Decode, fingerprint, secret, Fault::default(), Duration::from_secs(30)),
            KvLoadFailurePolicy::Recompute,
        );
        let params = prefill(&mut p_eng, &p, 1);
        d_eng.add_request(req(&p, 2, Some(params)), 0.0).unwrap();
        let run = drain(&mut d_eng, &mut [&mut p_eng]);
        assert_eq!(run.stats().failures, vec![reason], "{fingerprint} {secret:?}");
        assert_eq!(run.records()[0].local_compute, 20, "no foreign or unauthenticated KV is used");
    }
}

#[test]
fn n_pulls_share_one_lease() {
    let (mut p_eng, mut d_eng) = pair(KvLoadFailurePolicy::Fail);
    let p = prompt(7, 24);
    let params = prefill(&mut p_eng, &p, 3);
    for _ in 0..3 {
        d_eng.add_request(req(&p, 2, Some(params.clone())), 0.0).unwrap();
    }
    let run = drain(&mut d_eng, &mut [&mut p_eng]);
    let recs = run.records();
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| r.remote + r.local_cache_hit == 23 && r.local_compute == 1));
    assert_eq!(free_blocks(&p_eng), 64, "the lease ended after the third pull");
}

#[test]
fn the_params_carry_the_prefill_record_that_a_decode_reports() {
    let (mut p_eng, mut d_eng) = pair(KvLoadFailurePolicy::Fail);
    let p = prompt(8, 30);
    // The prefill engine computed the first 16 tokens earlier: its hits.
    p_eng.add_request(req(&p[..17], 1, None), 0.0).unwrap();
    drain(&mut p_eng, &mut []);
    let params = prefill(&mut p_eng, &p, 1);
    assert_eq!(params.remote_prefill_cached_tokens, Some(16));
    let s = params.remote_prefill_sources.unwrap();
    assert_eq!((s.local_compute, s.local_cache_hit, s.host, s.disk, s.remote), (14, 16, 0, 0, 0));
    assert_eq!(params.remote_prefill_recomputed, Some(Default::default()));

    // The decode engine's view: the prefill's record, under its own id.
    let id = RequestId::new(5).unwrap();
    let rec = params.remote_prefill_record(id, 30).unwrap();
    assert_eq!((rec.request_id, rec.prompt_tokens, rec.local_cache_hit), (id, 30, 16));
    assert_eq!(params.remote_prefill_record(id, 31), None, "a record of another prompt");
    let to_prefill = KvTransferParams { do_remote_prefill: false, ..params.clone() };
    assert_eq!(to_prefill.remote_prefill_record(id, 30), None);
    let forged = KvTransferParams { remote_prefill_cached_tokens: Some(29), ..params.clone() };
    assert_eq!(forged.remote_prefill_record(id, 30), None, "cached disagrees with the sources");
    let mut all_cached = params.clone();
    all_cached.remote_prefill_sources =
        Some(strata_core::request::PromptSources { local_cache_hit: 30, ..Default::default() });
    all_cached.remote_prefill_cached_tokens = Some(30);
    assert_eq!(all_cached.remote_prefill_record(id, 30), None, "no token computed breaks rule 3");

    // The pull still works with the record along, and frees the lease.
    d_eng.add_request(req(&p, 2, Some(params)), 0.0).unwrap();
    let run = drain(&mut d_eng, &mut [&mut p_eng]);
    assert_eq!(run.records()[0].remote, 29);
    assert_eq!(free_blocks(&p_eng), 64);
}
