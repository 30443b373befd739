//! The scheduler's side of the connector contract: starting and finishing
//! asynchronous loads (WaitingForRemoteKv), offering computed blocks for
//! storing (and holding them until stored, A17), applying what the worker
//! side reports (finished loads, stores and sends; failed blocks by the
//! load-failure policy, A5-A8), and handing connector params to the
//! client's last output.

use rustc_hash::FxHashSet;

use super::{RequestOutput, Scheduler};
use crate::connector::{ConnectorMeta, ConnectorOutput, KvLoadFailurePolicy};
use crate::ids::RequestId;
use crate::request::{FinishReason, RequestStatus};

impl Scheduler {
    /// Puts a request, its sources booked, in WaitingForRemoteKv for
    /// `external` tokens after its `hit_tokens` local hit, and tells the
    /// connector which blocks to fill.
    pub(super) fn start_load(&mut self, id: RequestId, hit_tokens: usize, external: usize) {
        let bs = self.config.block_size;
        let req = self.requests.get_mut(&id).expect("invariant: waiting requests exist");
        req.num_computed_tokens = hit_tokens;
        req.num_external_tokens = external;
        req.load_done = false;
        req.status = RequestStatus::WaitingForRemoteKv;
        let range = hit_tokens / bs..(hit_tokens + external).div_ceil(bs);
        let blocks = &self.kv.blocks(id)[range.clone()];
        let hashes = &req.block_hashes
            [range.start.min(req.block_hashes.len())..range.end.min(req.block_hashes.len())];
        let connector = self.connector.as_mut().expect("invariant: loads need a connector");
        connector.update_state_after_alloc(req, blocks, hashes);
    }

    /// A finished load: its tokens count as computed, its full blocks join
    /// the prefix cache, and the request is admitted like any other.
    pub(super) fn finish_load(&mut self, id: RequestId) {
        let req = self.requests.get_mut(&id).expect("invariant: waiting requests exist");
        if req.load_done {
            self.num_loads_done -= 1;
        }
        req.num_computed_tokens += req.num_external_tokens;
        req.num_external_tokens = 0;
        req.load_done = false;
        req.status = RequestStatus::Waiting;
        let range = self.kv.cache_blocks(req);
        self.offer_stores(id, range);
    }

    /// Offers a request's newly cached blocks to the connector and holds
    /// those it will store until their stores finish (A17).
    pub(super) fn offer_stores(&mut self, id: RequestId, range: std::ops::Range<usize>) {
        let Some(c) = &mut self.connector else { return };
        if range.is_empty() {
            return;
        }
        let Some(req) = self.requests.get(&id) else { return };
        let blocks = &self.kv.blocks(id)[range.clone()];
        let hashes = &req.block_hashes[range.clone()];
        let stored = c.on_blocks_computed(req, range.start, blocks, hashes);
        if !stored.is_empty() {
            self.num_store_holds += stored.len();
            self.kv.hold(&stored);
        }
    }

    /// The connector's instructions for this step's worker side.
    pub(super) fn build_connector_meta(&mut self) -> Option<ConnectorMeta> {
        let meta = self.connector.as_mut()?.build_connector_meta();
        self.stats.num_connector_loads += meta.loads.len() as u32;
        Some(meta)
    }

    /// Applies what the worker side reported: finished loads become
    /// admissible, failed blocks are handled by the load-failure policy,
    /// and delayed frees complete.
    pub(super) fn update_connector_output(&mut self, output: ConnectorOutput, now: f64) {
        let bs = self.config.block_size;
        if !output.invalid_block_ids.is_empty() {
            let invalid: FxHashSet<_> = output.invalid_block_ids.iter().copied().collect();
            // The invalid blocks never reached the prefix cache (loaded blocks
            // are cached only after a successful load), so no other request
            // can have read them (A8); make sure they never will.
            self.kv.evict(&output.invalid_block_ids);
            let affected: Vec<RequestId> = self
                .waiting
                .iter()
                .copied()
                .filter(|id| {
                    let r = &self.requests[id];
                    r.status == RequestStatus::WaitingForRemoteKv
                        && self.kv.blocks(*id).iter().any(|b| invalid.contains(b))
                })
                .collect();
            for id in affected {
                self.stats.num_connector_load_failures += 1;
                match self.config.kv_load_failure_policy {
                    KvLoadFailurePolicy::Fail => {
                        self.waiting.retain(|&w| w != id);
                        self.finish(id, FinishReason::Error, now);
                        self.pending.outputs.push(RequestOutput::finished(id, FinishReason::Error));
                    }
                    KvLoadFailurePolicy::Recompute => {
                        let blocks = self.kv.blocks(id).to_vec();
                        let req =
                            self.requests.get_mut(&id).expect("invariant: affected requests exist");
                        let first_bad =
                            blocks.iter().position(|b| invalid.contains(b)).unwrap_or(blocks.len());
                        let ok_tokens = (first_bad * bs).max(req.num_computed_tokens);
                        let kept = ok_tokens
                            .saturating_sub(req.num_computed_tokens)
                            .min(req.num_external_tokens);
                        let failed = req.num_external_tokens - kept;
                        req.num_external_tokens = kept;
                        if let Some(p) = &mut req.provenance {
                            p.fail_external(failed as u32);
                        }
                        self.kv.evict(&blocks[first_bad.min(blocks.len())..]);
                    }
                }
            }
        }
        if !output.finished_storing.is_empty() {
            self.num_store_holds -= output.finished_storing.len().min(self.num_store_holds);
            self.kv.release(&output.finished_storing);
        }
        self.pending.connector_stats.merge(output.stats);
        for id in output.finished_sending {
            if self.delayed_free.remove(&id) {
                self.kv.free(id);
            }
        }
        for id in output.finished_recving {
            if self.delayed_free.remove(&id) {
                self.kv.free(id);
            } else if let Some(req) = self.requests.get_mut(&id) {
                if !req.load_done {
                    req.load_done = true;
                    self.num_loads_done += 1;
                }
            }
        }
    }

    /// Hands a connector's params to the last output of their request.
    pub(super) fn attach_finish_params(&mut self) {
        if self.finish_params.is_empty() {
            return;
        }
        for o in &mut self.pending.outputs {
            if o.finish_reason.is_some() {
                if let Some(p) = self.finish_params.remove(&o.request_id) {
                    o.kv_transfer_params = Some(p);
                }
            }
        }
    }
}
