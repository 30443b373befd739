//! P/D end to end: a prefill engine, a decode engine and `strata router`
//! as three processes on loopback, driven by the official OpenAI client
//! (scripts/pd_router_check.py) against a single engine for reference.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{serve_with, venv_python, Server};

/// `strata router` on a free loopback port.
fn router(prefill: &str, decode: &str) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["router", "--port", "0", "--prefill", prefill, "--decode", decode])
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("http://127.0.0.1:") {
                let url: String = line[i..]
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '\u{1b}')
                    .collect();
                let _ = tx.send(url);
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).expect("the router reported its address");
    (Server::new(child), url)
}

#[test]
fn the_openai_client_through_the_router_gets_a_single_engines_answers() {
    let python = venv_python();
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
