//! `strata serve FILE.gguf`, `--model DIR --gguf-file NAME` and
//! `org/name --gguf-file NAME` (a loopback mock of the hub): GGUF files as
//! llama.cpp users have them, served end to end with the official OpenAI
//! client.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/hub_mock.rs"]
mod hub_mock;

use std::path::PathBuf;
use std::time::Duration;

use hub_mock::{run, serve, strata_cmd, MockHub, MockRepo};
use serde_json::{json, Value};

fn gguf_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf")
}

/// A greedy completion's text and token ids.
fn greedy(url: &str, model: &str) -> Value {
    let body = json!({
        "model": model, "prompt": "The cat sat", "max_tokens": 10, "temperature": 0,
        "ignore_eos": true, "logprobs": 1,
    });
    let v = common::post_json(&format!("{url}/v1/completions"), &body);
    assert_eq!(v["usage"]["completion_tokens"], 10, "{v}");
    json!({"text": v["choices"][0]["text"], "tokens": v["choices"][0]["logprobs"]["tokens"]})
}

/// A K-quant mix (Q4_K_M: Q4_K, Q6_K and F32 tensors in one file), served
/// from its path with the official client: the file's chat template,
/// streaming, logprobs, the prefix cache and the prompt's sources.
#[test]
fn pypi_openai_client_on_a_q4_k_m_gguf_file() {
    common::openai_venv_python();
    let file = gguf_dir().join("tiny-k-qwen2-q4_k_m.gguf");
    let (_server, url) =
        common::serve_with(vec![file.to_str().unwrap(), "--served-model-name", "tiny-q4km"]);
    common::run_client_script("openai_gguf_check.py", &[&url, "tiny-q4km"]);
}

/// A SentencePiece vocabulary (as Llama 2, Mistral and TinyLlama GGUF
/// files carry), with its chat template, through the same client checks.
#[test]
fn pypi_openai_client_on_a_sentencepiece_gguf_file() {
    common::openai_venv_python();
    let file = gguf_dir().join("tiny-spm-llama-q8_0.gguf");
    let (_server, url) =
        common::serve_with(vec![file.to_str().unwrap(), "--served-model-name", "tiny-spm"]);
    common::run_client_script("openai_gguf_check.py", &[&url, "tiny-spm"]);
}

/// `--model DIR --gguf-file NAME` is the same model as the file's path;
/// a missing name is an error that lists the directory's GGUF files.
#[test]
fn model_dir_with_gguf_file_equals_the_path() {
    let dir = gguf_dir();
    let path = dir.join("tiny-llama-q4_1.gguf");
    let (_a, by_path) = common::serve_with(vec![path.to_str().unwrap()]);
    let (_b, by_dir) = common::serve_with(vec![
        "--model",
        dir.to_str().unwrap(),
        "--gguf-file",
        "tiny-llama-q4_1.gguf",
        "--served-model-name",
        "m",
    ]);
    assert_eq!(greedy(&by_path, path.to_str().unwrap()), greedy(&by_dir, "m"));

    let home = tempfile::tempdir().unwrap();
    let out = run(
        &mut strata_cmd(
            &["generate", dir.to_str().unwrap(), "--gguf-file", "nope.gguf", "--prompt", "x"],
            "http://127.0.0.1:9",
            home.path(),
        ),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("nope.gguf"), "{}", out.stderr);
}

/// A hub repo of GGUF files (as TheBloke/bartowski publish them): only the
/// named file is downloaded, into the Hugging Face cache, and it serves the
/// tokens the local file does. A name the repo lacks lists what it has.
#[test]
fn hub_repo_gguf_file_downloads_only_that_file() {
    let names = ["tiny-qwen2-q8_0.gguf", "tiny-qwen2-q4_0.gguf", "tiny-qwen2-f16.gguf"];
    let mut files: Vec<(String, Vec<u8>)> =
        names.iter().map(|n| (n.to_string(), std::fs::read(gguf_dir().join(n)).unwrap())).collect();
    files.push(("README.md".into(), b"# GGUF quantizations\n".to_vec()));
    let hub = MockHub::start();
    hub.add("strata-test/tiny-qwen2-GGUF", MockRepo::new("strata-test/tiny-qwen2-GGUF", files));
    let home = tempfile::tempdir().unwrap();
    let s = serve(
        &mut strata_cmd(
            &[
                "serve",
                "strata-test/tiny-qwen2-GGUF",
                "--gguf-file",
                "tiny-qwen2-q4_0.gguf",
                "--port",
                "0",
            ],
            &hub.url,
            home.path(),
        ),
        Duration::from_secs(120),
    );
    let from_hub = greedy(&s.url, "strata-test/tiny-qwen2-GGUF");
    let fetched: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/resolve/"))
        .map(|r| r.path)
        .collect();
    assert!(fetched.iter().all(|p| p.ends_with("/tiny-qwen2-q4_0.gguf")), "{fetched:?}");
    assert!(!fetched.is_empty());
    drop(s);

    let local = gguf_dir().join("tiny-qwen2-q4_0.gguf");
    let (_l, url) = common::serve_with(vec![local.to_str().unwrap(), "--served-model-name", "m"]);
    assert_eq!(from_hub, greedy(&url, "m"));

    let out = run(
        &mut strata_cmd(
            &[
                "generate",
                "strata-test/tiny-qwen2-GGUF",
                "--gguf-file",
                "tiny-qwen2-q5_k_m.gguf",
                "--prompt",
                "x",
            ],
            &hub.url,
            home.path(),
        ),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("tiny-qwen2-q5_k_m.gguf")
            && out.stderr.contains("tiny-qwen2-q8_0.gguf"),
        "{}",
        out.stderr
    );
}

/// `--quantization q8_0|q4_k` on a safetensors checkpoint serves through
/// the same kernels; an unknown type is refused with the list of types.
#[test]
fn quantization_flag_on_a_checkpoint() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-qwen2");
    for q in ["q8_0", "q4_k"] {
        let (_s, url) = common::serve_with(vec![
            dir.to_str().unwrap(),
            "--quantization",
            q,
            "--served-model-name",
            "m",
        ]);
        let answer = greedy(&url, "m");
        assert!(answer["text"].as_str().is_some_and(|t| !t.is_empty()), "{q}: {answer}");
    }
    let home = tempfile::tempdir().unwrap();
    let out = run(
        &mut strata_cmd(
            &["generate", dir.to_str().unwrap(), "--quantization", "q3_k", "--prompt", "x"],
            "http://127.0.0.1:9",
            home.path(),
        ),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("unknown quantization `q3_k`") && out.stderr.contains("q4_k"),
        "{}",
        out.stderr
    );
}
