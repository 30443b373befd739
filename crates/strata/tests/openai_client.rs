//! The official OpenAI Python client against a real `strata serve`
//! process: completions and chat, streaming and not, n > 1, stop strings,
//! errors, and usage that reconciles with /metrics
//! (scripts/openai_client_check.py does the driving).
//!
//! The test installs the pinned client into a venv under the target
//! directory the first time (idempotent), so a fresh machine needs only
//! Python 3 and PyPI.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

mod common;
use common::{serve, venv_python};

#[test]
fn official_openai_client_against_a_live_server() {
    let python = venv_python();
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
