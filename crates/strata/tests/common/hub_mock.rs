//! A loopback imitation of the Hugging Face hub, as far as `hf-hub`'s sync
//! client and strata use it, plus helpers that run `strata` against it.
//!
//! * `GET /api/models/{org}/{name}/revision/{rev}`: `{"sha", "siblings":
//!   [{"rfilename"}]}`; 404 with `X-Error-Code: RepoNotFound` for an
//!   unknown repo, `RevisionNotFound` for an unknown revision, 401
//!   `RepoNotFound` for a private repo without its token (the hub shows a
//!   private repo to nobody else). A gated repo's listing is public.
//! * `GET /{org}/{name}/resolve/{rev}/{file}`: small files directly (200,
//!   or 206 for a `Range`), with `ETag` and `X-Repo-Commit`; weights
//!   (LFS) as the hub does, a 302 to an absolute "CDN" URL with
//!   `X-Linked-Etag` (the sha256), `X-Linked-Size` and `X-Repo-Commit`.
//!   hf-hub probes with `Range: bytes=0-0` (reading the size from
//!   `Content-Range`), then fetches `Range: bytes=N-` (N > 0 resumes).
//!   Gated: 401 without a token, 403 with a wrong one (`X-Error-Code:
//!   GatedRepo`). A missing file: 404 `EntryNotFound`.
//! * `GET /cdn/{sha256}`: the bytes, honouring `Range`; optionally cut in
//!   the middle (headers promise the whole range, half is sent, the
//!   connection closes) a given number of times.
//!
//! Every response closes its connection; every request is logged.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Files stored as LFS objects on the hub (served through the CDN).
fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".bin")
}

#[derive(Clone, Debug)]
pub enum Access {
    Public,
    /// Listing public, files need this token.
    Gated {
        token: String,
    },
    /// Nothing without this token.
    Private {
        token: String,
    },
}

#[derive(Clone, Debug)]
pub struct MockRepo {
    pub commit: String,
    pub files: Vec<(String, Vec<u8>)>,
    pub access: Access,
}

impl MockRepo {
    pub fn new(id: &str, files: Vec<(String, Vec<u8>)>) -> Self {
        Self { commit: sha256_hex(id.as_bytes())[..40].to_string(), files, access: Access::Public }
    }

    pub fn file(&self, name: &str) -> &[u8] {
        &self.files.iter().find(|(n, _)| n == name).unwrap().1
    }

    pub fn without(mut self, names: &[&str]) -> Self {
        self.files.retain(|(n, _)| !names.contains(&n.as_str()));
        self
    }

    pub fn only(mut self, names: &[&str]) -> Self {
        self.files.retain(|(n, _)| names.contains(&n.as_str()));
        self
    }
}

/// The committed fixture checkpoint `fixtures/models/{name}`, as a hub
/// repo holds it, plus files strata must not fetch (README, a PyTorch
/// copy of the weights); the reference outputs stay out.
pub fn fixture_repo(id: &str, name: &str) -> MockRepo {
    let dir = fixture_dir(name);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("reference."))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    files.sort();
    files.push(("README.md".into(), b"# a tiny test model\n".to_vec()));
    files.push(("pytorch_model.bin".into(), vec![7u8; 4096]));
    MockRepo::new(id, files)
}

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models").join(name)
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
struct State {
    repos: Mutex<HashMap<String, MockRepo>>,
    log: Mutex<Vec<Logged>>,
    /// (file name, content responses still to cut).
    cut: Mutex<Option<(String, usize)>>,
}

pub struct MockHub {
    pub url: String,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MockHub {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, base) = (state.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (state, base) = (state.clone(), base.clone());
                            std::thread::spawn(move || {
                                let _ = handle(stream, &state, &base);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self { url, state, stop, thread: Some(thread) }
    }

    pub fn add(&self, id: &str, repo: MockRepo) {
        self.state.repos.lock().unwrap().insert(id.to_string(), repo);
    }

    /// Cuts the next `times` downloads of `file` halfway.
    pub fn cut(&self, file: &str, times: usize) {
        *self.state.cut.lock().unwrap() = Some((file.to_string(), times));
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Stops listening: the port refuses connections from now on.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop_now();
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?.take(64 << 10));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Request { method, path, headers })
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    }
}

fn respond(
    stream: &mut TcpStream,
    req: &Request,
    code: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {code} {}\r\n", reason(code));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn hub_error(
    stream: &mut TcpStream,
    req: &Request,
    code: u16,
    error_code: &str,
) -> std::io::Result<()> {
    let message = format!("{error_code} (mock hub)");
    let body = format!("{{\"error\": \"{message}\"}}");
    respond(
        stream,
        req,
        code,
        &[
            ("Content-Type", "application/json".into()),
            ("X-Error-Code", error_code.into()),
            ("X-Error-Message", message),
        ],
        body.as_bytes(),
    )
}

/// The bytes, whole or the asked range, cut halfway when `cut`.
fn content(
    stream: &mut TcpStream,
    req: &Request,
    bytes: &[u8],
    mut headers: Vec<(&str, String)>,
    cut: bool,
) -> std::io::Result<()> {
    let len = bytes.len();
    let range = req.headers.get("range").and_then(|r| {
        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
        let start: usize = a.parse().ok()?;
        let end: usize = if b.is_empty() { len.saturating_sub(1) } else { b.parse().ok()? };
        Some((start, end.min(len.saturating_sub(1))))
    });
    let (code, body) = match range {
        Some((start, _)) if start >= len => {
            headers.push(("Content-Range", format!("bytes */{len}")));
            return respond(stream, req, 416, &headers, b"");
        }
        Some((start, end)) => {
            headers.push(("Content-Range", format!("bytes {start}-{end}/{len}")));
            (206, &bytes[start..=end])
        }
        None => (200, bytes),
    };
    if cut {
        let head = format!(
            "HTTP/1.1 {code} {}\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n",
            reason(code),
            headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect::<String>(),
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body[..body.len() / 2])?;
        stream.flush()?;
        return stream.shutdown(std::net::Shutdown::Both);
    }
    headers.push(("Accept-Ranges", "bytes".into()));
    respond(stream, req, code, &headers, body)
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers.get("authorization").and_then(|a| a.strip_prefix("Bearer "))
}

fn handle(mut stream: TcpStream, state: &State, base: &str) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = read_request(&mut stream)?;
    state.log.lock().unwrap().push(Logged {
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.headers.get("range").cloned(),
        auth: req.headers.get("authorization").cloned(),
    });
    let path = req.path.split('?').next().unwrap_or_default().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();

    if let ["cdn", sha] = segs.as_slice() {
        let found = state
            .repos
            .lock()
            .unwrap()
            .values()
            .find_map(|r| r.files.iter().find(|(_, b)| sha256_hex(b) == *sha).cloned());
        let Some((name, bytes)) = found else {
            return hub_error(&mut stream, &req, 404, "EntryNotFound");
        };
        let probe = req.headers.get("range").is_some_and(|r| r == "bytes=0-0");
        let cut = !probe && {
            let mut c = state.cut.lock().unwrap();
            match c.as_mut() {
                Some((f, n)) if *f == name && *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        return content(&mut stream, &req, &bytes, vec![("ETag", format!("\"{sha}\""))], cut);
    }

    let (repo_id, rev, file, is_api) = match segs.as_slice() {
        ["api", "models", org, name, "revision", rev] => {
            (format!("{org}/{name}"), rev.to_string(), None, true)
        }
        [org, name, "resolve", rev, rest @ ..] if !rest.is_empty() => {
            (format!("{org}/{name}"), rev.to_string(), Some(rest.join("/")), false)
        }
        _ => return hub_error(&mut stream, &req, 404, "EntryNotFound"),
    };
    let Some(repo) = state.repos.lock().unwrap().get(&repo_id).cloned() else {
        return hub_error(&mut stream, &req, 404, "RepoNotFound");
    };
    match &repo.access {
        Access::Public => {}
        Access::Private { token } if bearer(&req) != Some(token) => {
            return hub_error(&mut stream, &req, 401, "RepoNotFound");
        }
        Access::Private { .. } => {}
        Access::Gated { token } if !is_api && bearer(&req) != Some(token) => {
            let code = if bearer(&req).is_some() { 403 } else { 401 };
            return hub_error(&mut stream, &req, code, "GatedRepo");
        }
        Access::Gated { .. } => {}
    }
    let rev = rev.replace("%2F", "/");
    if rev != "main" && rev != repo.commit {
        return hub_error(&mut stream, &req, 404, "RevisionNotFound");
    }
    let Some(file) = file else {
        let siblings: Vec<serde_json::Value> =
            repo.files.iter().map(|(n, _)| serde_json::json!({ "rfilename": n })).collect();
        let body = serde_json::json!({
            "_id": "0123", "id": repo_id, "modelId": repo_id, "sha": repo.commit,
            "private": matches!(repo.access, Access::Private { .. }),
            "gated": if matches!(repo.access, Access::Gated { .. }) {
                serde_json::json!("manual")
            } else {
                serde_json::json!(false)
            },
            "siblings": siblings,
        });
        return respond(
            &mut stream,
            &req,
            200,
            &[("Content-Type", "application/json".into())],
            body.to_string().as_bytes(),
        );
    };
    let Some((_, bytes)) = repo.files.iter().find(|(n, _)| *n == file) else {
        return hub_error(&mut stream, &req, 404, "EntryNotFound");
    };
    let git_etag = sha256_hex(&[format!("blob {}\0", bytes.len()).as_bytes(), bytes].concat())
        [..40]
        .to_string();
    let commit = ("X-Repo-Commit", repo.commit.clone());
    if is_lfs(&file) {
        let sha = sha256_hex(bytes);
        return respond(
            &mut stream,
            &req,
            302,
            &[
                ("Location", format!("{base}/cdn/{sha}")),
                ("ETag", format!("\"{git_etag}\"")),
                ("X-Linked-Etag", format!("\"{sha}\"")),
                ("X-Linked-Size", bytes.len().to_string()),
                commit,
            ],
            b"",
        );
    }
    content(&mut stream, &req, bytes, vec![("ETag", format!("\"{git_etag}\"")), commit], false)
}

// ---------------------------------------------------------------------
// Running `strata` against the mock.

/// A `strata` command with the hub at `hub_url` and the Hugging Face home
/// (and so the cache, `{home}/hub`) in `home`; nothing from the caller's
/// environment reaches the hub settings.
pub fn strata_cmd(args: &[&str], hub_url: &str, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env("HF_ENDPOINT", hub_url)
        .env("HF_HOME", home)
        .env("HF_HUB_CACHE", home.join("hub"));
    for v in [
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
        "XDG_CACHE_HOME",
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(v);
    }
    c
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "strata failed: {}", self.stderr);
        &self.stdout
    }

    pub fn err(&self) -> &str {
        assert!(!self.status.success(), "strata succeeded: {}{}", self.stdout, self.stderr);
        &self.stderr
    }
}

/// Runs the command to its end (at most `limit`, else it is killed and
/// the test fails).
pub fn run(cmd: &mut Command, limit: Duration) -> Finished {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let drain = |r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(r).read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strata ran past {limit:?}: {}", err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// A running `strata serve`, killed on drop.
pub struct Serving {
    child: Child,
    pub url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Serving {
    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the command (a `strata serve --port 0`) and waits, at most
/// `limit`, for the address it serves on.
pub fn serve(cmd: &mut Command, limit: Duration) -> Serving {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The address it serves on (not the hub's, which the log names too).
                if let Some(i) = line.find("serving on http://").map(|i| i + "serving on ".len()) {
                    let url: String = line[i..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '\u{1b}')
                        .collect();
                    let _ = tx.send(url);
                }
                lines.lock().unwrap().push(line);
            }
        });
    }
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(url) = rx.recv_timeout(Duration::from_millis(50)) {
            return Serving { child, url, lines };
        }
        let exited = child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("strata serve did not start ({exited:?}): {}", lines.lock().unwrap().join("\n"));
        }
    }
}

/// Every file under `dir`, recursively, relative to it.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.map_while(Result::ok) {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
