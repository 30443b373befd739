//! strata-offload: a KV cache larger than the device pool.
//!
//! Blocks computed on the device are copied to a host-RAM tier (and from
//! there, in the background, to a local-disk tier); a later request whose
//! prefix was seen before loads those blocks back instead of computing
//! them. Everything goes through strata-core's connector traits, so the
//! scheduler's accounting (`host` and `disk` sources, failure policy) is
//! the same as for any other connector, and through [`KvBlockIo`], so the
//! tiers move bytes without knowing the model or the backend.
//!
//! - [`host`]: fixed slots in RAM, LRU, pinned while a load reads them.
//! - [`disk`]: one verified file per block, an index rebuilt at start-up.
//! - [`stats`]: what the connector reports each step, for the metrics.
//! - [`connector`]: the scheduler side (lookups, load plans, which blocks
//!   to store) and the worker side (copies, background disk I/O, stats).
//! - `events`: the tiers' KV events (`CPU`, `DISK`) for routers, with
//!   their rules (parents per medium; start-up disk blocks announced only
//!   once their tokens are known).
//!
//! Block keys are the prefix-cache chain hashes (cache salt included);
//! the disk tier keeps each model's files under its fingerprint, and every
//! file says which model and block it holds, so a hit is only ever the same
//! prefix of the same model.
//!
//! [`KvBlockIo`]: strata_core::KvBlockIo

pub mod connector;
pub mod disk;
mod events;
pub mod host;
pub mod stats;

pub use connector::{open, DiskConfig, OffloadConfig, OffloadScheduler, OffloadWorker};
pub use stats::{
    OffloadFailure, OffloadOp, OffloadStats, OffloadTier, TierUsage, TransferRecord, TransferType,
};
