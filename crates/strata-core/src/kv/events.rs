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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCacheEvent {
    /// Consecutive full blocks of one chain became findable.
    BlockStored {
        block_hashes: Vec<BlockHash>,
        /// The hash of the block before the first one; `None` when the
        /// first one starts its chain.
        parent_block_hash: Option<BlockHash>,
        /// `block_size` tokens per hash, in order.
        token_ids: Vec<TokenId>,
        block_size: usize,
        /// The request's cache salt, when the event starts a chain (the
        /// salt keys block 0 only; later blocks inherit it by chaining).
        cache_salt: Option<String>,
        medium: KvMedium,
    },
    /// These hashes stopped being findable.
    BlockRemoved { block_hashes: Vec<BlockHash>, medium: KvMedium },
    /// Every block of every tier was dropped.
    AllBlocksCleared,
}

/// An append-only log of events, off unless enabled (then recording costs
/// nothing when nobody listens). Consecutive removals of one medium merge
/// into one event, as vLLM batches them.
#[derive(Debug, Default)]
pub struct KvEventLog {
    enabled: bool,
    events: Vec<KvCacheEvent>,
}

impl KvEventLog {
    pub fn enable(&mut self) {
        self.enabled = true;
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn push(&mut self, event: KvCacheEvent) {
        if self.enabled {
            self.events.push(event);
        }
    }

    pub fn removed(&mut self, hash: BlockHash, medium: KvMedium) {
        if !self.enabled {
            return;
        }
        if let Some(KvCacheEvent::BlockRemoved { block_hashes, medium: m }) = self.events.last_mut()
        {
            if *m == medium {
                block_hashes.push(hash);
                return;
            }
        }
        self.events.push(KvCacheEvent::BlockRemoved { block_hashes: vec![hash], medium });
    }

    /// The events recorded since the last take, in order.
    pub fn take(&mut self) -> Vec<KvCacheEvent> {
        std::mem::take(&mut self.events)
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
        log.push(KvCacheEvent::AllBlocksCleared);
        log.removed(BlockHash(4), KvMedium::Host);
        let events = log.take();
        assert_eq!(
            events,
            vec![
                KvCacheEvent::BlockRemoved {
                    block_hashes: vec![BlockHash(1), BlockHash(2)],
                    medium: KvMedium::Device
                },
                KvCacheEvent::BlockRemoved {
                    block_hashes: vec![BlockHash(3)],
                    medium: KvMedium::Host
                },
                KvCacheEvent::AllBlocksCleared,
                KvCacheEvent::BlockRemoved {
                    block_hashes: vec![BlockHash(4)],
                    medium: KvMedium::Host
                },
            ]
        );
        assert!(log.take().is_empty());
    }
}
