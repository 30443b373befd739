//! [`TestConnector`]: an in-process connector whose two sides share one
//! state. It serves blocks it was offered (a prompt's token ids, written
//! into the pool in the fake executor's layout) or stored (bytes it copied
//! out of the pool), can delay loads and fail chosen blocks, and takes
//! every computed block it is offered for storing when told to. A load
//! that fails writes garbage into its blocks, so a scheduler that used a
//! failed block anyway would change the fake executor's output.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use crate::connector::{
    ConnectorMeta, ConnectorOutput, ConnectorScheduler, ConnectorWorker, LoadSpec, RequestFinished,
    StoreSpec,
};
use crate::executor::KvBlockIo;
use crate::ids::{BlockId, RequestId, TokenId};
use crate::kv::hash::extend_block_hashes;
use crate::kv::BlockHash;
use crate::records::TokenSource;
use crate::request::Request;

use super::FakeKv;

/// What a failed load leaves in a block.
const GARBAGE: u8 = 0xA5;

#[derive(Debug, Default)]
struct TestState {
    /// Blocks the connector has, by hash: their bytes (at least the
    /// tokens' part of a block; the rest of the block is zeros).
    available: BTreeMap<BlockHash, Vec<u8>>,
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

    /// The chain hashes of a prompt's full blocks (no cache salt).
    pub fn hashes(&self, prompt: &[TokenId]) -> Vec<BlockHash> {
        let mut h = Vec::new();
        extend_block_hashes(&mut h, prompt, self.block_size, None);
        h
    }

    /// Makes the full blocks of `prompt` with these indices available,
    /// holding the prompt's tokens as the fake executor lays them out.
    pub fn offer(&self, prompt: &[TokenId], blocks: impl RangeBounds<usize>) {
        let bs = self.block_size;
        let hashes = self.hashes(prompt);
        let range = (blocks.start_bound().cloned(), blocks.end_bound().cloned());
        self.with(|s| {
            for (i, h) in hashes.iter().enumerate() {
                if range.contains(&i) {
                    s.available.insert(*h, FakeKv::encode(&prompt[i * bs..(i + 1) * bs]));
                }
            }
        });
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

    fn get_num_new_matched_tokens(&mut self, req: &Request, num_local_hit_tokens: usize) -> usize {
        let block_size = self.block_size.max(1);
        let first = num_local_hit_tokens / block_size;
        let hits = self.with(|s| {
            req.block_hashes[first.min(req.block_hashes.len())..]
                .iter()
                .take_while(|h| s.available.contains_key(h))
                .count()
        });
        hits * block_size
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
    fn start_load_kv(&mut self, meta: &ConnectorMeta, kv: &mut dyn KvBlockIo) {
        let bpb = kv.bytes_per_block();
        self.with(|s| {
            let steps = s.store_steps.unwrap_or(0);
            for store in &meta.stores {
                // The block's bytes are copied out now, as a real store does.
                let mut bytes = vec![0; bpb];
                kv.read_block(store.block_id, &mut bytes);
                s.storing.push((store.block_id, steps));
                s.stored.insert(store.block_hash);
                s.available.insert(store.block_hash, bytes);
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

    fn get_finished(&mut self, kv: &mut dyn KvBlockIo) -> ConnectorOutput {
        let bpb = kv.bytes_per_block();
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
                for (&b, h) in blocks.iter().zip(&hashes) {
                    let mut bytes = vec![GARBAGE; bpb];
                    match s.available.get(h) {
                        Some(data) if !s.failing.contains(h) => {
                            bytes.fill(0);
                            bytes[..data.len().min(bpb)]
                                .copy_from_slice(&data[..data.len().min(bpb)]);
                        }
                        _ => out.invalid_block_ids.push(b),
                    }
                    kv.write_block(b, &bytes);
                }
                out.finished_recving.push(id);
            }
            out
        })
    }
}
