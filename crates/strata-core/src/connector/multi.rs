//! [`MultiConnector`]: several connectors in order, as vLLM's
//! `MultiConnector` (e.g. P/D and the offload tiers in one engine).
//!
//! - A request's external match comes from the first connector, in order,
//!   that has one; that connector loads it and books its source. The
//!   others are told of the admission with no blocks (so they count their
//!   lookups, and a P/D decode side releases a lease it will not pull).
//! - Every connector hears every ended request; blocks are freed late if
//!   any of them asks, and the first params returned go to the client.
//! - Computed blocks are offered to every connector (each stores its own).
//! - Each connector's worker gets its own part of the step's metadata;
//!   their reports are merged.

use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use super::{ConnectorMeta, ConnectorOutput, ConnectorScheduler, ConnectorWorker, RequestFinished};
use crate::executor::KvBlockIo;
use crate::ids::{BlockId, RequestId};
use crate::kv::BlockHash;
use crate::records::TokenSource;
use crate::request::Request;

/// The step's metadata, one part per connector, from the scheduler side
/// to the worker side.
type Parts = Arc<Mutex<Vec<ConnectorMeta>>>;

pub struct MultiConnector {
    parts: Vec<Box<dyn ConnectorScheduler>>,
    /// Which connector matched each request not yet admitted or loading.
    chosen: FxHashMap<RequestId, usize>,
    metas: Parts,
}

pub struct MultiWorker {
    parts: Vec<Box<dyn ConnectorWorker>>,
    metas: Parts,
}

impl std::fmt::Debug for MultiConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiConnector").field("parts", &self.parts.len()).finish()
    }
}

impl std::fmt::Debug for MultiWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiWorker").field("parts", &self.parts.len()).finish()
    }
}

/// Combines connectors (scheduler side and worker side of each), first
/// match wins.
pub fn multi(
    parts: Vec<(Box<dyn ConnectorScheduler>, Box<dyn ConnectorWorker>)>,
) -> (MultiConnector, MultiWorker) {
    let metas = Parts::default();
    let (scheds, workers) = parts.into_iter().unzip();
    (
        MultiConnector { parts: scheds, chosen: FxHashMap::default(), metas: metas.clone() },
        MultiWorker { parts: workers, metas },
    )
}

impl ConnectorScheduler for MultiConnector {
    fn source(&self) -> TokenSource {
        self.parts.first().map_or(TokenSource::Remote, |c| c.source())
    }

    fn get_num_new_matched_tokens(&mut self, req: &Request, num_local_hit_tokens: usize) -> usize {
        self.chosen.remove(&req.id);
        for (i, c) in self.parts.iter_mut().enumerate() {
            let n = c.get_num_new_matched_tokens(req, num_local_hit_tokens);
            if n > 0 {
                self.chosen.insert(req.id, i);
                return n;
            }
        }
        0
    }

    fn source_for(&self, req: &Request) -> TokenSource {
        match self.chosen.get(&req.id) {
            Some(&i) => self.parts[i].source_for(req),
            None => self.source(),
        }
    }

    fn update_state_after_alloc(
        &mut self,
        req: &Request,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    ) {
        let chosen = self.chosen.get(&req.id).copied();
        for (i, c) in self.parts.iter_mut().enumerate() {
            if Some(i) == chosen {
                c.update_state_after_alloc(req, block_ids, block_hashes);
            } else {
                c.update_state_after_alloc(req, &[], &[]);
            }
        }
    }

    fn build_connector_meta(&mut self) -> ConnectorMeta {
        let metas: Vec<ConnectorMeta> =
            self.parts.iter_mut().map(|c| c.build_connector_meta()).collect();
        let mut merged = ConnectorMeta::default();
        for m in &metas {
            merged.loads.extend(m.loads.iter().cloned());
            merged.stores.extend(m.stores.iter().copied());
        }
        *self.metas.lock().unwrap_or_else(|e| e.into_inner()) = metas;
        merged
    }

    fn request_finished(&mut self, req: &Request, block_ids: &[BlockId]) -> RequestFinished {
        self.chosen.remove(&req.id);
        let mut out = RequestFinished::free_now();
        for c in &mut self.parts {
            let r = c.request_finished(req, block_ids);
            out.delay_free |= r.delay_free;
            if out.kv_transfer_params.is_none() {
                out.kv_transfer_params = r.kv_transfer_params;
            }
        }
        out
    }

    fn on_blocks_computed(
        &mut self,
        req: &Request,
        first_block: usize,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    ) -> Vec<BlockId> {
        self.parts
            .iter_mut()
            .flat_map(|c| c.on_blocks_computed(req, first_block, block_ids, block_hashes))
            .collect()
    }

    fn enable_events(&mut self) {
        self.parts.iter_mut().for_each(|c| c.enable_events());
    }

    fn take_events(&mut self) -> crate::kv::KvEventBatch {
        let mut all = crate::kv::KvEventBatch::default();
        for c in &mut self.parts {
            all.append(&c.take_events());
        }
        all
    }
}

impl ConnectorWorker for MultiWorker {
    fn start_load_kv(&mut self, _meta: &ConnectorMeta, kv: &mut dyn KvBlockIo) {
        let metas = std::mem::take(&mut *self.metas.lock().unwrap_or_else(|e| e.into_inner()));
        let empty = ConnectorMeta::default();
        for (i, w) in self.parts.iter_mut().enumerate() {
            w.start_load_kv(metas.get(i).unwrap_or(&empty), kv);
        }
    }

    fn get_finished(&mut self, kv: &mut dyn KvBlockIo) -> ConnectorOutput {
        let mut out = ConnectorOutput::default();
        for w in &mut self.parts {
            out.merge(w.get_finished(kv));
        }
        out
    }

    /// Waits on the last connector (the offload tiers, in strata's P/D
    /// and offload composition), which may end the wait early; the others'
    /// work is collected at most `timeout` later, as with a plain sleep.
    fn wait_for_progress(&mut self, timeout: std::time::Duration) {
        match self.parts.last_mut() {
            Some(w) => w.wait_for_progress(timeout),
            None => std::thread::sleep(timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineCore;
    use crate::request::NewRequest;
    use crate::sampling::SamplingParams;
    use crate::scheduler::SchedulerConfig;
    use crate::testing::{FakeExecutor, Harness, TestConnector};

    const B: usize = 4;

    fn req(prompt: Vec<u32>) -> NewRequest {
        NewRequest::new(prompt, SamplingParams { ignore_eos: true, ..SamplingParams::greedy(2) })
    }

    /// A worker that only records that the engine waited on it.
    struct Waited(Arc<Mutex<u32>>);

    impl ConnectorWorker for Waited {
        fn start_load_kv(&mut self, _: &ConnectorMeta, _: &mut dyn KvBlockIo) {}

        fn get_finished(&mut self, _: &mut dyn KvBlockIo) -> ConnectorOutput {
            ConnectorOutput::default()
        }

        fn wait_for_progress(&mut self, _: std::time::Duration) {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
    }

    /// The wait goes to the last connector, which can end it early (a
    /// plain sleep would take the whole 30 s and leave the count at 0).
    #[test]
    fn the_wait_goes_to_the_last_connector() {
        let first = TestConnector::new(TokenSource::Remote, B);
        let calls = Arc::new(Mutex::new(0));
        let (_, mut worker) = multi(vec![
            (Box::new(first.clone()), Box::new(first)),
            (Box::new(TestConnector::new(TokenSource::Host, B)), Box::new(Waited(calls.clone()))),
        ]);
        worker.wait_for_progress(std::time::Duration::from_secs(30));
        assert_eq!(*calls.lock().unwrap_or_else(|e| e.into_inner()), 1);
    }

    /// Two test connectors (remote first, host second) behind one engine:
    /// each request's match comes from the first that has it, booked
    /// under that connector's source, and loads the right bytes; stores
    /// go to the one that stores.
    #[test]
    fn the_first_connector_with_a_match_loads_and_books_it() {
        let remote = TestConnector::new(TokenSource::Remote, B);
        let host = TestConnector::new(TokenSource::Host, B);
        host.store_blocks(0);
        let a: Vec<u32> = (10..23).collect();
        let b: Vec<u32> = (100..113).collect();
        remote.offer(&a, ..);
        host.offer(&a, ..);
        host.offer(&b, ..);
        let (sched, worker) = multi(vec![
            (Box::new(remote.clone()), Box::new(remote.clone())),
            (Box::new(host.clone()), Box::new(host.clone())),
        ]);
        let exec = FakeExecutor::new(64, B, 4096).with_connector(worker);
        let config = SchedulerConfig {
            block_size: B,
            num_blocks: 64,
            enable_prefix_caching: false,
            ..SchedulerConfig::default()
        };
        let mut e = Harness::new(EngineCore::with_connector(exec, config, Some(Box::new(sched))));
        let ida = e.add(req(a.clone()));
        let idb = e.add(req(b.clone()));
        let run = e.drain(100);
        let mut records = run.prefill_records();
        records.sort_by_key(|r| r.request_id);
        assert_eq!((records[0].remote, records[0].host, records[0].local_compute), (12, 0, 1));
        assert_eq!((records[1].remote, records[1].host, records[1].local_compute), (0, 12, 1));
        assert_eq!((remote.num_loads(), host.num_loads()), (1, 1));
        assert_eq!(e.num_free_blocks(), 64, "every hold released");
        // The loaded bytes are the prompts' own: the outputs equal a run
        // that computed everything.
        let exec = e.executor();
        assert_eq!(run.tokens[&ida][0], exec.expected_next(&a));
        assert_eq!(run.tokens[&idb][0], exec.expected_next(&b));
    }
}
