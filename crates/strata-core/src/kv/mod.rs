//! The device KV cache, as the scheduler sees it: blocks, their hashes and
//! who holds them. No tensors here; the executor owns the memory.

pub mod block_pool;
pub mod events;
pub mod hash;
pub mod manager;

pub use block_pool::BlockPool;
pub use events::{KvCacheEvent, KvEventBatch, KvMedium};
pub use hash::BlockHash;
pub use manager::{AllocOutcome, KvCacheManager};
