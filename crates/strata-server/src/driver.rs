//! The engine driver: one OS thread owns the [`EngineCore`] and runs its
//! blocking step loop; async handlers talk to it through channels
//! (docs/architecture.md, "Data flow").
//!
//! Each request gets an unbounded channel of [`RequestUpdate`]s. When a
//! handler drops its receiver (the client went away), the next send fails
//! and the driver aborts the request, freeing its blocks. Records go to the
//! metrics and the log line from this thread, after each step, so
//! exporting never slows or fails a step's bookkeeping. `/metrics` encodes
//! through a [`MetricsExporter`] and never takes the metrics lock.
//!
//! The thread beats a [`Heartbeat`] at the top of every loop iteration and
//! wakes at least every [`IDLE_WAKE`] when idle, so `/health` can tell a
//! stalled or dead engine from a quiet one (see [`crate::health`]).

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_core::{
    AdmissionError, EngineCore, Executor, FinishReason, NewRequest, PrefillRecord, RequestId,
    TopLogprobs,
};
use strata_metrics::{EngineMetrics, LogReporter, MetricsExporter};

use crate::accounting_log::AccountingLog;
use crate::health::{EngineHealth, ExitGuard, Heartbeat, DEFAULT_STALL_TIMEOUT, IDLE_WAKE};
use crate::kv_events::KvEventSender;
use crate::stop::StopWatch;
use tokio::sync::{mpsc as tmpsc, oneshot};

/// What a request's handler receives.
#[derive(Debug, Clone)]
pub enum RequestUpdate {
    /// Where the prompt's KV came from (once, before the first token).
    Prefill(PrefillRecord),
    /// A connector's params for the client (a P/D prefill engine's lease),
    /// just before `Finished`.
    KvTransfer(strata_core::KvTransferParams),
    /// vLLM's `prompt_logprobs` (one entry per prompt token, `None`
    /// first), once, just before the first token, when asked for.
    PromptLogprobs(Vec<Option<TopLogprobs>>),
    Token {
        token_id: u32,
        logprobs: Option<TopLogprobs>,
    },
    Finished(FinishReason),
}

enum Command {
    Add {
        new: Box<NewRequest>,
        /// Its stop strings, watched on this thread.
        stop: Option<StopWatch>,
        updates: tmpsc::UnboundedSender<RequestUpdate>,
        reply: oneshot::Sender<Result<RequestId, AdmissionError>>,
        /// The client's `X-Request-Id`, for the accounting log.
        external_id: Option<String>,
    },
    Abort(RequestId),
    Shutdown,
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    pub metrics: Arc<Mutex<EngineMetrics>>,
    /// Encodes the same families as `metrics` without its lock.
    exporter: MetricsExporter,
    /// Requests in the engine (for the queue limit).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    heartbeat: Arc<Heartbeat>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Admission(#[from] AdmissionError),
    #[error("the engine has stopped")]
    EngineStopped,
}

impl EngineHandle {
    /// Starts the engine thread. `log_interval` spaces the stats lines.
    pub fn spawn<E: Executor + Send + 'static>(
        engine: EngineCore<E>,
        metrics: EngineMetrics,
        log_interval: Duration,
    ) -> Self {
        Self::spawn_with(engine, metrics, log_interval, None)
    }

    /// As `spawn`, writing an accounting line per finished request.
    pub fn spawn_with<E: Executor + Send + 'static>(
        engine: EngineCore<E>,
        metrics: EngineMetrics,
        log_interval: Duration,
        accounting: Option<(AccountingLog, String)>,
    ) -> Self {
        Self::spawn_publishing(engine, metrics, log_interval, accounting, None)
    }

    /// As `spawn_with`, turning the engine's KV events on and handing each
    /// step's events to `kv_events` (the publisher thread).
    pub fn spawn_publishing<E: Executor + Send + 'static>(
        mut engine: EngineCore<E>,
        metrics: EngineMetrics,
        log_interval: Duration,
        accounting: Option<(AccountingLog, String)>,
        kv_events: Option<KvEventSender>,
    ) -> Self {
        if kv_events.is_some() {
            engine.enable_kv_events();
        }
        let (tx, rx) = mpsc::channel();
        let exporter = metrics.exporter();
        let metrics = Arc::new(Mutex::new(metrics));
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let heartbeat = Arc::new(Heartbeat::new(DEFAULT_STALL_TIMEOUT));
        heartbeat.beat();
        let handle = Self {
            tx,
            metrics: metrics.clone(),
            exporter,
            in_flight: in_flight.clone(),
            heartbeat: heartbeat.clone(),
        };
        std::thread::Builder::new()
            .name("strata-engine".into())
            .spawn(move || {
                let _exit = ExitGuard(heartbeat.clone());
                let extras = Extras { accounting, kv_events };
                run(engine, rx, metrics, in_flight, log_interval, extras, &heartbeat)
            })
            .expect("invariant: the engine thread can be spawned at start-up");
        handle
    }

    /// Whether the engine thread is alive and making progress.
    pub fn health(&self) -> EngineHealth {
        self.heartbeat.check()
    }

    /// How long the engine thread may go without progress before
    /// [`Self::health`] says it is stalled (at least
    /// [`crate::health::MIN_STALL_TIMEOUT`]; default
    /// [`DEFAULT_STALL_TIMEOUT`]).
    pub fn set_health_stall_timeout(&self, timeout: Duration) {
        self.heartbeat.set_stall_timeout(timeout);
    }

    /// The engine's metrics, encodable without the `metrics` lock.
    pub fn exporter(&self) -> &MetricsExporter {
        &self.exporter
    }

    pub fn num_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reserves room for `n` requests under `limit`; `false` (and nothing
    /// reserved) when the queue is full. Each submitted request releases
    /// its slot when it ends; call `release` for slots never submitted.
    pub fn try_reserve(&self, n: usize, limit: usize) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let mut current = self.in_flight.load(SeqCst);
        loop {
            if current + n > limit {
                return false;
            }
            match self.in_flight.compare_exchange(current, current + n, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    pub fn release(&self, n: usize) {
        self.in_flight.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Queues a request; updates arrive on the returned receiver.
    pub async fn submit(
        &self,
        new: NewRequest,
    ) -> Result<(RequestId, tmpsc::UnboundedReceiver<RequestUpdate>), SubmitError> {
        self.submit_watching(new, None).await
    }

    /// As `submit`, with stop strings that end the request (finish reason
    /// `stop`) in the step that completes one.
    pub async fn submit_watching(
        &self,
        new: NewRequest,
        stop: Option<StopWatch>,
    ) -> Result<(RequestId, tmpsc::UnboundedReceiver<RequestUpdate>), SubmitError> {
        self.submit_as(new, stop, None).await
    }

    /// As `submit_watching`, under the client's request id (`X-Request-Id`,
    /// written to the accounting log).
    pub async fn submit_as(
        &self,
        new: NewRequest,
        stop: Option<StopWatch>,
        external_id: Option<String>,
    ) -> Result<(RequestId, tmpsc::UnboundedReceiver<RequestUpdate>), SubmitError> {
        let (updates, rx) = tmpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Add { new: Box::new(new), stop, updates, reply, external_id })
            .map_err(|_| SubmitError::EngineStopped)?;
        let id = answer.await.map_err(|_| SubmitError::EngineStopped)??;
        Ok((id, rx))
    }

    pub fn abort(&self, id: RequestId) {
        let _ = self.tx.send(Command::Abort(id));
    }

    /// Asks the thread to stop after aborting what is in flight.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

fn run<E: Executor>(
    mut engine: EngineCore<E>,
    rx: mpsc::Receiver<Command>,
    metrics: Arc<Mutex<EngineMetrics>>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    log_interval: Duration,
    extras: Extras,
    heartbeat: &Heartbeat,
) {
    let Extras { accounting, kv_events } = extras;
    let mut prefills: HashMap<RequestId, PrefillRecord> = HashMap::new();
    let clock = Instant::now();
    let now = || clock.elapsed().as_secs_f64();
    let mut log = LogReporter::new(0, log_interval.as_secs_f64());
    if let Ok(m) = metrics.lock() {
        if !m.offload_tiers().is_empty() {
            log.enable_offload_line(m.offload_tiers());
        }
        if m.pd_enabled() {
            log.enable_kv_transfer_line();
        }
    }
    let mut senders: HashMap<RequestId, tmpsc::UnboundedSender<RequestUpdate>> = HashMap::new();
    let mut watches: HashMap<RequestId, StopWatch> = HashMap::new();
    let mut external_ids: HashMap<RequestId, String> = HashMap::new();
    let mut stopping = false;
    loop {
        heartbeat.beat();
        // Idle: wait for work, waking up for the log line's interval and
        // at least every IDLE_WAKE to beat (a blocked recv is no stall).
        if !engine.has_unfinished() && !engine.has_pending() {
            if stopping {
                return;
            }
            // With a connector, idle steps still collect its background
            // work (disk writes finishing, tier gauges).
            let connector = engine.scheduler().has_connector();
            let wait = log_interval.min(IDLE_WAKE);
            match rx.recv_timeout(wait) {
                Ok(cmd) => {
                    stopping |= apply(
                        cmd,
                        &mut engine,
                        &mut senders,
                        &mut watches,
                        &mut external_ids,
                        &in_flight,
                        now(),
                    )
                }
                Err(RecvTimeoutError::Timeout) if connector => {}
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(line) = log.maybe_log(now()) {
                        tracing::info!("{line}");
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            stopping |= apply(
                cmd,
                &mut engine,
                &mut senders,
                &mut watches,
                &mut external_ids,
                &in_flight,
                now(),
            );
        }
        if stopping {
            for id in senders.keys().copied().collect::<Vec<_>>() {
                engine.abort(id, now());
            }
        }
        let t = now();
        let mut result = engine.step(t);
        if let Some(publisher) = &kv_events {
            publisher.send(unix_time(), std::mem::take(&mut result.kv_events));
            if let Some(spare) = publisher.spare() {
                engine.recycle_kv_events(spare);
            }
        }
        if let Some(e) = &result.executor_error {
            tracing::error!("executor failed a step; its requests end with `error`: {e}");
        }
        // A violation is a bug in the engine: each is logged here once (it
        // is in one step's result only) and counted in
        // `strata:accounting_violations`; the request gets no usage
        // details rather than wrong ones.
        for v in &result.accounting_violations {
            tracing::error!("accounting violation, no prefill record emitted: {v}");
        }
        // Metrics first: a client that reads /metrics after its response
        // sees its own request counted.
        if let Ok(mut m) = metrics.lock() {
            m.observe(&result, t);
        }
        for r in &result.prefill_records {
            send(&mut senders, &mut engine, r.request_id, RequestUpdate::Prefill(*r), t);
            if accounting.is_some() {
                prefills.insert(r.request_id, *r);
            }
        }
        if let Some((log, model)) = &accounting {
            for f in &result.finish_records {
                let external_id = external_ids.remove(&f.request_id);
                log.record(
                    model,
                    f,
                    prefills.remove(&f.request_id).as_ref(),
                    external_id.as_deref(),
                );
            }
        }
        for o in &result.outputs {
            if let Some(p) = &o.prompt_logprobs {
                let update = RequestUpdate::PromptLogprobs(p.clone());
                send(&mut senders, &mut engine, o.request_id, update, t);
            }
            if let Some(token_id) = o.new_token_id {
                // A stop string ends the request before the next step.
                let stopped = o.finish_reason.is_none()
                    && watches.get_mut(&o.request_id).is_some_and(|w| w.push(token_id));
                if stopped {
                    watches.remove(&o.request_id);
                    engine.finish_request(o.request_id, FinishReason::Stop, t);
                }
                send(
                    &mut senders,
                    &mut engine,
                    o.request_id,
                    RequestUpdate::Token { token_id, logprobs: o.logprobs.clone() },
                    t,
                );
            }
            if let Some(reason) = o.finish_reason {
                if let Some(p) = &o.kv_transfer_params {
                    let update = RequestUpdate::KvTransfer(p.clone());
                    send(&mut senders, &mut engine, o.request_id, update, t);
                }
                send(&mut senders, &mut engine, o.request_id, RequestUpdate::Finished(reason), t);
                watches.remove(&o.request_id);
                external_ids.remove(&o.request_id);
                if senders.remove(&o.request_id).is_some() {
                    in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        log.observe(&result);
        if let Some(line) = log.maybe_log(t) {
            tracing::info!("{line}");
        }
        if result.step.is_some_and(|s| s.num_tokens() == 0) && engine.has_unfinished() {
            // Only loads in flight: do not spin on the connector; wait for
            // it (woken as soon as a load may have finished).
            engine.wait_for_kv(Duration::from_micros(200));
        }
    }
}

/// What the engine thread writes besides metrics and answers.
struct Extras {
    accounting: Option<(AccountingLog, String)>,
    kv_events: Option<KvEventSender>,
}

/// Seconds since the Unix epoch (the KV events' timestamps).
fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Returns `true` when the command asks the thread to stop.
fn apply<E: Executor>(
    cmd: Command,
    engine: &mut EngineCore<E>,
    senders: &mut HashMap<RequestId, tmpsc::UnboundedSender<RequestUpdate>>,
    watches: &mut HashMap<RequestId, StopWatch>,
    external_ids: &mut HashMap<RequestId, String>,
    in_flight: &std::sync::atomic::AtomicUsize,
    now: f64,
) -> bool {
    match cmd {
        Command::Add { new, stop, updates, reply, external_id } => {
            let result = engine.add_request(*new, now);
            match result {
                Ok(id) => {
                    senders.insert(id, updates);
                    if let Some(w) = stop {
                        watches.insert(id, w);
                    }
                    if let Some(x) = external_id {
                        external_ids.insert(id, x);
                    }
                }
                Err(_) => {
                    in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let _ = reply.send(result);
            false
        }
        Command::Abort(id) => {
            engine.abort(id, now);
            false
        }
        Command::Shutdown => true,
    }
}

/// Delivers an update; a handler that went away gets its request aborted.
fn send<E: Executor>(
    senders: &mut HashMap<RequestId, tmpsc::UnboundedSender<RequestUpdate>>,
    engine: &mut EngineCore<E>,
    id: RequestId,
    update: RequestUpdate,
    now: f64,
) {
    let gone = senders.get(&id).is_some_and(|tx| tx.send(update).is_err());
    if gone {
        // The abort's own finish output releases the request's slot.
        engine.abort(id, now);
    }
}
