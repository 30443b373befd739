//! P/D end to end: a prefill engine, a decode engine and `strata router`
//! as three processes on loopback, driven by the official OpenAI client
//! (scripts/pd_router_check.py) against a single engine for reference.
//! Needs the pinned client from PyPI, which `scripts/test` (the test
//! command) installs into a venv under the target directory.

#![allow(clippy::unwrap_used)]

mod common;

use common::{openai_venv_python, run_client_script, serve_with, spawn_strata, Server};

/// `strata router` on a free loopback port.
fn router(prefill: &str, decode: &str) -> (Server, String) {
    spawn_strata(&["router", "--port", "0", "--prefill", prefill, "--decode", decode])
}

#[test]
fn pypi_openai_client_through_the_router_gets_a_single_engines_answers() {
    openai_venv_python();
    let (_p, prefill) =
        serve_with(vec!["--kv-connector", "pd", "--kv-role", "prefill", "--kv-transfer-port", "0"]);
    let (_d, decode) = serve_with(vec!["--kv-connector", "pd", "--kv-role", "decode"]);
    let (_s, single) = serve_with(vec![]);
    let (_r, url) = router(&prefill, &decode);
    run_client_script("pd_router_check.py", &[&url, &single, &prefill, &decode]);
}
