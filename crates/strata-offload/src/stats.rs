//! What the offload connector reports each step ([`OffloadStats`]), carried
//! to the metrics layer through the core's opaque
//! [`strata_core::connector::ConnectorStats`] channel: the core never looks
//! inside.

use serde::{Deserialize, Serialize};
use strata_core::connector::MergeReport;

/// Tiers reached through the offload connector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OffloadTier {
    Host,
    Disk,
}

impl OffloadTier {
    pub const ALL: [OffloadTier; 2] = [Self::Host, Self::Disk];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Disk => "disk",
        }
    }
}

/// Direction of an offload transfer (the `transfer_type` label of `vllm:kv_offload_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TransferType {
    HostToDevice,
    DeviceToHost,
    DiskToHost,
    HostToDisk,
}

impl TransferType {
    pub const ALL: [TransferType; 4] =
        [Self::HostToDevice, Self::DeviceToHost, Self::DiskToHost, Self::HostToDisk];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostToDevice => "host_to_device",
            Self::DeviceToHost => "device_to_host",
            Self::DiskToHost => "disk_to_host",
            Self::HostToDisk => "host_to_disk",
        }
    }
}

/// One transfer job: its bytes and its measured duration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub transfer_type: TransferType,
    pub bytes: u64,
    pub seconds: f64,
    pub num_blocks: u32,
}

/// Why a tier operation failed (the block is then simply not stored, or
/// its load is a failed load handled by policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OffloadFailure {
    /// Checksum mismatch.
    Corrupt,
    /// Shorter than its header says.
    Truncated,
    /// Another model, layout or block than asked for.
    Foreign,
    /// The file system said no (unwritable, missing, other I/O error).
    Io,
    /// No room left on the device.
    NoSpace,
}

impl OffloadFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Corrupt => "corrupt",
            Self::Truncated => "truncated",
            Self::Foreign => "foreign",
            Self::Io => "io",
            Self::NoSpace => "no_space",
        }
    }
}

/// Whether a failure hit a load or a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OffloadOp {
    Load,
    Store,
}

impl OffloadOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Store => "store",
        }
    }
}

/// A tier's occupancy, as fractions of its capacity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierUsage {
    pub tier: OffloadTier,
    /// Holding data (a full idle tier reads 1.0).
    pub residency: f64,
    /// Pinned by transfers in flight.
    pub inflight: f64,
}

/// Offload activity since the last report. Counters are deltas (each
/// event reported once); `usage` is the latest reading.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OffloadStats {
    pub transfers: Vec<TransferRecord>,
    /// Tokens looked up in each tier at admissions, and those found.
    pub tier_queries: Vec<(OffloadTier, u32)>,
    pub tier_hits: Vec<(OffloadTier, u32)>,
    pub evictions: Vec<(OffloadTier, u32)>,
    /// Stores skipped because no slot could be made free.
    pub allocation_failures: u32,
    pub failures: Vec<(OffloadTier, OffloadOp, OffloadFailure)>,
    pub usage: Vec<TierUsage>,
}

impl OffloadStats {
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
            && self.tier_queries.is_empty()
            && self.tier_hits.is_empty()
            && self.evictions.is_empty()
            && self.allocation_failures == 0
            && self.failures.is_empty()
            && self.usage.is_empty()
    }
}

impl MergeReport for OffloadStats {
    /// Adds `other`'s events to these (usage: the newer reading wins).
    fn merge(&mut self, other: &OffloadStats) {
        self.transfers.extend_from_slice(&other.transfers);
        self.tier_queries.extend_from_slice(&other.tier_queries);
        self.tier_hits.extend_from_slice(&other.tier_hits);
        self.evictions.extend_from_slice(&other.evictions);
        self.allocation_failures += other.allocation_failures;
        self.failures.extend_from_slice(&other.failures);
        if !other.usage.is_empty() {
            self.usage.clone_from(&other.usage);
        }
    }
}
