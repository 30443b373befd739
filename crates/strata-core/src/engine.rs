//! `EngineCore`: the scheduler and an executor, one step at a time.
//!
//! The step is three lines, as vLLM's `EngineCore.step`: `schedule`
//! (which attaches the connector's metadata), `execute` (the executor runs
//! the connector's worker side and the model, and returns the worker's
//! report with the sampled tokens), `update_from_output`.
//! Time comes from the caller (`now`, seconds on any monotonic clock), so
//! the core stays deterministic and testable.

use crate::executor::{Executor, ModelOutput};
use crate::ids::RequestId;
use crate::request::{FinishReason, NewRequest};
use crate::scheduler::{AdmissionError, Scheduler, SchedulerConfig, SchedulerOutput, StepResult};

#[derive(Debug)]
pub struct EngineCore<E: Executor> {
    executor: E,
    scheduler: Scheduler,
    next_id: u64,
    /// Executor errors survived (each failed its step's requests).
    pub num_executor_errors: u64,
}

impl<E: Executor> EngineCore<E> {
    /// `config.num_blocks` and `config.block_size` are taken from the
    /// executor's KV pool; the rest from `config`.
    pub fn new(executor: E, config: SchedulerConfig) -> Self {
        Self::with_connector(executor, config, None)
    }

    /// An engine whose scheduler uses `connector`; `executor` must carry
    /// the connector's worker side.
    pub fn with_connector(
        executor: E,
        mut config: SchedulerConfig,
        connector: Option<Box<dyn crate::connector::ConnectorScheduler>>,
    ) -> Self {
        let spec = executor.kv_cache_spec();
        config.num_blocks = spec.num_blocks;
        config.block_size = spec.block_size;
        config.max_model_len = config.max_model_len.min(spec.max_model_len);
        let mut scheduler = Scheduler::new(config);
        scheduler.set_vocab_size(executor.vocab_size());
        if let Some(c) = connector {
            scheduler = scheduler.with_connector(c);
        }
        Self { executor, scheduler, next_id: 1, num_executor_errors: 0 }
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    #[cfg(test)]
    pub(crate) fn scheduler_mut(&mut self) -> &mut Scheduler {
        &mut self.scheduler
    }

    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// Between steps that only wait for KV loads: waits at most `timeout`,
    /// returning as soon as the connector's background work may have
    /// finished (the next step collects it).
    pub fn wait_for_kv(&mut self, timeout: std::time::Duration) {
        self.executor.wait_for_connector(timeout);
    }

    /// Queues a request; its id is returned, or why it can never run.
    /// Token ids of the prompt and of the sampling parameters
    /// (`logit_bias`, `allowed_token_ids`, `bad_words_token_ids`) are
    /// checked against the executor's vocabulary here.
    pub fn add_request(&mut self, new: NewRequest, now: f64) -> Result<RequestId, AdmissionError> {
        let vocab_size = self.executor.vocab_size();
        if let Some(&token) = new.prompt_token_ids.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(AdmissionError::TokenOutOfVocabulary { token, vocab_size });
        }
        if let Some((field, token)) =
            new.params.token_ids().find(|&(_, t)| t as usize >= vocab_size)
        {
            return Err(AdmissionError::ParamTokenOutOfVocabulary { field, token, vocab_size });
        }
        let id = RequestId::new(self.next_id).expect("invariant: ids start at 1");
        self.scheduler.add_request(id, new, now)?;
        self.next_id += 1;
        Ok(id)
    }

    pub fn abort(&mut self, id: RequestId, now: f64) -> bool {
        self.scheduler.abort(id, now)
    }

    /// Ends a request with `reason` (see `Scheduler::finish_request`).
    pub fn finish_request(&mut self, id: RequestId, reason: FinishReason, now: f64) -> bool {
        self.scheduler.finish_request(id, reason, now)
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }

    /// Results of adds and aborts that the next `step` will hand out.
    pub fn has_pending(&self) -> bool {
        self.scheduler.has_pending()
    }

    /// Runs one step: vLLM's `EngineCore.step`. An executor error ends
    /// the step's requests with finish reason `error` and the engine
    /// carries on.
    pub fn step(&mut self, now: f64) -> StepResult {
        let scheduler_output = self.scheduler.schedule(now);
        let model_output = self.execute_model(&scheduler_output);
        let mut result = self.scheduler.update_from_output(&scheduler_output, model_output, now);
        result.kv_events = self.scheduler.take_kv_events();
        result
    }

    /// Records KV cache events from now on: each step's result carries the
    /// blocks that entered and left the prefix cache and the connector's
    /// tiers (see `kv::events`).
    pub fn enable_kv_events(&mut self) {
        self.scheduler.enable_kv_events();
    }

    /// Hands back a step's event batch once published, so later steps
    /// record into its buffers instead of allocating.
    pub fn recycle_kv_events(&mut self, batch: crate::kv::KvEventBatch) {
        self.scheduler.recycle_kv_events(batch);
    }

    /// The executor's part of a step; a step with neither tokens nor
    /// connector work does not reach it.
    fn execute_model(&mut self, out: &SchedulerOutput) -> Result<ModelOutput, String> {
        if out.is_empty() {
            return Ok(ModelOutput::default());
        }
        let batch = self.scheduler.batch(out);
        self.executor.execute(&batch).map_err(|e| {
            self.num_executor_errors += 1;
            e.to_string()
        })
    }
}
