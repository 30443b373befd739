//! The offload connector driven by a real `EngineCore` with the fake
//! executor (whose "KV" is the token ids at their slots, so a load that
//! moved the wrong bytes shows).

use std::collections::BTreeMap;

use strata_core::connector::KvLoadFailurePolicy;
use strata_core::scheduler::{SchedulerConfig, SchedulingPolicy};
use strata_core::testing::FakeExecutor;
use strata_core::{EngineCore, NewRequest, PrefillRecord, SamplingParams, StepResult};

use super::*;

pub(super) const B: usize = 4;
pub(super) const BPB: usize = 64;

pub(super) fn config(policy: KvLoadFailurePolicy) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 256,
        block_size: B,
        num_blocks: 64,
        max_model_len: 4096,
        policy: SchedulingPolicy::Fcfs,
        // The device cache is off so every repeat goes to the tiers.
        enable_prefix_caching: false,
        kv_load_failure_policy: policy,
    }
}

pub(super) fn offload(host_slots: u64, disk: Option<&std::path::Path>) -> OffloadConfig {
    OffloadConfig {
        host_bytes: host_slots * BPB as u64,
        disk: disk.map(|d| DiskConfig {
            dir: d.to_path_buf(),
            capacity_bytes: 1 << 20,
            direct_io: false,
        }),
        fingerprint: 42,
        bytes_per_block: BPB,
        block_size: B,
    }
}

/// The slab offset of the slot holding `hash`, found by reading the file
/// as an operator would (headers carry the block hash at +20).
pub(super) fn slot_offset(root: &std::path::Path, hash: BlockHash) -> u64 {
    let bytes = std::fs::read(disk::slab_path(&disk::model_dir(root, 42))).unwrap();
    let stride = disk::stride(BPB);
    (0..bytes.len() / stride)
        .map(|i| i * stride)
        .find(|&o| bytes[o + BPB + 20..o + BPB + 28] == hash.0.to_le_bytes())
        .expect("the block is on disk") as u64
}

/// Damages the slab at `at` by flipping a byte (plain file I/O).
pub(super) fn flip_byte(root: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let path = disk::slab_path(&disk::model_dir(root, 42));
    let f = std::fs::File::options().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

fn engine(cfg: OffloadConfig, policy: KvLoadFailurePolicy) -> EngineCore<FakeExecutor> {
    let (sched, worker) = open(cfg).unwrap();
    let exec = FakeExecutor::new(64, B, 4096).with_bytes_per_block(BPB).with_connector(worker);
    EngineCore::with_connector(exec, config(policy), Some(Box::new(sched)))
}

pub(super) fn req(prompt: &[u32]) -> NewRequest {
    NewRequest::new(
        prompt.to_vec(),
        SamplingParams { ignore_eos: true, ..SamplingParams::greedy(3) },
    )
}

#[derive(Default)]
struct Run {
    results: Vec<StepResult>,
    tokens: BTreeMap<RequestId, Vec<u32>>,
}

impl Run {
    fn records(&self) -> Vec<PrefillRecord> {
        strata_core::testing::prefill_records(&self.results)
    }

    fn stats(&self) -> OffloadStats {
        strata_core::testing::connector_stats(&self.results).merged::<OffloadStats>()
    }

    fn bytes(&self, t: TransferType) -> u64 {
        self.stats().transfers.iter().filter(|x| x.transfer_type == t).map(|x| x.bytes).sum()
    }
}

/// Steps until everything (disk I/O included) is done; bounded in steps
/// and time.
fn drain(e: &mut EngineCore<FakeExecutor>, t: &mut f64) -> Run {
    let mut run = Run::default();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    for _ in 0..100_000 {
        if !e.has_unfinished() || Instant::now() > deadline {
            break;
        }
        *t += 1.0;
        let r = e.step(*t);
        for o in &r.outputs {
            run.tokens.entry(o.request_id).or_default().extend(o.new_token_id);
        }
        run.results.push(r);
        if e.scheduler().num_running() == 0 {
            // Only disk reads to wait for.
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
    assert!(!e.has_unfinished(), "the engine finished within the bound");
    run
}

/// One extra step so that write completions and last stats are reported.
fn settle(e: &mut EngineCore<FakeExecutor>, t: &mut f64) -> StepResult {
    std::thread::sleep(std::time::Duration::from_millis(50));
    *t += 1.0;
    e.step(*t)
}

pub(super) fn prompt(seed: u32, len: u32) -> Vec<u32> {
    (0..len).map(|i| (seed * 31 + i * 7) % 900 + 2).collect()
}

#[test]
fn a_repeated_prompt_is_loaded_from_host_with_the_right_bytes() {
    let mut e = engine(offload(64, None), KvLoadFailurePolicy::Fail);
    let p = prompt(1, 17); // four full blocks and one token
    let mut t = 0.0;
    e.add_request(req(&p), t).unwrap();
    let cold = drain(&mut e, &mut t);
    assert_eq!(cold.bytes(TransferType::DeviceToHost), 4 * BPB as u64);
    let id = e.add_request(req(&p), t).unwrap();
    let warm = drain(&mut e, &mut t);
    let rec = warm.records()[0];
    assert_eq!((rec.host, rec.local_compute, rec.disk), (16, 1, 0), "A10 through the host tier");
    assert_eq!(warm.bytes(TransferType::HostToDevice), 4 * BPB as u64);
    assert_eq!(cold.tokens.values().next(), warm.tokens.get(&id), "same output as the cold run");
    let step_hits: u32 =
        warm.results.iter().filter_map(|r| r.step).map(|s| s.external_hits_host).sum();
    assert_eq!(step_hits, 16);
    let stats = warm.stats();
    assert_eq!(stats.tier_queries, vec![(OffloadTier::Host, 17)]);
    assert_eq!(stats.tier_hits, vec![(OffloadTier::Host, 16)]);
    // The loaded blocks hold the prompt's tokens (the fake's KV). The
    // first request's blocks were freed; look at what the executor holds.
    let kv = &e.executor().kv;
    let mut found = 0;
    for chunk in p.chunks(B).take(4) {
        if kv.block_ids().any(|b| kv.tokens(b, B) == chunk) {
            found += 1;
        }
    }
    assert_eq!(found, 4);
}

#[test]
fn blocks_reach_disk_survive_a_restart_and_load_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = prompt(2, 13); // three full blocks
    let mut t = 0.0;
    let cold_tokens = {
        let mut e = engine(offload(8, Some(dir.path())), KvLoadFailurePolicy::Fail);
        e.add_request(req(&p), t).unwrap();
        let run = drain(&mut e, &mut t);
        settle(&mut e, &mut t);
        run.tokens.into_values().next().unwrap()
        // Dropping the engine joins the writer after its queue.
    };
    let mut e = engine(offload(8, Some(dir.path())), KvLoadFailurePolicy::Fail);
    e.add_request(req(&p), t).unwrap();
    let run = drain(&mut e, &mut t);
    let rec = run.records()[0];
    assert_eq!((rec.disk, rec.host, rec.local_compute), (12, 0, 1));
    assert_eq!(run.tokens.values().next().unwrap(), &cold_tokens);
    assert_eq!(run.bytes(TransferType::DiskToHost), 3 * BPB as u64);
    assert_eq!(run.bytes(TransferType::HostToDevice), 3 * BPB as u64);
    let stats = run.stats();
    assert!(stats.tier_hits.contains(&(OffloadTier::Disk, 12)));
    // Promoted: the next repeat is a host hit.
    e.add_request(req(&p), t).unwrap();
    let again = drain(&mut e, &mut t);
    assert_eq!(again.records()[0].host, 12);
}

/// Waiting for progress (the engine does, between steps, while only loads
/// are in flight) returns as soon as a disk read has landed, long before
/// its timeout; a finished store does not end the wait (it holds no
/// request up).
#[test]
fn waiting_for_progress_wakes_for_disk_reads_not_for_stores() {
    use strata_core::testing::VecKv;
    let dir = tempfile::tempdir().unwrap();
    let mut kv = VecKv { bytes_per_block: BPB, data: vec![7u8; 8 * BPB] };
    let p = prompt(6, 13);
    let mut hashes = Vec::new();
    strata_core::kv::hash::extend_block_hashes(&mut hashes, &p, B, None);
    let stores = |hashes: &[BlockHash]| ConnectorMeta {
        loads: vec![],
        stores: hashes
            .iter()
            .enumerate()
            .map(|(i, &h)| StoreSpec { block_id: BlockId(i as u32), block_hash: h })
            .collect(),
    };
    {
        let (_, mut w) = open(offload(8, Some(dir.path()))).unwrap();
        w.start_load_kv(&stores(&hashes), &mut kv);
        // Dropping the worker joins the writer after its queue.
    }
    let (mut sched, mut worker) = open(offload(8, Some(dir.path()))).unwrap();
    let r = Request::new(RequestId::new(1).unwrap(), req(&p), 0.0, B);
    assert_eq!(sched.get_num_new_matched_tokens(&r, 0), 12, "on disk");
    let blocks: Vec<BlockId> = (0..3).map(BlockId).collect();
    sched.update_state_after_alloc(&r, &blocks, &hashes);
    worker.start_load_kv(&sched.build_connector_meta(), &mut kv);
    let long = std::time::Duration::from_secs(60);
    let mut read = 0;
    for _ in 0..3 {
        let start = Instant::now();
        worker.wait_for_progress(long);
        assert!(start.elapsed() < long, "woken by a read, not the timeout");
        let out = worker.get_finished(&mut kv);
        let stats = out.stats.merged::<OffloadStats>();
        read +=
            stats.transfers.iter().filter(|x| x.transfer_type == TransferType::DiskToHost).count();
        if !out.finished_recving.is_empty() {
            break;
        }
    }
    assert_eq!(read, 3, "every block read from disk");

    // Only a store in flight: the wait lasts its whole (short) timeout.
    let other = [BlockHash(1 << 40)];
    worker.start_load_kv(&stores(&other), &mut kv);
    let short = std::time::Duration::from_millis(300);
    let start = Instant::now();
    worker.wait_for_progress(short);
    assert!(start.elapsed() >= short, "a store's completion does not end the wait");
    let out = worker.get_finished(&mut kv);
    let stats = out.stats.merged::<OffloadStats>();
    assert!(
        stats.transfers.iter().any(|x| x.transfer_type == TransferType::HostToDisk),
        "the store did finish meanwhile"
    );
}

#[test]
fn a_mix_of_host_and_disk_blocks_is_booked_under_disk() {
    let dir = tempfile::tempdir().unwrap();
    // Host holds 2 blocks: of a 4-block prompt, the first two are evicted
    // from host by the last two, but all four were written through.
    let mut e = engine(offload(2, Some(dir.path())), KvLoadFailurePolicy::Fail);
    let p = prompt(3, 17);
    let mut t = 0.0;
    e.add_request(req(&p), t).unwrap();
    drain(&mut e, &mut t);
    settle(&mut e, &mut t);
    e.add_request(req(&p), t).unwrap();
    let run = drain(&mut e, &mut t);
    let rec = run.records()[0];
    assert_eq!((rec.disk, rec.host, rec.local_compute), (16, 0, 1), "A14: outermost tier");
}

#[test]
fn corrupt_and_foreign_files_are_never_served() {
    for damage in ["corrupt", "truncate", "foreign"] {
        let dir = tempfile::tempdir().unwrap();
        let p = prompt(4, 13);
        let mut t = 0.0;
        let cold = {
            let mut e = engine(offload(8, Some(dir.path())), KvLoadFailurePolicy::Recompute);
            e.add_request(req(&p), t).unwrap();
            let run = drain(&mut e, &mut t);
            settle(&mut e, &mut t);
            run.tokens.into_values().next().unwrap()
        };
        let mut hashes = Vec::new();
        strata_core::kv::hash::extend_block_hashes(&mut hashes, &p, B, None);
        // Damaged after start-up (the start-up scan would catch a damaged
        // header, clear it and count it).
        let mut e = engine(offload(8, Some(dir.path())), KvLoadFailurePolicy::Recompute);
        let victim = slot_offset(dir.path(), hashes[1]);
        let slab = disk::slab_path(&disk::model_dir(dir.path(), 42));
        match damage {
            "corrupt" => flip_byte(dir.path(), victim + 3),
            "truncate" => {
                // What a store cut short leaves: no header.
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::options().write(true).open(&slab).unwrap();
                f.write_all_at(&[0u8; disk::HEADER_LEN], victim + BPB as u64).unwrap();
            }
            _ => {
                // Block 0's slot copied over block 1's.
                let bytes = std::fs::read(&slab).unwrap();
                let src = slot_offset(dir.path(), hashes[0]) as usize;
                let slot = bytes[src..src + disk::stride(BPB)].to_vec();
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::options().write(true).open(&slab).unwrap();
                f.write_all_at(&slot, victim).unwrap();
            }
        }
        e.add_request(req(&p), t).unwrap();
        let run = drain(&mut e, &mut t);
        let rec = run.records()[0];
        // Block 0 loaded; block 1 failed, so it and block 2 are computed.
        assert_eq!(
            (rec.disk, rec.local_compute, rec.recomputed.kv_load_failure),
            (4, 9, 8),
            "{damage}"
        );
        assert_eq!(run.tokens.values().next().unwrap(), &cold, "{damage}: correct output");
        let failures = run.stats().failures;
        assert_eq!(failures.len(), 1, "{damage}");
        assert_eq!((failures[0].0, failures[0].1), (OffloadTier::Disk, OffloadOp::Load));
        // The bad slot was cleared; the recompute may have written the
        // block again, correctly this time: every block a restart would
        // trust verifies.
        settle(&mut e, &mut t);
        assert_eq!(e.scheduler().kv().pool().num_free_blocks(), 64);
        drop(e);
        let (slab, scan) =
            disk::Slab::open(&disk::model_dir(dir.path(), 42), 42, BPB, 256, false).unwrap();
        assert_eq!(scan.num_removed, 0, "{damage}: the damaged header was cleared");
        for (h, slot) in scan.blocks {
            let mut out = vec![0u8; BPB];
            slab.read(slot, h, &mut out, &mut disk::ReadScratch::default()).unwrap();
        }
    }
}

#[test]
fn an_abort_during_a_disk_load_frees_blocks_only_after_the_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = prompt(5, 33);
    let mut t = 0.0;
    {
        let mut e = engine(offload(16, Some(dir.path())), KvLoadFailurePolicy::Fail);
        e.add_request(req(&p), t).unwrap();
        drain(&mut e, &mut t);
        settle(&mut e, &mut t);
    }
    let mut e = engine(offload(16, Some(dir.path())), KvLoadFailurePolicy::Fail);
    let id = e.add_request(req(&p), t).unwrap();
    t += 1.0;
    e.step(t); // admitted into WaitingForRemoteKv; reads queued
    assert!(e.abort(id, t));
    let run = drain(&mut e, &mut t);
    assert!(run.records().is_empty(), "no record for a request that never produced a token");
    assert_eq!(e.scheduler().kv().pool().num_free_blocks(), 64, "nothing leaks");
}

#[test]
fn a_full_idle_host_tier_reads_residency_one_and_nothing_in_flight() {
    let mut e = engine(offload(4, None), KvLoadFailurePolicy::Fail);
    let mut t = 0.0;
    for seed in 0..3 {
        e.add_request(req(&prompt(10 + seed, 9)), t).unwrap();
    }
    let run = drain(&mut e, &mut t);
    let last = settle(&mut e, &mut t);
    let usage = last.connector_stats.merged::<OffloadStats>().usage;
    assert_eq!(usage, vec![TierUsage { tier: OffloadTier::Host, residency: 1.0, inflight: 0.0 }]);
    let evicted: u32 = run.stats().evictions.iter().map(|e| e.1).sum();
    assert_eq!(evicted, 2, "six blocks through four slots");
}

mod random {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Submit prompt k of a small set (repeats make hits).
        Add(u8),
        /// Abort the i-th live request.
        Abort(u8),
        Step,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6).prop_map(Op::Add),
            1 => any::<u8>().prop_map(Op::Abort),
            4 => Just(Op::Step),
        ]
    }

    /// Prompts sharing prefixes, of 5 to 21 tokens.
    fn prompt_of(k: u8) -> Vec<u32> {
        let base = prompt(100, 21);
        let len = 5 + (k as usize * 3) % 17;
        let mut p = base[..len].to_vec();
        if k % 2 == 1 {
            p[len - 1] += 1;
        }
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Random adds, aborts and steps through a small host tier and a
        /// disk tier: every loaded block holds its own prompt's tokens
        /// (never a block under a wrong key), records sum, and when all
        /// ends nothing is held: device blocks, host pins, disk pins.
        #[test]
        fn random_traffic_through_the_tiers_serves_only_the_right_blocks(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let (sched, worker) = open(offload(3, Some(dir.path()))).unwrap();
            let shared = sched.shared.clone();
            let exec = FakeExecutor::new(64, B, 4096).with_bytes_per_block(BPB).with_connector(worker);
            let mut e = EngineCore::with_connector(exec, config(KvLoadFailurePolicy::Fail), Some(Box::new(sched)));
            let mut live: Vec<(RequestId, Vec<u32>)> = Vec::new();
            let mut t = 0.0;
            let check = |e: &mut EngineCore<FakeExecutor>, live: &mut Vec<(RequestId, Vec<u32>)>, t: &mut f64| -> Result<(), TestCaseError> {
                *t += 1.0;
                let r = e.step(*t);
                for rec in &r.prefill_records {
                    prop_assert_eq!(rec.local_compute + rec.local_cache_hit + rec.host + rec.disk + rec.remote, rec.prompt_tokens);
                    let p = &live.iter().find(|(id, _)| *id == rec.request_id).expect("a live request").1;
                    let blocks = e.scheduler().kv().blocks(rec.request_id);
                    for (i, chunk) in p.chunks(B).enumerate().take(p.len() / B) {
                        prop_assert_eq!(&e.executor().kv.tokens(blocks[i], B), chunk, "block {} of a request holds another prompt's KV", i);
                    }
                }
                for o in &r.outputs {
                    if o.finish_reason.is_some() {
                        live.retain(|(id, _)| *id != o.request_id);
                    }
                }
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Add(k) => {
                        let p = prompt_of(k);
                        let id = e.add_request(req(&p), t).unwrap();
                        live.push((id, p));
                    }
                    Op::Abort(i) => {
                        if !live.is_empty() {
                            let (id, _) = live.remove(i as usize % live.len());
                            e.abort(id, t);
                        }
                    }
                    Op::Step => check(&mut e, &mut live, &mut t)?,
                }
            }
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while e.has_unfinished() && Instant::now() < deadline {
                check(&mut e, &mut live, &mut t)?;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            prop_assert!(!e.has_unfinished());
            prop_assert_eq!(e.scheduler().kv().pool().num_free_blocks(), 64);
            let s = lock(&shared);
            prop_assert_eq!(s.host.num_pinned(), 0);
            prop_assert!(s.plans.is_empty() && s.inflight.is_empty() && s.lookups.is_empty());
            s.host.check_invariants().map_err(TestCaseError::fail)?;
            if let Some(d) = &s.disk {
                d.index.check_invariants().map_err(TestCaseError::fail)?;
            }
        }
    }
}
