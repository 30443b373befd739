//! Structured outputs against real `strata serve` processes on the
//! built-in random-weight model, where only the constraint can make an
//! answer valid: the official OpenAI client's structured-output calls
//! (scripts/structured_outputs_check.py), and greedy constrained answers
//! that stay the same when the engine preempts them or when a prefill
//! engine and a decode engine share the work.

#![allow(clippy::unwrap_used)]

mod common;

use common::{metric, post_json, serve_with};
use serde_json::{json, Value};

/// 200 generated JSON schemas (chat and completions), regex, choice, Lark,
/// json_object, `chat.completions.parse` with a Pydantic model, and 400s.
#[test]
fn pypi_openai_client_structured_outputs_are_always_valid() {
    let (_s, url) = serve_with(vec![]);
    common::run_client_script("structured_outputs_check.py", &[&url]);
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                       "minItems": 2, "maxItems": 6},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "scores", "ok"],
        "additionalProperties": false
    })
}

fn constrained(i: usize) -> Value {
    let prompt: String = (0..40 + i * 7).map(|k| format!("w{} ", (k * 31 + i) % 97)).collect();
    json!({
        "model": "builtin", "prompt": prompt, "max_tokens": 200, "temperature": 0,
        // Greedy decoding of random weights would pick the same
        // whitespace forever where JSON allows any (as in vLLM, whose
        // default this is too): vLLM's switch that allows none.
        "structured_outputs": {"json": schema(), "disable_any_whitespace": true}
    })
}

fn check(answer: &Value) -> String {
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], json!("stop"), "{answer}");
    let text = choice["text"].as_str().unwrap().to_string();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let scores = v["scores"].as_array().unwrap();
    assert!((2..=6).contains(&scores.len()), "{text}");
    assert!(scores.iter().all(|s| (0..=99).contains(&s.as_i64().unwrap())), "{text}");
    assert!(v["ok"].is_boolean() && v["name"].is_string(), "{text}");
    assert_eq!(v.as_object().unwrap().len(), 3, "{text}");
    text
}

/// Eight constrained requests at once in a KV pool too small for them:
/// the engine preempts (recomputes) some mid-answer, and every answer is
/// valid and the same as on an engine with room for all.
#[test]
fn a_constrained_answer_survives_preemption_unchanged() {
    let (_a, roomy) = serve_with(vec![]);
    let (_b, tight) = serve_with(vec!["--num-kv-blocks", "48", "--block-size", "16"]);
    let alone: Vec<String> = (0..8)
        .map(|i| check(&post_json(&format!("{roomy}/v1/completions"), &constrained(i))))
        .collect();
    // One request with the eight prompts: they reach the engine together
    // however loaded the machine is (eight client threads may not).
    let mut batch = constrained(0);
    batch["prompt"] = (0..8).map(|i| constrained(i)["prompt"].clone()).collect();
    let answer = post_json(&format!("{tight}/v1/completions"), &batch);
    let mut choices = answer["choices"].as_array().unwrap().clone();
    choices.sort_by_key(|c| c["index"].as_u64().unwrap());
    let together: Vec<String> =
        choices.into_iter().map(|c| check(&json!({"choices": [c]}))).collect();
    assert!(metric(&tight, "vllm:num_preemptions_total{") > 0.0, "the pool forced preemptions");
    assert_eq!(together, alone);
}

/// The prefill engine samples one (discarded) token; the decode engine
/// starts the constrained answer from the pulled KV: valid, and equal to a
/// single engine's.
#[test]
fn a_constrained_answer_through_prefill_and_decode_equals_one_engines() {
    let pd = |role| {
        serve_with(vec![
            "--kv-connector",
            "pd",
            "--kv-role",
            role,
            "--kv-transfer-port",
            "0",
            "--kv-transfer-secret",
            "s",
        ])
    };
    let (_p, prefill) = pd("prefill");
    let (_d, decode) = pd("decode");
    let (_s, single) = serve_with(vec![]);
    for i in 0..3 {
        let body = constrained(i);
        let alone = check(&post_json(&format!("{single}/v1/completions"), &body));
        let mut first = body.clone();
        first["max_tokens"] = json!(1);
        first["kv_transfer_params"] = json!({"do_remote_decode": true});
        let params =
            post_json(&format!("{prefill}/v1/completions"), &first)["kv_transfer_params"].clone();
        let mut second = body.clone();
        second["kv_transfer_params"] = params;
        let split = check(&post_json(&format!("{decode}/v1/completions"), &second));
        assert_eq!(split, alone);
        assert!(metric(&decode, "vllm:prompt_tokens_by_source_total{") > 0.0);
    }
}
