//! `/health` and `/ping` follow the engine thread, in process (axum
//! `oneshot`) over the fake executor behind a gate a test can hold shut
//! inside a step, or set to panic: 200 while the engine steps or idles
//! (idle longer than the stall timeout included), 503 once a step outlasts
//! the timeout, 200 again when it ends, 503 for good once the thread has
//! died. The requests a dead thread held fail as vLLM fails them on its
//! `EngineDeadError`: a 500, or in a stream an error event and `[DONE]`.
//! `/metrics` answers 500 with a reason, never an empty 200, when its lock
//! is poisoned. Every wait is bounded.
//!
//! The stall timeout is 3 s, not the 1 s minimum: on a loaded 2-core CI
//! machine an idle engine thread that wakes every 250 ms can be
//! descheduled for over a second, and an idle probe must not flap.

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

/// The engines' stall timeout here (see the header).
const STALL_TIMEOUT: Duration = Duration::from_secs(3);

/// An idle period longer than the stall timeout.
const IDLE: Duration = Duration::from_millis(3500);

/// What a request whose engine thread died is told (its 500's body, or
/// its stream's error event).
const ENGINE_DIED: &str = r#"{"error":{"message":"the engine stopped before the request finished","type":"InternalServerError","param":null,"code":500}}"#;

#[derive(Default)]
struct GateState {
    /// Steps wait while this is set.
    hold: bool,
    /// A step is waiting at the gate.
    inside: bool,
    /// The next step panics (after the hold, if one is set).
    panic: bool,
    /// A step that runs at least this many requests panics.
    panic_at_seqs: Option<usize>,
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
        g.inside = true;
        self.gate.changed.notify_all();
        // Bounded: a hold nobody lifts ends after 60 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        while g.hold && Instant::now() < deadline {
            g = self.gate.changed.wait_timeout(g, Duration::from_millis(50)).unwrap().0;
        }
        g.inside = false;
        if g.panic || g.panic_at_seqs.is_some_and(|n| batch.seqs.len() >= n) {
            drop(g);
            panic!("injected executor failure (the test asked for it)");
        }
        drop(g);
        self.inner.execute(batch)
    }
}

/// An AppState over the gated fake executor, with a [`STALL_TIMEOUT`].
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
    engine.set_health_stall_timeout(STALL_TIMEOUT);
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

/// The three probe routes agree; returns their common answer. Only for a
/// state that holds still: the three calls are not one instant.
async fn probe(s: &Arc<AppState>) -> (StatusCode, String) {
    let health = call(s, "GET", "/health").await;
    assert_eq!(call(s, "GET", "/ping").await.0, health.0, "GET /ping mirrors /health");
    assert_eq!(call(s, "POST", "/ping").await.0, health.0, "POST /ping mirrors /health");
    health
}

/// Polls `/health` (bounded: 10 s) until it answers `want`, then checks
/// that all three probes do. Polling one route only: while the engine
/// changes state (a thread exiting), two calls in a row may rightly differ.
async fn wait_for_probe(s: &Arc<AppState>, want: StatusCode) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = call(s, "GET", "/health").await;
        if status == want {
            let (status, body) = probe(s).await;
            assert_eq!(status, want, "/health left {want} at once: {body}");
            return body;
        }
        assert!(Instant::now() < deadline, "/health never answered {want}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// POSTs `body` to `path` in a task; it answers the status and the whole
/// body (a stream's included).
fn post(
    s: &Arc<AppState>,
    path: &'static str,
    body: serde_json::Value,
) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let s = s.clone();
    tokio::spawn(async move {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = app(s).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    })
}

fn completion(s: &Arc<AppState>) -> tokio::task::JoinHandle<(StatusCode, String)> {
    post(s, "/v1/completions", json!({"prompt": "hello there", "max_tokens": 3}))
}

/// Waits (bounded: 10 s) for a task's answer.
async fn answer(task: tokio::task::JoinHandle<(StatusCode, String)>) -> (StatusCode, String) {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the request hung after its engine thread died")
        .unwrap()
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<&str> {
    text.split("\n\n").filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: "))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_step_turns_health_to_503_until_it_ends() {
    let (s, gate) = gated_state();
    assert_eq!(probe(&s).await, (StatusCode::OK, String::new()));
    // Idle for longer than the stall timeout: quiet is not stalled.
    tokio::time::sleep(IDLE).await;
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
    assert!(body.contains("limit 3.0 s"), "{body}");
    // /metrics keeps answering while the engine is stuck in a step.
    let (status, text) = call(&s, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("vllm:num_requests_running"), "{text}");

    gate.set(|g| g.hold = false);
    assert_eq!(wait_for_probe(&s, StatusCode::OK).await, "");
    let (status, text) = answer(request).await;
    assert_eq!(status, StatusCode::OK, "the held request completes: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_thread_turns_health_to_503_for_good() {
    let (s, gate) = gated_state();
    assert_eq!(probe(&s).await.0, StatusCode::OK);
    gate.set(|g| g.panic = true);
    let request = completion(&s);
    let body = wait_for_probe(&s, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body, "engine thread panicked");
    // Its request ends, rather than hanging, with vLLM's answer to a dead
    // engine: a 500 (not a 200 with finish_reason `abort`).
    assert_eq!(answer(request).await, (StatusCode::INTERNAL_SERVER_ERROR, ENGINE_DIED.into()));
    // Longer than the stall timeout later, still dead: nothing revives it.
    tokio::time::sleep(IDLE).await;
    assert_eq!(probe(&s).await, (StatusCode::SERVICE_UNAVAILABLE, body));
}

/// A completion, a chat and a stream in flight when the engine thread
/// dies: the first two answer 500 with the error body; the stream, which
/// answered 200 before the engine died, ends with that body as an error
/// event, then `[DONE]` (vLLM's stream generators end every error so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_thread_fails_the_requests_it_held() {
    let (s, gate) = gated_state();
    // The first request's first step is held, so the others are admitted
    // at the next step, which runs all three and panics.
    gate.set(|g| g.hold = true);
    let many = 50;
    let completion = post(
        &s,
        "/v1/completions",
        json!({"prompt": "hello there", "max_tokens": many, "ignore_eos": true}),
    );
    tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || gate.wait_inside()
    })
    .await
    .unwrap();
    let chat = post(
        &s,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": many, "ignore_eos": true}),
    );
    let stream = post(
        &s,
        "/v1/completions",
        json!({"prompt": "hello there", "max_tokens": many, "ignore_eos": true, "stream": true,
               "stream_options": {"include_usage": true}}),
    );
    // Both are queued for the engine once they hold their slots (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.engine.num_in_flight() < 3 {
        assert!(Instant::now() < deadline, "the requests never reached the engine");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.set(|g| {
        g.panic_at_seqs = Some(3);
        g.hold = false;
    });

    let died = (StatusCode::INTERNAL_SERVER_ERROR, ENGINE_DIED.to_owned());
    assert_eq!(answer(completion).await, died);
    assert_eq!(answer(chat).await, died);
    let (status, text) = answer(stream).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let data = sse_data(&text);
    assert!(data.len() >= 2, "{text}");
    assert_eq!(data[data.len() - 2..], [ENGINE_DIED, "[DONE]"], "{text}");
    // Before the error, only text chunks: no finish reason, no usage.
    for chunk in &data[..data.len() - 2] {
        let v: serde_json::Value = serde_json::from_str(chunk).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], serde_json::Value::Null, "{text}");
        assert!(v.get("usage").is_none(), "{text}");
    }
    assert_eq!(wait_for_probe(&s, StatusCode::SERVICE_UNAVAILABLE).await, "engine thread panicked");
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
