//! `/health` and `/ping` follow the engine thread, in process (axum
//! `oneshot`) over the fake executor behind a gate a test can hold shut
//! inside a step, or set to panic: 200 while the engine steps or idles
//! (idle longer than the stall timeout included), 503 once a step outlasts
//! the timeout, 200 again when it ends, 503 for good once the thread has
//! died. `/metrics` answers 500 with a reason, never an empty 200, when
//! its lock is poisoned. Every wait is bounded.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::FakeExecutor;
use strata_core::{BatchError, EngineCore, Executor, KvCacheSpec, ModelBatch, ModelOutput};
use strata_metrics::{CacheConfigInfo, EngineMetrics};
use strata_server::{app, AppState, EngineHandle};
use strata_tokenizer::Tokenizer;
use tower::ServiceExt;

#[derive(Default)]
struct GateState {
    /// Steps wait while this is set.
    hold: bool,
    /// A step is waiting at the gate.
    inside: bool,
    /// The next step panics.
    panic: bool,
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, f: impl FnOnce(&mut GateState)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }

    /// Waits (bounded: 10 s) until a step is held at the gate.
    fn wait_inside(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = self.state.lock().unwrap();
        while !g.inside {
            assert!(Instant::now() < deadline, "no step reached the gate in 10 s");
            g = self.changed.wait_timeout(g, Duration::from_millis(50)).unwrap().0;
        }
    }
}

/// The fake executor, with every step passing the gate first.
struct GatedExecutor {
    inner: FakeExecutor,
    gate: Arc<Gate>,
}

impl Executor for GatedExecutor {
    type Error = BatchError;

    fn kv_cache_spec(&self) -> KvCacheSpec {
        self.inner.kv_cache_spec()
    }

    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput, BatchError> {
        let mut g = self.gate.state.lock().unwrap();
        if g.panic {
            drop(g);
            panic!("injected executor failure (the test asked for it)");
        }
        g.inside = true;
        self.gate.changed.notify_all();
        // Bounded: a hold nobody lifts ends after 60 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        while g.hold && Instant::now() < deadline {
            g = self.gate.changed.wait_timeout(g, Duration::from_millis(50)).unwrap().0;
        }
        g.inside = false;
        drop(g);
        self.inner.execute(batch)
    }
}

/// An AppState over the gated fake executor, with a 1 s stall timeout.
fn gated_state() -> (Arc<AppState>, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let mut inner = FakeExecutor::new(256, 16, 1024);
    inner.vocab_size = 512;
    let config = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 256,
        block_size: 16,
        num_blocks: 256,
        max_model_len: 1024,
        ..SchedulerConfig::default()
    };
    let exec = GatedExecutor { inner, gate: gate.clone() };
    let metrics = EngineMetrics::new("builtin", "0", 1024, &CacheConfigInfo::device(16, 256));
    let engine =
        EngineHandle::spawn(EngineCore::new(exec, config), metrics, Duration::from_secs(10));
    engine.set_health_stall_timeout(Duration::from_secs(1));
    let state = AppState { engine, ..common::fake_state(Tokenizer::builtin()) };
    (Arc::new(state), gate)
}

async fn call(s: &Arc<AppState>, method: &str, path: &str) -> (StatusCode, String) {
    let req = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The three probe routes agree; returns their common answer.
async fn probe(s: &Arc<AppState>) -> (StatusCode, String) {
    let health = call(s, "GET", "/health").await;
    assert_eq!(call(s, "GET", "/ping").await.0, health.0, "GET /ping mirrors /health");
    assert_eq!(call(s, "POST", "/ping").await.0, health.0, "POST /ping mirrors /health");
    health
}

/// Polls the probes (bounded: 10 s) until they answer `want`.
async fn wait_for_probe(s: &Arc<AppState>, want: StatusCode) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = probe(s).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/health never answered {want}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn completion(s: &Arc<AppState>) -> tokio::task::JoinHandle<StatusCode> {
    let s = s.clone();
    tokio::spawn(async move {
        let body = json!({"prompt": "hello there", "max_tokens": 3}).to_string();
        let req = Request::builder()
            .method("POST")
            .uri("/v1/completions")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        app(s).oneshot(req).await.unwrap().status()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_step_turns_health_to_503_until_it_ends() {
    let (s, gate) = gated_state();
    assert_eq!(probe(&s).await, (StatusCode::OK, String::new()));
    // Idle for longer than the stall timeout: quiet is not stalled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(probe(&s).await.0, StatusCode::OK, "an idle engine reads as stalled");

    gate.set(|g| g.hold = true);
    let request = completion(&s);
    tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || gate.wait_inside()
    })
    .await
    .unwrap();
    let body = wait_for_probe(&s, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body.contains("engine stalled: no progress for"), "{body}");
    assert!(body.contains("limit 1.0 s"), "{body}");
    // /metrics keeps answering while the engine is stuck in a step.
    let (status, text) = call(&s, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("vllm:num_requests_running"), "{text}");

    gate.set(|g| g.hold = false);
    assert_eq!(wait_for_probe(&s, StatusCode::OK).await, "");
    assert_eq!(request.await.unwrap(), StatusCode::OK, "the held request completes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_thread_turns_health_to_503_for_good() {
    let (s, gate) = gated_state();
    assert_eq!(probe(&s).await.0, StatusCode::OK);
    gate.set(|g| g.panic = true);
    let request = completion(&s);
    let body = wait_for_probe(&s, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body, "engine thread panicked");
    // Its request ends (today as a 200 with finish_reason `abort`) rather
    // than hanging.
    tokio::time::timeout(Duration::from_secs(10), request).await.unwrap().unwrap();
    // Longer than the stall timeout later, still dead: nothing revives it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(probe(&s).await, (StatusCode::SERVICE_UNAVAILABLE, body));
}

#[tokio::test]
async fn a_stopped_engine_thread_turns_health_to_503() {
    let (s, _gate) = gated_state();
    assert_eq!(probe(&s).await.0, StatusCode::OK);
    s.engine.shutdown();
    let body = wait_for_probe(&s, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body, "engine thread has stopped");
}

#[tokio::test]
async fn a_poisoned_metrics_lock_answers_500_with_a_reason() {
    let (s, _gate) = gated_state();
    let (status, text) = call(&s, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("# TYPE vllm:num_requests_waiting gauge"), "{text}");
    let metrics = s.engine.metrics.clone();
    let poisoned = std::thread::spawn(move || {
        let _held = metrics.lock().unwrap();
        panic!("poisoning the metrics lock (the test asked for it)");
    })
    .join();
    assert!(poisoned.is_err());
    let (status, body) = call(&s, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("engine thread panicked while updating them"), "{body:?}");
}
