//! The official OpenAI Python client against a real `strata serve`
//! process: completions and chat, streaming and not, n > 1, stop strings,
//! errors, and usage that reconciles with /metrics
//! (scripts/openai_client_check.py does the driving).
//!
//! Needs the pinned client from PyPI, which `scripts/test` (the test
//! command) installs into a venv under the target directory.

#![allow(clippy::unwrap_used)]

use std::process::Command;

mod common;
use common::{openai_venv_python, run_client_script, serve};

#[test]
fn pypi_openai_client_against_a_live_server() {
    openai_venv_python();
    let (_server, url) = serve("sekret");
    run_client_script("openai_client_check.py", &[&url, "sekret"]);
}

/// A checkpoint saved as current transformers saves it: the chat template
/// only in `chat_template.jinja`, none in tokenizer_config.json.
#[test]
fn pypi_openai_client_chat_on_a_checkpoint_with_chat_template_jinja() {
    openai_venv_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["export-builtin", d.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let config_path = d.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let template = config.as_object_mut().unwrap().remove("chat_template").unwrap();
    std::fs::write(d.join("chat_template.jinja"), template.as_str().unwrap()).unwrap();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let (_server, url) = common::serve_with(vec![
        d.to_str().unwrap(),
        "--served-model-name",
        "m",
        "--max-model-len",
        "96",
    ]);
    run_client_script("openai_chat_check.py", &[&url, "96"]);
}
