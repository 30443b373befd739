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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::ids::{BlockId, RequestId};
use crate::kv::BlockHash;
use crate::records::TokenSource;
use crate::request::Request;

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

/// What the worker side is asked to do this step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorMeta {
    pub loads: Vec<LoadSpec>,
}

/// What the worker side reports after a step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorOutput {
    /// Requests whose loads are complete (successfully or not).
    pub finished_recving: Vec<RequestId>,
    /// Device blocks whose load failed.
    pub invalid_block_ids: Vec<BlockId>,
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

    /// The device blocks allocated for the external tokens.
    fn update_state_after_alloc(
        &mut self,
        req: &Request,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    );

    /// The worker's instructions for this step (takes what is pending).
    fn build_connector_meta(&mut self) -> ConnectorMeta;

    /// The request ended (any reason): `true` delays freeing its blocks
    /// until the worker reports its transfers done.
    fn request_finished(&mut self, req: &Request) -> bool;
}

/// Worker side of a connector.
pub trait ConnectorWorker: Send {
    fn start_load_kv(&mut self, meta: &ConnectorMeta);
    /// Takes the loads finished and the blocks failed since the last call.
    fn get_finished(&mut self) -> ConnectorOutput;
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

    fn request_finished(&mut self, req: &Request) -> bool {
        self.with(|s| {
            // A load not yet handed to the worker is simply cancelled.
            s.pending_meta.loads.retain(|l| l.request_id != req.id);
            s.in_flight.contains_key(&req.id)
        })
    }
}

impl ConnectorWorker for TestConnector {
    fn start_load_kv(&mut self, meta: &ConnectorMeta) {
        self.with(|s| {
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

    fn get_finished(&mut self) -> ConnectorOutput {
        self.with(|s| {
            let mut out = ConnectorOutput::default();
            let done: Vec<RequestId> =
                s.in_flight.iter().filter(|(_, v)| v.0 == 0).map(|(k, _)| *k).collect();
            for (_, v) in s.in_flight.iter_mut() {
                v.0 = v.0.saturating_sub(1);
            }
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
