//! KV events of the offload tiers: what the host-RAM tier (`CPU`) and the
//! disk tier (`DISK`) hold, for routers that score engines by it (llm-d's
//! precise prefix-cache scorer weighs `cpu` at 0.8 of `gpu`). The contract
//! is strata-core's `kv::events`, kept per medium:
//!
//! - a hash is announced (`BlockStored`) once when it becomes present in a
//!   tier and removed (`BlockRemoved`) once when it leaves it (host LRU
//!   eviction, disk LRU eviction, a file that failed verification), so a
//!   consumer that counts per (pod, tier, hash) stays exact. A block in
//!   both tiers is announced in both. "Present" means loadable: a host
//!   block once its copy lands in a slot (the step after it was offered), a
//!   disk block once its file is written and renamed into place, not when
//!   the write is queued;
//! - **parents are per medium**: a `BlockStored` in a tier names as parent
//!   a hash announced in that same tier and not removed from it since. A
//!   block whose parent is not announced in its tier is present but not
//!   announced ("waiting"); it still serves hits, and it is announced as
//!   soon as its parent is (a store or a promotion of the parent, which
//!   disk reads finishing out of order make common), leaves silently if it
//!   goes first. Why not "any hash this pod announced": the connector does
//!   not see the device pool, so it cannot know that a parent it did not
//!   announce is still held elsewhere; llm-d forgets an engine hash once no
//!   (pod, tier) holds it, and then either skips the child (router) or keys
//!   it as a chain start (kv-cache's orphan path: wrong keys). A tier's
//!   own announcements are the only parents it can vouch for. The cost is
//!   an undercount of a tier (a router scores it lower), never an
//!   overcount;
//! - `token_ids` are the tokens of the request that offered the block (or
//!   loaded it), `block_size` per hash; the cache salt goes with a chain's
//!   first block.
//!
//! Tokens are known on the scheduler side only (the request): they are
//! kept from the offer (or the load plan) until the block lands, then go
//! into the event or, for a waiting block, wait with it.
//!
//! Blocks found on disk at start-up (a previous run's) are **not
//! announced** then: a file holds the chain hash and the KV, not the
//! tokens, and a consumer keys blocks by their tokens (llm-d recomputes its
//! request keys from `token_ids`), so an event without them would be
//! useless or wrong. They still serve hits. Each is announced once its
//! tokens become known: a request loads it (the request's tokens), or a
//! store writes it through again. Blocks already in a tier when events are
//! enabled are treated the same way.
//!
//! Nothing is recorded until [`TierEvents::enable`]; until then every hook
//! returns at its first line and no tokens are copied.

use rustc_hash::{FxHashMap, FxHashSet};
use strata_core::kv::{BlockHash, KvEventBatch, KvMedium};
use strata_core::request::Request;
use strata_core::TokenId;

/// What announcing one block needs, taken from the request that offered
/// or loaded it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BlockInfo {
    parent: Option<BlockHash>,
    token_ids: Vec<TokenId>,
    /// The request's cache salt, on a chain's first block only.
    cache_salt: Option<String>,
}

impl std::fmt::Debug for BlockInfo {
    // Token-bearing: lengths, not text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockInfo")
            .field("parent", &self.parent)
            .field("num_tokens", &self.token_ids.len())
            .field("salted", &self.cache_salt.is_some())
            .finish()
    }
}

impl BlockInfo {
    /// Block `index` of `req`; `None` if the request has no such full block.
    pub(crate) fn of(req: &Request, index: usize, block_size: usize) -> Option<Self> {
        let token_ids = req.all_token_ids.get(index * block_size..(index + 1) * block_size)?;
        req.block_hashes.get(index)?;
        Some(Self {
            parent: match index.checked_sub(1) {
                Some(p) => Some(*req.block_hashes.get(p)?),
                None => None,
            },
            token_ids: token_ids.to_vec(),
            cache_salt: if index == 0 { req.cache_salt.clone() } else { None },
        })
    }
}

/// One tier's announced hashes and its waiting blocks.
#[derive(Debug, Default)]
struct Tier {
    announced: FxHashSet<BlockHash>,
    /// Waiting blocks by parent, in arrival order.
    waiting: FxHashMap<BlockHash, Vec<(BlockHash, BlockInfo)>>,
    /// Parent of each waiting block.
    waiting_on: FxHashMap<BlockHash, BlockHash>,
}

/// A block's info, for as many uses (queued stores, planned loads) as
/// were registered.
#[derive(Debug, Default)]
struct Held(FxHashMap<BlockHash, (BlockInfo, u32)>);

impl Held {
    fn add(&mut self, hash: BlockHash, info: BlockInfo) {
        self.0.entry(hash).or_insert((info, 0)).1 += 1;
    }

    /// One use ends: the info (cloned while other uses remain).
    fn release(&mut self, hash: BlockHash) -> Option<BlockInfo> {
        let (info, uses) = self.0.get_mut(&hash)?;
        *uses -= 1;
        if *uses > 0 {
            return Some(info.clone());
        }
        self.0.remove(&hash).map(|(info, _)| info)
    }
}

/// The offload tiers' event log and the state that keeps it exact.
#[derive(Debug)]
pub(crate) struct TierEvents {
    enabled: bool,
    block_size: usize,
    events: KvEventBatch,
    host: Tier,
    disk: Tier,
    /// Offered for a host store, until the store runs.
    storing: Held,
    /// Planned disk loads, until the block is promoted into host.
    loading: Held,
    /// Queued disk writes, until the write lands.
    writing: FxHashMap<BlockHash, BlockInfo>,
}

impl TierEvents {
    pub(crate) fn new(block_size: usize) -> Self {
        Self {
            enabled: false,
            block_size,
            events: KvEventBatch::default(),
            host: Tier::default(),
            disk: Tier::default(),
            storing: Held::default(),
            loading: Held::default(),
            writing: FxHashMap::default(),
        }
    }

    pub(crate) fn enable(&mut self) {
        self.enabled = true;
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The events since the last call, in order.
    pub(crate) fn take(&mut self) -> KvEventBatch {
        if self.events.is_empty() {
            return KvEventBatch::default();
        }
        self.events.take()
    }

    /// Block `index` of `req`, when events are on.
    pub(crate) fn info(&self, req: &Request, index: usize) -> Option<BlockInfo> {
        if !self.enabled {
            return None;
        }
        BlockInfo::of(req, index, self.block_size)
    }

    /// A store of `hash` was handed to the worker.
    pub(crate) fn offered(&mut self, hash: BlockHash, info: Option<BlockInfo>) {
        if let Some(info) = info {
            self.storing.add(hash, info);
        }
    }

    /// The worker runs a store of `hash`: what it needs to announce it.
    pub(crate) fn store_runs(&mut self, hash: BlockHash) -> Option<BlockInfo> {
        if !self.enabled {
            return None;
        }
        self.storing.release(hash)
    }

    /// A disk load of `hash` was planned.
    pub(crate) fn load_planned(&mut self, hash: BlockHash, info: Option<BlockInfo>) {
        if let Some(info) = info {
            self.loading.add(hash, info);
        }
    }

    /// A planned disk load of `hash` ended (read, failed or dropped).
    pub(crate) fn load_ends(&mut self, hash: BlockHash) -> Option<BlockInfo> {
        if !self.enabled {
            return None;
        }
        self.loading.release(hash)
    }

    /// A write of `hash` to disk was queued.
    pub(crate) fn write_queued(&mut self, hash: BlockHash, info: &Option<BlockInfo>) {
        if let Some(info) = info {
            self.writing.insert(hash, info.clone());
        }
    }

    /// The write of `hash` ended (landed or failed).
    pub(crate) fn write_ends(&mut self, hash: BlockHash) -> Option<BlockInfo> {
        if !self.enabled {
            return None;
        }
        self.writing.remove(&hash)
    }

    fn tier(&mut self, medium: KvMedium) -> &mut Tier {
        match medium {
            KvMedium::Disk => &mut self.disk,
            _ => &mut self.host,
        }
    }

    /// `hash` is present in `medium` (it just arrived, or its tokens just
    /// became known): announce it if its parent is announced there, else
    /// let it wait. Known blocks and unknown tokens change nothing.
    pub(crate) fn present(&mut self, medium: KvMedium, hash: BlockHash, info: Option<BlockInfo>) {
        let Some(info) = info else { return };
        if !self.enabled {
            return;
        }
        let tier = self.tier(medium);
        if tier.announced.contains(&hash) || tier.waiting_on.contains_key(&hash) {
            return;
        }
        match info.parent {
            Some(p) if !tier.announced.contains(&p) => {
                tier.waiting_on.insert(hash, p);
                tier.waiting.entry(p).or_default().push((hash, info));
            }
            _ => self.announce(medium, hash, info),
        }
    }

    /// Announces `hash`, then every block that waited for it (depth first,
    /// so chains come out in order and merge into one event).
    fn announce(&mut self, medium: KvMedium, hash: BlockHash, info: BlockInfo) {
        let mut stack = vec![(hash, info)];
        while let Some((h, info)) = stack.pop() {
            let tier = self.tier(medium);
            tier.announced.insert(h);
            if let Some(children) = tier.waiting.remove(&h) {
                for (c, _) in &children {
                    tier.waiting_on.remove(c);
                }
                stack.extend(children.into_iter().rev());
            }
            self.record_stored(medium, h, info);
        }
    }

    /// One block of a chain's run: it joins the previous event when it
    /// continues that event's chain (one event per run, as vLLM batches).
    fn record_stored(&mut self, medium: KvMedium, hash: BlockHash, info: BlockInfo) {
        self.events.stored(
            &[hash],
            info.parent,
            &info.token_ids,
            self.block_size,
            info.cache_salt.as_deref(),
            medium,
        );
    }

    /// `hash` left `medium`: removed if it was announced, forgotten if it
    /// was waiting. Blocks that waited for it keep waiting (they leave
    /// with the LRU in time).
    pub(crate) fn left(&mut self, medium: KvMedium, hash: BlockHash) {
        if !self.enabled {
            return;
        }
        let tier = self.tier(medium);
        if tier.announced.remove(&hash) {
            self.events.removed(hash, medium);
        } else if let Some(p) = tier.waiting_on.remove(&hash) {
            if let Some(siblings) = tier.waiting.get_mut(&p) {
                siblings.retain(|(h, _)| *h != hash);
                if siblings.is_empty() {
                    tier.waiting.remove(&p);
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn num_held(&self) -> usize {
        self.storing.0.len() + self.loading.0.len() + self.writing.len()
    }

    #[cfg(test)]
    pub(crate) fn num_waiting(&self, medium: KvMedium) -> usize {
        match medium {
            KvMedium::Disk => self.disk.waiting_on.len(),
            _ => self.host.waiting_on.len(),
        }
    }
}
