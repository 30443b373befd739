//! The KV cache manager: which blocks each request holds, prefix-cache
//! lookups, and allocation for a step's new tokens.
//!
//! Invariants:
//! - a request's blocks cover at least its `num_computed_tokens`;
//! - every full block of a request whose tokens are computed carries the
//!   request's chain hash for that block (once cached);
//! - a lookup never returns a hit covering the last token of the request,
//!   so at least one token is computed to produce logits.

use super::block_pool::BlockPool;
use super::events::{KvEventBatch, KvMedium};
use crate::dense::DenseMap;
use crate::ids::{BlockId, RequestId};
use crate::request::Request;

/// Result of asking for blocks: running out is an outcome, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocOutcome {
    Allocated,
    NoCapacity,
}

#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    /// Lookups only; nothing depends on its iteration order.
    req_blocks: DenseMap<RequestId, ReqBlocks>,
}

#[derive(Debug, Default)]
struct ReqBlocks {
    blocks: Vec<BlockId>,
    /// Leading blocks already registered in the prefix cache.
    num_cached: usize,
    /// Some registered block is a copy of one the cache finds elsewhere
    /// (with events on; otherwise every registered block is the one the
    /// cache finds, and stays so while held).
    may_hold_copies: bool,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Self {
        Self {
            pool: BlockPool::new(num_blocks, enable_caching),
            block_size,
            req_blocks: DenseMap::default(),
        }
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    pub fn blocks(&self, id: RequestId) -> &[BlockId] {
        self.req_blocks.get(&id).map_or(&[], |r| r.blocks.as_slice())
    }

    /// The longest cached prefix of the request, in whole blocks, capped
    /// so the last token is always computed. Returns the blocks and the
    /// number of tokens they hold.
    pub fn get_computed_blocks(&self, req: &Request) -> (Vec<BlockId>, usize) {
        let max_blocks = req.num_tokens().saturating_sub(1) / self.block_size;
        let blocks: Vec<BlockId> = req
            .block_hashes
            .iter()
            .take(max_blocks)
            .map_while(|&h| self.pool.get_cached_block(h))
            .collect();
        let tokens = blocks.len() * self.block_size;
        (blocks, tokens)
    }

    /// Allocates what the request needs to hold `num_new_tokens` more
    /// tokens after its computed ones and the `new_computed` hit blocks.
    /// On `NoCapacity` nothing changes.
    pub fn allocate_slots(
        &mut self,
        req: &Request,
        num_new_tokens: usize,
        new_computed: &[BlockId],
    ) -> AllocOutcome {
        let held = self.req_blocks.get(&req.id).map_or(0, |r| r.blocks.len());
        let total_tokens =
            req.num_computed_tokens + new_computed.len() * self.block_size + num_new_tokens;
        let needed =
            total_tokens.div_ceil(self.block_size).saturating_sub(held + new_computed.len());
        if needed == 0 && new_computed.is_empty() {
            // The common decode step: the last block still has room.
            return AllocOutcome::Allocated;
        }
        // Hit blocks that are free leave the free queue when touched.
        let free_hits = new_computed.iter().filter(|&&b| self.pool.ref_cnt(b) == 0).count();
        if needed + free_hits > self.pool.num_free_blocks() {
            return AllocOutcome::NoCapacity;
        }
        self.pool.touch(new_computed);
        let fresh = self.pool.get_new_blocks(needed).expect("invariant: capacity checked above");
        let entry = self.req_blocks.get_or_insert_with(req.id, ReqBlocks::default);
        entry.blocks.extend_from_slice(new_computed);
        entry.blocks.extend(fresh);
        if !new_computed.is_empty() {
            // Hit blocks are cached already (they only come first).
            entry.num_cached = entry.num_cached.max(held + new_computed.len());
        }
        AllocOutcome::Allocated
    }

    /// Registers the request's newly full, computed blocks in the prefix
    /// cache; returns their indices in the request's block list. With
    /// events on, the hashes that became findable are announced.
    pub fn cache_blocks(&mut self, req: &Request) -> std::ops::Range<usize> {
        let Some(entry) = self.req_blocks.get_mut(&req.id) else { return 0..0 };
        let full = (req.num_computed_tokens / self.block_size)
            .min(req.block_hashes.len())
            .min(entry.blocks.len());
        let first = entry.num_cached;
        if first >= full {
            return first..first;
        }
        let mut start = first;
        if self.pool.events_enabled() {
            // The chain's earlier blocks may have stopped being findable
            // (this request computed a copy of a block another request
            // cached, and that one was evicted since). This request's
            // blocks still carry their hashes: make them findable again,
            // so the announced parent of the new blocks is in the cache.
            // The usual case costs no lookup: the request holds no copies.
            while entry.may_hold_copies
                && start > 0
                && !self.pool.is_findable(entry.blocks[start - 1])
                && self.pool.get_cached_block(req.block_hashes[start - 1]).is_none()
            {
                start -= 1;
            }
        }
        // Runs of blocks whose hash became findable, announced as one event
        // each (a block already findable elsewhere ends a run).
        let mut run: Option<usize> = None;
        for i in start..full {
            let newly = self.pool.cache_full_block(entry.blocks[i], req.block_hashes[i]);
            entry.may_hold_copies |= !newly;
            match (newly, run) {
                (true, None) => run = Some(i),
                (false, Some(r)) => {
                    announce(&mut self.pool, req, r..i, self.block_size);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(r) = run {
            announce(&mut self.pool, req, r..full, self.block_size);
        }
        entry.num_cached = full;
        first..full
    }

    /// Takes an extra reference on blocks (a connector is copying them
    /// out), so they cannot be reused until [`Self::release`].
    pub fn hold(&mut self, blocks: &[BlockId]) {
        self.pool.touch(blocks);
    }

    pub fn release(&mut self, blocks: &[BlockId]) {
        self.pool.free_blocks(blocks.iter().copied());
    }

    /// Drops the request's blocks (last block first, so its prefix stays
    /// cached longest).
    pub fn free(&mut self, id: RequestId) {
        if let Some(entry) = self.req_blocks.remove(&id) {
            self.pool.free_blocks(entry.blocks.into_iter().rev());
        }
    }

    /// Removes blocks from the prefix cache (contents invalid).
    pub fn evict(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            self.pool.evict(b);
        }
    }

    /// Records KV events from now on.
    pub fn enable_events(&mut self) {
        self.pool.enable_events();
    }

    /// The KV events recorded since the last call, in order.
    pub fn take_events(&mut self) -> KvEventBatch {
        self.pool.take_events()
    }

    pub fn recycle_events(&mut self, batch: KvEventBatch) {
        self.pool.recycle_events(batch);
    }

    pub fn num_requests(&self) -> usize {
        self.req_blocks.len()
    }
}

/// Records a `BlockStored` for the request's blocks `range` (no-op with
/// events off).
fn announce(pool: &mut BlockPool, req: &Request, range: std::ops::Range<usize>, block_size: usize) {
    let Some(batch) = pool.event_batch() else { return };
    batch.stored(
        &req.block_hashes[range.clone()],
        range.start.checked_sub(1).map(|p| req.block_hashes[p]),
        &req.all_token_ids[range.start * block_size..range.end * block_size],
        block_size,
        if range.start == 0 { req.cache_salt.as_deref() } else { None },
        KvMedium::Device,
    );
}
