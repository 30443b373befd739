//! The block pool: reference-counted KV blocks, a free queue in LRU order,
//! and the prefix cache's hash -> block map.
//!
//! Invariants:
//! - a block is in the free queue iff its reference count is 0;
//! - `num_free + Σ(blocks with ref_cnt > 0) == num_blocks`;
//! - a freed block keeps its hash and stays findable through `cached`
//!   until it is handed out again (evicted) from the head of the queue;
//! - a hash maps to at most one block, and that block carries the hash.
//!
//! The free queue is an intrusive doubly linked list over block indices,
//! so a cache hit on a free block leaves the queue in O(1), as in vLLM's
//! `FreeKVCacheBlockQueue`.

use rustc_hash::FxHashMap;

use super::events::{KvEventBatch, KvEventLog, KvMedium};
use super::hash::BlockHash;
use crate::ids::BlockId;

const NONE: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Block {
    ref_cnt: u32,
    hash: Option<BlockHash>,
    /// The cache maps `hash` to this block (it is findable).
    findable: bool,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    /// Lookups only, never iterated, so std's hash order cannot leak.
    cached: FxHashMap<BlockHash, BlockId>,
    enable_caching: bool,
    /// Hashes entering and leaving `cached` (see `kv::events`).
    events: KvEventLog,
}

impl BlockPool {
    pub fn new(num_blocks: usize, enable_caching: bool) -> Self {
        let n = num_blocks as u32;
        let blocks = (0..n)
            .map(|i| Block {
                ref_cnt: 0,
                hash: None,
                findable: false,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            })
            .collect();
        Self {
            blocks,
            head: if n == 0 { NONE } else { 0 },
            tail: if n == 0 { NONE } else { n - 1 },
            num_free: num_blocks,
            cached: FxHashMap::default(),
            enable_caching,
            events: KvEventLog::default(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Hashes findable in the prefix cache now.
    pub fn num_cached_hashes(&self) -> usize {
        self.cached.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.num_free
    }

    /// Fraction of blocks in use, 0-1.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    pub fn ref_cnt(&self, block: BlockId) -> u32 {
        self.blocks[block.index()].ref_cnt
    }

    /// Whether the prefix cache finds this block under its hash (a copy
    /// of a block another holds under the same hash is not).
    pub fn is_findable(&self, block: BlockId) -> bool {
        self.blocks[block.index()].findable
    }

    pub fn block_hash(&self, block: BlockId) -> Option<BlockHash> {
        self.blocks[block.index()].hash
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.blocks[i as usize].prev, self.blocks[i as usize].next);
        if prev == NONE {
            self.head = next
        } else {
            self.blocks[prev as usize].next = next
        }
        if next == NONE {
            self.tail = prev
        } else {
            self.blocks[next as usize].prev = prev
        }
        self.blocks[i as usize].prev = NONE;
        self.blocks[i as usize].next = NONE;
        self.num_free -= 1;
    }

    fn push_back(&mut self, i: u32) {
        self.blocks[i as usize].prev = self.tail;
        self.blocks[i as usize].next = NONE;
        if self.tail == NONE {
            self.head = i
        } else {
            self.blocks[self.tail as usize].next = i
        }
        self.tail = i;
        self.num_free += 1;
    }

    /// Takes `n` blocks from the head of the free queue (least recently
    /// freed first), evicting their cached hashes. `None` (and nothing
    /// taken) when fewer than `n` are free.
    pub fn get_new_blocks(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.head;
            self.unlink(i);
            self.evict(BlockId(i));
            self.blocks[i as usize].ref_cnt = 1;
            out.push(BlockId(i));
        }
        Some(out)
    }

    /// Removes a block's hash from the prefix cache (its contents are about
    /// to change, or are known to be invalid).
    pub fn evict(&mut self, block: BlockId) {
        let b = &mut self.blocks[block.index()];
        let findable = std::mem::take(&mut b.findable);
        if let Some(h) = b.hash.take() {
            if findable {
                self.cached.remove(&h);
                self.events.removed(h, KvMedium::Device);
            }
        }
    }

    /// Records KV events from now on (see `kv::events`).
    pub fn enable_events(&mut self) {
        self.events.enable();
    }

    /// Whether events are recorded (only with prefix caching: without it
    /// nothing is ever findable, so nothing is announced).
    pub fn events_enabled(&self) -> bool {
        self.enable_caching && self.events.is_enabled()
    }

    /// The batch to record events into (the manager announces stored
    /// blocks: it knows their tokens); `None` while events are off.
    pub fn event_batch(&mut self) -> Option<&mut KvEventBatch> {
        if self.enable_caching {
            self.events.batch()
        } else {
            None
        }
    }

    /// The events recorded since the last call.
    pub fn take_events(&mut self) -> KvEventBatch {
        self.events.take()
    }

    /// Takes back a taken batch its consumer is done with (see
    /// `KvEventLog::recycle`).
    pub fn recycle_events(&mut self, batch: KvEventBatch) {
        self.events.recycle(batch);
    }

    /// The cached block holding `hash`, if any.
    pub fn get_cached_block(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Takes a reference on each block (a prefix-cache hit): a free block
    /// leaves the free queue.
    pub fn touch(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            if self.blocks[b.index()].ref_cnt == 0 {
                self.unlink(b.0);
            }
            self.blocks[b.index()].ref_cnt += 1;
        }
    }

    /// Drops a reference on each block, in the given order; blocks whose
    /// count reaches 0 join the tail of the free queue (so the first given
    /// is evicted first). Callers pass a request's blocks in reverse, so a
    /// prefix outlives its suffixes, as in vLLM.
    pub fn free_blocks(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for b in blocks {
            let block = &mut self.blocks[b.index()];
            debug_assert!(block.ref_cnt > 0, "invariant: freeing a block with no reference");
            block.ref_cnt = block.ref_cnt.saturating_sub(1);
            if block.ref_cnt == 0 {
                self.push_back(b.0);
            }
        }
    }

    /// Records that `block` now holds the full block named `hash`. If
    /// another block already holds it, the cache keeps that one; if none
    /// does (a copy was evicted), this one becomes findable. Returns
    /// whether `hash` became findable (a new entry of the cache).
    pub fn cache_full_block(&mut self, block: BlockId, hash: BlockHash) -> bool {
        let carried = self.blocks[block.index()].hash;
        if !self.enable_caching || carried.is_some_and(|h| h != hash) {
            return false;
        }
        self.blocks[block.index()].hash = Some(hash);
        match self.cached.entry(hash) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(block);
                self.blocks[block.index()].findable = true;
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        }
    }

    /// Checks every invariant of the module header (tests and debug).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut in_queue = vec![false; self.blocks.len()];
        let (mut i, mut count, mut prev) = (self.head, 0, NONE);
        while i != NONE {
            if in_queue[i as usize] || self.blocks[i as usize].prev != prev {
                return Err(format!("free queue broken at block {i}"));
            }
            in_queue[i as usize] = true;
            count += 1;
            prev = i;
            i = self.blocks[i as usize].next;
        }
        if count != self.num_free || prev != self.tail {
            return Err(format!("free queue holds {count} blocks, counter says {}", self.num_free));
        }
        for (b, block) in self.blocks.iter().enumerate() {
            if in_queue[b] != (block.ref_cnt == 0) {
                return Err(format!(
                    "block {b}: ref_cnt {} but in_queue {}",
                    block.ref_cnt, in_queue[b]
                ));
            }
        }
        for (h, b) in &self.cached {
            if self.blocks[b.index()].hash != Some(*h) {
                return Err(format!("cache maps {h:?} to block {} which does not carry it", b.0));
            }
        }
        let findable = self.blocks.iter().filter(|b| b.findable).count();
        if findable != self.cached.len() {
            return Err(format!(
                "{findable} blocks findable, the cache maps {}",
                self.cached.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn freed_cached_blocks_stay_findable_until_reused_in_lru_order() {
        let mut pool = BlockPool::new(4, true);
        let a = pool.get_new_blocks(2).unwrap();
        pool.cache_full_block(a[0], BlockHash(10));
        pool.cache_full_block(a[1], BlockHash(11));
        pool.free_blocks(a.iter().rev().copied());
        assert_eq!(pool.num_free_blocks(), 4);
        assert_eq!(pool.get_cached_block(BlockHash(10)), Some(a[0]));
        // Blocks 2 and 3 were never used: they go first, then a[1], then a[0].
        let b = pool.get_new_blocks(3).unwrap();
        assert_eq!(b[2], a[1]);
        assert_eq!(pool.get_cached_block(BlockHash(11)), None, "reuse evicts");
        assert_eq!(pool.get_cached_block(BlockHash(10)), Some(a[0]));
        pool.touch(&[a[0]]);
        assert_eq!(pool.num_free_blocks(), 0);
        assert!(pool.get_new_blocks(1).is_none());
        pool.check_invariants().unwrap();
    }

    proptest! {
        #[test]
        fn random_alloc_touch_free_keeps_invariants(ops in prop::collection::vec((0u8..4, 1usize..5, any::<u64>()), 1..200)) {
            let mut pool = BlockPool::new(16, true);
            let mut held: Vec<BlockId> = Vec::new();
            for (op, n, h) in ops {
                match op {
                    0 => if let Some(bs) = pool.get_new_blocks(n) { held.extend(bs) },
                    1 if !held.is_empty() => {
                        let b = held[h as usize % held.len()];
                        pool.cache_full_block(b, BlockHash(h % 8));
                    }
                    2 => if let Some(b) = pool.get_cached_block(BlockHash(h % 8)) {
                        pool.touch(&[b]);
                        held.push(b);
                    },
                    _ => {
                        let k = n.min(held.len());
                        let freed: Vec<_> = held.drain(..k).collect();
                        pool.free_blocks(freed);
                    }
                }
                prop_assert_eq!(pool.check_invariants(), Ok(()));
            }
            pool.free_blocks(held.drain(..));
            prop_assert_eq!(pool.num_free_blocks(), 16);
        }
    }
}
