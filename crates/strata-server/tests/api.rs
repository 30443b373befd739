//! The HTTP API in process (axum `oneshot`), over the fake executor: usage
//! reconciles with /metrics, streaming and not, n > 1, stop strings, bad
//! input gets OpenAI-style errors (each error's status and body, and no
//! template engine detail in them) and leaves the engine serving.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use strata_server::{app, AppState};
use strata_tokenizer::Tokenizer;
use tower::ServiceExt;

fn state(api_key: Option<&str>) -> Arc<AppState> {
    state_with(api_key, 64, Tokenizer::builtin())
}

fn state_with(
    api_key: Option<&str>,
    max_queued_requests: usize,
    tokenizer: Tokenizer,
) -> Arc<AppState> {
    Arc::new(AppState {
        model_aliases: vec!["builtin-alias".into()],
        api_key: api_key.map(str::to_owned),
        max_queued_requests,
        ..common::fake_state(tokenizer)
    })
}

/// Sends a JSON POST (the body given as JSON, or raw bytes).
async fn post(
    state: &Arc<AppState>,
    path: &str,
    body: impl Into<Body>,
) -> axum::response::Response {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    app(state.clone()).oneshot(req).await.unwrap()
}

async fn call(
    state: &Arc<AppState>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let req =
        Request::builder().method(method).uri(path).header("content-type", "application/json");
    let req = req.body(body.map_or(Body::empty(), |b| Body::from(b.to_string()))).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Polls /metrics (bounded: 10 s) until `done` accepts it; returns that text.
async fn wait_for_metrics(s: &Arc<AppState>, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = call(s, "GET", "/metrics", None).await;
        if done(&text) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn completion_usage_reconciles_with_metrics() {
    let s = state(None);
    let mut prompt_tokens = 0;
    let mut cached = 0;
    for i in 0..4 {
        let body = json!({"model": "builtin", "prompt": format!("The shared beginning of every prompt here, then {i}"), "max_tokens": 5, "n": 2, "temperature": 0});
        let (status, text) = call(&s, "POST", "/v1/completions", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["choices"].as_array().unwrap().len(), 2);
        let u = &v["usage"];
        let src = &u["prompt_tokens_details"]["sources"];
        let sum: u64 = ["local_compute", "local_cache_hit", "host", "disk", "remote"]
            .iter()
            .map(|k| src[k].as_u64().unwrap())
            .sum();
        assert_eq!(sum, u["prompt_tokens"].as_u64().unwrap(), "sources partition the prompt");
        assert_eq!(u["completion_tokens"], 10);
        prompt_tokens += u["prompt_tokens"].as_u64().unwrap();
        cached += u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    }
    assert!(cached > 0, "the shared prefix was a cache hit");
    let (_, text) = call(&s, "GET", "/metrics", None).await;
    assert_eq!(metric(&text, "vllm:prompt_tokens_total{"), prompt_tokens as f64);
    assert_eq!(metric(&text, "strata:prompt_tokens_by_tier_total{"), prompt_tokens as f64);
    assert_eq!(metric(&text, "vllm:prompt_tokens_cached_total{"), cached as f64);
    assert_eq!(metric(&text, "vllm:generation_tokens_total{"), 40.0);
}

#[tokio::test]
async fn streaming_sends_chunks_usage_and_done() {
    let s = state(None);
    let body = json!({"prompt": "Hello", "max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}, "temperature": 0});
    let (status, text) = call(&s, "POST", "/v1/completions", Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let streamed: String = data[..data.len() - 2]
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut plain = body;
    plain["stream"] = json!(false);
    let (_, text) = call(&s, "POST", "/v1/completions", Some(plain)).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        streamed,
        v["choices"][0]["text"].as_str().unwrap(),
        "streamed text equals the full text"
    );
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_engine_keeps_serving() {
    let s = state(None);
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (json!({"prompt": "x", "max_tokens": -1}), StatusCode::BAD_REQUEST, "max_tokens"),
        (
            json!({"prompt": "x", "max_tokens": 2000}),
            StatusCode::BAD_REQUEST,
            "maximum context length",
        ),
        (json!({"prompt": "x", "temperature": -0.5}), StatusCode::BAD_REQUEST, "temperature"),
        (json!({"prompt": "x", "top_p": 1.5}), StatusCode::BAD_REQUEST, "top_p"),
        (json!({"prompt": "x", "n": 1000}), StatusCode::BAD_REQUEST, "n must be"),
        (json!({"prompt": ""}), StatusCode::BAD_REQUEST, "empty"),
        (json!({"prompt": [1, 2, 99999]}), StatusCode::BAD_REQUEST, "vocabulary"),
        (json!({"prompt": "x", "model": "gpt-4"}), StatusCode::NOT_FOUND, "does not exist"),
        (json!({"prompt": 5}), StatusCode::BAD_REQUEST, "invalid request body"),
        (json!({"max_tokens": 3}), StatusCode::BAD_REQUEST, "invalid request body"),
    ];
    for (body, status, needle) in cases {
        let (got, text) = call(&s, "POST", "/v1/completions", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{body}: {text}");
        assert_eq!(v["error"]["code"], status.as_u16());
    }
    assert_eq!(
        post(&s, "/v1/completions", vec![0xff, 0xfe, b'{']).await.status(),
        StatusCode::BAD_REQUEST
    );
    let (status, _) =
        call(&s, "POST", "/v1/completions", Some(json!({"prompt": "still fine", "max_tokens": 2})))
            .await;
    assert_eq!(status, StatusCode::OK);
    let (_, text) = call(&s, "GET", "/metrics", None).await;
    assert_eq!(metric(&text, "vllm:kv_cache_usage_perc{"), 0.0, "no blocks leaked");
}

#[tokio::test]
async fn api_key_guards_v1_routes_only() {
    let s = state(Some("sekret"));
    let (status, _) = call(&s, "GET", "/v1/models", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The key is compared in constant time; near misses still fail.
    for (auth, want) in [
        ("Bearer sekret", StatusCode::OK),
        ("Bearer sekreT", StatusCode::UNAUTHORIZED),
        ("Bearer sekre", StatusCode::UNAUTHORIZED),
        ("Bearer sekrets", StatusCode::UNAUTHORIZED),
        ("bearer sekret", StatusCode::UNAUTHORIZED),
        ("Bearer ", StatusCode::UNAUTHORIZED),
    ] {
        let req = Request::builder().uri("/v1/models").header("authorization", auth);
        let resp = app(s.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), want, "{auth}");
    }
    assert_eq!(call(&s, "GET", "/health", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn tokenize_and_detokenize_round_trip() {
    let s = state(None);
    let (_, text) = call(&s, "POST", "/tokenize", Some(json!({"prompt": "café 日本"}))).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let tokens = v["tokens"].clone();
    assert_eq!(v["count"].as_u64().unwrap() as usize, tokens.as_array().unwrap().len());
    let (_, text) = call(&s, "POST", "/detokenize", Some(json!({"tokens": tokens}))).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["prompt"].as_str().unwrap().ends_with("café 日本"));
}

#[tokio::test]
async fn stop_strings_cut_the_text_and_end_the_choice() {
    let s = state(None);
    let body = json!({"prompt": "abc", "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    let (_, text) = call(&s, "POST", "/v1/completions", Some(body.clone())).await;
    let full = serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 6, "{full:?}");
    let stop: String = chars[3..5].iter().collect();
    let expected: String = full[..full.find(&stop).unwrap()].to_string();
    for stream in [false, true] {
        let mut b = body.clone();
        b["stop"] = json!([stop]);
        b["stream"] = json!(stream);
        let (_, text) = call(&s, "POST", "/v1/completions", Some(b)).await;
        let (got, finish) = if stream {
            let chunks: Vec<Value> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let t: String = chunks
                .iter()
                .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
                .collect();
            (t, chunks.last().unwrap()["choices"][0]["finish_reason"].clone())
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(got, expected, "stream {stream}");
        assert_eq!(finish, "stop");
    }
}

#[tokio::test]
async fn chat_completions_render_the_template_and_report_usage() {
    let s = state(None);
    let body = json!({"model": "builtin", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a story."}]}
    ], "max_completion_tokens": 5, "temperature": 0});
    let (status, text) = call(&s, "POST", "/v1/chat/completions", Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // The prompt is the ChatML rendering, tokenized without extra specials;
    // text parts are joined with newlines, as vLLM passes them to a
    // template that takes string content.
    let rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTell me \na story.<|im_end|>\n<|im_start|>assistant\n";
    let expected = s.tokenizer.encode(rendered, false).unwrap().len();
    assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, expected);
    let mut stream = body;
    stream["stream"] = json!(true);
    let (_, text) = call(&s, "POST", "/v1/chat/completions", Some(stream)).await;
    assert!(
        text.contains("chat.completion.chunk") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    let (status, text) =
        call(&s, "POST", "/v1/chat/completions", Some(json!({"messages": []}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
}

/// Hundreds of generated bad requests: each gets a 4xx with an OpenAI
/// error body, the server keeps serving, and no KV block leaks.
#[tokio::test]
async fn hundreds_of_bad_requests_leave_the_server_healthy() {
    let s = state(None);
    let valid = json!({"prompt": "hello there", "max_tokens": 4, "temperature": 0.5, "top_p": 0.9, "n": 2, "stop": ["x"]});
    let valid_text = valid.to_string();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let bad_values = [
        json!(-1),
        json!("abc"),
        json!(1e30),
        json!(null),
        json!([1, "a"]),
        json!({"k": 1}),
        json!(true),
        json!(-1e9),
    ];
    let fields = [
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "prompt",
        "stop",
        "top_k",
        "min_p",
        "presence_penalty",
        "seed",
        "logprobs",
        "model",
        "min_tokens",
    ];
    let mut checked = 0;
    for i in 0..300 {
        let (path, body): (&str, Vec<u8>) = match i % 5 {
            // Truncated JSON.
            0 => (
                "/v1/completions",
                valid_text.as_bytes()[..(next() as usize % (valid_text.len() - 1))].to_vec(),
            ),
            // A field set to a value of the wrong type or range.
            1 | 2 => {
                let mut v = valid.clone();
                v[fields[next() as usize % fields.len()]] =
                    bad_values[next() as usize % bad_values.len()].clone();
                ("/v1/completions", v.to_string().into_bytes())
            }
            // Invalid UTF-8 somewhere in the body.
            3 => {
                let mut b = valid_text.clone().into_bytes();
                let at = next() as usize % b.len();
                b[at] = 0xff;
                ("/v1/completions", b)
            }
            // Chat with broken messages.
            _ => {
                let messages = [
                    json!([]),
                    json!([{"role": "user"}]),
                    json!("hi"),
                    json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                ];
                ("/v1/chat/completions", json!({"messages": messages[next() as usize % messages.len()].clone(), "max_tokens": 2}).to_string().into_bytes())
            }
        };
        let resp = post(&s, path, body.clone()).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if status == StatusCode::OK {
            // Some mutations are still valid requests (e.g. a null seed).
            continue;
        }
        assert!(status.is_client_error(), "{status} for {}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
        assert!(v["error"]["message"].is_string(), "{v}");
        checked += 1;
    }
    assert!(checked > 200, "most generated requests are bad ({checked})");
    let big = vec![b' '; strata_server::MAX_BODY_BYTES + 1];
    let resp = post(&s, "/v1/completions", big).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (status, text) = call(
        &s,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "still serving", "max_tokens": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (_, metrics) = call(&s, "GET", "/metrics", None).await;
    assert_eq!(metric(&metrics, "vllm:kv_cache_usage_perc{"), 0.0, "no blocks leaked");
    assert_eq!(metric(&metrics, "vllm:num_requests_running{"), 0.0);
}

#[tokio::test]
async fn a_client_that_disconnects_aborts_its_request() {
    let s = state(None);
    let body =
        json!({"prompt": "go on and on", "max_tokens": 500, "stream": true, "ignore_eos": true});
    let resp = post(&s, "/v1/completions", body.to_string()).await;
    let mut body = resp.into_body();
    // Read one chunk, then hang up.
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let abort =
        r#"vllm:request_success_total{model_name="builtin",engine="0",finished_reason="abort"}"#;
    let metrics = wait_for_metrics(&s, "the abort", |m| metric(m, abort) == 1.0).await;
    assert_eq!(metric(&metrics, "vllm:kv_cache_usage_perc{"), 0.0, "its blocks were freed");
}

#[tokio::test]
async fn a_full_queue_answers_503() {
    let s = state(None);
    let mut holders = Vec::new();
    // Fill the queue (64 in flight) with long streaming requests.
    for _ in 0..8 {
        let body = json!({"prompt": "hold", "max_tokens": 1000, "n": 8, "stream": true, "ignore_eos": true});
        holders.push(post(&s, "/v1/completions", body.to_string()).await);
    }
    let (status, text) =
        call(&s, "POST", "/v1/completions", Some(json!({"prompt": "one more", "max_tokens": 2})))
            .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("retry later"));
    drop(holders);
}

#[tokio::test]
async fn logprobs_come_back_in_openai_formats() {
    let s = state(None);
    let (_, text) = call(
        &s,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "Hi", "max_tokens": 3, "logprobs": 2, "temperature": 0})),
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 3);
    assert!(lp["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.as_object().unwrap().len() <= 2));
    assert!(lp["token_logprobs"].as_array().unwrap().iter().all(|p| p.as_f64().unwrap() <= 0.0));
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "logprobs": true, "top_logprobs": 3});
    let (_, text) = call(&s, "POST", "/v1/chat/completions", Some(body)).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2, "{v}");
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    let (_, text) =
        call(&s, "POST", "/v1/completions", Some(json!({"prompt": "Hi", "max_tokens": 2}))).await;
    assert!(serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["logprobs"].is_null());
}

/// Every metric the Grafana dashboard queries is one the server exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_families() {
    let s = state(None);
    let (_, exposition) = call(&s, "GET", "/metrics", None).await;
    let exported: std::collections::BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana/strata-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    exprs.push(dashboard["templating"]["list"][1]["query"].as_str().unwrap().to_string());
    let mut checked = 0;
    for expr in &exprs {
        for (i, _) in expr
            .match_indices(':')
            .filter(|(i, _)| expr[..*i].ends_with("vllm") || expr[..*i].ends_with("strata"))
        {
            let start = expr[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name.clone(), |n, s| n.strip_suffix(s).map(str::to_owned).unwrap_or(n));
            assert!(
                exported.contains(&family),
                "the dashboard queries `{name}`, which the server does not export"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} metric references checked");
}

/// A19 and A20 through HTTP: n = 4 with a 58-token prompt counts 232
/// prompt tokens everywhere; an aborted request adds no TTFT sample.
#[tokio::test]
async fn a19_and_a20_through_http() {
    let s = state(None);
    let prompt: Vec<u32> = (0..58).map(|i| 100 + i).collect();
    let (_, text) = call(
        &s,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": prompt, "max_tokens": 2, "n": 4})),
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 232, "{v}");
    let src = &v["usage"]["prompt_tokens_details"]["sources"];
    let sum: u64 = ["local_compute", "local_cache_hit", "host", "disk", "remote"]
        .iter()
        .map(|k| src[k].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 232);
    let (_, m) = call(&s, "GET", "/metrics", None).await;
    assert_eq!(metric(&m, "vllm:prompt_tokens_total{"), 232.0);
    assert_eq!(metric(&m, "vllm:time_to_first_token_seconds_count{"), 4.0);
    assert_eq!(metric(&m, "vllm:request_params_n_sum{"), 4.0);
    assert_eq!(metric(&m, "vllm:request_params_n_count{"), 1.0);
    // Streams dropped at once, long before they could finish: aborted,
    // and those without a first token have no TTFT sample.
    let body =
        json!({"prompt": "x", "max_tokens": 1000, "stream": true, "n": 16, "ignore_eos": true});
    drop(post(&s, "/v1/completions", body.to_string()).await);
    let m = wait_for_metrics(&s, "all 20 requests to finish", |m| {
        metric(m, "vllm:request_success_total{") == 20.0
    })
    .await;
    let aborted = metric(
        &m,
        r#"vllm:request_success_total{model_name="builtin",engine="0",finished_reason="abort"}"#,
    );
    // Every request with a first token has one TTFT sample; the aborted
    // ones that never produced a token have none.
    let ttft = metric(&m, "vllm:time_to_first_token_seconds_count{");
    assert_eq!(ttft, metric(&m, "vllm:request_prefill_kv_computed_tokens_count{"));
    assert!(aborted > 0.0);
}

/// The /metrics text after a scripted workload, with time-dependent values
/// redacted: names, labels, buckets and token counts are part of the API.
#[tokio::test]
async fn metrics_exposition_snapshot() {
    let s = state(None);
    for i in 0..3 {
        let body = json!({"prompt": format!("A shared prompt prefix that spans a full block, then {i}"), "max_tokens": 3, "temperature": 0});
        let (status, _) = call(&s, "POST", "/v1/completions", Some(body)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, text) = call(&s, "GET", "/metrics", None).await;
    let redacted: String = text
        .lines()
        .map(|l| {
            let timing = !l.starts_with('#') && l.contains("_seconds");
            match (timing, l.rsplit_once(' ')) {
                (true, Some((series, _))) => format!("{series} [redacted]\n"),
                _ => format!("{l}\n"),
            }
        })
        .collect();
    insta::assert_snapshot!(redacted);
}

/// The body of an error answer: exactly `{"error": {message, type, param,
/// code}}` with `code` the status; returns the inner object.
fn error_body(status: StatusCode, text: &str) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let top = v.as_object().unwrap();
    assert_eq!(top.keys().collect::<Vec<_>>(), ["error"], "{text}");
    let e = top["error"].as_object().unwrap().clone();
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{text}");
    assert_eq!(e["code"], status.as_u16(), "{text}");
    assert!(e["message"].is_string(), "{text}");
    e
}

/// Each `ApiError` a client can provoke over HTTP: its status, `type`,
/// `param` and message.
#[tokio::test]
async fn each_api_error_has_its_status_type_and_param() {
    let s = state(None);
    let bad = StatusCode::BAD_REQUEST;
    // (path, body, status, type, param, message or its beginning)
    let cases: Vec<(&str, Value, StatusCode, &str, Value, &str)> = vec![
        // InvalidRequest, naming the field.
        ("/v1/completions", json!({"prompt": "x", "temperature": -0.5}), bad, "BadRequestError",
            json!("temperature"), "temperature must be a finite number >= 0, got -0.5"),
        ("/v1/completions", json!({"prompt": "x", "top_k": -3}), bad, "BadRequestError",
            json!("top_k"), "top_k must be -1 (disabled) or at least 1, got -3"),
        ("/v1/completions", json!({"prompt": "x", "n": 0}), bad, "BadRequestError",
            json!("n"), "n must be between 1 and 16, got 0"),
        ("/v1/completions", json!({"prompt": ""}), bad, "BadRequestError",
            json!("prompt"), "the prompt is empty"),
        ("/v1/chat/completions", json!({"messages": []}), bad, "BadRequestError",
            json!("messages"), "messages must not be empty"),
        // InvalidRequest without a field.
        ("/v1/completions", json!({"max_tokens": 3}), bad, "BadRequestError", Value::Null,
            "invalid request body: missing field `prompt`"),
        // From<AdmissionError>: an empty token prompt, a token outside the
        // vocabulary, a prompt that fills the context, a completion that
        // does not fit.
        ("/v1/completions", json!({"prompt": []}), bad, "BadRequestError",
            json!("prompt"), "the prompt is empty"),
        ("/v1/completions", json!({"prompt": [1, 2, 99999]}), bad, "BadRequestError",
            json!("prompt"), "token id 99999 is outside the vocabulary of 512"),
        ("/v1/completions", json!({"prompt": vec![7; 1024], "max_tokens": 1}), bad, "BadRequestError",
            Value::Null,
            "This model's maximum context length is 1024 tokens, and the prompt's 1024 tokens leave no room for a completion"),
        ("/v1/completions", json!({"prompt": [7, 8], "max_tokens": 2000}), bad, "BadRequestError",
            json!("max_tokens"),
            "This model's maximum context length is 1024 tokens, but 2002 were requested (2 in the prompt, 2000 in the completion)"),
        // ModelNotFound.
        ("/v1/completions", json!({"prompt": "x", "model": "gpt-4"}), StatusCode::NOT_FOUND,
            "NotFoundError", json!("model"), "The model `gpt-4` does not exist."),
        ("/v1/chat/completions", json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
            StatusCode::NOT_FOUND, "NotFoundError", json!("model"), "The model `gpt-4` does not exist."),
    ];
    for (path, body, status, kind, param, message) in cases {
        let (got, text) = call(&s, "POST", path, Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {text}");
        let e = error_body(status, &text);
        assert_eq!(e["type"], kind, "{body}: {text}");
        assert_eq!(e["param"], param, "{body}: {text}");
        // The whole message, but for serde's position suffix.
        assert!(e["message"].as_str().unwrap().starts_with(message), "{body}: {text}");
    }

    // PayloadTooLarge.
    let resp = post(&s, "/v1/completions", vec![b' '; strata_server::MAX_BODY_BYTES + 1]).await;
    let status = resp.status();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let text =
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let e = error_body(status, &text);
    assert_eq!(e["type"], "BadRequestError");
    assert_eq!(
        e["message"],
        format!("the request body exceeds {} bytes", strata_server::MAX_BODY_BYTES)
    );

    // Unauthorized.
    let guarded = state(Some("sekret"));
    let (status, text) =
        call(&guarded, "POST", "/v1/completions", Some(json!({"prompt": "x"}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let e = error_body(status, &text);
    assert_eq!(e["type"], "AuthenticationError");
    assert_eq!(e["message"], "missing or invalid API key");
    assert_eq!(e["param"], Value::Null);

    // Overloaded: a server that takes no request at all.
    let full = state_with(None, 0, Tokenizer::builtin());
    let (status, text) = call(&full, "POST", "/v1/completions", Some(json!({"prompt": "x"}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let e = error_body(status, &text);
    assert_eq!(e["type"], "ServiceUnavailableError");
    assert_eq!(e["message"], "the server is at its limit of 0 requests in flight; retry later");

    // EngineUnavailable: once the engine thread has stopped. A request that
    // slips in before it exits is aborted (200), so retry, bounded.
    let stopping = state(None);
    stopping.engine.shutdown();
    let mut answered = None;
    for _ in 0..200 {
        let body = json!({"prompt": "x", "max_tokens": 1});
        let (status, text) = call(&stopping, "POST", "/v1/completions", Some(body)).await;
        if status != StatusCode::OK {
            answered = Some((status, text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, text) = answered.expect("the stopped engine kept answering 200");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let e = error_body(status, &text);
    assert_eq!(e["type"], "ServiceUnavailableError");
    assert_eq!(e["message"], "the engine is shutting down");
}

/// A model directory's tokenizer (the built-in one) with `template` as its
/// chat template.
fn tokenizer_with_template(template: &str) -> Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    strata_tokenizer::builtin::write_files(dir.path()).unwrap();
    let config = dir.path().join("tokenizer_config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    v["chat_template"] = json!(template);
    std::fs::write(&config, v.to_string()).unwrap();
    Tokenizer::from_dir(dir.path()).unwrap()
}

/// Fragments of minijinja's own error text, and of the templates below,
/// that must never reach a client.
const TEMPLATE_INTERNALS: [&str; 10] = [
    "invalid operation",
    "unknown function",
    "syntax error",
    "(in chat",
    "line ",
    "{%",
    "raise_exception",
    "no_such_function",
    "message['role']",
    "minijinja",
];

fn assert_no_template_internals(text: &str) {
    for fragment in TEMPLATE_INTERNALS {
        assert!(!text.contains(fragment), "`{fragment}` reached the client: {text}");
    }
}

/// A template's own `raise_exception` message reaches the client (400),
/// as transformers surfaces it; minijinja's error text (its kind, the
/// template's name and line, its source) does not, and any other template
/// failure is a generic 500.
#[tokio::test]
async fn chat_template_errors_do_not_leak_minijinja_detail() {
    let template = "{% for message in messages %}\
        {% if message['content'] == 'raise' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
        {% if message['content'] == 'crash' %}{{ no_such_function(message) }}{% endif %}\
        <|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}\
        {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let s = state_with(None, 64, tokenizer_with_template(template));
    let chat = |content: &str| json!({"messages": [{"role": "user", "content": content}], "max_tokens": 2});

    let (status, text) = call(&s, "POST", "/v1/chat/completions", Some(chat("raise"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let e = error_body(status, &text);
    assert_eq!(e["type"], "BadRequestError");
    assert_eq!(e["param"], "messages");
    assert_eq!(
        e["message"],
        "the chat template rejected the messages: Conversation roles must alternate user/assistant/user/assistant/..."
    );
    assert_no_template_internals(&text);

    let (status, text) = call(&s, "POST", "/v1/chat/completions", Some(chat("crash"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    let e = error_body(status, &text);
    assert_eq!(e["type"], "InternalServerError");
    assert_eq!(e["param"], Value::Null);
    assert_eq!(e["message"], strata_server::chat::TEMPLATE_FAILED);
    assert_no_template_internals(&text);

    // The same template still renders ordinary messages.
    let (status, text) = call(&s, "POST", "/v1/chat/completions", Some(chat("hello"))).await;
    assert_eq!(status, StatusCode::OK, "{text}");

    // A template that does not compile: 500, no parser message.
    let broken =
        state_with(None, 64, tokenizer_with_template("{% for m in messages %}{{ m['role'] }"));
    let (status, text) = call(&broken, "POST", "/v1/chat/completions", Some(chat("hello"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    let e = error_body(status, &text);
    assert_eq!(e["message"], strata_server::chat::TEMPLATE_FAILED);
    assert_no_template_internals(&text);
}

/// As vLLM: a request's own `chat_template` needs
/// `--trust-request-chat-template` (off here).
#[tokio::test]
async fn a_request_chat_template_needs_the_trust_flag() {
    let s = state(None);
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                      "chat_template": "{{ messages[0].content }}"});
    let (status, text) = call(&s, "POST", "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["param"], "chat_template");
    assert!(v["error"]["message"].as_str().unwrap().contains("--trust-request-chat-template"));
}
