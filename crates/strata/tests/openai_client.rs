//! The official OpenAI Python client against a real `strata serve`
//! process: completions and chat, streaming and not, n > 1, stop strings,
//! errors, and usage that reconciles with /metrics
//! (scripts/openai_client_check.py does the driving).
//!
//! Needs the pinned client from PyPI, which `scripts/test` (the test
//! command) installs into a venv under the target directory.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

mod common;
use common::{openai_venv_python, serve};

#[test]
fn pypi_openai_client_against_a_live_server() {
    let python = openai_venv_python();
    let (_server, url) = serve("sekret");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_client_check.py");
    let out = Command::new(python).arg(script).arg(&url).arg("sekret").output().unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\": true"));
}
