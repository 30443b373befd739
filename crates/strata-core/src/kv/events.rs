//! KV cache events: what entered and left the prefix cache in a step, for
//! routers that score engines by what they hold (vLLM's `KVCacheEvent`s,
//! which llm-d's precise prefix-cache scorer and Dynamo's router read).
//!
//! The core only records them; the server publishes them (ZMQ, msgpack).
//! The contract a consumer relies on, and this module keeps:
//! - a hash is announced (`BlockStored`) when it becomes findable in the
//!   cache and removed (`BlockRemoved`) when it stops being findable, each
//!   exactly once per stay, so a reference-counting indexer stays exact;
//! - a `BlockStored`'s parent is a hash announced earlier and not removed
//!   since (the block before the first one of the event, in its chain);
//! - `token_ids` are the tokens of the announced blocks, block by block, so
//!   a consumer can compute its own keys; the cache salt, which keys the
//!   chain's first block, travels with an event that starts a chain.
//!
//! A step's events are one [`KvEventBatch`]: flat buffers of hashes,
//! tokens and salts with a small header per event, so recording a step's
//! events costs a few allocations however many blocks it caches, and
//! handing the batch to another thread frees a few, not one per event.

use super::hash::BlockHash;
use crate::ids::TokenId;

/// Where a block lives. The device tier is the engine's own KV pool
/// (vLLM and llm-d call it `GPU` whatever the device); the others are
/// offload tiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvMedium {
    Device,
    Host,
    Disk,
}

impl KvMedium {
    /// The name on the wire, as vLLM and llm-d spell tiers.
    pub fn wire_name(self) -> &'static str {
        match self {
            KvMedium::Device => "GPU",
            KvMedium::Host => "CPU",
            KvMedium::Disk => "DISK",
        }
    }
}

/// One event of a batch, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCacheEvent<'a> {
    /// Consecutive full blocks of one chain became findable.
    BlockStored {
        block_hashes: &'a [BlockHash],
        /// The hash of the block before the first one; `None` when the
        /// first one starts its chain.
        parent_block_hash: Option<BlockHash>,
        /// `block_size` tokens per hash, in order.
        token_ids: &'a [TokenId],
        block_size: usize,
        /// The request's cache salt, when the event starts a chain (the
        /// salt keys block 0 only; later blocks inherit it by chaining).
        cache_salt: Option<&'a str>,
        medium: KvMedium,
    },
    /// These hashes stopped being findable.
    BlockRemoved { block_hashes: &'a [BlockHash], medium: KvMedium },
    /// Every block of every tier was dropped.
    AllBlocksCleared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stored,
    Removed,
    Cleared,
}

/// An event's header: its kind and where its data ends in the buffers
/// (it starts where the previous event's ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    kind: Kind,
    medium: KvMedium,
    hashes_end: usize,
    tokens_end: usize,
    salt_end: usize,
    salted: bool,
    parent: Option<BlockHash>,
    block_size: usize,
}

/// A sequence of events (a step's, in the order they happened).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvEventBatch {
    heads: Vec<Head>,
    hashes: Vec<BlockHash>,
    tokens: Vec<TokenId>,
    salts: String,
}

impl KvEventBatch {
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// The events, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = KvCacheEvent<'_>> + '_ {
        let mut start = Head {
            kind: Kind::Cleared,
            medium: KvMedium::Device,
            hashes_end: 0,
            tokens_end: 0,
            salt_end: 0,
            salted: false,
            parent: None,
            block_size: 0,
        };
        self.heads.iter().map(move |h| {
            let (from, to) = (start, *h);
            start = to;
            let block_hashes = &self.hashes[from.hashes_end..to.hashes_end];
            match to.kind {
                Kind::Stored => KvCacheEvent::BlockStored {
                    block_hashes,
                    parent_block_hash: to.parent,
                    token_ids: &self.tokens[from.tokens_end..to.tokens_end],
                    block_size: to.block_size,
                    cache_salt: to.salted.then(|| &self.salts[from.salt_end..to.salt_end]),
                    medium: to.medium,
                },
                Kind::Removed => KvCacheEvent::BlockRemoved { block_hashes, medium: to.medium },
                Kind::Cleared => KvCacheEvent::AllBlocksCleared,
            }
        })
    }

    fn push_head(&mut self, kind: Kind, medium: KvMedium, parent: Option<BlockHash>) -> &mut Head {
        self.heads.push(Head {
            kind,
            medium,
            hashes_end: self.hashes.len(),
            tokens_end: self.tokens.len(),
            salt_end: self.salts.len(),
            salted: false,
            parent,
            block_size: 0,
        });
        self.heads.last_mut().expect("invariant: just pushed")
    }

    /// Records a `BlockStored`. A run that continues the previous event's
    /// chain (same medium, its parent is that event's last hash) joins it,
    /// as vLLM batches a chain's blocks into one event.
    pub fn stored(
        &mut self,
        block_hashes: &[BlockHash],
        parent: Option<BlockHash>,
        token_ids: &[TokenId],
        block_size: usize,
        cache_salt: Option<&str>,
        medium: KvMedium,
    ) {
        debug_assert_eq!(token_ids.len(), block_hashes.len() * block_size);
        if block_hashes.is_empty() {
            return;
        }
        let joins = parent.is_some()
            && self.heads.last().is_some_and(|h| {
                h.kind == Kind::Stored
                    && h.medium == medium
                    && h.block_size == block_size
                    && self.hashes.last().copied() == parent
            });
        self.hashes.extend_from_slice(block_hashes);
        self.tokens.extend_from_slice(token_ids);
        if !joins {
            self.push_head(Kind::Stored, medium, parent);
        }
        let salted = !joins && cache_salt.is_some();
        if salted {
            self.salts.push_str(cache_salt.unwrap_or_default());
        }
        let (hashes_end, tokens_end, salt_end) =
            (self.hashes.len(), self.tokens.len(), self.salts.len());
        let head = self.heads.last_mut().expect("invariant: a stored event exists");
        head.hashes_end = hashes_end;
        head.tokens_end = tokens_end;
        head.salt_end = salt_end;
        head.block_size = block_size;
        head.salted |= salted;
    }

    /// Records that `hash` left `medium` (joining the previous event when
    /// it is a removal from the same medium).
    pub fn removed(&mut self, hash: BlockHash, medium: KvMedium) {
        self.hashes.push(hash);
        let end = self.hashes.len();
        match self.heads.last_mut() {
            Some(h) if h.kind == Kind::Removed && h.medium == medium => h.hashes_end = end,
            _ => self.push_head(Kind::Removed, medium, None).hashes_end = end,
        }
    }

    /// Records that every block of every tier was dropped.
    pub fn cleared(&mut self) {
        self.push_head(Kind::Cleared, KvMedium::Device, None);
    }

    /// Appends `other`'s events.
    pub fn append(&mut self, other: &KvEventBatch) {
        for e in other.iter() {
            match e {
                KvCacheEvent::BlockStored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    cache_salt,
                    medium,
                } => self.stored(
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    cache_salt,
                    medium,
                ),
                KvCacheEvent::BlockRemoved { block_hashes, medium } => {
                    block_hashes.iter().for_each(|&h| self.removed(h, medium))
                }
                KvCacheEvent::AllBlocksCleared => self.cleared(),
            }
        }
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.heads.clear();
        self.hashes.clear();
        self.tokens.clear();
        self.salts.clear();
    }

    /// The events so far; this batch starts again empty, with the same
    /// capacity (the next step records about as many).
    pub fn take(&mut self) -> KvEventBatch {
        let fresh = KvEventBatch {
            heads: Vec::with_capacity(self.heads.capacity()),
            hashes: Vec::with_capacity(self.hashes.capacity()),
            tokens: Vec::with_capacity(self.tokens.capacity()),
            salts: String::new(),
        };
        std::mem::replace(self, fresh)
    }
}

/// A batch being recorded, off unless enabled (then recording costs
/// nothing when nobody listens).
#[derive(Debug, Default)]
pub struct KvEventLog {
    enabled: bool,
    batch: KvEventBatch,
    /// An emptied batch handed back by the consumer, recorded into next
    /// (its buffers are warm; a fresh one would be allocated).
    spare: Option<KvEventBatch>,
}

impl KvEventLog {
    pub fn enable(&mut self) {
        self.enabled = true;
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The batch to record into, `None` while disabled.
    pub fn batch(&mut self) -> Option<&mut KvEventBatch> {
        self.enabled.then_some(&mut self.batch)
    }

    pub fn removed(&mut self, hash: BlockHash, medium: KvMedium) {
        if let Some(b) = self.batch() {
            b.removed(hash, medium);
        }
    }

    /// The events recorded since the last take, in order.
    pub fn take(&mut self) -> KvEventBatch {
        if self.batch.is_empty() {
            return KvEventBatch::default();
        }
        match self.spare.take() {
            Some(spare) => std::mem::replace(&mut self.batch, spare),
            None => self.batch.take(),
        }
    }

    /// Takes back a batch its consumer is done with, to record into later.
    pub fn recycle(&mut self, mut batch: KvEventBatch) {
        if self.spare.is_none() {
            batch.clear();
            self.spare = Some(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_log_records_nothing_and_removals_merge_per_medium() {
        let mut log = KvEventLog::default();
        log.removed(BlockHash(1), KvMedium::Device);
        assert!(log.take().is_empty());
        log.enable();
        log.removed(BlockHash(1), KvMedium::Device);
        log.removed(BlockHash(2), KvMedium::Device);
        log.removed(BlockHash(3), KvMedium::Host);
        log.batch().unwrap().cleared();
        log.removed(BlockHash(4), KvMedium::Host);
        let batch = log.take();
        let events: Vec<_> = batch.iter().collect();
        assert_eq!(
            events,
            vec![
                KvCacheEvent::BlockRemoved {
                    block_hashes: &[BlockHash(1), BlockHash(2)],
                    medium: KvMedium::Device
                },
                KvCacheEvent::BlockRemoved {
                    block_hashes: &[BlockHash(3)],
                    medium: KvMedium::Host
                },
                KvCacheEvent::AllBlocksCleared,
                KvCacheEvent::BlockRemoved {
                    block_hashes: &[BlockHash(4)],
                    medium: KvMedium::Host
                },
            ]
        );
        assert!(log.take().is_empty());
    }

    #[test]
    fn a_continued_chain_joins_its_event_and_salts_stay_with_chain_starts() {
        let mut b = KvEventBatch::default();
        let h = |i| BlockHash(i);
        b.stored(&[h(1)], None, &[1, 2], 2, Some("salt"), KvMedium::Device);
        b.stored(&[h(2), h(3)], Some(h(1)), &[3, 4, 5, 6], 2, None, KvMedium::Device);
        // Another chain, another medium, a chain that does not continue.
        b.stored(&[h(9)], None, &[7, 8], 2, None, KvMedium::Device);
        b.stored(&[h(4)], Some(h(3)), &[9, 9], 2, None, KvMedium::Host);
        b.stored(&[h(5)], Some(h(2)), &[1, 1], 2, None, KvMedium::Host);
        let events: Vec<_> = b.iter().collect();
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0],
            KvCacheEvent::BlockStored {
                block_hashes: &[h(1), h(2), h(3)],
                parent_block_hash: None,
                token_ids: &[1, 2, 3, 4, 5, 6],
                block_size: 2,
                cache_salt: Some("salt"),
                medium: KvMedium::Device,
            }
        );
        assert!(matches!(
            events[1],
            KvCacheEvent::BlockStored { block_hashes: [x], cache_salt: None, .. } if *x == h(9)
        ));
        assert!(matches!(
            events[3],
            KvCacheEvent::BlockStored { parent_block_hash: Some(p), medium: KvMedium::Host, .. } if p == h(2)
        ));
        let mut copy = KvEventBatch::default();
        copy.append(&b);
        assert_eq!(copy, b);
    }
}
