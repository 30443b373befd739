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

/// The sum of the `/metrics` samples whose line starts with `prefix` (a
/// family, or a family and the start of its labels).
pub fn metric(url: &str, prefix: &str) -> f64 {
    let text =
        ureq::get(&format!("{url}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Python of the venv that `scripts/test` makes at
/// `<target dir>/tmp/openai-venv`, with the official OpenAI client pinned in
/// `scripts/requirements-test.txt`. The tests never install it themselves:
/// this fails, saying so, when it is missing.
pub fn openai_venv_python() -> PathBuf {
    let pin = include_str!("../../../../scripts/requirements-test.txt")
        .lines()
        .find_map(|l| l.trim().strip_prefix("openai=="))
        .expect("scripts/requirements-test.txt pins openai==VERSION");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let check = format!("import openai, sys; sys.exit(openai.__version__ != '{pin}')");
    let out = Command::new(&python).args(["-c", &check]).output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "openai=={pin} is not installed in {}: run scripts/test (it installs the \
         official openai client from scripts/requirements-test.txt into that venv), \
         or scripts/test --install-only before running single tests ({})",
        venv.display(),
        match &out {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        }
    );
    python
}

/// Runs `scripts/NAME` with the official client's venv and `args`; panics
/// with its output unless it exits 0 and prints `"ok": true`.
pub fn run_client_script(name: &str, args: &[&str]) {
    let python = openai_venv_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(name);
    let out = Command::new(python).arg(script).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"ok\": true"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
