//! The fixture checkpoints' tokenizer.json files encode and decode exactly
//! as Hugging Face's Python tokenizers did when the fixtures were made.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use strata_tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models").join(name)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn check(name: &str) {
    let dir = fixture(name);
    let tok = Tokenizer::from_dir(&dir).expect("load tokenizer");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).expect("read"))
            .expect("json");
    for case in reference["cases"].as_array().expect("cases") {
        let add = case["add_special_tokens"].as_bool().expect("flag");
        let got = tok.encode(case["prompt"].as_str().expect("prompt"), add).expect("encode");
        assert_eq!(got, ids(&case["prompt_ids"]), "{name}: {}", case["prompt"]);
    }
    for check in reference["tokenizer_checks"].as_array().expect("checks") {
        let text = check["text"].as_str().expect("text");
        let got = tok.encode(text, true).expect("encode");
        assert_eq!(got, ids(&check["ids_with_special_tokens"]), "{name}: {text:?}");
        assert_eq!(
            tok.decode(&got, false).expect("decode"),
            check["decoded"].as_str().expect("decoded")
        );
    }
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("generation_config.json")).expect("read"),
    )
    .expect("json");
    // eos_token_id is an integer or a list; every one must stop generation.
    let eos = match &config["eos_token_id"] {
        Value::Array(_) => ids(&config["eos_token_id"]),
        v => vec![v.as_u64().expect("eos") as u32],
    };
    assert!(
        eos.iter().all(|e| tok.eos_token_ids().contains(e)),
        "{name}: {eos:?} in {:?}",
        tok.eos_token_ids()
    );
}

#[test]
fn llama_tokenizer_matches_transformers() {
    check("tiny-llama");
}

#[test]
fn qwen2_tokenizer_matches_transformers() {
    check("tiny-qwen2");
}

#[test]
fn qwen3_tokenizer_matches_transformers() {
    check("tiny-qwen3");
}
