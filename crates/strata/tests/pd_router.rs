//! P/D end to end: a prefill engine, a decode engine and `strata router`
//! as three processes on loopback, driven by the official OpenAI client
//! (scripts/pd_router_check.py) against a single engine for reference.
//! Needs the pinned client from PyPI, which `scripts/test` (the test
//! command) installs into a venv under the target directory.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{openai_venv_python, serve_with, spawn_strata, Server};

/// `strata router` on a free loopback port.
fn router(prefill: &str, decode: &str) -> (Server, String) {
    spawn_strata(&["router", "--port", "0", "--prefill", prefill, "--decode", decode])
}

#[test]
fn pypi_openai_client_through_the_router_gets_a_single_engines_answers() {
    let python = openai_venv_python();
    let (_p, prefill) = serve_with(vec!["--kv-connector", "pd", "--kv-role", "prefill"]);
    let (_d, decode) = serve_with(vec!["--kv-connector", "pd", "--kv-role", "decode"]);
    let (_s, single) = serve_with(vec![]);
    let (_r, url) = router(&prefill, &decode);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pd_router_check.py");
    let out =
        Command::new(python).arg(script).args([&url, &single, &prefill, &decode]).output().unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\": true"));
}
