//! Test doubles and the engine harness (feature `testing`).
//!
//! - [`FakeExecutor`], [`FakeKv`], [`SimExecutor`]: executors without a
//!   model (from [`crate::sim`]).
//! - [`TestConnector`]: an in-process connector that serves, stores,
//!   delays and fails blocks, writing real bytes into the fake pool.
//! - [`VecKv`]: a contiguous byte pool, for connector benches.
//! - [`Harness`]: an engine driven step by step on a fake clock, checking
//!   the scheduler's invariants after every step and handing each step's
//!   result to an observer (the metrics layer, a log reporter), so test
//!   crates share one loop instead of copying it.

mod connector;

use std::collections::{BTreeMap, BTreeSet};

pub use crate::sim::{FakeExecutor, FakeKv, LatencyModel, SimExecutor};
pub use connector::TestConnector;

use crate::connector::ConnectorStats;
use crate::engine::EngineCore;
use crate::executor::{Executor, KvBlockIo};
use crate::ids::{BlockId, RequestId, TokenId};
use crate::records::PrefillRecord;
use crate::request::{FinishReason, NewRequest};
use crate::scheduler::{SchedulerConfig, StepResult};

/// A contiguous byte pool standing in for a device pool (benches of
/// connectors, where the bytes are what is measured).
#[derive(Debug)]
pub struct VecKv {
    pub bytes_per_block: usize,
    pub data: Vec<u8>,
}

impl KvBlockIo for VecKv {
    fn bytes_per_block(&self) -> usize {
        self.bytes_per_block
    }

    fn read_block(&self, block: BlockId, out: &mut [u8]) {
        let start = block.index() * self.bytes_per_block;
        out.copy_from_slice(&self.data[start..start + self.bytes_per_block]);
    }

    fn write_block(&mut self, block: BlockId, data: &[u8]) {
        let start = block.index() * self.bytes_per_block;
        self.data[start..start + self.bytes_per_block].copy_from_slice(data);
    }
}

/// Every PrefillRecord of a run's steps, in order.
pub fn prefill_records(results: &[StepResult]) -> Vec<PrefillRecord> {
    results.iter().flat_map(|r| r.prefill_records.iter().copied()).collect()
}

/// The connector stats of a run's steps, in order.
pub fn connector_stats(results: &[StepResult]) -> ConnectorStats {
    let mut all = ConnectorStats::default();
    for r in results {
        all.merge(r.connector_stats.clone());
    }
    all
}

/// What a [`Harness`] without an observer calls after each step.
pub type NoObserver = fn(&StepResult, f64);

fn no_observer(_: &StepResult, _: f64) {}

/// What a stretch of steps produced: every result, and each request's
/// tokens and finish reason.
#[derive(Debug, Default)]
pub struct Run {
    pub results: Vec<StepResult>,
    pub tokens: BTreeMap<RequestId, Vec<TokenId>>,
    pub reasons: BTreeMap<RequestId, FinishReason>,
}

impl Run {
    fn push(&mut self, r: StepResult) {
        for o in &r.outputs {
            self.tokens.entry(o.request_id).or_default().extend(o.new_token_id);
            if let Some(f) = o.finish_reason {
                self.reasons.insert(o.request_id, f);
            }
        }
        self.results.push(r);
    }

    /// Every PrefillRecord, in order.
    pub fn prefill_records(&self) -> Vec<PrefillRecord> {
        prefill_records(&self.results)
    }

    /// Every connector report, in order.
    pub fn connector_stats(&self) -> ConnectorStats {
        connector_stats(&self.results)
    }

    /// The tokens of the only request that produced any.
    pub fn only_tokens(&self) -> &[TokenId] {
        assert_eq!(self.tokens.len(), 1, "one request in this run");
        self.tokens.values().next().expect("checked")
    }
}

/// An engine on a fake clock (one second a step) with an observer of
/// every step: the one loop the core's, the connectors' and the metrics'
/// tests share.
pub struct Harness<E: Executor, O: FnMut(&StepResult, f64) = NoObserver> {
    pub engine: EngineCore<E>,
    pub observer: O,
    pub now: f64,
    finished: BTreeSet<RequestId>,
}

impl<E: Executor + std::fmt::Debug, O: FnMut(&StepResult, f64)> std::fmt::Debug for Harness<E, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("engine", &self.engine).field("now", &self.now).finish()
    }
}

/// The engine's own methods (`add_request`, `abort`, `scheduler`, ...)
/// are the harness's too.
impl<E: Executor, O: FnMut(&StepResult, f64)> std::ops::Deref for Harness<E, O> {
    type Target = EngineCore<E>;

    fn deref(&self) -> &EngineCore<E> {
        &self.engine
    }
}

impl<E: Executor, O: FnMut(&StepResult, f64)> std::ops::DerefMut for Harness<E, O> {
    fn deref_mut(&mut self) -> &mut EngineCore<E> {
        &mut self.engine
    }
}

impl Harness<FakeExecutor> {
    /// The fake executor over `config`'s pool (what most core tests
    /// want).
    pub fn fake(config: SchedulerConfig) -> Self {
        let exec = FakeExecutor::new(config.num_blocks, config.block_size, config.max_model_len);
        Self::new(EngineCore::new(exec, config))
    }
}

impl<E: Executor> Harness<E> {
    pub fn new(engine: EngineCore<E>) -> Self {
        Self { engine, observer: no_observer, now: 0.0, finished: BTreeSet::new() }
    }
}

impl<E: Executor, O: FnMut(&StepResult, f64)> Harness<E, O> {
    /// The same harness with `observer` seeing every later step and its
    /// time (metrics, a log reporter).
    pub fn observed<P: FnMut(&StepResult, f64)>(self, observer: P) -> Harness<E, P> {
        Harness { engine: self.engine, observer, now: self.now, finished: self.finished }
    }

    /// Queues a request now; panics if it is refused (use the engine to
    /// test admission errors).
    pub fn add(&mut self, new: NewRequest) -> RequestId {
        self.engine.add_request(new, self.now).expect("the harness's requests are admissible")
    }

    /// One step, one second later: checks the scheduler's invariants and
    /// that no request finishes twice, and hands the result to the
    /// observer.
    pub fn step(&mut self) -> StepResult {
        self.now += 1.0;
        let r = self.engine.step(self.now);
        for o in r.outputs.iter().filter(|o| o.finish_reason.is_some()) {
            assert!(self.finished.insert(o.request_id), "{} finished twice", o.request_id);
        }
        assert!(r.accounting_violations.is_empty(), "{:?}", r.accounting_violations);
        if let Err(e) = self.engine.scheduler().check_invariants() {
            panic!("after step {}: {e}", self.now);
        }
        (self.observer)(&r, self.now);
        r
    }

    /// Steps until nothing is unfinished or pending, at most `max_steps`
    /// steps (panics if work remains then), and returns what they
    /// produced.
    pub fn drain(&mut self, max_steps: usize) -> Run {
        let mut run = Run::default();
        for _ in 0..max_steps {
            if !self.engine.has_unfinished() && !self.engine.has_pending() {
                return run;
            }
            let r = self.step();
            run.push(r);
        }
        assert!(!self.engine.has_unfinished(), "work left after {max_steps} steps");
        run
    }

    /// The blocks free in the device pool now.
    pub fn num_free_blocks(&self) -> usize {
        self.engine.scheduler().kv().pool().num_free_blocks()
    }
}
