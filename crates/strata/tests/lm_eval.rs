//! lm-evaluation-harness (`--model local-completions`, what evaluation
//! pipelines point at vLLM) against `strata serve` on each fixture
//! checkpoint, with the committed strata_tiny task: every request's
//! loglikelihood agrees within 1e-3 with lm-eval on transformers (`--model
//! hf`, float32), committed by scripts/make_lm_eval_fixtures.sh, and the
//! accuracies are equal.
//!
//! Needs lm-eval and transformers from PyPI, which `scripts/test` installs
//! into the test venv (scripts/requirements-test.txt).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{openai_venv_python, serve_with};
use serde_json::Value;

/// The first file under `dir` (recursively) whose name starts with `prefix`.
fn find(dir: &Path, prefix: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        let found = if path.is_dir() {
            find(&path, prefix)
        } else {
            path.file_name()?.to_string_lossy().starts_with(prefix).then_some(path)
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

#[test]
fn pypi_lm_eval_local_completions_matches_transformers() {
    let python = openai_venv_python();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let task_dir = root.join("lm_eval/tasks/strata_tiny");
    for model in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let model_dir = root.join("models").join(model);
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(format!("lm_eval/reference-{model}.json"))).unwrap(),
        )
        .unwrap();
        let (_server, url) =
            serve_with(vec![model_dir.to_str().unwrap(), "--served-model-name", "tiny"]);
        let out_dir = tempfile::tempdir().unwrap();
        // lm-eval's `hf` model tokenizes as the tokenizer does by default
        // (Llama's adds BOS); its API models add BOS only when told.
        let tok_config: Value = serde_json::from_str(
            &std::fs::read_to_string(model_dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        let add_bos = tok_config["add_bos_token"].as_bool().unwrap_or(false);
        let model_args = format!(
            "base_url={url}/v1/completions,model=tiny,tokenizer_backend=huggingface,tokenizer={},\
             num_concurrent=1,max_retries=1,tokenized_requests=True,add_bos_token={}",
            model_dir.display(),
            if add_bos { "True" } else { "False" }
        );
        let out = Command::new(&python)
            .args(["-m", "lm_eval", "--model", "local-completions", "--model_args", &model_args])
            .args(["--tasks", "strata_tiny", "--include_path", task_dir.to_str().unwrap()])
            .args(["--log_samples", "--output_path", out_dir.path().to_str().unwrap()])
            .current_dir(&task_dir)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_DATASETS_OFFLINE", "1")
            .env("HF_DATASETS_CACHE", out_dir.path().join("datasets"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{model}: lm_eval failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let samples =
            std::fs::read_to_string(find(out_dir.path(), "samples_strata_tiny").unwrap()).unwrap();
        let mut got: Vec<Value> =
            samples.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        got.sort_by_key(|s| s["doc_id"].as_u64().unwrap());
        let want = reference["samples"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{model}");
        for (g, w) in got.iter().zip(want) {
            let lls: Vec<f64> = g["resps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let v = &r[0][0];
                    v.as_f64().unwrap_or_else(|| v.as_str().unwrap().parse().unwrap())
                })
                .collect();
            let expected: Vec<f64> = w["loglikelihoods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(lls.len(), expected.len());
            for (a, b) in lls.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-3, "{model} doc {}: {a} vs {b}", g["doc_id"]);
            }
        }
        let results: Value = serde_json::from_str(
            &std::fs::read_to_string(find(out_dir.path(), "results_").unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            results["results"]["strata_tiny"]["acc,none"].as_f64().unwrap(),
            reference["acc"].as_f64().unwrap(),
            "{model}: accuracy"
        );
    }
}
