//! The scheduler: vLLM v1's two-call contract.
//!
//! `schedule` picks this step's work under one token budget shared by
//! decodes and prefill chunks (chunked prefill): running requests first,
//! in order, each taking what it needs (one token to decode, or the next
//! chunk of its prompt); when blocks run out, the lowest-priority,
//! latest-arriving running request is preempted (its blocks freed, to be
//! recomputed later). Waiting requests are admitted only in steps without
//! preemption, in policy order, with prefix-cache hits, while the budget,
//! `max_num_seqs` and free blocks allow.
//!
//! With a connector, `schedule` also attaches the connector's metadata for
//! this step to its output (`kv_connector_metadata`), every step, even one
//! that runs no token, so loads and stores progress while requests wait.
//!
//! `update_from_output` first applies the connector worker's report that
//! the model output carries (finished loads become admissible, failed
//! blocks go by the load-failure policy, finished stores and sends release
//! their blocks), then advances `num_computed_tokens`, registers newly
//! full blocks in the prefix cache, appends sampled tokens, checks stops,
//! frees finished requests and builds the step's records. Admission
//! counters (prefix-cache and connector lookups and hits) are gathered in
//! [`SchedulerStats`] while scheduling and handed to the step's
//! [`StepRecord`]; the plan itself carries only the work.
//!
//! A request's prompt-token sources are set in one place,
//! `book_admission`, at its first admission (and adjusted only by a failed
//! load, rule 4, through [`Provenance::fail_external`]).
//!
//! Invariants: the budget is never exceeded; every scheduled token has a
//! slot; `num_computed_tokens` only grows, except by preemption (to 0);
//! each request finishes exactly once; free + held blocks = total; a
//! PrefillRecord is emitted at most once per request, at its first output
//! token. `check_invariants` checks the block and counter invariants after
//! a step (the scheduler and property tests call it every step); the
//! others are checked by those tests on the step results.

mod admission;
mod connector_io;
#[cfg(test)]
mod connector_tests;
mod kv_events;
#[cfg(test)]
mod kv_events_tests;
mod output;
#[cfg(test)]
mod prompt_logprobs_tests;
mod structured;
#[cfg(test)]
mod structured_tests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::dense::DenseMap;

pub use admission::AdmissionError;
pub use output::{RequestOutput, ScheduledSeq, SchedulerOutput, SchedulerStats, StepResult};

use crate::connector::{ConnectorScheduler, KvLoadFailurePolicy};
use crate::executor::{ModelBatch, ModelOutput, PromptLogprobsRequest, SampleRequest, SeqInput};
use crate::ids::RequestId;
use crate::kv::{AllocOutcome, KvCacheManager};
use crate::records::{FinishRecord, PrefillRecord, Provenance, StepRecord, TokenSource};
use crate::request::{FinishReason, NewRequest, Request, RequestStatus};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SchedulingPolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Lower `priority` value first (vLLM's convention: a request with
    /// priority 0 runs before one with priority 1), then earlier arrival.
    /// Preemption picks the opposite end: the highest value, latest
    /// arrival.
    Priority,
}

/// The scheduler's limits. `Default` gives vLLM's defaults where they
/// exist (`max_num_seqs` 256, `max_num_batched_tokens` 8192, block size
/// 16, prefix caching on, load failures fail the request) and a small pool
/// (64 blocks, 4096 tokens of context) that an engine replaces with its
/// executor's.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_model_len: usize,
    pub policy: SchedulingPolicy,
    pub enable_prefix_caching: bool,
    pub kv_load_failure_policy: KvLoadFailurePolicy,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            block_size: 16,
            num_blocks: 64,
            max_model_len: 4096,
            policy: SchedulingPolicy::Fcfs,
            enable_prefix_caching: true,
            kv_load_failure_policy: KvLoadFailurePolicy::Fail,
        }
    }
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    /// Lookups only; nothing depends on its iteration order.
    requests: DenseMap<RequestId, Request>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    step: u64,
    /// Events and records produced outside `update_from_output` (adds,
    /// aborts), delivered with the next step's result.
    pending: StepResult,
    connector: Option<Box<dyn ConnectorScheduler>>,
    /// Ended requests whose blocks wait for their transfers to finish.
    delayed_free: FxHashSet<RequestId>,
    /// Waiting requests whose load has finished (so admission looks for
    /// them first only when there are some).
    num_loads_done: usize,
    /// Blocks held for stores in flight (each entry is one hold).
    num_store_holds: usize,
    /// Params a connector returned for ended requests, attached to their
    /// last output.
    finish_params: FxHashMap<RequestId, crate::request::KvTransferParams>,
    /// Counters for the next step record.
    stats: SchedulerStats,
    /// The executor's vocabulary size (structured outputs' masks).
    vocab_size: usize,
}

impl std::fmt::Debug for dyn ConnectorScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnectorScheduler({:?})", self.source())
    }
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let kv =
            KvCacheManager::new(config.num_blocks, config.block_size, config.enable_prefix_caching);
        Self {
            config,
            kv,
            requests: DenseMap::default(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            step: 0,
            pending: StepResult::default(),
            connector: None,
            delayed_free: FxHashSet::default(),
            num_loads_done: 0,
            num_store_holds: 0,
            finish_params: FxHashMap::default(),
            stats: SchedulerStats::default(),
            vocab_size: 0,
        }
    }

    /// Adds a connector (its scheduler side); the executor carries the
    /// worker side.
    pub fn with_connector(mut self, connector: Box<dyn ConnectorScheduler>) -> Self {
        self.connector = Some(connector);
        self
    }

    pub fn has_connector(&self) -> bool {
        self.connector.is_some()
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Outputs or records (from adds and aborts) not yet handed out by a
    /// step.
    pub fn has_pending(&self) -> bool {
        !self.pending.outputs.is_empty() || !self.pending.finish_records.is_empty()
    }

    /// Requests not yet ended, or ended with transfers still in flight.
    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty() || !self.delayed_free.is_empty() || self.num_store_holds > 0
    }

    /// Admits a request to the waiting queue, or says why it never could run.
    pub fn add_request(
        &mut self,
        id: RequestId,
        new: NewRequest,
        now: f64,
    ) -> Result<(), AdmissionError> {
        admission::check(&self.config, id, &new, self.requests.contains_key(&id))?;
        let req = Request::new(id, new, now, self.config.block_size);
        self.requests.insert(id, req);
        self.waiting.push_back(id);
        Ok(())
    }

    /// Ends a request in any state. `false` if it is unknown or finished.
    pub fn abort(&mut self, id: RequestId, now: f64) -> bool {
        self.finish_request(id, FinishReason::Abort, now)
    }

    /// Ends a request from outside the step with `reason` (vLLM's
    /// `finish_requests`): `Abort` when the client went away, `Stop` when
    /// the caller found a stop string in the text (the engine sees tokens
    /// only). The request's FinishRecord carries the reason. `false` if it
    /// is unknown or finished.
    pub fn finish_request(&mut self, id: RequestId, reason: FinishReason, now: f64) -> bool {
        if !self.requests.contains_key(&id) {
            return false;
        }
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        let result = self.finish(id, reason, now);
        self.pending.outputs.push(RequestOutput::finished(id, reason));
        result
    }

    /// Frees a request's blocks and emits its FinishRecord.
    fn finish(&mut self, id: RequestId, reason: FinishReason, now: f64) -> bool {
        let Some(mut req) = self.requests.remove(&id) else { return false };
        if req.load_done {
            self.num_loads_done -= 1;
        }
        req.status = RequestStatus::Finished(reason);
        let finished = match &mut self.connector {
            Some(c) => c.request_finished(&req, self.kv.blocks(id)),
            None => crate::connector::RequestFinished::free_now(),
        };
        if let Some(params) = finished.kv_transfer_params {
            self.finish_params.insert(id, params);
        }
        if finished.delay_free {
            // A11: blocks are freed only once the transfer reports done.
            self.delayed_free.insert(id);
        } else {
            self.kv.free(id);
        }
        self.pending.finish_records.push(FinishRecord {
            request_id: id,
            reason,
            num_prompt_tokens: req.num_prompt_tokens() as u32,
            num_generation_tokens: req.output_token_ids.len() as u32,
            max_tokens: req.params.max_tokens,
            num_preemptions: req.num_preemptions,
            arrival_time: req.arrival_time,
            first_scheduled_time: req.scheduled_time,
            first_token_time: req.first_token_time,
            finished_time: now,
        });
        true
    }

    /// The running request to preempt: lowest priority (highest value),
    /// then latest arrival.
    fn pick_victim(&self) -> RequestId {
        let key = |id: &RequestId| {
            let r = &self.requests[id];
            let prio = match self.config.policy {
                SchedulingPolicy::Fcfs => 0,
                SchedulingPolicy::Priority => r.priority,
            };
            (prio, r.arrival_time.to_bits(), *id)
        };
        *self
            .running
            .iter()
            .max_by_key(|id| key(id))
            .expect("invariant: a victim exists while running")
    }

    fn preempt(&mut self, id: RequestId) {
        self.running.retain(|&r| r != id);
        self.kv.free(id);
        let req = self.requests.get_mut(&id).expect("invariant: running requests exist");
        // Prompt tokens already in the cache will be computed again.
        req.num_tokens_to_recompute = req.num_computed_tokens;
        req.num_computed_tokens = 0;
        req.num_preemptions += 1;
        req.status = RequestStatus::Preempted;
        self.waiting.push_front(id);
    }

    /// Index in `waiting` of the next request to admit. Requests whose KV
    /// load finished go first: they already hold all their prompt's blocks,
    /// so running them needs nothing and frees blocks soonest; behind a
    /// request that cannot get blocks they would wait forever.
    fn next_waiting(&self) -> Option<usize> {
        if self.num_loads_done > 0 {
            let loaded = self.waiting.iter().position(|id| {
                let r = &self.requests[id];
                r.status == RequestStatus::WaitingForRemoteKv && r.load_done
            });
            if loaded.is_some() {
                return loaded;
            }
        }
        match self.config.policy {
            SchedulingPolicy::Fcfs => (!self.waiting.is_empty()).then_some(0),
            SchedulingPolicy::Priority => (0..self.waiting.len()).min_by_key(|&i| {
                let r = &self.requests[&self.waiting[i]];
                (r.priority, r.arrival_time.to_bits(), r.id)
            }),
        }
    }

    /// Picks this step's work (see the module header) and attaches the
    /// connector's metadata.
    pub fn schedule(&mut self, now: f64) -> SchedulerOutput {
        self.step += 1;
        let mut out = SchedulerOutput { step: self.step, ..SchedulerOutput::default() };
        let mut budget = self.config.max_num_batched_tokens;
        self.schedule_running(&mut out, &mut budget);
        // Waiting requests are admitted only if nobody was preempted.
        if out.preempted.is_empty() {
            self.schedule_waiting(&mut out, &mut budget, now);
        }
        out.kv_connector_metadata = self.build_connector_meta();
        self.fill_token_masks(&mut out);
        out
    }

    /// Running requests, in order, each taking what it needs; when blocks
    /// run out, the victim is preempted (and gives back any work it was
    /// given earlier in this step).
    fn schedule_running(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        let mut idx = 0;
        while idx < self.running.len() && *budget > 0 {
            let id = self.running[idx];
            let slot = self.requests.slot(&id).expect("invariant: running requests exist");
            let req = &self.requests[&id];
            let n = (req.num_tokens() - req.num_computed_tokens).min(*budget);
            let computed = req.num_computed_tokens;
            let samples = computed + n == req.num_tokens();
            // A request's blocks always cover its computed tokens, so one
            // more token fits without allocating unless the last block is
            // exactly full (the common decode step skips the KV manager).
            let fits = n == 1 && !computed.is_multiple_of(self.config.block_size);
            loop {
                let outcome = if fits {
                    AllocOutcome::Allocated
                } else {
                    self.kv.allocate_slots(&self.requests[&id], n, &[])
                };
                match outcome {
                    AllocOutcome::Allocated => {
                        out.seqs.push(ScheduledSeq {
                            request_id: id,
                            num_computed_tokens: computed,
                            num_scheduled_tokens: n,
                            samples,
                            slot,
                        });
                        *budget -= n;
                        idx += 1;
                        break;
                    }
                    AllocOutcome::NoCapacity => {
                        let victim = self.pick_victim();
                        if let Some(pos) = out.seqs.iter().position(|s| s.request_id == victim) {
                            *budget += out.seqs.remove(pos).num_scheduled_tokens;
                            idx -= 1;
                        }
                        self.preempt(victim);
                        out.preempted.push(victim);
                        if victim == id {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Waiting requests, in policy order, while the budget, `max_num_seqs`
    /// and free blocks allow. A request with a connector match gets blocks
    /// for its whole prompt and waits for its load (set aside, keeping its
    /// place); one whose load finished is admitted first.
    fn schedule_waiting(&mut self, out: &mut SchedulerOutput, budget: &mut usize, now: f64) {
        let mut loading: Vec<RequestId> = Vec::new();
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(w) = self.next_waiting() else { break };
            let id = self.waiting[w];
            if self.requests[&id].status == RequestStatus::WaitingForRemoteKv {
                if !self.requests[&id].load_done {
                    self.waiting.remove(w);
                    loading.push(id);
                    continue;
                }
                self.finish_load(id);
            }
            let req = &self.requests[&id];
            let first_admission = req.provenance.is_none();
            // A request waiting for prompt logprobs computes every prompt
            // position: no prefix-cache lookup, no connector match.
            let lookups = !req.needs_prompt_logprobs();
            let (hit_blocks, hit_tokens) = if req.num_computed_tokens == 0 && lookups {
                self.kv.get_computed_blocks(req)
            } else {
                (Vec::new(), req.num_computed_tokens)
            };
            // Tokens a connector can supply beyond the local hit, leaving at
            // least one token to compute (rule 3). Only at first admission:
            // a preempted request recomputes locally.
            let (external, source) = match (&mut self.connector, first_admission && lookups) {
                (Some(c), true) => {
                    let n = c.get_num_new_matched_tokens(req, hit_tokens);
                    let n = n.min(req.num_tokens().saturating_sub(1 + hit_tokens));
                    (n, c.source_for(req))
                }
                _ => (0, TokenSource::Remote),
            };
            if external > 0 {
                // Blocks for the whole prompt, not only the loaded part: a
                // request whose load finished must always be able to run,
                // or loads holding every block would wait on each other.
                let all = req.num_tokens() - hit_tokens;
                if self.kv.allocate_slots(req, all, &hit_blocks) == AllocOutcome::NoCapacity {
                    break;
                }
                self.waiting.remove(w);
                self.book_admission(id, hit_tokens, external, source);
                self.start_load(id, hit_tokens, external);
                loading.push(id);
                continue;
            }
            let n = (req.num_tokens() - hit_tokens).min(*budget);
            if self.kv.allocate_slots(req, n, &hit_blocks) == AllocOutcome::NoCapacity {
                break;
            }
            self.waiting.remove(w);
            self.book_admission(id, hit_tokens, 0, source);
            let req = self.requests.get_mut(&id).expect("invariant: waiting requests exist");
            req.num_computed_tokens = hit_tokens;
            req.status = RequestStatus::Running;
            req.scheduled_time.get_or_insert(now);
            out.seqs.push(ScheduledSeq {
                request_id: id,
                num_computed_tokens: hit_tokens,
                num_scheduled_tokens: n,
                samples: hit_tokens + n == req.num_tokens(),
                slot: self.requests.slot(&id).expect("invariant: admitted requests exist"),
            });
            self.running.push(id);
            *budget -= n;
        }
        for id in loading.into_iter().rev() {
            self.waiting.push_front(id);
        }
    }

    /// Where an admitted request's prompt tokens come from: the one place
    /// sources are set. At first admission: `hit_tokens` from the device
    /// prefix cache, `external` from the connector (booked under `source`),
    /// the rest computed here (A3, A4, A10, A13, A14); the lookups are
    /// counted once (not at all for a request that asks for prompt
    /// logprobs: it skips the lookups, and vLLM's prefix-cache stats skip
    /// it too). At a re-admission after preemption: the prompt tokens
    /// computed before and not found in the cache now are recomputed, in
    /// the record if it is not out yet, else in the step's counters (A9,
    /// A21).
    fn book_admission(
        &mut self,
        id: RequestId,
        hit_tokens: usize,
        external: usize,
        source: TokenSource,
    ) {
        let has_connector = self.connector.is_some();
        let req = self.requests.get_mut(&id).expect("invariant: admitted requests exist");
        let prompt = req.num_prompt_tokens();
        match req.provenance {
            None => {
                let mut p =
                    Provenance { local_cache_hit: hit_tokens as u32, ..Provenance::default() };
                let stats = &mut self.stats;
                let (slot, hits) = match source {
                    TokenSource::Host => (&mut p.host, &mut stats.external_hits_host),
                    TokenSource::Disk => (&mut p.disk, &mut stats.external_hits_disk),
                    _ => (&mut p.remote, &mut stats.external_hits_remote),
                };
                *slot = external as u32;
                *hits += external as u32;
                req.provenance = Some(p);
                if !req.needs_prompt_logprobs() {
                    stats.prefix_cache_queries += prompt as u32;
                    stats.prefix_cache_hits += hit_tokens as u32;
                }
                if has_connector && !req.needs_prompt_logprobs() {
                    stats.external_prefix_cache_queries += (prompt - hit_tokens.min(prompt)) as u32;
                    stats.external_prefix_cache_hits += external as u32;
                }
                if external == 0 {
                    if let Some(c) = &mut self.connector {
                        // The lookup of this admission found nothing to load.
                        c.update_state_after_alloc(req, &[], &[]);
                    }
                }
            }
            Some(ref mut p) if req.num_preemptions > 0 => {
                let redo = req.num_tokens_to_recompute.min(prompt).saturating_sub(hit_tokens);
                if req.record_emitted {
                    self.stats.recomputed_preemption_tokens += redo as u32;
                } else {
                    p.recomputed_preemption += redo as u32;
                }
                req.num_tokens_to_recompute = 0;
            }
            Some(_) => {}
        }
    }

    /// The executor's view of a schedule.
    pub fn batch<'a>(&'a self, out: &'a SchedulerOutput) -> ModelBatch<'a> {
        ModelBatch {
            kv_connector_metadata: out.kv_connector_metadata.as_ref(),
            seqs: out
                .seqs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let req = self
                        .requests
                        .at(s.slot, &s.request_id)
                        .expect("invariant: scheduled requests exist");
                    // Prompt logprobs while they are still wanted and the
                    // chunk has rows followed by a prompt token (positions
                    // gathered before a preemption are skipped on arrival).
                    let prompt_logprobs = req
                        .params
                        .prompt_logprobs
                        .filter(|_| {
                            req.needs_prompt_logprobs()
                                && s.num_computed_tokens + 1 < req.num_prompt_tokens()
                        })
                        .map(|num_logprobs| PromptLogprobsRequest {
                            num_logprobs,
                            prompt_token_ids: &req.prompt_token_ids,
                        });
                    SeqInput {
                        request_id: s.request_id,
                        token_ids: &req.all_token_ids
                            [s.num_computed_tokens..s.num_computed_tokens + s.num_scheduled_tokens],
                        num_computed_tokens: s.num_computed_tokens,
                        block_table: self.kv.blocks(s.request_id),
                        sample: s.samples.then_some(SampleRequest {
                            params: &req.params,
                            prompt_token_ids: &req.prompt_token_ids,
                            output_token_ids: &req.output_token_ids,
                            token_mask: out.token_masks.get(i).and_then(Option::as_ref),
                        }),
                        prompt_logprobs,
                    }
                })
                .collect(),
        }
    }

    /// Ends every scheduled request with `error` (the executor failed the
    /// step); the engine keeps serving the rest. The step gets no record:
    /// its admission counters go to the next step's.
    fn fail_step(&mut self, out: &SchedulerOutput, error: String, now: f64) -> StepResult {
        for s in &out.seqs {
            if self.requests.contains_key(&s.request_id) {
                self.running.retain(|&r| r != s.request_id);
                self.finish(s.request_id, FinishReason::Error, now);
                self.pending
                    .outputs
                    .push(RequestOutput::finished(s.request_id, FinishReason::Error));
            }
        }
        let mut result = self.take_pending();
        result.executor_error = Some(error);
        result
    }

    /// Applies what the executor returned for `out`: the connector
    /// worker's report first, then the sampled tokens; builds the step's
    /// records. `Err` is an executor failure (its message): the step's
    /// requests end with `error` and the engine carries on.
    pub fn update_from_output(
        &mut self,
        out: &SchedulerOutput,
        model: Result<ModelOutput, String>,
        now: f64,
    ) -> StepResult {
        let model = match model {
            Ok(model) => model,
            Err(error) => return self.fail_step(out, error, now),
        };
        if let Some(kv_out) = model.kv_connector_output {
            self.update_connector_output(kv_out, now);
        }
        let bs = self.config.block_size;
        let stats = std::mem::take(&mut self.stats);
        let mut record = StepRecord {
            step: out.step,
            num_preemptions: out.preempted.len() as u32,
            prefix_cache_queries: stats.prefix_cache_queries,
            prefix_cache_hits: stats.prefix_cache_hits,
            external_prefix_cache_queries: stats.external_prefix_cache_queries,
            external_prefix_cache_hits: stats.external_prefix_cache_hits,
            num_connector_loads: stats.num_connector_loads,
            num_connector_load_failures: stats.num_connector_load_failures,
            num_recomputed_preemption_tokens: stats.recomputed_preemption_tokens,
            external_hits_host: stats.external_hits_host,
            external_hits_disk: stats.external_hits_disk,
            external_hits_remote: stats.external_hits_remote,
            ..StepRecord::default()
        };
        for chunk in model.prompt_logprobs {
            if let Some(req) = self.requests.get_mut(&chunk.request_id) {
                req.add_prompt_logprobs(chunk);
            }
        }
        let mut sampled = model.sampled.into_iter();
        let mut finished = Vec::new();
        let mut newly_cached = Vec::new();
        for s in &out.seqs {
            let req = self
                .requests
                .at_mut(s.slot, &s.request_id)
                .expect("invariant: scheduled requests exist");
            if s.num_computed_tokens < req.num_prompt_tokens() {
                record.num_prefill_tokens += s.num_scheduled_tokens as u32;
            } else {
                record.num_decode_tokens += s.num_scheduled_tokens as u32;
            }
            req.num_computed_tokens += s.num_scheduled_tokens;
            // Only a step that crosses a block boundary can fill a block.
            if s.num_computed_tokens / bs != req.num_computed_tokens / bs {
                let range = self.kv.cache_blocks(req);
                if self.connector.is_some() && !range.is_empty() {
                    newly_cached.push((s.request_id, range));
                }
            }
            if !s.samples {
                continue;
            }
            let tok = sampled.next().expect("invariant: one sampled token per sampling sequence");
            debug_assert_eq!(tok.request_id, s.request_id);
            req.append_output(tok.token_id, bs);
            let grammar_end = req.advance_grammar();
            if !req.record_emitted {
                req.record_emitted = true;
                req.first_token_time = Some(now);
                let provenance = req.provenance.unwrap_or_default();
                match PrefillRecord::new(req.id, req.num_prompt_tokens() as u32, &provenance) {
                    Ok(r) => self.pending.prefill_records.push(r),
                    Err(e) => {
                        debug_assert!(false, "accounting violation: {e}");
                        self.pending.accounting_violations.push(e);
                    }
                }
            }
            let reason = req.check_stop(self.config.max_model_len).or(grammar_end);
            self.pending.outputs.push(RequestOutput {
                request_id: req.id,
                new_token_id: Some(tok.token_id),
                logprobs: tok.logprobs,
                finish_reason: reason,
                kv_transfer_params: None,
                prompt_logprobs: req.take_prompt_logprobs(),
            });
            if let Some(reason) = reason {
                finished.push((req.id, reason));
            }
        }
        // Stores are offered before finished requests free their blocks.
        for (id, range) in newly_cached {
            self.offer_stores(id, range);
        }
        for (id, reason) in finished {
            self.running.retain(|&r| r != id);
            self.finish(id, reason, now);
        }
        record.num_running = self.running.len() as u32;
        record.num_waiting = self.waiting.len() as u32;
        if self.connector.is_some() {
            for id in &self.waiting {
                let r = &self.requests[id];
                match r.status {
                    RequestStatus::WaitingForRemoteKv if r.load_done => {
                        record.kv_fetch_completed_waiting += 1
                    }
                    RequestStatus::WaitingForRemoteKv => record.kv_fetch_in_progress += 1,
                    _ if r.provenance.is_none()
                        && r.kv_transfer_params.as_ref().is_some_and(|p| p.do_remote_prefill) =>
                    {
                        record.kv_fetch_waiting_to_start += 1
                    }
                    _ => {}
                }
            }
        }
        record.num_waiting_for_remote_kv =
            record.kv_fetch_in_progress + record.kv_fetch_completed_waiting;
        record.num_blocks_total = self.config.num_blocks as u32;
        record.num_blocks_used = (self.config.num_blocks - self.kv.pool().num_free_blocks()) as u32;
        let mut result = self.take_pending();
        result.step = Some(record);
        result
    }

    /// Takes what adds and aborts produced since the last step.
    pub fn take_pending(&mut self) -> StepResult {
        self.attach_finish_params();
        std::mem::take(&mut self.pending)
    }

    /// Checks the invariants of the module header.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.pool().check_invariants()?;
        for (&id, req) in self.requests.iter() {
            let blocks = self.kv.blocks(id).len();
            if blocks * self.config.block_size < req.num_computed_tokens {
                return Err(format!(
                    "{id}: {blocks} blocks for {} computed tokens",
                    req.num_computed_tokens
                ));
            }
        }
        let loads_done = self.requests.values().filter(|r| r.load_done).count();
        if loads_done != self.num_loads_done {
            return Err(format!(
                "{loads_done} loads done but the counter says {}",
                self.num_loads_done
            ));
        }
        if !self.has_unfinished() && self.kv.pool().num_free_blocks() != self.config.num_blocks {
            return Err("blocks leaked after every request ended".into());
        }
        Ok(())
    }
}
