//! vLLM's sampling and request parameters through the real server on the
//! built-in model, each checked to change the output as it should:
//! `logit_bias`, `allowed_token_ids`, `bad_words`, `repetition_penalty`,
//! `prompt_logprobs`, and `echo` with `logprobs` (what lm-evaluation-
//! harness's `local-completions` reads to score loglikelihoods).

#![allow(clippy::unwrap_used)]

mod common;

use common::{post_json, serve_with};
use serde_json::{json, Value};

fn tokens(url: &str, text: &str) -> Vec<u64> {
    let r = post_json(
        &format!("{url}/tokenize"),
        &json!({"prompt": text, "add_special_tokens": false}),
    );
    r["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

fn complete(url: &str, body: Value) -> Value {
    post_json(&format!("{url}/v1/completions"), &body)
}

/// The generated token ids of a greedy completion (through
/// `return`-less means: tokenize the text back is lossy, so ask for
/// logprobs and read the sampled tokens' texts instead).
fn greedy(url: &str, extra: Value) -> String {
    let mut body = json!({"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": true});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    complete(url, body)["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn logit_bias_allowed_ids_bad_words_and_repetition_penalty_change_the_output() {
    let (_server, url) = serve_with(vec![]);
    let plain = greedy(&url, json!({}));
    // +100 on one token forces it at every step.
    let forced = tokens(&url, " zebra")[0];
    let biased = greedy(&url, json!({"logit_bias": {forced.to_string(): 100}}));
    let detok = post_json(&format!("{url}/detokenize"), &json!({"tokens": vec![forced; 12]}));
    assert_eq!(biased, detok["prompt"].as_str().unwrap(), "plain: {plain:?}");
    // Only two ids allowed: the text is made of them.
    let a = tokens(&url, "a")[0];
    let b = tokens(&url, "b")[0];
    let only = greedy(&url, json!({"allowed_token_ids": [a, b]}));
    assert!(!only.is_empty() && only.chars().all(|c| c == 'a' || c == 'b'), "{only:?}");
    // A word the plain output generated as one token (with or without its
    // leading space) is never generated again once banned.
    let generated = |extra: Value| -> Vec<String> {
        let mut body = json!({"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0,
                              "ignore_eos": true, "logprobs": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        complete(&url, body)["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let plain_tokens = generated(json!({}));
    // vLLM bans a word's own tokens, and its space-prefixed form only when
    // that has as many tokens: pick a generated token that is a whole word
    // without a leading space.
    let word = plain_tokens
        .iter()
        .find(|w| w.len() > 2 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .unwrap_or_else(|| panic!("no word token to ban in {plain_tokens:?}"))
        .clone();
    assert_eq!(tokens(&url, &word).len(), 1, "{word:?} is one token");
    let banned = generated(json!({"bad_words": [word.clone()]}));
    assert!(!banned.contains(&word), "{word:?} in {banned:?}");
    assert_ne!(banned, plain_tokens);
    // The built-in model loops on this prompt ("cecece..."); a repetition
    // penalty breaks the loop.
    let looping = |penalty: f64| {
        complete(
            &url,
            json!({"prompt": "a a a a a a a a a a", "max_tokens": 12, "temperature": 0,
                   "ignore_eos": true, "repetition_penalty": penalty}),
        )["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (free, penalized) = (looping(1.0), looping(1.2));
    assert!(free.contains("cecece"), "{free:?}");
    assert!(!penalized.contains("cecece"), "{penalized:?}");
    // Out-of-vocabulary ids are refused by field.
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent
        .post(&format!("{url}/v1/completions"))
        .header("content-type", "application/json")
        .send(json!({"prompt": "x", "allowed_token_ids": [99_999_999]}).to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"]["param"], "allowed_token_ids");
}

#[test]
fn prompt_logprobs_and_echo_with_logprobs_score_the_prompt() {
    let (_server, url) = serve_with(vec![]);
    let prompt = "Paris is the capital of France";
    let ids = tokens(&url, prompt);
    let r = complete(
        &url,
        json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 2}),
    );
    let pl = r["choices"][0]["prompt_logprobs"].as_array().unwrap().clone();
    let n = r["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(pl.len(), n);
    assert!(pl[0].is_null());
    // Each entry holds its prompt token (the prompt may start with a BOS
    // the tokenizer adds: compare the tail).
    for (entry, id) in pl.iter().rev().zip(ids.iter().rev()) {
        let e = &entry[id.to_string()];
        assert!(e["logprob"].as_f64().unwrap() <= 0.0, "{entry}");
    }
    // echo + logprobs: the completion logprobs start with the prompt's.
    let e = complete(
        &url,
        json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": true}),
    );
    let lp = &e["choices"][0]["logprobs"];
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_logprobs.len(), n + 1);
    assert!(token_logprobs[0].is_null());
    for (i, v) in token_logprobs.iter().enumerate().skip(1).take(n - 1) {
        let from_prompt = pl[i][ids[ids.len() - (n - i)].to_string()]["logprob"].as_f64().unwrap();
        assert!((v.as_f64().unwrap() - from_prompt).abs() < 1e-5, "position {i}");
    }
    assert!(e["choices"][0]["text"].as_str().unwrap().starts_with(prompt));
}

/// Prompt logprobs through the server equal the log-softmax of the logits
/// Hugging Face transformers computed for the committed fixture checkpoints
/// (`fixtures/models/*/reference.safetensors`, one forward over each
/// prompt), through `prompt_logprobs` and through `echo` with `logprobs`.
#[test]
fn prompt_logprobs_match_transformers_on_the_fixture_checkpoints() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
    for model in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let dir = root.join(model);
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let vocab = reference["vocab_size"].as_u64().unwrap() as usize;
        let (_server, url) = serve_with(vec![dir.to_str().unwrap()]);
        for (i, case) in reference["cases"].as_array().unwrap().iter().enumerate() {
            let ids: Vec<u32> = case["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            let logits: Vec<f32> = st
                .tensor(&format!("case{i}.prefill_logits"))
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            // log P(prompt[p] | prompt[..p]) from the reference's row p - 1.
            let expected = |p: usize| -> f64 {
                let row = &logits[(p - 1) * vocab..p * vocab];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
                row[ids[p] as usize] as f64 - max - sum.ln()
            };
            let r = complete(
                &url,
                json!({"prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 1}),
            );
            let pl = r["choices"][0]["prompt_logprobs"].as_array().unwrap();
            assert_eq!(pl.len(), ids.len());
            assert!(pl[0].is_null());
            let e = complete(
                &url,
                json!({"prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": true}),
            );
            let echoed = e["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap();
            for p in 1..ids.len() {
                let want = expected(p);
                let got = pl[p][ids[p].to_string()]["logprob"].as_f64().unwrap();
                assert!(
                    (got - want).abs() < 1e-3,
                    "{model} case {i} position {p}: {got} vs {want}"
                );
                let got = echoed[p].as_f64().unwrap();
                assert!((got - want).abs() < 1e-3, "{model} case {i} echo position {p}");
            }
        }
    }
}
