//! `--reasoning-parser` through HTTP (axum `oneshot`), over the fake
//! executor with a tokenizer made for it: its sampled ids 2..5 are `<think>`,
//! `</think>`, `</th`, `ink>` (the end tag split over two tokens) and the
//! rest are words, so the generated text holds think tags. The fake's
//! tokens are a function of the context ([`FakeExecutor::expected_next`]),
//! so the test predicts each prompt's output and picks prompts whose
//! output has the shape a case needs (an R1-style answer: reasoning, one
//! end tag, answer), then checks the answer against that prediction,
//! non-streamed and streamed.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::FakeExecutor;
use strata_core::EngineCore;
use strata_metrics::{CacheConfigInfo, EngineMetrics};
use strata_server::chat::reasoning::ReasoningParser;
use strata_server::chat::ChatCompletionRequest;
use strata_server::{app, AppState, EngineHandle};
use strata_tokenizer::Tokenizer;
use tower::ServiceExt;

/// The vocabulary, model and tokenizer alike (the engine refuses prompt
/// ids beyond the model's); the fake samples ids 2..VOCAB. Within a KV
/// block the fake's next id is `2 + ((slot + 2) * last - 2) % (VOCAB - 2)`
/// (its digest is a weighted sum), so an even `VOCAB - 2` would never
/// put `ink>` (5) right after `</th` (4); 33 lets it.
const VOCAB: usize = 33;
const MAX_TOKENS: usize = 8;
/// An R1-style template: the prompt already opens `<think>` (#12999).
/// Questions are digits, so that prompts are spelled with few ids.
const TEMPLATE: &str = "{% for m in messages %}{{ m.content }}\n{% endfor %}\
{% if add_generation_prompt %}<think>\n{% endif %}";

/// A tokenizer of VOCAB ids: the specials, the tags and the split end
/// tag (2..6), a newline and the digits (which spell prompts one
/// character at a time), then words.
fn tokenizer() -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    let pieces: Vec<String> = ["<s>", "</s>", "<think>", "</think>", "</th", "ink>"]
        .into_iter()
        .map(str::to_owned)
        .chain(["\n".to_owned()])
        .chain((0..10).map(|d| d.to_string()))
        .chain((17..VOCAB).map(|i| format!(" w{i}")))
        .collect();
    assert_eq!(pieces.len(), VOCAB);
    for p in &pieces {
        let id = vocab.len();
        vocab.entry(p.clone()).or_insert(json!(id));
    }
    let added = |id: usize, content: &str, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": special})
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<s>", true), added(1, "</s>", true),
                         added(2, "<think>", false), added(3, "</think>", false)],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config = json!({"eos_token": "</s>", "bos_token": "<s>", "chat_template": TEMPLATE});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    Tokenizer::from_dir(dir.path()).unwrap()
}

fn fake() -> FakeExecutor {
    let mut exec = FakeExecutor::new(256, 16, 1024);
    exec.vocab_size = VOCAB;
    exec
}

fn state(parser: Option<ReasoningParser>) -> Arc<AppState> {
    let config = SchedulerConfig {
        max_num_seqs: 32,
        max_num_batched_tokens: 256,
        block_size: 16,
        num_blocks: 256,
        max_model_len: 1024,
        ..SchedulerConfig::default()
    };
    let cache = CacheConfigInfo::device(16, 256);
    let metrics = EngineMetrics::new("builtin", "0", 1024, &cache);
    let engine =
        EngineHandle::spawn(EngineCore::new(fake(), config), metrics, Duration::from_secs(10));
    Arc::new(AppState {
        engine,
        tokenizer: Arc::new(tokenizer()),
        reasoning_parser: parser,
        ..common::fake_state(Tokenizer::builtin())
    })
}

fn body(question: &str, extra: Value) -> Value {
    let mut b = json!({"model": "builtin", "max_tokens": MAX_TOKENS, "temperature": 0,
                       "messages": [{"role": "user", "content": question}]});
    b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    b
}

/// The ids the fake will generate for a chat request with `question`.
fn predicted_ids(state: &AppState, question: &str) -> Vec<u32> {
    let req: ChatCompletionRequest = serde_json::from_value(body(question, json!({}))).unwrap();
    let prompt = strata_server::chat::render_request(state, &req).unwrap();
    let mut context = state.tokenizer.encode(&prompt, false).unwrap();
    let exec = fake();
    let start = context.len();
    for _ in 0..MAX_TOKENS {
        context.push(exec.expected_next(&context));
    }
    context[start..].to_vec()
}

/// A question whose output is words, the end tag (as `end`: one token or
/// two), then words, and no other tag piece.
fn question_with(state: &AppState, end: &[u32]) -> (String, String) {
    for i in 0..20_000 {
        let q = i.to_string();
        let ids = predicted_ids(state, &q);
        let Some(at) = ids.windows(end.len()).position(|w| w == end) else { continue };
        let words = |s: &[u32]| !s.is_empty() && s.iter().all(|&t| t >= 6);
        if words(&ids[..at]) && words(&ids[at + end.len()..]) {
            return (q, state.tokenizer.decode(&ids, true).unwrap());
        }
    }
    panic!("no question gives an output ending its thinking with {end:?}");
}

async fn post(state: &Arc<AppState>, path: &str, body: Value) -> (StatusCode, String) {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn chat(state: &Arc<AppState>, body: Value) -> Value {
    let (status, text) = post(state, "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The streamed deltas: (each chunk's reasoning piece, each content piece).
async fn chat_stream(state: &Arc<AppState>, body: Value) -> (Vec<String>, Vec<String>) {
    let mut body = body;
    body["stream"] = json!(true);
    let (status, text) = post(state, "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (mut reasoning, mut content) = (Vec::new(), Vec::new());
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        assert!(delta.get("reasoning_content").is_none(), "{data}");
        // A piece that was all tag sends no chunk (as vLLM); only the last
        // chunk, which carries the finish reason, may have an empty delta.
        let says_something = ["reasoning", "content"].iter().any(|k| delta.get(*k).is_some());
        assert!(says_something || !chunk["choices"][0]["finish_reason"].is_null(), "{data}");
        if let Some(r) = delta["reasoning"].as_str() {
            reasoning.push(r.to_owned());
        }
        if let Some(c) = delta["content"].as_str() {
            content.push(c.to_owned());
        }
    }
    (reasoning, content)
}

/// The end tag, whole or split over two tokens, never leaks; the
/// streamed pieces join to the non-streamed fields.
#[tokio::test]
async fn deepseek_r1_splits_thinking_from_the_answer_streamed_or_not() {
    let s = state(Some(ReasoningParser::DeepSeekR1));
    for end in [&[3u32][..], &[4, 5]] {
        let (q, text) = question_with(&s, end);
        let (want_reasoning, want_content) = text.split_once("</think>").unwrap();
        let v = chat(&s, body(&q, json!({}))).await;
        let message = &v["choices"][0]["message"];
        assert_eq!(message["reasoning"], want_reasoning, "{text:?}");
        assert_eq!(message["content"], want_content, "{text:?}");
        assert!(message.get("reasoning_content").is_none());
        let (reasoning, content) = chat_stream(&s, body(&q, json!({}))).await;
        assert_eq!(reasoning.concat(), want_reasoning);
        assert_eq!(content.concat(), want_content);
        for piece in reasoning.iter().chain(&content) {
            assert!(!piece.contains("</th") && !piece.contains("ink>"), "{piece:?} of {text:?}");
        }
    }
}

#[tokio::test]
async fn include_reasoning_false_drops_the_thinking_only() {
    let s = state(Some(ReasoningParser::DeepSeekR1));
    let (q, text) = question_with(&s, &[3]);
    let (_, want_content) = text.split_once("</think>").unwrap();
    let hide = json!({"include_reasoning": false});
    let v = chat(&s, body(&q, hide.clone())).await;
    assert_eq!(v["choices"][0]["message"]["reasoning"], Value::Null);
    assert_eq!(v["choices"][0]["message"]["content"], want_content);
    let (reasoning, content) = chat_stream(&s, body(&q, hide)).await;
    assert!(reasoning.is_empty(), "{reasoning:?}");
    assert_eq!(content.concat(), want_content);
}

#[tokio::test]
async fn qwen3_with_thinking_disabled_serves_the_output_as_the_answer() {
    let s = state(Some(ReasoningParser::Qwen3));
    let (q, text) = question_with(&s, &[3]);
    let off = json!({"chat_template_kwargs": {"enable_thinking": false}});
    let v = chat(&s, body(&q, off)).await;
    assert_eq!(v["choices"][0]["message"]["reasoning"], Value::Null);
    assert_eq!(v["choices"][0]["message"]["content"], text);
    // Thinking on (the default): split as R1 is.
    let v = chat(&s, body(&q, json!({}))).await;
    let (want_reasoning, _) = text.split_once("</think>").unwrap();
    assert_eq!(v["choices"][0]["message"]["reasoning"], want_reasoning);
}

/// Without a parser, chat answers are as before; completions are never
/// parsed (vLLM's aren't).
#[tokio::test]
async fn without_a_parser_and_on_completions_the_text_is_untouched() {
    let plain = state(None);
    let (q, text) = question_with(&plain, &[3]);
    let v = chat(&plain, body(&q, json!({}))).await;
    assert_eq!(v["choices"][0]["message"], json!({"role": "assistant", "content": text}));
    let (reasoning, content) = chat_stream(&plain, body(&q, json!({}))).await;
    assert!(reasoning.is_empty());
    assert_eq!(content.concat(), text);
    let parsed = state(Some(ReasoningParser::DeepSeekR1));
    let req: ChatCompletionRequest = serde_json::from_value(body(&q, json!({}))).unwrap();
    let prompt = strata_server::chat::render_request(&parsed, &req).unwrap();
    let completion = json!({"model": "builtin", "prompt": prompt, "max_tokens": MAX_TOKENS});
    let (status, answer) = post(&parsed, "/v1/completions", completion).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["choices"][0]["text"], text);
    assert!(v["choices"][0].get("reasoning").is_none());
}
