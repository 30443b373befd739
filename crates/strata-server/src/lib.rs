//! strata-server: the OpenAI-compatible HTTP API over an engine thread.
//!
//! [`app`] builds the router from an [`AppState`]; `strata serve` and the
//! tests share it (axum's habit). The server is generic over the executor
//! only through [`driver::EngineHandle`], so its tests run on the fake
//! executor without the model crate.

pub mod accounting_log;
pub mod chat;
pub mod completions;
pub mod defaults;
pub mod driver;
pub mod error;
pub mod fields;
pub mod health;
pub mod kv_events;
pub mod openai;
pub mod router;
pub mod stop;
pub mod structured;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use strata_tokenizer::Tokenizer;

pub use driver::EngineHandle;
use error::ApiError;

/// Largest request body accepted (bytes).
pub const MAX_BODY_BYTES: usize = 8 << 20;

#[derive(Debug)]
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// The first `--served-model-name` (the metrics' `model_name`).
    pub served_model_name: String,
    /// The other names the model answers to (`--served-model-name a b`).
    pub model_aliases: Vec<String>,
    pub max_model_len: usize,
    /// Sampling defaults from the model's `generation_config.json`.
    pub generation_defaults: defaults::GenerationDefaults,
    /// Whether a request may bring its own `chat_template` (vLLM's
    /// `--trust-request-chat-template`; off by default, as there).
    pub trust_request_chat_template: bool,
    /// With a key, `/v1/*` requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests in flight beyond which new ones get 503.
    pub max_queued_requests: usize,
    /// Compiles structured-output constraints for the model, or why it
    /// cannot (a tokenizer whose token bytes are unknown).
    pub grammars: Result<Arc<strata_structured::GrammarCompiler>, String>,
    /// `--tool-call-parser` (reads tool calls out of `auto` answers).
    pub tool_call_parser: Option<Arc<dyn chat::tools::ToolCallParser>>,
    /// `--enable-auto-tool-choice`: `tool_choice: "auto"` is served.
    pub enable_auto_tool_choice: bool,
    /// `--reasoning-parser`: how a chat answer's thinking is split from
    /// it (`None`: it is not).
    pub reasoning_parser: Option<chat::reasoning::ReasoningParser>,
}

pub fn app(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        // vLLM's: `/ping` for SageMaker-style probes (the same answer as
        // `/health`), `/version`, `/load` (requests in flight, for
        // load-aware routers).
        .route("/ping", get(health).post(health))
        .route("/version", get(|| async { Json(json!({"version": env!("CARGO_PKG_VERSION")})) }))
        .route("/load", get(load))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Whether the request carries `Authorization: Bearer KEY`. The key is
/// compared in constant time (its length aside), so response timing does
/// not reveal how much of a guess was right.
/// The comparison takes the same time whatever the key given: both sides
/// are hashed (SHA-256) and the digests compared in constant time, so
/// neither the key's bytes nor its length leak through timing.
pub(crate) fn has_bearer_key(req: &Request, key: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let Some(given) = given else { return false };
    bool::from(Sha256::digest(given).ct_eq(&Sha256::digest(key.as_bytes())))
}

async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let ok = has_bearer_key(&req, key);
        if !ok {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    // One entry per served name, as vLLM lists them.
    let names = std::iter::once(&state.served_model_name).chain(&state.model_aliases);
    let data: Vec<serde_json::Value> = names
        .map(|name| {
            json!({
                "id": name, "object": "model", "created": completions::now_secs(),
                "owned_by": "strata", "root": state.served_model_name,
                "max_model_len": state.max_model_len,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn load(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"server_load": state.engine.num_in_flight()}))
}

/// `/health` and `/ping`: 200 with an empty body while the engine thread
/// is alive and making progress, 503 saying why otherwise (stalled past
/// `--health-stall-timeout`, stopped or panicked).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.engine.health() {
        health::EngineHealth::Healthy => StatusCode::OK.into_response(),
        unhealthy => (StatusCode::SERVICE_UNAVAILABLE, unhealthy.to_string()).into_response(),
    }
}

/// Encoded from the shared families (atomics), without the engine's
/// metrics lock: a scrape never waits for a step's `observe` and never
/// delays one. A poisoned metrics lock means the engine thread panicked
/// in the middle of updating them: the values may be half a step's, so
/// the answer is a 500 that says so, not numbers.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.metrics.is_poisoned() {
        let body = "metrics unavailable: the engine thread panicked while updating them\n";
        return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
    }
    let text = state.engine.exporter().encode_prometheus();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

#[derive(Deserialize)]
struct TokenizeRequest {
    prompt: String,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: TokenizeRequest = completions::parse_body(body)?;
    let tokens = completions::encode(&state, &req.prompt, req.add_special_tokens, "prompt")?;
    Ok(Json(json!({"count": tokens.len(), "max_model_len": state.max_model_len, "tokens": tokens})))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: DetokenizeRequest = completions::parse_body(body)?;
    let prompt = state.tokenizer.decode(&req.tokens, false).map_err(|e| {
        tracing::warn!("detokenizing a request failed: {e}");
        ApiError::invalid("tokens", "the tokens could not be decoded")
    })?;
    Ok(Json(json!({"prompt": prompt})))
}
