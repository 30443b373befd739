//! KV connectors: how KV blocks reach this engine from elsewhere (host or
//! disk tiers, a peer engine), as two traits, as in vLLM v1.
//!
//! - [`ConnectorScheduler`] lives with the scheduler: at admission it says
//!   how many tokens beyond the local prefix hit it can supply (and whether
//!   the load is asynchronous), learns which device blocks to fill, and
//!   builds the per-step [`ConnectorMeta`] for the worker side.
//! - [`ConnectorWorker`] lives with the executor: it starts the loads the
//!   metadata asks for and reports which requests finished loading and
//!   which blocks failed.
//!
//! The scheduler owns the consequences: a request whose load is
//! asynchronous waits in `WaitingForRemoteKv` and the step loop never
//! blocks on it; a failed block is handled by [`KvLoadFailurePolicy`]
//! (ACCOUNTING.md rules 3 and 4, scenarios A5-A8).
//!
//! [`TestConnector`] serves blocks from an in-process map and can be told
//! to delay or fail specific blocks, so every path runs in tests before a
//! real transport exists.

mod multi;

pub use multi::{multi, MultiConnector, MultiWorker};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::executor::KvBlockIo;
use crate::ids::{BlockId, RequestId};
use crate::kv::BlockHash;
use crate::records::TokenSource;
use crate::request::{KvTransferParams, Request};

/// What happens to a request whose promised KV failed to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvLoadFailurePolicy {
    /// The request ends with finish reason `error` (vLLM's default).
    Fail,
    /// The failed block and every block after it are computed locally.
    Recompute,
}

/// One request's load: fill `block_ids` with the KV of `block_hashes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSpec {
    pub request_id: RequestId,
    pub block_ids: Vec<BlockId>,
    pub block_hashes: Vec<BlockHash>,
}

/// One computed device block to copy out to the connector's store. The
/// scheduler holds the block (it cannot be reused) until the worker
/// reports the store finished (A17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSpec {
    pub block_id: BlockId,
    pub block_hash: BlockHash,
}

/// What the worker side is asked to do this step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorMeta {
    pub loads: Vec<LoadSpec>,
    pub stores: Vec<StoreSpec>,
}

impl ConnectorMeta {
    pub fn is_empty(&self) -> bool {
        self.loads.is_empty() && self.stores.is_empty()
    }
}

/// What the worker side reports after a step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectorOutput {
    /// Requests whose loads are complete (successfully or not).
    pub finished_recving: Vec<RequestId>,
    /// Device blocks whose load failed.
    pub invalid_block_ids: Vec<BlockId>,
    /// Device blocks whose store finished (successfully or not); one entry
    /// per [`StoreSpec`] handed out.
    pub finished_storing: Vec<BlockId>,
    /// Ended requests whose blocks were held for a peer (a P/D lease) and
    /// may now be freed: pulled, released, or expired.
    pub finished_sending: Vec<RequestId>,
    /// What the connector did since the last report (deltas, taken once).
    pub stats: ConnectorStats,
}

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

/// Direction of an offload transfer (METRICS.md `transfer_type`).
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

/// Connector activity since the last report. Counters are deltas (each
/// event reported once); `usage` is the latest reading.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectorStats {
    pub transfers: Vec<TransferRecord>,
    /// Tokens looked up in each tier at admissions, and those found.
    pub tier_queries: Vec<(OffloadTier, u32)>,
    pub tier_hits: Vec<(OffloadTier, u32)>,
    pub evictions: Vec<(OffloadTier, u32)>,
    /// Stores skipped because no slot could be made free.
    pub allocation_failures: u32,
    pub failures: Vec<(OffloadTier, OffloadOp, OffloadFailure)>,
    pub usage: Vec<TierUsage>,
    /// P/D: one entry per finished KV transfer between engines.
    pub kv_transfers: Vec<KvTransferRecord>,
    /// P/D: failed transfers by reason, and the prompt tokens they cost.
    pub kv_transfer_failures: Vec<KvTransferFailure>,
    pub kv_transfer_failed_tokens: u32,
    /// P/D: tokens held under leases for pulls (latest reading).
    pub kv_leases_held_tokens: Option<u64>,
    /// P/D: leases that expired without a pull.
    pub kv_leases_expired: u32,
}

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

/// Why a KV transfer between engines failed (METRICS.md reasons, plus the
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

impl ConnectorStats {
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
            && self.tier_queries.is_empty()
            && self.tier_hits.is_empty()
            && self.evictions.is_empty()
            && self.allocation_failures == 0
            && self.failures.is_empty()
            && self.usage.is_empty()
            && self.kv_transfers.is_empty()
            && self.kv_transfer_failures.is_empty()
            && self.kv_transfer_failed_tokens == 0
            && self.kv_leases_held_tokens.is_none()
            && self.kv_leases_expired == 0
    }

    /// Adds `other`'s events to these (usage: the newer reading wins).
    pub fn merge(&mut self, other: ConnectorStats) {
        self.transfers.extend(other.transfers);
        self.tier_queries.extend(other.tier_queries);
        self.tier_hits.extend(other.tier_hits);
        self.evictions.extend(other.evictions);
        self.allocation_failures += other.allocation_failures;
        self.failures.extend(other.failures);
        if !other.usage.is_empty() {
            self.usage = other.usage;
        }
        self.kv_transfers.extend(other.kv_transfers);
        self.kv_transfer_failures.extend(other.kv_transfer_failures);
        self.kv_transfer_failed_tokens += other.kv_transfer_failed_tokens;
        if other.kv_leases_held_tokens.is_some() {
            self.kv_leases_held_tokens = other.kv_leases_held_tokens;
        }
        self.kv_leases_expired += other.kv_leases_expired;
    }
}

/// What a connector does with an ended request's blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestFinished {
    pub delay_free: bool,
    pub kv_transfer_params: Option<KvTransferParams>,
}

impl RequestFinished {
    pub fn free_now() -> Self {
        Self::default()
    }

    pub fn delay(delay_free: bool) -> Self {
        Self { delay_free, kv_transfer_params: None }
    }
}

/// Scheduler side of a connector.
pub trait ConnectorScheduler: Send {
    /// Where this connector's tokens come from (`Host`, `Disk` or `Remote`).
    fn source(&self) -> TokenSource;

    /// Tokens beyond `num_local_hit_tokens` (a multiple of the block size)
    /// that the connector can supply, and whether they load
    /// asynchronously.
    fn get_num_new_matched_tokens(
        &mut self,
        req: &Request,
        num_local_hit_tokens: usize,
    ) -> (usize, bool);

    /// Where the tokens of this request's match come from (a match that
    /// spans several tiers is booked under the outermost, ACCOUNTING.md
    /// A14). Called right after `get_num_new_matched_tokens`.
    fn source_for(&self, req: &Request) -> TokenSource {
        let _ = req;
        self.source()
    }

    /// The device blocks allocated for the external tokens. Called once
    /// per request at its first admission, with empty slices when the
    /// connector supplies nothing (so lookups are counted once, for the
    /// admission that happened: A4, A13).
    fn update_state_after_alloc(
        &mut self,
        req: &Request,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    );

    /// The worker's instructions for this step (takes what is pending).
    fn build_connector_meta(&mut self) -> ConnectorMeta;

    /// The request ended (its status says why). `delay_free` keeps its
    /// blocks until the worker reports its transfers done (in
    /// `finished_recving` or `finished_sending`); `kv_transfer_params` go
    /// back to the client with the request's last output.
    fn request_finished(&mut self, req: &Request, block_ids: &[BlockId]) -> RequestFinished;

    /// Blocks of `req` that just became full and computed (and entered
    /// the prefix cache). Returns those the connector will store; the
    /// scheduler holds each until its store is reported finished.
    /// `first_block` is the index in the request of `block_ids[0]`.
    fn on_blocks_computed(
        &mut self,
        req: &Request,
        first_block: usize,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    ) -> Vec<BlockId> {
        let _ = (req, first_block, block_ids, block_hashes);
        Vec::new()
    }
}

/// Worker side of a connector. `kv` is the executor's device pool.
pub trait ConnectorWorker: Send {
    fn start_load_kv(&mut self, meta: &ConnectorMeta, kv: &mut dyn KvBlockIo);
    /// Takes the loads finished, blocks failed, stores finished and stats
    /// since the last call.
    fn get_finished(&mut self, kv: &mut dyn KvBlockIo) -> ConnectorOutput;
}

#[derive(Debug, Default)]
struct TestState {
    /// Blocks the connector "has", by hash.
    available: BTreeSet<BlockHash>,
    /// Blocks whose load fails.
    failing: BTreeSet<BlockHash>,
    /// Steps a load takes to complete (0: within the step it starts).
    delay_steps: u32,
    pending_meta: ConnectorMeta,
    /// In-flight loads: request -> (steps left, blocks, hashes).
    in_flight: BTreeMap<RequestId, (u32, Vec<BlockId>, Vec<BlockHash>)>,
    /// Loads started, for tests.
    num_loads: u32,
    /// Store every computed block offered, each taking this many steps
    /// (`None`: store nothing).
    store_steps: Option<u32>,
    /// Stores in flight: block -> steps left.
    storing: Vec<(BlockId, u32)>,
    /// Blocks stored so far, by hash.
    stored: BTreeSet<BlockHash>,
}

/// An in-process connector for tests: both sides share one state.
#[derive(Clone, Debug, Default)]
pub struct TestConnector {
    state: Arc<Mutex<TestState>>,
    source: Option<TokenSource>,
    block_size: usize,
}

impl TestConnector {
    pub fn new(source: TokenSource, block_size: usize) -> Self {
        Self { state: Arc::default(), source: Some(source), block_size }
    }

    fn with<T>(&self, f: impl FnOnce(&mut TestState) -> T) -> T {
        f(&mut self.state.lock().expect("invariant: test connector lock is never poisoned"))
    }

    /// Makes these block hashes available.
    pub fn offer(&self, hashes: &[BlockHash]) {
        self.with(|s| s.available.extend(hashes.iter().copied()));
    }

    /// Makes loads of these blocks fail.
    pub fn fail(&self, hashes: &[BlockHash]) {
        self.with(|s| s.failing.extend(hashes.iter().copied()));
    }

    pub fn set_delay_steps(&self, steps: u32) {
        self.with(|s| s.delay_steps = steps);
    }

    pub fn num_loads(&self) -> u32 {
        self.with(|s| s.num_loads)
    }

    pub fn num_in_flight(&self) -> usize {
        self.with(|s| s.in_flight.len())
    }

    /// Stores every computed block offered; each store takes `steps`
    /// steps after the one that hands it to the worker.
    pub fn store_blocks(&self, steps: u32) {
        self.with(|s| s.store_steps = Some(steps));
    }

    pub fn num_stores_in_flight(&self) -> usize {
        self.with(|s| s.storing.len())
    }

    pub fn stored(&self) -> BTreeSet<BlockHash> {
        self.with(|s| s.stored.clone())
    }
}

impl ConnectorScheduler for TestConnector {
    fn source(&self) -> TokenSource {
        self.source.unwrap_or(TokenSource::Remote)
    }

    fn get_num_new_matched_tokens(
        &mut self,
        req: &Request,
        num_local_hit_tokens: usize,
    ) -> (usize, bool) {
        let block_size = self.block_size.max(1);
        let first = num_local_hit_tokens / block_size;
        let hits = self.with(|s| {
            req.block_hashes[first.min(req.block_hashes.len())..]
                .iter()
                .take_while(|h| s.available.contains(h))
                .count()
        });
        (hits * block_size, true)
    }

    fn update_state_after_alloc(
        &mut self,
        req: &Request,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    ) {
        if block_ids.is_empty() {
            return;
        }
        self.with(|s| {
            s.pending_meta.loads.push(LoadSpec {
                request_id: req.id,
                block_ids: block_ids.to_vec(),
                block_hashes: block_hashes.to_vec(),
            })
        });
    }

    fn build_connector_meta(&mut self) -> ConnectorMeta {
        self.with(|s| std::mem::take(&mut s.pending_meta))
    }

    fn request_finished(&mut self, req: &Request, _block_ids: &[BlockId]) -> RequestFinished {
        self.with(|s| {
            // A load not yet handed to the worker is simply cancelled.
            s.pending_meta.loads.retain(|l| l.request_id != req.id);
            RequestFinished::delay(s.in_flight.contains_key(&req.id))
        })
    }

    fn on_blocks_computed(
        &mut self,
        _req: &Request,
        _first_block: usize,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    ) -> Vec<BlockId> {
        self.with(|s| {
            if s.store_steps.is_none() {
                return Vec::new();
            }
            for (&block_id, &block_hash) in block_ids.iter().zip(block_hashes) {
                s.pending_meta.stores.push(StoreSpec { block_id, block_hash });
            }
            block_ids.to_vec()
        })
    }
}

impl ConnectorWorker for TestConnector {
    fn start_load_kv(&mut self, meta: &ConnectorMeta, _kv: &mut dyn KvBlockIo) {
        self.with(|s| {
            let steps = s.store_steps.unwrap_or(0);
            for store in &meta.stores {
                s.storing.push((store.block_id, steps));
                s.stored.insert(store.block_hash);
            }
            for load in &meta.loads {
                s.num_loads += 1;
                let steps = s.delay_steps;
                s.in_flight.insert(
                    load.request_id,
                    (steps, load.block_ids.clone(), load.block_hashes.clone()),
                );
            }
        });
    }

    fn get_finished(&mut self, _kv: &mut dyn KvBlockIo) -> ConnectorOutput {
        self.with(|s| {
            let mut out = ConnectorOutput::default();
            let done: Vec<RequestId> =
                s.in_flight.iter().filter(|(_, v)| v.0 == 0).map(|(k, _)| *k).collect();
            for (_, v) in s.in_flight.iter_mut() {
                v.0 = v.0.saturating_sub(1);
            }
            s.storing.retain_mut(|(block, steps)| {
                if *steps == 0 {
                    out.finished_storing.push(*block);
                    return false;
                }
                *steps -= 1;
                true
            });
            for id in done {
                let (_, blocks, hashes) = s.in_flight.remove(&id).expect("invariant: listed above");
                for (b, h) in blocks.iter().zip(&hashes) {
                    if s.failing.contains(h) {
                        out.invalid_block_ids.push(*b);
                    }
                }
                out.finished_recving.push(id);
            }
            out
        })
    }
}
