//! The P/D router (`strata router`): one OpenAI-compatible front end for
//! prefill engines and decode engines, each a `strata serve` with a P/D
//! connector (docs/pd.md).
//!
//! A completion goes to a prefill engine with `max_tokens = 1` and
//! `kv_transfer_params.do_remote_decode`, which computes the prompt and
//! answers with the params a decode engine needs to pull its KV; then to a
//! decode engine with those params (`do_remote_prefill`), whose answer is
//! the client's, streamed or not. The client sees one response whose usage
//! carries the prefill side's cache hits, never the decode side's transfer
//! (docs/accounting.md, A18; see [`rewrite`]).
//!
//! Invariants:
//! - Bodies are opaque JSON: the router changes only the fields the P/D
//!   protocol needs, so the engines validate everything else, except what
//!   must be refused before a prefill leases KV nobody would pull (an
//!   unreadable body, a bad `n` or `stream`).
//! - Every upstream request is owned by the client's request (its future or
//!   its streamed body): a client that goes away takes the upstream
//!   connection with it, and the engine aborts.
//! - The router exports only what it alone sees (`strata:router_*`); token
//!   counts stay with the engines, so nothing is counted twice.
//! - Both hops of a client request carry one `X-Request-Id` (the client's,
//!   or one made for it) and the answer echoes it, so the engines' logs of
//!   its prefill and its decode join (`router/request_id.rs`).
//!
//! [`router_app`] builds the axum router from a [`RouterState`]; the binary
//! and the tests share it.

mod error;
pub mod metrics;
mod pool;
mod proxy;
pub(crate) mod request_id;
pub mod rewrite;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::future::join_all;
use serde_json::{json, Value};

pub use error::RouterError;
pub use metrics::{ErrorKind, Hop, RouterMetrics};
pub use pool::{Engine, InFlight, Pool, Role};

use crate::error::ApiError;

/// How an engine of a role is chosen for each request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Each engine in turn.
    #[default]
    RoundRobin,
    /// The engine with the fewest requests this router has in flight to
    /// it; ties in turn.
    LeastLoaded,
}

/// What `strata router` is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// Base URLs of the prefill engines (`http://host:port`).
    pub prefill_urls: Vec<String>,
    /// Base URLs of the decode engines.
    pub decode_urls: Vec<String>,
    pub policy: Policy,
    /// With a key, `/v1/*` requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// How long `/health` and `/v1/models` wait for an engine.
    pub health_timeout: Duration,
    /// How long a connection to an engine may take to open. There is no
    /// limit on a whole request: a long generation is not a fault.
    pub connect_timeout: Duration,
}

impl RouterConfig {
    pub fn new(prefill_urls: Vec<String>, decode_urls: Vec<String>) -> Self {
        Self {
            prefill_urls,
            decode_urls,
            policy: Policy::RoundRobin,
            api_key: None,
            health_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("at least one {0} engine URL is required")]
    NoEngines(&'static str),
    #[error("engine URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// An engine URL as the router uses it: `http://` added when no scheme is
/// given, no trailing slash (paths are appended). Plain HTTP only: the
/// engines speak no TLS, and the router's client has none.
pub fn normalize_url(url: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::BadUrl { url: url.to_owned(), reason: reason.into() };
    let full = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
    let parsed = reqwest::Url::parse(&full).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "http" {
        return Err(bad("only http:// is supported"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed"));
    }
    Ok(full.trim_end_matches('/').to_owned())
}

/// The router's shared state: the engines, the HTTP client and metrics.
#[derive(Debug)]
pub struct RouterState {
    pub prefill: Pool,
    pub decode: Pool,
    pub policy: Policy,
    pub api_key: Option<String>,
    pub health_timeout: Duration,
    pub client: reqwest::Client,
    pub metrics: RouterMetrics,
}

impl RouterState {
    pub fn new(config: RouterConfig) -> Result<Self, ConfigError> {
        let urls = |urls: &[String], role: &'static str| {
            if urls.is_empty() {
                return Err(ConfigError::NoEngines(role));
            }
            urls.iter().map(|u| normalize_url(u)).collect::<Result<Vec<_>, _>>()
        };
        let prefill_urls = urls(&config.prefill_urls, "prefill")?;
        let decode_urls = urls(&config.decode_urls, "decode")?;
        // No proxy: engines are addressed directly, and an HTTP_PROXY meant
        // for the outside world must not capture engine traffic.
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .build()?;
        let metrics = RouterMetrics::new();
        Ok(Self {
            prefill: Pool::new(Role::Prefill, &prefill_urls, &metrics),
            decode: Pool::new(Role::Decode, &decode_urls, &metrics),
            policy: config.policy,
            api_key: config.api_key,
            health_timeout: config.health_timeout,
            client,
            metrics,
        })
    }

    /// The response for a handler's result, counting an error by its kind.
    fn respond(&self, result: Result<Response, RouterError>) -> Response {
        result.unwrap_or_else(|e| {
            self.metrics.error(e.kind());
            // The detail (an engine's URL, the connection error) is logged
            // here; the client's body never carries it.
            if e.is_gateway() {
                tracing::warn!(kind = e.kind().as_str(), "request failed: {e}");
            } else {
                tracing::debug!(kind = e.kind().as_str(), "request failed: {e}");
            }
            e.into_response()
        })
    }
}

pub fn router_app(state: Arc<RouterState>) -> axum::Router {
    let v1 = axum::Router::new()
        .route("/v1/completions", post(proxy::completions))
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    axum::Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(crate::MAX_BODY_BYTES))
        .with_state(state)
}

/// The server's key check (`lib.rs`), counting refusals.
async fn require_key(State(state): State<Arc<RouterState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let ok = crate::has_bearer_key(&req, key);
        if !ok {
            return state.respond(Err(RouterError::from(ApiError::Unauthorized)));
        }
    }
    next.run(req).await
}

/// Whether an engine answers 200 on `/health` within the health timeout.
async fn engine_healthy(state: &RouterState, engine: &Engine) -> bool {
    let req = state.client.get(format!("{}/health", engine.url)).timeout(state.health_timeout);
    match req.send().await {
        Ok(r) => r.status() == StatusCode::OK,
        Err(e) => {
            tracing::debug!(url = %engine.url, "health check failed: {}", proxy::error_chain(&e));
            false
        }
    }
}

/// The engines of a pool that are up, and those that are down (checked
/// together, so a check takes one timeout at most).
async fn check_pool(state: &RouterState, pool: &Pool) -> (Vec<String>, Vec<String>) {
    let results = join_all(pool.engines.iter().map(|e| engine_healthy(state, e))).await;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for (engine, ok) in pool.engines.iter().zip(results) {
        if ok { &mut up } else { &mut down }.push(engine.url.clone());
    }
    (up, down)
}

/// 200 when at least one prefill and one decode engine are healthy (a
/// request can be served), else 503; the body lists each role's engines
/// up and down.
async fn health(State(state): State<Arc<RouterState>>) -> Response {
    let ((p_up, p_down), (d_up, d_down)) = futures_util::future::join(
        check_pool(&state, &state.prefill),
        check_pool(&state, &state.decode),
    )
    .await;
    let ok = !p_up.is_empty() && !d_up.is_empty();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "prefill": {"up": p_up, "down": p_down},
        "decode": {"up": d_up, "down": d_down},
    });
    (status, Json(body)).into_response()
}

/// The first decode engine (in turn) that lists its models: decode
/// engines serve the answers, so theirs is the list clients can use. An
/// engine's client error (401, 404) is its answer; a server error or no
/// answer in time moves on to the next engine.
async fn models(State(state): State<Arc<RouterState>>, headers: HeaderMap) -> Response {
    state.metrics.request("/v1/models");
    let auth = headers.get(header::AUTHORIZATION);
    for engine in state.decode.rotation() {
        let mut req =
            state.client.get(format!("{}/v1/models", engine.url)).timeout(state.health_timeout);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        let Ok(resp) = req.send().await else { continue };
        let status = resp.status();
        let Ok(bytes) = resp.bytes().await else { continue };
        if status.is_success() {
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                return (status, Json(v)).into_response();
            }
        } else if status.is_client_error() {
            return state.respond(Err(RouterError::upstream(Hop::Decode, status, &bytes)));
        }
    }
    state.respond(Err(RouterError::Unavailable("no decode engine answered /v1/models")))
}

async fn metrics_text(State(state): State<Arc<RouterState>>) -> Response {
    let text = state.metrics.encode_prometheus();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
