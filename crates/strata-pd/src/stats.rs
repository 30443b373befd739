//! What the P/D connector reports each step ([`PdStats`]), carried to the
//! metrics layer through the core's opaque
//! [`strata_core::connector::ConnectorStats`] channel: the core never looks
//! inside.

use serde::{Deserialize, Serialize};
use strata_core::connector::MergeReport;

/// Direction of a KV transfer between engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KvTransferDirection {
    Send,
    Recv,
}

impl KvTransferDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Recv => "recv",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvTransferRecord {
    pub direction: KvTransferDirection,
    pub bytes: u64,
    pub seconds: f64,
    pub num_blocks: u32,
}

/// Why a KV transfer between engines failed (the `reason` label of `strata:kv_transfer_failures`, plus the
/// refusals of the handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KvTransferFailure {
    /// Connection refused, reset or closed early.
    Transport,
    Timeout,
    /// The prefill engine's lease had expired (or never existed).
    LeaseExpired,
    /// A frame failed its checksum or did not parse.
    Invalid,
    /// Model, block size, dtype or layout differ between the engines.
    Handshake,
    /// Wrong or missing shared secret.
    Auth,
}

impl KvTransferFailure {
    pub const ALL: [KvTransferFailure; 6] = [
        Self::Transport,
        Self::Timeout,
        Self::LeaseExpired,
        Self::Invalid,
        Self::Handshake,
        Self::Auth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transport => "transport",
            Self::Timeout => "timeout",
            Self::LeaseExpired => "lease_expired",
            Self::Invalid => "invalid",
            Self::Handshake => "handshake",
            Self::Auth => "auth",
        }
    }
}

/// P/D activity since the last report. Counters are deltas (each event
/// reported once); `leases_held_tokens` is the latest reading.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PdStats {
    /// One entry per finished KV transfer between engines.
    pub transfers: Vec<KvTransferRecord>,
    /// Failed transfers by reason, and the prompt tokens they cost.
    pub failures: Vec<KvTransferFailure>,
    pub failed_tokens: u32,
    /// Tokens held under leases for pulls (latest reading).
    pub leases_held_tokens: Option<u64>,
    /// Leases that expired without a pull.
    pub leases_expired: u32,
}

impl PdStats {
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
            && self.failures.is_empty()
            && self.failed_tokens == 0
            && self.leases_held_tokens.is_none()
            && self.leases_expired == 0
    }
}

impl MergeReport for PdStats {
    /// Adds `other`'s events to these (the lease reading: the newer wins).
    fn merge(&mut self, other: &PdStats) {
        self.transfers.extend_from_slice(&other.transfers);
        self.failures.extend_from_slice(&other.failures);
        self.failed_tokens += other.failed_tokens;
        if other.leases_held_tokens.is_some() {
            self.leases_held_tokens = other.leases_held_tokens;
        }
        self.leases_expired += other.leases_expired;
    }
}
