//! The KV-event contract (`kv::events`) under random shared-prefix traffic
//! in a small pool: every hash announced once per stay in the cache, every
//! parent announced before its children and still there, removals only of
//! announced hashes, token ids equal to the blocks' tokens, the salt with
//! the chain's first block, and, once idle, exactly the cached hashes
//! announced and not removed.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::kv::{hash, BlockHash, KvCacheEvent, KvEventBatch, KvMedium};
use crate::sampling::SamplingParams;
use crate::testing::Harness;

const B: usize = 4;

/// What an indexer that trusts the events believes the engine holds.
#[derive(Default)]
struct Twin {
    stored: HashMap<BlockHash, Option<BlockHash>>,
}

impl Twin {
    fn apply(&mut self, events: &KvEventBatch) {
        for e in events.iter() {
            match e {
                KvCacheEvent::BlockStored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    cache_salt,
                    medium,
                } => {
                    assert_eq!(medium, KvMedium::Device);
                    assert_eq!(block_size, B);
                    assert_eq!(token_ids.len(), B * block_hashes.len());
                    if let Some(p) = parent_block_hash {
                        assert!(self.stored.contains_key(&p), "parent {p:?} not held");
                    }
                    // The hashes are the chain of these tokens: an indexer
                    // could recompute them.
                    let mut parent = parent_block_hash;
                    for (h, toks) in block_hashes.iter().zip(token_ids.chunks(B)) {
                        let salt = if parent.is_none() { cache_salt } else { None };
                        assert_eq!(*h, hash::hash_block(parent, toks, salt));
                        assert!(self.stored.insert(*h, parent).is_none(), "{h:?} announced twice");
                        parent = Some(*h);
                    }
                }
                KvCacheEvent::BlockRemoved { block_hashes, medium } => {
                    assert_eq!(medium, KvMedium::Device);
                    for h in block_hashes {
                        assert!(self.stored.remove(h).is_some(), "{h:?} removed, never stored");
                    }
                }
                KvCacheEvent::AllBlocksCleared => self.stored.clear(),
            }
        }
    }
}

fn engine(num_blocks: usize) -> Harness<crate::testing::FakeExecutor> {
    let config = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 24,
        block_size: B,
        num_blocks,
        ..SchedulerConfig::default()
    };
    let mut h = Harness::fake(config);
    h.enable_kv_events();
    h
}

#[test]
fn a_prompt_is_announced_block_by_block_with_its_salt_then_found_by_the_next() {
    let mut e = engine(32);
    let prompt: Vec<u32> = (1..=13).collect();
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(2) };
    e.add(NewRequest::new(prompt.clone(), params.clone()).with_cache_salt("tenant"));
    let run = e.drain(100);
    let mut events = KvEventBatch::default();
    run.results.iter().for_each(|r| events.append(&r.kv_events));
    let first = events.iter().next().expect("events were recorded");
    let KvCacheEvent::BlockStored {
        block_hashes, parent_block_hash, token_ids, cache_salt, ..
    } = first
    else {
        panic!("first event {first:?}");
    };
    assert_eq!(parent_block_hash, None);
    assert_eq!(cache_salt, Some("tenant"));
    assert_eq!(token_ids[..12], prompt[..12]);
    assert_eq!(block_hashes.len(), 3);
    let mut twin = Twin::default();
    twin.apply(&events);
    assert_eq!(twin.stored.len(), e.scheduler().kv().pool().num_cached_hashes());
}

#[test]
fn a_copy_whose_original_was_evicted_is_announced_again_before_its_children() {
    // A and B prefill the same prompt in one step: A's blocks enter the
    // cache, B's copies carry the same hashes but are not findable. A ends,
    // C's allocation evicts A's blocks, then B fills its next block: its
    // parent must be findable (and announced) again, or an indexer would
    // drop B's new block as an orphan.
    let mut e = engine(10);
    let mut twin = Twin::default();
    let prompt: Vec<u32> = (1..=12).collect();
    let params = |n| SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) };
    e.add(NewRequest::new(prompt.clone(), params(1)));
    e.add(NewRequest::new(prompt, params(8)));
    twin.apply(&e.step().kv_events);
    e.add(NewRequest::new((200..216).collect(), params(1)));
    let run = e.drain(100);
    for r in &run.results {
        twin.apply(&r.kv_events);
    }
    let removed = run
        .results
        .iter()
        .flat_map(|r| r.kv_events.iter())
        .any(|ev| matches!(ev, KvCacheEvent::BlockRemoved { .. }));
    assert!(removed, "the scenario evicts A's blocks");
    assert_eq!(twin.stored.len(), e.scheduler().kv().pool().num_cached_hashes());
}

#[test]
fn events_off_record_nothing() {
    let config = SchedulerConfig { block_size: B, num_blocks: 16, ..SchedulerConfig::default() };
    let mut e = Harness::fake(config);
    e.add(NewRequest::new((1..=20).collect(), SamplingParams::greedy(3)));
    let run = e.drain(100);
    assert!(run.results.iter().all(|r| r.kv_events.is_empty()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_shared_prefix_traffic_keeps_the_event_contract(
        reqs in prop::collection::vec((0usize..3, 1usize..24, 1u32..6, any::<bool>()), 1..24),
        num_blocks in 12usize..40,
    ) {
        let mut e = engine(num_blocks);
        let mut twin = Twin::default();
        // Three shared stems, so requests hit, duplicate and evict each
        // other's blocks.
        let stems: [Vec<u32>; 3] = [(1..=20).collect(), (100..=116).collect(), (7..=15).collect()];
        for (i, &(stem, tail, max_tokens, salted)) in reqs.iter().enumerate() {
            let mut prompt = stems[stem].clone();
            prompt.extend((0..tail as u32).map(|t| 500 + (i as u32 * 31 + t) % 50));
            let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_tokens) };
            let mut new = NewRequest::new(prompt, params);
            if salted {
                new = new.with_cache_salt("s");
            }
            e.add(new);
            // Interleave: a couple of steps between arrivals.
            for _ in 0..(i % 3) {
                let r = e.step();
                twin.apply(&r.kv_events);
            }
        }
        for _ in 0..2000 {
            if !e.has_unfinished() && !e.has_pending() {
                break;
            }
            let r = e.step();
            twin.apply(&r.kv_events);
        }
        prop_assert!(!e.has_unfinished());
        let pool = e.scheduler().kv().pool();
        prop_assert_eq!(twin.stored.len(), pool.num_cached_hashes());
        for h in twin.stored.keys() {
            prop_assert!(pool.get_cached_block(*h).is_some(), "{:?} announced but not cached", h);
        }
    }
}
