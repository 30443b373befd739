//! Chat templates render byte for byte as Hugging Face transformers'
//! `apply_chat_template(..., tokenize=False)` renders them
//! (fixtures/chat_templates/*.json, made by scripts/make_chat_fixtures.py):
//! each case's request goes through strata's request handling and
//! renderer and must give transformers' exact output, or the same
//! `raise_exception` message. Then, through HTTP: where the template comes
//! from (`chat_template.jinja`), the request's chat fields, and the
//! refusal of tool calling.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use strata_server::chat::{
    detect_content_format, jinja, render_template, request_inputs, template_messages,
    ChatCompletionRequest, ContentFormat, RenderError,
};
use strata_server::{app, AppState};
use strata_tokenizer::{SpecialToken, Tokenizer};
use tower::ServiceExt;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat_templates")
}

#[derive(Deserialize)]
struct Fixture {
    template: String,
    special_tokens: serde_json::Map<String, Value>,
    content_format: String,
    strftime_formats: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    /// Read straight from the file's text, so objects keep their order.
    request: ChatCompletionRequest,
    template_messages: Value,
    output: Option<String>,
    error: Option<ExpectedError>,
}

#[derive(Deserialize)]
struct ExpectedError {
    kind: String,
    message: String,
}

fn special_tokens(map: &serde_json::Map<String, Value>) -> Vec<(String, SpecialToken)> {
    map.iter()
        .map(|(k, v)| {
            let t = match v {
                Value::String(s) => SpecialToken::One(s.clone()),
                Value::Array(a) => {
                    SpecialToken::Many(a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                }
                other => panic!("special token {k}: {other}"),
            };
            (k.clone(), t)
        })
        .collect()
}

/// Where two renderings first differ, with some context.
fn first_difference(want: &str, got: &str) -> String {
    let at = want.bytes().zip(got.bytes()).take_while(|(a, b)| a == b).count();
    let mut start = at.saturating_sub(60);
    while !want.is_char_boundary(start) {
        start -= 1;
    }
    let ctx = |s: &str| {
        let mut end = (at + 60).min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut from = start.min(end);
        while !s.is_char_boundary(from) {
            from -= 1;
        }
        format!("{:?}", &s[from..end])
    };
    format!("first difference at byte {at}:\n  want {}\n  got  {}", ctx(want), ctx(got))
}

/// Renders every case of `fixtures/chat_templates/NAME.json` and compares.
fn check(name: &str) {
    let path = fixtures().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    let format = detect_content_format(&fixture.template);
    let want_format = match fixture.content_format.as_str() {
        "openai" => ContentFormat::OpenAi,
        _ => ContentFormat::String,
    };
    assert_eq!(format, want_format, "{name}: vLLM's content format detection");
    let tokens = special_tokens(&fixture.special_tokens);
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let label = format!("{name}/{}", case.name);
        // The request's tools reach the template as the route passes them.
        let inputs = request_inputs(&case.request).unwrap_or_else(|e| panic!("{label}: {e}"));
        let messages = template_messages(&inputs.messages, format).unwrap();
        let messages = serde_json::to_value(&messages).unwrap();
        if messages != case.template_messages {
            failures.push(format!(
                "{label}: messages for the template differ:\n  want {}\n  got  {messages}",
                case.template_messages
            ));
            continue;
        }
        // The date may change during a render (midnight): render again.
        let (got, dates) = loop {
            let before: Vec<String> =
                fixture.strftime_formats.iter().map(|f| jinja::strftime_now(f).unwrap()).collect();
            let got = render_template(&fixture.template, &tokens, &inputs, None);
            let after: Vec<String> =
                fixture.strftime_formats.iter().map(|f| jinja::strftime_now(f).unwrap()).collect();
            if before == after {
                break (got, before);
            }
        };
        match (&case.output, &case.error, got) {
            (Some(want), None, Ok(got)) => {
                let mut want = want.clone();
                for (format, date) in fixture.strftime_formats.iter().zip(&dates) {
                    want = want.replace(&format!("⟦strftime_now({format})⟧"), date);
                }
                if want != got {
                    failures.push(format!("{label}: {}", first_difference(&want, &got)));
                }
            }
            (None, Some(want), Err(got)) => {
                let same = match (want.kind.as_str(), &got) {
                    ("raised", RenderError::Raised(m)) | ("invalid", RenderError::Invalid(m)) => {
                        *m == want.message
                    }
                    ("template", RenderError::Template(_)) => true,
                    _ => false,
                };
                if !same {
                    failures.push(format!(
                        "{label}: want {} error {:?}, got {got:?}",
                        want.kind, want.message
                    ));
                }
            }
            (want, want_err, got) => failures.push(format!(
                "{label}: want {:?} / {:?}, got {got:?}",
                want.as_deref().map(|s| &s[..s.len().min(200)]),
                want_err.as_ref().map(|e| &e.message)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        fixture.cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn llama31_tools_matches_transformers() {
    check("llama31_tools");
}

#[test]
fn qwen25_tools_matches_transformers() {
    check("qwen25_tools");
}

#[test]
fn qwen3_thinking_matches_transformers() {
    check("qwen3_thinking");
}

#[test]
fn mistral_tools_matches_transformers() {
    check("mistral_tools");
}

#[test]
fn gemma3_matches_transformers() {
    check("gemma3");
}

#[test]
fn jinja_features_match_transformers() {
    check("features");
}

#[test]
fn every_fixture_file_is_checked() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .filter(|n| n != "dirs")
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["features", "gemma3", "llama31_tools", "mistral_tools", "qwen25_tools", "qwen3_thinking"]
    );
}

// ---------------------------------------------------------------------------
// Through HTTP

fn state_with(tokenizer: Tokenizer) -> Arc<AppState> {
    Arc::new(AppState { trust_request_chat_template: true, ..common::fake_state(tokenizer) })
}

async fn chat(state: &Arc<AppState>, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

const JINJA_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n\
{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n\
{% if enable_thinking is false %}<think></think>{% endif %}{% endif %}";

/// A model directory of the built-in tokenizer whose template is only in
/// `chat_template.jinja` (`jinja`), or nowhere.
fn model_dir(jinja: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    strata_tokenizer::builtin::write_files(dir.path()).unwrap();
    let config = dir.path().join("tokenizer_config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&config, v.to_string()).unwrap();
    if let Some(t) = jinja {
        std::fs::write(dir.path().join("chat_template.jinja"), t).unwrap();
    }
    dir
}

fn prompt_tokens(v: &Value) -> usize {
    v["usage"]["prompt_tokens"].as_u64().unwrap() as usize
}

#[tokio::test]
async fn a_template_only_in_chat_template_jinja_serves_chat() {
    let dir = model_dir(Some(JINJA_TEMPLATE));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let s = state_with(tok);
    let messages = json!([{"role": "user", "content": "Hello"}]);
    let (status, v) = chat(&s, json!({"messages": messages, "max_tokens": 2})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let want = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(prompt_tokens(&v), s.tokenizer.encode(want, false).unwrap().len());

    // chat_template_kwargs reach the template.
    let body = json!({"messages": messages, "max_tokens": 2, "chat_template_kwargs": {"enable_thinking": false}});
    let (status, v) = chat(&s, body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let want = format!("{want}<think></think>");
    assert_eq!(prompt_tokens(&v), s.tokenizer.encode(&want, false).unwrap().len());

    // continue_final_message leaves the last message open.
    let body = json!({"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "The engine"}],
                      "continue_final_message": true, "max_tokens": 2});
    let (status, v) = chat(&s, body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let want = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nThe engine";
    assert_eq!(prompt_tokens(&v), s.tokenizer.encode(want, false).unwrap().len());

    // A request's own template.
    let body = json!({"messages": messages, "max_tokens": 2, "chat_template": "{{ messages[0].content }} and more"});
    let (status, v) = chat(&s, body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(prompt_tokens(&v), s.tokenizer.encode("Hello and more", false).unwrap().len());
}

#[tokio::test]
async fn a_model_without_a_template_refuses_chat() {
    let dir = model_dir(None);
    let s = state_with(Tokenizer::from_dir(dir.path()).unwrap());
    let (status, v) =
        chat(&s, json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("has no chat template"), "{v}");
    // A request may bring its own.
    let body = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "chat_template": "{{ messages[0].content }}"});
    let (status, v) = chat(&s, body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn chat_fields_strata_cannot_serve_are_refused_by_name() {
    let s = state_with(Tokenizer::builtin());
    let base = || json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2});
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {}}});
    let cases = [
        ("tool_choice", json!("auto")),
        ("functions", json!([{"name": "f"}])),
        ("function_call", json!("auto")),
    ];
    for (field, value) in cases {
        let mut body = base();
        body[field] = value;
        let (status, v) = chat(&s, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {v}");
        assert_eq!(v["error"]["param"], field, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(field), "{v}");
    }
    // Tools with the default choice (auto) need a server that parses
    // tool calls, as in vLLM.
    let mut body = base();
    body["tools"] = json!([tool]);
    let (status, v) = chat(&s, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "tool_choice");
    assert!(v["error"]["message"].as_str().unwrap().contains("--enable-auto-tool-choice"), "{v}");
    // What SDKs send for "unset" passes, and so does `response_format`
    // (structured outputs are served).
    for (field, value) in [
        ("tools", json!([])),
        ("tools", Value::Null),
        ("tool_choice", json!("none")),
        ("response_format", json!({"type": "json_object"})),
    ] {
        let mut body = base();
        body[field] = value;
        let (status, v) = chat(&s, body).await;
        assert_eq!(status, StatusCode::OK, "{field}: {v}");
    }
    let mut body = base();
    body["chat_template_kwargs"] = json!({"tools": [tool]});
    let (status, v) = chat(&s, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "chat_template_kwargs");
}

#[tokio::test]
async fn bad_chat_requests_get_400s_naming_the_field() {
    let s = state_with(Tokenizer::builtin());
    let user = json!([{"role": "user", "content": "Hello"}]);
    let cases = [
        (
            json!({"messages": user, "add_generation_prompt": true, "continue_final_message": true}),
            "continue_final_message",
        ),
        (json!({"messages": user, "chat_template_kwargs": [1]}), "chat_template_kwargs"),
        (
            json!({"messages": user, "chat_template_kwargs": {"chat_template": "x"}}),
            "chat_template_kwargs",
        ),
        (
            json!({"messages": user, "chat_template_kwargs": {"messages": []}}),
            "chat_template_kwargs",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages",
        ),
        (json!({"messages": user, "chat_template": "{% for x in %}"}), "chat_template"),
        (
            json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}], "continue_final_message": true,
                "chat_template": "{{ messages[0].content }}"}),
            "messages",
        ),
    ];
    for (body, param) in cases {
        let (status, v) = chat(&s, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    // A request's template that never ends runs out of fuel: 400, not a
    // stuck thread.
    let body = json!({"messages": user, "chat_template": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"});
    let (status, v) = chat(&s, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}

/// Objects keep their keys in the request's order on their way to the
/// template (as Python's `json.loads` keeps them): the template's
/// `raise_exception` shows what it got.
#[tokio::test]
async fn json_objects_reach_the_template_in_request_order() {
    let s = state_with(Tokenizer::builtin());
    let body = r#"{"messages": [{"role": "user", "content": "Hi", "tool_calls": null}], "max_tokens": 2,
        "chat_template": "{{ raise_exception(custom | tojson ~ ' ' ~ (custom.z.keys() | list | tojson)) }}",
        "chat_template_kwargs": {"custom": {"z": {"b": 1, "a": [2.0, {"y": null, "x": true}]}, "c": "é"}}}"#;
    // Sent as text: a serde_json::Value would sort the keys on the way.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        v["error"]["message"],
        r#"the chat template rejected the messages: {"z": {"b": 1, "a": [2.0, {"y": null, "x": true}]}, "c": "é"} ["b", "a"]"#
    );
}

#[test]
fn add_generation_prompt_defaults_to_the_opposite_of_continue_final_message() {
    let req = |v: Value| serde_json::from_value::<ChatCompletionRequest>(v).unwrap();
    let user = json!([{"role": "user", "content": "Hi"}]);
    let inputs = request_inputs(&req(json!({"messages": user}))).unwrap();
    assert!(inputs.add_generation_prompt && !inputs.continue_final_message);
    let inputs =
        request_inputs(&req(json!({"messages": user, "continue_final_message": true}))).unwrap();
    assert!(!inputs.add_generation_prompt && inputs.continue_final_message);
    // chat_template_kwargs may set them, as vLLM merges them over the
    // request's fields.
    let inputs = request_inputs(&req(
        json!({"messages": user, "chat_template_kwargs": {"add_generation_prompt": false, "k": 1}}),
    ))
    .unwrap();
    assert!(!inputs.add_generation_prompt);
    assert_eq!(inputs.kwargs.len(), 1);
}
