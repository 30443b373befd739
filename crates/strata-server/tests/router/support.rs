//! The router tests' fake engines, router and client helpers.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::stream;
use serde_json::{json, Value};
use strata_server::router::{router_app, Policy, RouterConfig, RouterState};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Every test ends within this, whatever hangs.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

pub async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f).await.expect("test timed out")
}

// ---------------------------------------------------------------- fakes

/// One request a fake engine received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub body: Value,
    pub auth: Option<String>,
    /// Its `X-Request-Id`.
    pub request_id: Option<String>,
}

#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Signalled when a held stream is dropped (the engine saw its client go).
    pub stream_dropped: Arc<Notify>,
}

impl Recorder {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn record(&self, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Value {
        let body: Value = serde_json::from_slice(body).unwrap();
        let text = |name| headers.get(name).map(|v: &HeaderValue| v.to_str().unwrap().to_owned());
        let (auth, request_id) = (text(header::AUTHORIZATION.as_str()), text("x-request-id"));
        let path = uri.path().into();
        self.seen.lock().unwrap().push(Seen { path, body: body.clone(), auth, request_id });
        body
    }
}

/// The request's marker: the prompt, or the first message's content. The
/// fakes behave by it ("fail", "noparams", "hold", ...).
pub fn marker(body: &Value) -> &str {
    body.get("prompt")
        .and_then(Value::as_str)
        .or_else(|| body.pointer("/messages/0/content").and_then(Value::as_str))
        .unwrap_or("")
}

pub fn prefill_usage() -> Value {
    json!({"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41,
        "prompt_tokens_details": {"cached_tokens": 16,
            "sources": {"local_compute": 24, "local_cache_hit": 16, "host": 0, "disk": 0, "remote": 0},
            "recomputed_tokens": 0}})
}

/// What the decode side's own usage says: the prompt arrived as a transfer.
pub fn decode_usage(n: u64) -> Value {
    json!({"prompt_tokens": 40 * n, "completion_tokens": 5 * n, "total_tokens": 45 * n,
        "prompt_tokens_details": {"cached_tokens": 0,
            "sources": {"local_compute": n, "local_cache_hit": 0, "host": 0, "disk": 0, "remote": 39 * n},
            "recomputed_tokens": 0}})
}

pub fn prefill_params() -> Value {
    json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": "prefill-0",
        "remote_block_ids": [3, 4, 5], "remote_host": "127.0.0.1", "remote_port": 7000,
        "transfer_id": "lease-1", "remote_num_tokens": 40, "remote_block_size": 16})
}

pub fn openai_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "BadRequestError", "param": null, "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

pub async fn prefill_engine(
    State(rec): State<Recorder>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = rec.record(&uri, &headers, &body);
    let mut answer = json!({"id": "cmpl-p", "object": "text_completion", "model": "m",
        "choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
        "usage": prefill_usage(), "kv_transfer_params": prefill_params()});
    match marker(&body) {
        "fail" => openai_error(StatusCode::BAD_REQUEST, "prefill refused"),
        // Not an OpenAI body: a framework's error page with internals.
        "crash" => (StatusCode::INTERNAL_SERVER_ERROR, SECRET_PAGE).into_response(),
        // A 200 that is not JSON.
        "garbage" => SECRET_PAGE.into_response(),
        "noparams" => {
            answer.as_object_mut().unwrap().remove("kv_transfer_params");
            Json(answer).into_response()
        }
        _ => Json(answer).into_response(),
    }
}

/// What a broken engine answers: text that must never reach a client.
pub const SECRET_PAGE: &str =
    "Traceback (most recent call last): File \"/srv/engine/secret_module.py\", line 7";

/// Asserts that an answer names no engine URL and none of the upstream
/// detail a router sees (connection errors, engine pages).
pub fn assert_no_upstream_detail(text: &str, urls: &[String]) {
    for url in urls {
        let host_port = url.trim_start_matches("http://");
        assert!(!text.contains(host_port), "the engine URL {url} reached the client: {text}");
    }
    for fragment in
        ["127.0.0.1", "http://", "secret_module", "Traceback", "error sending request", "onnection"]
    {
        assert!(!text.contains(fragment), "`{fragment}` reached the client: {text}");
    }
}

/// The body of an error answer, checked to be exactly the server's
/// `{"error": {message, type, param, code}}` with `code` the status.
pub fn error_body(status: StatusCode, body: &Value) -> &serde_json::Map<String, Value> {
    let top = body.as_object().unwrap();
    assert_eq!(top.keys().collect::<Vec<_>>(), ["error"], "{body}");
    let e = top["error"].as_object().unwrap();
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert_eq!(e["code"], status.as_u16(), "{body}");
    e
}

/// Sets its recorder's `stream_dropped` when the stream holding it drops.
pub struct DropSignal(pub Arc<Notify>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

pub fn chunk(index: u64, text: &str) -> String {
    json!({"id": "cmpl-d", "object": "text_completion", "model": "m",
        "choices": [{"index": index, "text": text, "logprobs": null, "finish_reason": null}]})
    .to_string()
}

pub async fn decode_engine(
    State(rec): State<Recorder>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = rec.record(&uri, &headers, &body);
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1);
    if marker(&body) == "decodefail" {
        return openai_error(StatusCode::SERVICE_UNAVAILABLE, "decode overloaded");
    }
    if body.get("stream") != Some(&json!(true)) {
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "text": "abc", "logprobs": null, "finish_reason": "stop"}))
            .collect();
        return Json(json!({"id": "cmpl-d", "object": "text_completion", "model": "m",
            "choices": choices, "usage": decode_usage(n),
            "kv_transfer_params": {"remote_engine_id": "decode-0"}}))
        .into_response();
    }
    if marker(&body) == "hold" {
        // A long answer: one chunk every 20 ms (bounded), until dropped.
        let signal = DropSignal(rec.stream_dropped.clone());
        let events = stream::unfold((0u32, signal), |(i, signal)| async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (i < 1500).then(|| {
                let e = Event::default().data(chunk(0, "t"));
                (Ok::<_, std::convert::Infallible>(e), (i + 1, signal))
            })
        });
        return Sse::new(events).into_response();
    }
    let mut events: Vec<String> = Vec::new();
    for text in ["a", "b", "c"] {
        for i in 0..n {
            events.push(chunk(i, text));
        }
    }
    if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
        events.push(
            json!({"id": "cmpl-d", "object": "text_completion", "model": "m", "choices": [], "usage": decode_usage(n)})
                .to_string(),
        );
    }
    events.push("[DONE]".into());
    let events =
        events.into_iter().map(|d| Ok::<_, std::convert::Infallible>(Event::default().data(d)));
    Sse::new(stream::iter(events)).into_response()
}

pub fn fake_app<H, T>(rec: Recorder, handler: H) -> axum::Router
where
    H: axum::handler::Handler<T, Recorder>,
    T: 'static,
{
    axum::Router::new()
        .route("/v1/completions", post(handler.clone()))
        .route("/v1/chat/completions", post(handler))
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": "m", "object": "model"}]}))
            }),
        )
        .route("/health", get(|| async { StatusCode::OK }))
        .with_state(rec)
}

/// A server on a free loopback port, stopped when dropped.
pub struct Server {
    pub url: String,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(app: axum::Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { url, task }
}

/// A fake engine: its server and what it saw.
pub struct Fake {
    pub server: Server,
    pub rec: Recorder,
}

impl Fake {
    pub fn url(&self) -> String {
        self.server.url.clone()
    }
}

pub async fn fake_prefill() -> Fake {
    let rec = Recorder::default();
    let server = serve(fake_app(rec.clone(), prefill_engine)).await;
    Fake { server, rec }
}

pub async fn fake_decode() -> Fake {
    let rec = Recorder::default();
    let server = serve(fake_app(rec.clone(), decode_engine)).await;
    Fake { server, rec }
}

/// A loopback URL where nothing listens.
pub async fn closed_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

// ---------------------------------------------------------------- router

pub struct Router {
    pub server: Server,
    pub state: Arc<RouterState>,
}

pub async fn router_with(
    prefill: Vec<String>,
    decode: Vec<String>,
    policy: Policy,
    key: Option<&str>,
) -> Router {
    let mut config = RouterConfig::new(prefill, decode);
    config.policy = policy;
    config.api_key = key.map(str::to_owned);
    let state = Arc::new(RouterState::new(config).unwrap());
    Router { server: serve(router_app(state.clone())).await, state }
}

pub async fn router(prefill: &Fake, decode: &Fake) -> Router {
    router_with(vec![prefill.url()], vec![decode.url()], Policy::RoundRobin, None).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap()
}

pub async fn post_json(r: &Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let resp = client().post(format!("{}{path}", r.server.url)).json(body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

pub async fn get_text(url: &str) -> (StatusCode, String) {
    let resp = client().get(url).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// A sample's value in the router's /metrics text.
pub async fn metric(r: &Router, series: &str) -> f64 {
    let (_, text) = get_text(&format!("{}/metrics", r.server.url)).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// Polls a metric until it reads `want` (bounded).
pub async fn wait_metric(r: &Router, series: &str, want: f64) {
    for _ in 0..250 {
        if metric(r, series).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{series} never reached {want} (now {})", metric(r, series).await);
}

pub fn in_flight(role: &str, url: &str) -> String {
    format!("strata:router_engine_in_flight{{role=\"{role}\",url=\"{url}\"}}")
}

pub fn errors(kind: &str) -> String {
    format!("strata:router_errors_total{{kind=\"{kind}\"}}")
}
