//! Helpers for tests that run the `strata` binary.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Server(Child);

impl Server {
    /// Kills the process now (a crash, as far as its peers can tell).
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `strata serve` on a free loopback port; returns it and its URL.
pub fn serve(key: &str) -> (Server, String) {
    serve_with(if key.is_empty() { vec![] } else { vec!["--api-key", key] })
}

/// `strata serve --port 0` with extra arguments.
pub fn serve_with(extra: Vec<&str>) -> (Server, String) {
    let mut args = vec!["serve", "--port", "0"];
    args.extend(extra);
    spawn_strata(&args)
}

/// Runs `strata ARGS` and waits (bounded) for the URL it says it serves on.
pub fn spawn_strata(args: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
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
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server did not report its address in 60 s");
    (Server(child), url)
}

/// POSTs a JSON body and returns the JSON answer.
pub fn post_json(url: &str, body: &serde_json::Value) -> serde_json::Value {
    let text = ureq::post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The pinned official OpenAI client, installed into a venv under the
/// target directory the first time (idempotent).
pub const OPENAI_VERSION: &str = "3.51.0";

pub fn venv_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args([
                "-c",
                &format!("import openai, sys; sys.exit(openai.__version__ != '{OPENAI_VERSION}')"),
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let ok =
            Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success();
        assert!(ok, "python3 -m venv failed");
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                &format!("openai=={OPENAI_VERSION}"),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok && ready(&python), "installing openai=={OPENAI_VERSION} failed");
    }
    python
}
