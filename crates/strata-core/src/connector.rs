//! KV connectors: how KV blocks reach this engine from elsewhere (host or
//! disk tiers, a peer engine) and leave it, as two traits, as in vLLM v1.
//!
//! - [`ConnectorScheduler`] lives with the scheduler: at admission it says
//!   how many tokens beyond the local prefix hit it can supply, learns
//!   which device blocks to fill, picks computed blocks to store, and
//!   builds the per-step [`ConnectorMeta`] that `schedule()` attaches to
//!   its output.
//! - [`ConnectorWorker`] lives with the executor: it starts the loads and
//!   stores the metadata asks for and reports ([`ConnectorOutput`], carried
//!   by the model output) which requests finished loading or sending,
//!   which stores finished, which blocks failed, and its statistics.
//!
//! The scheduler owns the consequences: a request with a match waits in
//! `WaitingForRemoteKv` and the step loop never blocks on it; a failed
//! block is handled by [`KvLoadFailurePolicy`] (docs/accounting.md, rules
//! 3 and 4, scenarios A5-A8). Statistics are opaque here
//! ([`ConnectorStats`]): the core carries them, the metrics layer reads
//! them.
//!
//! Test doubles (`TestConnector`) live in `crate::testing`.

mod multi;

pub use multi::{multi, MultiConnector, MultiWorker};

use std::any::Any;
use std::sync::Arc;

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

/// What the worker side reports after a step (vLLM's `KVConnectorOutput`,
/// carried by the model output to `update_from_output`).
#[derive(Clone, Debug, Default)]
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

impl ConnectorOutput {
    pub fn is_empty(&self) -> bool {
        self.finished_recving.is_empty()
            && self.invalid_block_ids.is_empty()
            && self.finished_storing.is_empty()
            && self.finished_sending.is_empty()
            && self.stats.is_empty()
    }

    /// Adds `other`'s reports to these (several workers, or a report kept
    /// back from a failed step).
    pub fn merge(&mut self, other: ConnectorOutput) {
        self.finished_recving.extend(other.finished_recving);
        self.invalid_block_ids.extend(other.invalid_block_ids);
        self.finished_storing.extend(other.finished_storing);
        self.finished_sending.extend(other.finished_sending);
        self.stats.merge(other.stats);
    }
}

/// One connector's statistics report. Any `Debug + Send + Sync` type is
/// one: each connector crate defines its own (the offload tiers'
/// `OffloadStats`, P/D's `PdStats`), and only the consumers that know the
/// type read it.
pub trait ConnectorReport: Any + Send + Sync + std::fmt::Debug {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + Send + Sync + std::fmt::Debug> ConnectorReport for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A report type whose reports add up: counters add, the latest reading
/// of a gauge wins.
pub trait MergeReport: ConnectorReport + Default {
    /// Adds `other`'s events to these.
    fn merge(&mut self, other: &Self);
}

/// Connector statistics since the last step, opaque to the core (vLLM's
/// `KVConnectorStats`): a list of reports, in the order they were made.
/// The scheduler only carries them from the worker's output to the step's
/// result; the metrics layer reads the types it knows with
/// [`ConnectorStats::reports`].
#[derive(Clone, Debug, Default)]
pub struct ConnectorStats {
    reports: Vec<Arc<dyn ConnectorReport>>,
}

impl ConnectorStats {
    /// Stats holding one report.
    pub fn of<T: ConnectorReport>(report: T) -> Self {
        Self { reports: vec![Arc::new(report)] }
    }

    pub fn push<T: ConnectorReport>(&mut self, report: T) {
        self.reports.push(Arc::new(report));
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Appends `other`'s reports after these.
    pub fn merge(&mut self, other: ConnectorStats) {
        self.reports.extend(other.reports);
    }

    /// The reports of type `T`, in order.
    pub fn reports<T: Any>(&self) -> impl Iterator<Item = &T> {
        self.reports.iter().filter_map(|r| r.as_ref().as_any().downcast_ref::<T>())
    }

    /// Every report of type `T`, merged in order.
    pub fn merged<T: MergeReport>(&self) -> T {
        let mut all = T::default();
        for r in self.reports::<T>() {
            all.merge(r);
        }
        all
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
    /// that the connector can supply. Every load is asynchronous (vLLM's
    /// `load_kv_async = True`): the request waits in `WaitingForRemoteKv`
    /// until the worker reports it in `finished_recving`. vLLM's second
    /// return value (synchronous loads within the step) is not offered.
    fn get_num_new_matched_tokens(&mut self, req: &Request, num_local_hit_tokens: usize) -> usize;

    /// Where the tokens of this request's match come from (a match that
    /// spans several tiers is booked under the outermost, docs/accounting.md,
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

    /// Record KV events of the connector's own tiers from now on (see
    /// `kv::events`); a connector that keeps no blocks records none.
    fn enable_events(&mut self) {}

    /// The connector's KV events since the last call (blocks entering and
    /// leaving its tiers, with its tier's medium). Called after each step.
    fn take_events(&mut self) -> crate::kv::KvEventBatch {
        crate::kv::KvEventBatch::default()
    }
}

/// Worker side of a connector. `kv` is the executor's device pool.
pub trait ConnectorWorker: Send {
    fn start_load_kv(&mut self, meta: &ConnectorMeta, kv: &mut dyn KvBlockIo);
    /// Takes the loads finished, blocks failed, stores finished and stats
    /// since the last call.
    fn get_finished(&mut self, kv: &mut dyn KvBlockIo) -> ConnectorOutput;

    /// Waits at most `timeout` for background work (a load, a store) to
    /// finish; the engine calls it between steps that only wait for loads,
    /// so a worker that can tell wakes it at once instead of after the
    /// timeout. The default sleeps the timeout.
    fn wait_for_progress(&mut self, timeout: std::time::Duration) {
        std::thread::sleep(timeout);
    }
}

/// A connector's worker side as an executor holds it (or none): runs it
/// around the forward pass, and keeps back the report of a step that
/// failed so that it goes out with the next step (a finished load or store
/// is never lost).
#[derive(Default)]
pub struct WorkerHandle {
    worker: Option<Box<dyn ConnectorWorker>>,
    kept: Option<ConnectorOutput>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").field("configured", &self.worker.is_some()).finish()
    }
}

impl WorkerHandle {
    pub fn new(worker: Box<dyn ConnectorWorker>) -> Self {
        Self { worker: Some(worker), kept: None }
    }

    pub fn is_configured(&self) -> bool {
        self.worker.is_some()
    }

    /// Before the forward pass: hands the step's metadata to the worker
    /// (`start_load_kv`).
    pub fn start(&mut self, meta: Option<&ConnectorMeta>, kv: &mut dyn KvBlockIo) {
        if let (Some(w), Some(meta)) = (&mut self.worker, meta) {
            w.start_load_kv(meta, kv);
        }
    }

    /// After the forward pass: what the worker reports (`get_finished`),
    /// with anything kept back from a failed step.
    pub fn finish(&mut self, kv: &mut dyn KvBlockIo) -> Option<ConnectorOutput> {
        let w = self.worker.as_mut()?;
        let mut out = self.kept.take().unwrap_or_default();
        out.merge(w.get_finished(kv));
        Some(out)
    }

    /// Waits at most `timeout` for the worker's background work
    /// ([`ConnectorWorker::wait_for_progress`]); sleeps without one.
    pub fn wait(&mut self, timeout: std::time::Duration) {
        match &mut self.worker {
            Some(w) => w.wait_for_progress(timeout),
            None => std::thread::sleep(timeout),
        }
    }

    /// The step failed after `finish`: its report goes with the next one.
    pub fn keep(&mut self, output: Option<ConnectorOutput>) {
        if let Some(o) = output {
            self.kept.get_or_insert_with(ConnectorOutput::default).merge(o);
        }
    }
}
