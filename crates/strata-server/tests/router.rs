//! The P/D router in process, over real HTTP on loopback, in front of fake
//! prefill and decode engines (small axum apps that record what they get
//! and answer canned JSON or SSE). Checks the two hop bodies, the usage
//! the client sees (docs/accounting.md A18, n > 1, the streamed usage chunk),
//! error pass-through (one OpenAI error body, no engine URL or upstream
//! detail in it), health, the policies and client disconnects.
//! Every wait is bounded.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
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
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f).await.expect("test timed out")
}

// ---------------------------------------------------------------- fakes

/// One request a fake engine received.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    body: Value,
    auth: Option<String>,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Signalled when a held stream is dropped (the engine saw its client go).
    stream_dropped: Arc<Notify>,
}

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn record(&self, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Value {
        let body: Value = serde_json::from_slice(body).unwrap();
        let auth = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
        self.seen.lock().unwrap().push(Seen { path: uri.path().into(), body: body.clone(), auth });
        body
    }
}

/// The request's marker: the prompt, or the first message's content. The
/// fakes behave by it ("fail", "noparams", "hold", ...).
fn marker(body: &Value) -> &str {
    body.get("prompt")
        .and_then(Value::as_str)
        .or_else(|| body.pointer("/messages/0/content").and_then(Value::as_str))
        .unwrap_or("")
}

fn prefill_usage() -> Value {
    json!({"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41,
        "prompt_tokens_details": {"cached_tokens": 16,
            "sources": {"local_compute": 24, "local_cache_hit": 16, "host": 0, "disk": 0, "remote": 0},
            "recomputed_tokens": 0}})
}

/// What the decode side's own usage says: the prompt arrived as a transfer.
fn decode_usage(n: u64) -> Value {
    json!({"prompt_tokens": 40 * n, "completion_tokens": 5 * n, "total_tokens": 45 * n,
        "prompt_tokens_details": {"cached_tokens": 0,
            "sources": {"local_compute": n, "local_cache_hit": 0, "host": 0, "disk": 0, "remote": 39 * n},
            "recomputed_tokens": 0}})
}

fn prefill_params() -> Value {
    json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": "prefill-0",
        "remote_block_ids": [3, 4, 5], "remote_host": "127.0.0.1", "remote_port": 7000,
        "transfer_id": "lease-1", "remote_num_tokens": 40, "remote_block_size": 16})
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "BadRequestError", "param": null, "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

async fn prefill_engine(
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
const SECRET_PAGE: &str =
    "Traceback (most recent call last): File \"/srv/engine/secret_module.py\", line 7";

/// Asserts that an answer names no engine URL and none of the upstream
/// detail a router sees (connection errors, engine pages).
fn assert_no_upstream_detail(text: &str, urls: &[String]) {
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
fn error_body(status: StatusCode, body: &Value) -> &serde_json::Map<String, Value> {
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
struct DropSignal(Arc<Notify>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

fn chunk(index: u64, text: &str) -> String {
    json!({"id": "cmpl-d", "object": "text_completion", "model": "m",
        "choices": [{"index": index, "text": text, "logprobs": null, "finish_reason": null}]})
    .to_string()
}

async fn decode_engine(
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

fn fake_app<H, T>(rec: Recorder, handler: H) -> axum::Router
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
struct Server {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(app: axum::Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { url, task }
}

/// A fake engine: its server and what it saw.
struct Fake {
    server: Server,
    rec: Recorder,
}

impl Fake {
    fn url(&self) -> String {
        self.server.url.clone()
    }
}

async fn fake_prefill() -> Fake {
    let rec = Recorder::default();
    let server = serve(fake_app(rec.clone(), prefill_engine)).await;
    Fake { server, rec }
}

async fn fake_decode() -> Fake {
    let rec = Recorder::default();
    let server = serve(fake_app(rec.clone(), decode_engine)).await;
    Fake { server, rec }
}

/// A loopback URL where nothing listens.
async fn closed_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

// ---------------------------------------------------------------- router

struct Router {
    server: Server,
    state: Arc<RouterState>,
}

async fn router_with(
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

async fn router(prefill: &Fake, decode: &Fake) -> Router {
    router_with(vec![prefill.url()], vec![decode.url()], Policy::RoundRobin, None).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap()
}

async fn post_json(r: &Router, path: &str, body: &Value) -> (StatusCode, Value) {
    let resp = client().post(format!("{}{path}", r.server.url)).json(body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn get_text(url: &str) -> (StatusCode, String) {
    let resp = client().get(url).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// A sample's value in the router's /metrics text.
async fn metric(r: &Router, series: &str) -> f64 {
    let (_, text) = get_text(&format!("{}/metrics", r.server.url)).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// Polls a metric until it reads `want` (bounded).
async fn wait_metric(r: &Router, series: &str, want: f64) {
    for _ in 0..250 {
        if metric(r, series).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{series} never reached {want} (now {})", metric(r, series).await);
}

fn in_flight(role: &str, url: &str) -> String {
    format!("strata:router_engine_in_flight{{role=\"{role}\",url=\"{url}\"}}")
}

fn errors(kind: &str) -> String {
    format!("strata:router_errors_total{{kind=\"{kind}\"}}")
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_goes_to_prefill_then_decode() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let client_body = json!({"model": "m", "prompt": "hello", "max_tokens": 20, "temperature": 0.0, "seed": 3});
        let (status, answer) = post_json(&r, "/v1/completions", &client_body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");

        let prefill = p.rec.seen();
        assert_eq!(prefill.len(), 1);
        assert_eq!(prefill[0].path, "/v1/completions");
        assert_eq!(
            prefill[0].body,
            json!({"model": "m", "prompt": "hello", "max_tokens": 1, "temperature": 0.0, "seed": 3,
                "stream": false, "n": 1, "kv_transfer_params": {"do_remote_decode": true, "num_pulls": 1}})
        );

        let decode = d.rec.seen();
        assert_eq!(decode.len(), 1);
        assert_eq!(decode[0].path, "/v1/completions");
        let mut params = prefill_params();
        params["do_remote_prefill"] = json!(true);
        params["do_remote_decode"] = json!(false);
        let mut want = client_body.clone();
        want["kv_transfer_params"] = params;
        assert_eq!(decode[0].body, want);

        // A18: prompt and completion counts from the decode engine, the
        // prompt's sources from the prefill engine; no params leak.
        assert!(answer.get("kv_transfer_params").is_none(), "{answer}");
        assert_eq!(answer["choices"][0]["text"], "abc");
        let usage = &answer["usage"];
        assert_eq!(usage["prompt_tokens"], 40);
        assert_eq!(usage["completion_tokens"], 5);
        assert_eq!(usage["total_tokens"], 45);
        assert_eq!(usage["prompt_tokens_details"], prefill_usage()["prompt_tokens_details"]);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 16);

        assert_eq!(metric(&r, "strata:router_requests_total{endpoint=\"/v1/completions\"}").await, 1.0);
        assert_eq!(metric(&r, "strata:router_hop_seconds_count{hop=\"prefill\"}").await, 1.0);
        assert_eq!(metric(&r, "strata:router_hop_seconds_count{hop=\"decode\"}").await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_sampling_pulls_n_times_and_scales_the_prefill_record() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, answer) =
            post_json(&r, "/v1/completions", &json!({"prompt": "hello", "n": 3})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let prefill = &p.rec.seen()[0].body;
        assert_eq!(prefill["n"], 1);
        assert_eq!(
            prefill["kv_transfer_params"],
            json!({"do_remote_decode": true, "num_pulls": 3})
        );
        assert_eq!(d.rec.seen()[0].body["n"], 3);

        let usage = &answer["usage"];
        assert_eq!(usage["prompt_tokens"], 120);
        assert_eq!(usage["completion_tokens"], 15);
        let details = &usage["prompt_tokens_details"];
        assert_eq!(details["cached_tokens"], 48);
        assert_eq!(
            details["sources"],
            json!({"local_compute": 72, "local_cache_hit": 48, "host": 0, "disk": 0, "remote": 0})
        );
        // The sources partition the prompt tokens the client is billed for.
        let sum: u64 =
            details["sources"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(sum, 120);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_cuts_max_completion_tokens_on_the_prefill_hop_only() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 50, "min_tokens": 4});
        let (status, answer) = post_json(&r, "/v1/chat/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let prefill = &p.rec.seen()[0];
        assert_eq!(prefill.path, "/v1/chat/completions");
        assert_eq!(prefill.body["max_tokens"], 1);
        assert_eq!(prefill.body["max_completion_tokens"], 1);
        assert!(prefill.body.get("min_tokens").is_none());
        assert_eq!(prefill.body["messages"], body["messages"]);
        let decode = &d.rec.seen()[0];
        assert_eq!(decode.path, "/v1/chat/completions");
        assert_eq!(decode.body["max_completion_tokens"], 50);
        assert_eq!(decode.body["min_tokens"], 4);
        assert!(decode.body.get("max_tokens").is_none());
        assert_eq!(
            metric(&r, "strata:router_requests_total{endpoint=\"/v1/chat/completions\"}").await,
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_passes_chunks_through_and_rewrites_the_usage_chunk() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let body = json!({"prompt": "hello", "n": 2, "stream": true, "stream_options": {"include_usage": true}});
        let resp = client().post(format!("{}/v1/completions", r.server.url)).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
        let data = sse_data(&resp.text().await.unwrap());

        let prefill = &p.rec.seen()[0].body;
        assert_eq!(prefill["stream"], false);
        assert!(prefill.get("stream_options").is_none());
        assert_eq!(prefill["kv_transfer_params"]["num_pulls"], 2);
        let decode = &d.rec.seen()[0].body;
        assert_eq!(decode["stream"], true);
        assert_eq!(decode["stream_options"], json!({"include_usage": true}));
        assert_eq!(decode["kv_transfer_params"]["do_remote_prefill"], true);

        // 3 texts x 2 choices, byte for byte, then usage, then [DONE].
        assert_eq!(data.len(), 8, "{data:?}");
        let mut want = Vec::new();
        for text in ["a", "b", "c"] {
            for i in 0..2 {
                want.push(chunk(i, text));
            }
        }
        assert_eq!(data[..6], want[..]);
        let usage: Value = serde_json::from_str(&data[6]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 80);
        assert_eq!(usage["usage"]["completion_tokens"], 10);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["sources"]["local_compute"], 48);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["sources"]["remote"], 0);
        assert_eq!(data[7], "[DONE]");

        // Without include_usage no chunk carries usage.
        let body = json!({"prompt": "hello", "stream": true});
        let resp = client().post(format!("{}/v1/completions", r.server.url)).json(&body).send().await.unwrap();
        let data = sse_data(&resp.text().await.unwrap());
        assert_eq!(data.len(), 4);
        assert!(data.iter().all(|d| !d.contains("usage")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_error_passes_through_with_its_status() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "fail"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["message"], "prefill refused");
        assert_eq!(body["error"]["code"], 400);
        assert!(d.rec.seen().is_empty());
        assert_eq!(metric(&r, &errors("prefill_error")).await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_error_passes_through_with_its_status() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, body) =
            post_json(&r, "/v1/completions", &json!({"prompt": "decodefail", "stream": true}))
                .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["message"], "decode overloaded");
        assert_eq!(metric(&r, &errors("decode_error")).await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_kv_transfer_params_is_a_bad_gateway() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "noparams"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let e = error_body(status, &body);
        assert_eq!(e["type"], "BadGatewayError");
        assert_eq!(
            e["message"],
            "the upstream prefill engine returned no kv_transfer_params (is it running with a P/D connector?)"
        );
        assert_no_upstream_detail(&body.to_string(), &[p.url(), d.url()]);
        assert!(d.rec.seen().is_empty());
        assert_eq!(metric(&r, &errors("no_kv_transfer_params")).await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_without_touching_the_engines() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let url = format!("{}/v1/completions", r.server.url);
        let bodies = [
            "{not json",
            "",
            "[1, 2]",
            r#"{"prompt": "x", "n": 0}"#,
            r#"{"prompt": "x", "stream": "yes"}"#,
        ];
        for raw in bodies {
            let resp = client()
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(raw)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{raw}");
            let body: Value = resp.json().await.unwrap();
            let e = error_body(StatusCode::BAD_REQUEST, &body);
            assert_eq!(e["type"], "BadRequestError", "{raw}");
            // The field at fault, where there is one.
            let param = match raw {
                r#"{"prompt": "x", "n": 0}"# => json!("n"),
                r#"{"prompt": "x", "stream": "yes"}"# => json!("stream"),
                _ => Value::Null,
            };
            assert_eq!(e["param"], param, "{raw}");
        }
        assert!(p.rec.seen().is_empty());
        assert!(d.rec.seen().is_empty());
        assert_eq!(metric(&r, &errors("bad_request")).await, bodies.len() as f64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_a_bad_gateway() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let closed = closed_url().await;
        let r = router_with(vec![closed.clone()], vec![d.url()], Policy::RoundRobin, None).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "hello"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let e = error_body(status, &body);
        assert_eq!(e["type"], "BadGatewayError");
        assert_eq!(e["message"], "upstream prefill engine unavailable");
        assert_eq!(e["param"], Value::Null);
        assert_no_upstream_detail(&body.to_string(), &[closed.clone(), d.url()]);
        assert_eq!(metric(&r, &errors("upstream_unreachable")).await, 1.0);
        let url = &r.state.prefill.engines[0].url;
        assert_eq!(metric(&r, &in_flight("prefill", url)).await, 0.0);

        // The same for the decode hop, after a prefill that succeeded.
        let r = router_with(vec![p.url()], vec![closed.clone()], Policy::RoundRobin, None).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "hello"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let e = error_body(status, &body);
        assert_eq!(e["message"], "upstream decode engine unavailable");
        assert_no_upstream_detail(&body.to_string(), &[p.url(), closed.clone()]);

        // /v1/models with no decode engine answering.
        let (status, text) = get_text(&format!("{}/v1/models", r.server.url)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_str(&text).unwrap();
        let e = error_body(status, &body);
        assert_eq!(e["type"], "ServiceUnavailableError");
        assert_eq!(e["message"], "no decode engine answered /v1/models");
        assert_no_upstream_detail(&text, &[p.url(), closed]);
    })
    .await;
}

/// An engine's answer that is not an OpenAI body (an error page, or a 200
/// that is not JSON) reaches the client as the router's own error body,
/// without the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_engine_answer_does_not_reach_the_client() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "crash"})).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let e = error_body(status, &body);
        assert_eq!(e["type"], "InternalServerError");
        assert_eq!(e["message"], "the prefill engine answered 500 Internal Server Error");
        assert_no_upstream_detail(&body.to_string(), &[p.url(), d.url()]);
        assert_eq!(metric(&r, &errors("prefill_error")).await, 1.0);

        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "garbage"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let e = error_body(status, &body);
        assert_eq!(e["type"], "BadGatewayError");
        assert_eq!(e["message"], "the upstream prefill engine gave an unreadable answer");
        assert_no_upstream_detail(&body.to_string(), &[p.url(), d.url()]);
        assert_eq!(metric(&r, &errors("prefill_error")).await, 2.0);
        assert!(d.rec.seen().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_a_prefill_and_a_decode_engine_up() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let down = closed_url().await;
        let r = router_with(vec![p.url()], vec![down.clone()], Policy::RoundRobin, None).await;
        let (status, text) = get_text(&format!("{}/health", r.server.url)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["decode"]["down"], json!([down]));
        assert_eq!(body["prefill"]["up"], json!([p.url()]));

        // One decode engine of two is enough.
        let r =
            router_with(vec![p.url()], vec![down.clone(), d.url()], Policy::RoundRobin, None).await;
        let (status, text) = get_text(&format!("{}/health", r.server.url)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["decode"]["up"], json!([d.url()]));
        assert_eq!(body["decode"]["down"], json!([down]));

        // An engine that does not answer within the timeout is down.
        let hung = serve(axum::Router::new().route(
            "/health",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK
            }),
        ))
        .await;
        let r = router_with(vec![hung.url.clone()], vec![d.url()], Policy::RoundRobin, None).await;
        let started = std::time::Instant::now();
        let (status, _) = get_text(&format!("{}/health", r.server.url)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_secs(10));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_decode_engines() {
    bounded(async {
        let (p, a, b) = (fake_prefill().await, fake_decode().await, fake_decode().await);
        let r = router_with(vec![p.url()], vec![a.url(), b.url()], Policy::RoundRobin, None).await;
        for i in 0..4 {
            let (status, _) =
                post_json(&r, "/v1/completions", &json!({"prompt": format!("r{i}")})).await;
            assert_eq!(status, StatusCode::OK);
        }
        let prompts =
            |f: &Fake| f.rec.seen().iter().map(|s| marker(&s.body).to_owned()).collect::<Vec<_>>();
        assert_eq!(prompts(&a), ["r0", "r2"]);
        assert_eq!(prompts(&b), ["r1", "r3"]);
        assert_eq!(p.rec.seen().len(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_picks_the_idle_engine() {
    bounded(async {
        let (p, a, b) = (fake_prefill().await, fake_decode().await, fake_decode().await);
        let r = router_with(vec![p.url()], vec![a.url(), b.url()], Policy::LeastLoaded, None).await;
        // Hold a stream open on the first engine.
        let body = json!({"prompt": "hold", "stream": true});
        let mut held = client()
            .post(format!("{}/v1/completions", r.server.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), StatusCode::OK);
        assert!(held.chunk().await.unwrap().is_some());
        assert_eq!(a.rec.seen().len(), 1);
        let gauge = |f: &Fake| in_flight("decode", &f.url());
        assert_eq!(metric(&r, &gauge(&a)).await, 1.0);
        // Round-robin would send one of these back to the busy engine.
        for i in 0..2 {
            let (status, _) =
                post_json(&r, "/v1/completions", &json!({"prompt": format!("l{i}")})).await;
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(a.rec.seen().len(), 1);
        assert_eq!(b.rec.seen().len(), 2);
        assert_eq!(metric(&r, &gauge(&b)).await, 0.0);
        drop(held);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_drops_the_decode_stream() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let body = json!({"prompt": "hold", "stream": true});
        let mut resp = client()
            .post(format!("{}/v1/completions", r.server.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(std::str::from_utf8(&first).unwrap().contains("data: "));
        let dropped = d.rec.stream_dropped.notified();
        drop(resp);
        tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .expect("the decode engine's stream was not dropped after the client left");
        wait_metric(&r, &errors("client_disconnected"), 1.0).await;
        wait_metric(&r, &in_flight("decode", &d.url()), 0.0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_and_is_passed_to_the_engines() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r =
            router_with(vec![p.url()], vec![d.url()], Policy::RoundRobin, Some("sk-test")).await;
        let url = format!("{}/v1/completions", r.server.url);
        let body = json!({"prompt": "hello"});
        let resp = client().post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let answer: Value = resp.json().await.unwrap();
        let e = error_body(StatusCode::UNAUTHORIZED, &answer);
        assert_eq!(e["type"], "AuthenticationError");
        assert_eq!(e["message"], "missing or invalid API key");
        let resp = client().post(&url).bearer_auth("wrong").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let resp = client().get(format!("{}/v1/models", r.server.url)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(p.rec.seen().is_empty());
        let resp = client().post(&url).bearer_auth("sk-test").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(p.rec.seen()[0].auth.as_deref(), Some("Bearer sk-test"));
        assert_eq!(d.rec.seen()[0].auth.as_deref(), Some("Bearer sk-test"));
        // /health and /metrics stay open.
        assert_eq!(get_text(&format!("{}/health", r.server.url)).await.0, StatusCode::OK);
        assert_eq!(metric(&r, &errors("unauthorized")).await, 3.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_come_from_a_healthy_decode_engine() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r =
            router_with(vec![p.url()], vec![closed_url().await, d.url()], Policy::RoundRobin, None)
                .await;
        for _ in 0..2 {
            let (status, text) = get_text(&format!("{}/v1/models", r.server.url)).await;
            assert_eq!(status, StatusCode::OK, "{text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["data"][0]["id"], "m");
        }
        let r =
            router_with(vec![p.url()], vec![closed_url().await], Policy::RoundRobin, None).await;
        let (status, text) = get_text(&format!("{}/v1/models", r.server.url)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_router_family_from_the_start() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, text) = get_text(&format!("{}/metrics", r.server.url)).await;
        assert_eq!(status, StatusCode::OK);
        for family in [
            "# TYPE strata:router_requests_total counter",
            "# TYPE strata:router_errors_total counter",
            "# TYPE strata:router_hop_seconds histogram",
            "# TYPE strata:router_engine_in_flight gauge",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
        for kind in [
            "prefill_error",
            "decode_error",
            "no_kv_transfer_params",
            "upstream_unreachable",
            "client_disconnected",
        ] {
            assert_eq!(metric(&r, &errors(kind)).await, 0.0);
        }
        assert_eq!(metric(&r, &in_flight("prefill", &p.url())).await, 0.0);
        assert!(!text.contains("# EOF"));
    })
    .await;
}

#[test]
fn config_refuses_missing_engines_and_bad_urls() {
    let ok = |p: &str, d: &str| RouterState::new(RouterConfig::new(vec![p.into()], vec![d.into()]));
    assert!(RouterState::new(RouterConfig::new(vec![], vec!["http://127.0.0.1:1".into()])).is_err());
    assert!(RouterState::new(RouterConfig::new(vec!["http://127.0.0.1:1".into()], vec![])).is_err());
    assert!(ok("https://127.0.0.1:1", "http://127.0.0.1:2").is_err());
    assert!(ok("http://127.0.0.1:1/?x=1", "http://127.0.0.1:2").is_err());
    let state = ok("127.0.0.1:1", "http://127.0.0.1:2/").unwrap();
    assert_eq!(state.prefill.engines[0].url, "http://127.0.0.1:1");
    assert_eq!(state.decode.engines[0].url, "http://127.0.0.1:2");
}
