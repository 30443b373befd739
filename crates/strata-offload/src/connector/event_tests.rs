//! The tiers' KV events, read by an indexer twin written from the contract
//! (strata-core's `kv::events`; llm-d's ingest, per (pod, tier, hash)),
//! not from our encoder: per medium it applies every `CPU` and `DISK`
//! event and refuses a hash announced twice, a parent not announced in the
//! same medium, a removal of a hash not announced, token ids or a salt
//! other than the request's. Once the engine is idle, what it holds per
//! medium is checked against what the host tier and the disk index hold:
//! every block held is announced, unless its parent is not announced in
//! that tier (it waits) or its tokens were never known (start-up files).

use std::collections::{BTreeSet, HashMap};

use strata_core::connector::KvLoadFailurePolicy;
use strata_core::kv::hash::extend_block_hashes;
use strata_core::kv::{KvCacheEvent, KvEventBatch};
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::FakeExecutor;
use strata_core::{EngineCore, StepResult};

use super::tests::{config, flip_byte, offload, prompt, req, slot_offset, B, BPB};
use super::*;

struct Expected {
    tokens: Vec<u32>,
    parent: Option<BlockHash>,
    salt: Option<String>,
}

/// What a router's indexer holds for one pod, per medium.
#[derive(Default)]
struct Twin {
    expected: HashMap<BlockHash, Expected>,
    held: HashMap<KvMedium, BTreeSet<BlockHash>>,
    num_removed: HashMap<KvMedium, usize>,
}

impl Twin {
    /// The request's blocks, as the consumer should see them.
    fn learn(&mut self, p: &[u32], salt: Option<&str>) -> Vec<BlockHash> {
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, p, B, salt);
        for (i, &h) in hashes.iter().enumerate() {
            self.expected.insert(
                h,
                Expected {
                    tokens: p[i * B..(i + 1) * B].to_vec(),
                    parent: i.checked_sub(1).map(|j| hashes[j]),
                    salt: if i == 0 { salt.map(String::from) } else { None },
                },
            );
        }
        hashes
    }

    fn set(&self, m: KvMedium) -> BTreeSet<BlockHash> {
        self.held.get(&m).cloned().unwrap_or_default()
    }

    fn apply(&mut self, events: &KvEventBatch) -> Result<(), String> {
        for ev in events.iter() {
            match ev {
                KvCacheEvent::BlockStored { medium: KvMedium::Device, .. }
                | KvCacheEvent::BlockRemoved { medium: KvMedium::Device, .. } => {}
                KvCacheEvent::BlockStored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    cache_salt,
                    medium,
                } => {
                    let held = self.held.entry(medium).or_default();
                    if block_size != B || block_hashes.is_empty() {
                        return Err(format!("block_size {block_size}, {ev:?}"));
                    }
                    if token_ids.len() != B * block_hashes.len() {
                        return Err(format!("{} token ids for {ev:?}", token_ids.len()));
                    }
                    if let Some(p) = parent_block_hash {
                        if !held.contains(&p) {
                            return Err(format!("parent {p:?} not announced in {medium:?}"));
                        }
                    }
                    let first = &self.expected[&block_hashes[0]];
                    let salt = if parent_block_hash.is_none() { first.salt.clone() } else { None };
                    if cache_salt != salt.as_deref() {
                        return Err(format!("salt {cache_salt:?}, expected {salt:?}"));
                    }
                    for (i, h) in block_hashes.iter().enumerate() {
                        let exp = self.expected.get(h).ok_or(format!("unknown hash {h:?}"))?;
                        let parent =
                            if i == 0 { parent_block_hash } else { Some(block_hashes[i - 1]) };
                        if exp.parent != parent {
                            return Err(format!("{h:?} announced under parent {parent:?}"));
                        }
                        if token_ids[i * B..(i + 1) * B] != exp.tokens[..] {
                            return Err(format!("{h:?}: token ids other than the request's"));
                        }
                        if !held.insert(*h) {
                            return Err(format!("{h:?} announced twice in {medium:?}"));
                        }
                    }
                }
                KvCacheEvent::BlockRemoved { block_hashes, medium } => {
                    let held = self.held.entry(medium).or_default();
                    for h in block_hashes {
                        if !held.remove(h) {
                            return Err(format!("{h:?} removed from {medium:?}, never announced"));
                        }
                    }
                    *self.num_removed.entry(medium).or_default() += block_hashes.len();
                }
                KvCacheEvent::AllBlocksCleared => return Err("the tiers never clear".into()),
            }
        }
        Ok(())
    }

    /// Checks the twin against what tier `m` holds; returns the blocks
    /// held but not announced (waiting for their parent). `unknown`:
    /// blocks whose tokens the engine never saw.
    fn check(
        &self,
        m: KvMedium,
        tier: &[BlockHash],
        unknown: &BTreeSet<BlockHash>,
    ) -> Result<BTreeSet<BlockHash>, String> {
        let announced = self.set(m);
        let tier: BTreeSet<BlockHash> = tier.iter().copied().collect();
        if let Some(h) = announced.difference(&tier).next() {
            return Err(format!("{h:?} announced in {m:?} but not held there"));
        }
        let mut waiting = BTreeSet::new();
        for &h in tier.difference(&announced).filter(|h| !unknown.contains(h)) {
            match self.expected[&h].parent {
                Some(p) if !announced.contains(&p) => waiting.insert(h),
                _ => {
                    return Err(format!("{h:?} held in {m:?}, its parent announced, not announced"))
                }
            };
        }
        Ok(waiting)
    }
}

struct Harness {
    e: EngineCore<FakeExecutor>,
    shared: Arc<Mutex<Shared>>,
    twin: Twin,
    t: f64,
}

impl Harness {
    fn new(cfg: OffloadConfig, policy: KvLoadFailurePolicy, prefix_caching: bool) -> Self {
        let (sched, worker) = open(cfg).unwrap();
        let shared = sched.shared.clone();
        let exec = FakeExecutor::new(64, B, 4096).with_bytes_per_block(BPB).with_connector(worker);
        let sc = SchedulerConfig { enable_prefix_caching: prefix_caching, ..config(policy) };
        let mut e = EngineCore::with_connector(exec, sc, Some(Box::new(sched)));
        e.enable_kv_events();
        Self { e, shared, twin: Twin::default(), t: 0.0 }
    }

    fn add(&mut self, p: &[u32], salt: Option<&str>) -> RequestId {
        self.twin.learn(p, salt);
        let r = match salt {
            Some(s) => req(p).with_cache_salt(s),
            None => req(p),
        };
        self.e.add_request(r, self.t).unwrap()
    }

    fn step(&mut self) -> Result<StepResult, String> {
        self.t += 1.0;
        let r = self.e.step(self.t);
        self.twin.apply(&r.kv_events)?;
        // Between steps, every hash announced is held (a disk block only
        // once its write landed).
        let (host, disk) = self.tiers();
        for (m, tier) in [(KvMedium::Host, host), (KvMedium::Disk, disk)] {
            let tier: BTreeSet<BlockHash> = tier.into_iter().collect();
            if let Some(h) = self.twin.set(m).difference(&tier).next() {
                return Err(format!("{h:?} announced in {m:?}, not held after step {}", self.t));
            }
        }
        Ok(r)
    }

    /// Steps until every request ended and every disk write and read is
    /// done (their events included); returns the steps' results.
    fn idle(&mut self) -> Result<Vec<StepResult>, String> {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut results = Vec::new();
        loop {
            let io = {
                let s = lock(&self.shared);
                !s.inflight.is_empty()
                    || s.disk
                        .as_ref()
                        .is_some_and(|d| d.queued_writes > 0 || d.index.num_busy() > 0)
            };
            if !self.e.has_unfinished() && !io {
                return Ok(results);
            }
            if Instant::now() > deadline {
                return Err("not idle within 10 s".into());
            }
            results.push(self.step()?);
            if self.e.scheduler().num_running() == 0 {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }

    fn tiers(&self) -> (Vec<BlockHash>, Vec<BlockHash>) {
        let s = lock(&self.shared);
        (s.host.hashes(), s.disk.as_ref().map(|d| d.index.hashes()).unwrap_or_default())
    }

    /// The twin against both tiers; the blocks waiting in each.
    fn check(
        &self,
        unknown: &BTreeSet<BlockHash>,
    ) -> Result<(BTreeSet<BlockHash>, BTreeSet<BlockHash>), String> {
        let (host, disk) = self.tiers();
        let waiting_host = self.twin.check(KvMedium::Host, &host, unknown)?;
        let waiting_disk = self.twin.check(KvMedium::Disk, &disk, unknown)?;
        let s = lock(&self.shared);
        if s.events.num_held() != 0 {
            return Err(format!("{} blocks' tokens still held when idle", s.events.num_held()));
        }
        if s.events.num_waiting(KvMedium::Host) != waiting_host.len()
            || s.events.num_waiting(KvMedium::Disk) != waiting_disk.len()
        {
            return Err("the connector's waiting blocks differ from the tiers'".into());
        }
        Ok((waiting_host, waiting_disk))
    }
}

fn disk_config(host_slots: u64, dir: &std::path::Path, disk_blocks: u64) -> OffloadConfig {
    let mut cfg = offload(host_slots, Some(dir));
    if let Some(d) = &mut cfg.disk {
        d.capacity_bytes = disk_blocks * disk::stride(BPB) as u64;
    }
    cfg
}

fn evictions(results: &[StepResult], tier: OffloadTier) -> usize {
    let stats = strata_core::testing::connector_stats(results).merged::<OffloadStats>();
    stats.evictions.iter().filter(|e| e.0 == tier).map(|e| e.1 as usize).sum()
}

#[test]
fn host_events_follow_stores_and_evictions_exactly() {
    let mut h = Harness::new(offload(3, None), KvLoadFailurePolicy::Fail, false);
    h.add(&prompt(1, 17), None); // four blocks through three slots
    let mut results = h.idle().unwrap();
    let (host, _) = h.tiers();
    assert_eq!(h.twin.set(KvMedium::Host), host.iter().copied().collect(), "CPU = the host tier");
    // A salted prompt and a repeat of the first (a host hit for the blocks
    // still there): every eviction is one removal.
    h.add(&prompt(2, 9), Some("tenant-a"));
    h.add(&prompt(1, 17), None);
    results.extend(h.idle().unwrap());
    let (waiting_host, _) = h.check(&BTreeSet::new()).unwrap();
    assert!(waiting_host.is_empty(), "each block is stored after its parent, nothing waits");
    assert_eq!(h.twin.set(KvMedium::Host).len(), 3);
    let removed = h.twin.num_removed.get(&KvMedium::Host).copied().unwrap_or(0);
    assert_eq!(removed, evictions(&results, OffloadTier::Host));
    assert!(removed >= 4, "the small tier evicted ({removed})");
    // The salt went with the salted chain's first block.
    let salted: Vec<_> = results
        .iter()
        .flat_map(|r| r.kv_events.iter())
        .filter(|e| matches!(e, KvCacheEvent::BlockStored { cache_salt: Some(s), .. } if *s == "tenant-a"))
        .collect();
    assert_eq!(salted.len(), 1);
}

#[test]
fn a_block_whose_parent_left_the_tier_waits_unannounced() {
    // One slot: block 1 evicts block 0 on its way in, so its parent is not
    // in the tier; it is held, serves hits, and is not announced.
    let mut h = Harness::new(offload(1, None), KvLoadFailurePolicy::Fail, false);
    let p = prompt(3, 13);
    let hashes = h.twin.learn(&p, None);
    h.add(&p, None);
    let results = h.idle().unwrap();
    let host_events: Vec<_> = results
        .iter()
        .flat_map(|r| r.kv_events.iter())
        .filter(|e| {
            matches!(
                e,
                KvCacheEvent::BlockStored { medium: KvMedium::Host, .. }
                    | KvCacheEvent::BlockRemoved { medium: KvMedium::Host, .. }
            )
        })
        .collect();
    assert_eq!(
        host_events,
        vec![
            KvCacheEvent::BlockStored {
                block_hashes: &[hashes[0]],
                parent_block_hash: None,
                token_ids: &p[..B],
                block_size: B,
                cache_salt: None,
                medium: KvMedium::Host,
            },
            KvCacheEvent::BlockRemoved { block_hashes: &[hashes[0]], medium: KvMedium::Host },
        ]
    );
    let (waiting_host, _) = h.check(&BTreeSet::new()).unwrap();
    assert_eq!(waiting_host, BTreeSet::from([hashes[2]]));
}

#[test]
fn disk_blocks_are_announced_when_written_and_removed_by_the_lru() {
    let dir = tempfile::tempdir().unwrap();
    // Host 2 slots, disk 5 blocks: three 4-block prompts evict from both.
    let mut h = Harness::new(disk_config(2, dir.path(), 5), KvLoadFailurePolicy::Fail, false);
    let mut results = Vec::new();
    for seed in 0..3 {
        h.add(&prompt(20 + seed, 17), None);
        results.extend(h.idle().unwrap());
    }
    let (host, disk) = h.tiers();
    let (waiting_host, waiting_disk) = h.check(&BTreeSet::new()).unwrap();
    assert!(waiting_host.is_empty() && waiting_disk.is_empty());
    assert_eq!(h.twin.set(KvMedium::Disk), disk.iter().copied().collect(), "DISK = the index");
    assert_eq!(h.twin.set(KvMedium::Host), host.iter().copied().collect());
    assert_eq!(disk.len(), 5);
    let removed = h.twin.num_removed.get(&KvMedium::Disk).copied().unwrap_or(0);
    assert_eq!(removed, evictions(&results, OffloadTier::Disk));
    assert_eq!(removed, 12 - 5, "twelve blocks written through five");
}

#[test]
fn startup_blocks_are_announced_once_a_request_loads_them() {
    let dir = tempfile::tempdir().unwrap();
    let (p, q) = (prompt(30, 13), prompt(31, 9));
    {
        let mut h = Harness::new(disk_config(8, dir.path(), 64), KvLoadFailurePolicy::Fail, false);
        h.add(&p, None);
        h.add(&q, None);
        h.idle().unwrap();
    }
    let mut h = Harness::new(disk_config(8, dir.path(), 64), KvLoadFailurePolicy::Fail, false);
    let ph = h.twin.learn(&p, None);
    let qh = h.twin.learn(&q, None);
    assert!(h.step().unwrap().kv_events.is_empty(), "start-up blocks: tokens unknown");
    h.add(&p, None);
    let results = h.idle().unwrap();
    assert_eq!(strata_core::testing::prefill_records(&results)[0].disk, 12);
    let unknown: BTreeSet<BlockHash> = qh[..2].iter().copied().collect();
    let (waiting_host, waiting_disk) = h.check(&unknown).unwrap();
    assert!(waiting_host.is_empty() && waiting_disk.is_empty());
    let loaded: BTreeSet<BlockHash> = ph.iter().copied().collect();
    assert_eq!(h.twin.set(KvMedium::Disk), loaded, "the loaded blocks, in DISK");
    assert_eq!(h.twin.set(KvMedium::Host), loaded, "and promoted, in CPU");
    assert_eq!(h.tiers().1.len(), 5, "the other prompt's blocks still serve, unannounced");
}

#[test]
fn a_failed_verification_removes_the_block_and_its_child_waits_for_the_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let p = prompt(40, 13); // three blocks
    {
        let mut h = Harness::new(disk_config(8, dir.path(), 64), KvLoadFailurePolicy::Fail, false);
        h.add(&p, None);
        h.idle().unwrap();
    }
    let mut h = Harness::new(disk_config(8, dir.path(), 64), KvLoadFailurePolicy::Recompute, false);
    let ph = h.twin.learn(&p, None);
    flip_byte(dir.path(), slot_offset(dir.path(), ph[1]) + 1);
    h.add(&p, None);
    let results = h.idle().unwrap();
    let rec = strata_core::testing::prefill_records(&results)[0];
    assert_eq!((rec.disk, rec.recomputed.kv_load_failure), (4, 8));
    // Block 1 left DISK (removed once) and came back with the recompute;
    // block 2, promoted before its parent was in CPU, waited and was
    // announced with it.
    assert_eq!(h.twin.num_removed.get(&KvMedium::Disk), Some(&1));
    let (waiting_host, waiting_disk) = h.check(&BTreeSet::new()).unwrap();
    assert!(waiting_host.is_empty() && waiting_disk.is_empty());
    let all: BTreeSet<BlockHash> = ph.iter().copied().collect();
    assert_eq!(h.twin.set(KvMedium::Host), all);
    assert_eq!(h.twin.set(KvMedium::Disk), all);
}

#[test]
fn with_events_off_nothing_is_recorded_or_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (sched, worker) = open(disk_config(2, dir.path(), 4)).unwrap();
    let shared = sched.shared.clone();
    let exec = FakeExecutor::new(64, B, 4096).with_bytes_per_block(BPB).with_connector(worker);
    let mut e =
        EngineCore::with_connector(exec, config(KvLoadFailurePolicy::Fail), Some(Box::new(sched)));
    let mut t = 0.0;
    for seed in [50, 51, 50] {
        e.add_request(req(&prompt(seed, 17)), t).unwrap();
        for _ in 0..200 {
            t += 1.0;
            assert!(e.step(t).kv_events.is_empty());
        }
    }
    // Stores finish on the worker's threads: step on (bounded) until they
    // have landed, which a loaded machine can take longer than 600 steps.
    for _ in 0..500 {
        if lock(&shared).host.num_used() == 2 {
            break;
        }
        t += 1.0;
        assert!(e.step(t).kv_events.is_empty());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let s = lock(&shared);
    assert_eq!(s.host.num_used(), 2, "traffic went through the tiers");
    assert_eq!(s.events.num_held(), 0);
    assert_eq!(s.events.num_waiting(KvMedium::Host) + s.events.num_waiting(KvMedium::Disk), 0);
}

mod random {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Add(u8),
        Abort(u8),
        Step,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..8).prop_map(Op::Add),
            1 => any::<u8>().prop_map(Op::Abort),
            4 => Just(Op::Step),
        ]
    }

    /// Prompts sharing prefixes (5 to 21 tokens), two of them salted.
    fn prompt_of(k: u8) -> (Vec<u32>, Option<&'static str>) {
        let base = prompt(100 + u32::from(k / 4), 21);
        let len = 5 + (k as usize * 5) % 17;
        (base[..len].to_vec(), (k % 4 == 3).then_some("salt"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Random traffic through a small host tier and a small disk tier,
        /// with or without the device prefix cache (whose hits make
        /// offers start mid-chain): every step's events obey the contract
        /// and, once idle, the twin holds what the tiers hold.
        #[test]
        fn random_traffic_keeps_the_twin_equal_to_the_tiers(
            ops in proptest::collection::vec(op(), 1..60),
            host_slots in 1u64..5,
            disk_blocks in 2u64..9,
            prefix_caching in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let cfg = disk_config(host_slots, dir.path(), disk_blocks);
            let mut h = Harness::new(cfg, KvLoadFailurePolicy::Fail, prefix_caching);
            let mut live = Vec::new();
            for op in ops {
                match op {
                    Op::Add(k) => {
                        let (p, salt) = prompt_of(k);
                        live.push(h.add(&p, salt));
                    }
                    Op::Abort(i) => {
                        if !live.is_empty() {
                            let id = live.remove(i as usize % live.len());
                            h.e.abort(id, h.t);
                        }
                    }
                    Op::Step => {
                        h.step().map_err(TestCaseError::fail)?;
                    }
                }
            }
            h.idle().map_err(TestCaseError::fail)?;
            h.check(&BTreeSet::new()).map_err(TestCaseError::fail)?;
        }
    }
}
