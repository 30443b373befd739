//! A strata prefill/decode pair behind llm-d's P/D routing sidecar
//! (`--kv-connector=nixlv2`), played by a twin written from the sidecar's
//! contract (docs/pd.md, "Behind llm-d's routing sidecar"): the sidecar is
//! Go and cannot run here, so [`Sidecar`] does its two hops step by step.
//!
//! 1. A new UUID goes in `x-request-id` on both legs.
//! 2. Prefill leg: the client's body with `kv_transfer_params` = `{do_remote_decode:
//!    true, do_remote_prefill: false}` and every remote field `null`,
//!    `stream: false`, no `stream_options`, `max_tokens`,
//!    `max_completion_tokens` and `min_tokens` all 1, `n` untouched. A
//!    non-2xx answer goes back to the client as it is.
//! 3. From its answer: top-level `kv_transfer_params` and
//!    `usage.prompt_tokens_details.cached_tokens` (missing: 0).
//! 4. Decode leg: the client's body plus those params verbatim.
//! 5. The answer (JSON or SSE) goes back with only
//!    `usage.prompt_tokens_details.cached_tokens` overwritten.
//!
//! Checked against real `strata serve` processes on loopback: answers equal
//! a single engine's; the overwrite changes nothing, and the client's usage
//! is what the engines' `/metrics` counted (A18: prompt tokens as the decode
//! engine ran them, sources as the prefill engine computed them, once per
//! choice); no lease expires; the request id reaches both engines' logs
//! and accounting logs.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SECRET: &str = "sidecar-test-secret";

/// A `strata serve` process whose log lines are kept.
struct Engine {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Engine {
    /// `strata serve --port 0 ARGS` on loopback, waiting (bounded) for its URL.
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--port", "0"])
            .args(args)
            .envs(envs.iter().copied())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("http://127.0.0.1:") {
                    let url: String =
                        line[i..].chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(url);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!("no address in 60 s: {:?}", log.lock().unwrap());
        });
        Self { child, url, log }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The sum of a family's samples whose labels include `labels`.
    fn metric(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        let text = agent()
            .get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(family))
            .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (bounded) until a gauge reads `want`; returns the last reading.
    fn wait_metric(&self, family: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(family, &[]);
            if v == want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// POSTs `body` with `x-request-id`; returns the status, the echoed id and
/// the body's text.
fn post(url: &str, body: &Value, request_id: &str) -> (u16, Option<String>, String) {
    let mut resp = agent()
        .post(url)
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .send(body.to_string())
        .unwrap();
    let echoed =
        resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (resp.status().as_u16(), echoed, resp.body_mut().read_to_string().unwrap())
}

/// A version-4 UUID, as the sidecar makes one per request.
fn uuid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// What the sidecar twin saw and answered.
struct Exchange {
    request_id: String,
    prefill_status: u16,
    /// The decode engine's answer as it came (JSON, or the SSE events'
    /// JSON payloads), then as the client got it.
    decode_answer: Vec<Value>,
    client_answer: Vec<Value>,
    /// What a failed prefill returned (then there is no decode leg).
    prefill_error: Option<Value>,
    echoed_request_id: Option<String>,
}

impl Exchange {
    /// The usage the client got (the last payload that has one).
    fn usage(&self) -> &Value {
        self.client_answer
            .iter()
            .rev()
            .find_map(|v| v.get("usage").filter(|u| u.is_object()))
            .unwrap()
    }
}

/// llm-d's routing sidecar in nixlv2 mode, step by step.
struct Sidecar<'a> {
    prefill: &'a Engine,
    decode: &'a Engine,
}

impl Sidecar<'_> {
    fn call(&self, path: &str, client: &Value) -> Exchange {
        let request_id = uuid();
        let mut prefill_body = client.clone();
        let obj = prefill_body.as_object_mut().unwrap();
        obj.insert(
            "kv_transfer_params".into(),
            json!({"do_remote_decode": true, "do_remote_prefill": false,
                   "remote_engine_id": null, "remote_block_ids": null,
                   "remote_host": null, "remote_port": null}),
        );
        obj.insert("stream".into(), json!(false));
        obj.remove("stream_options");
        for limit in ["max_tokens", "max_completion_tokens", "min_tokens"] {
            obj.insert(limit.into(), json!(1));
        }
        let (status, _, text) =
            post(&format!("{}{path}", self.prefill.url), &prefill_body, &request_id);
        let answer: Value = serde_json::from_str(&text).unwrap();
        if !(200..300).contains(&status) {
            return Exchange {
                request_id,
                prefill_status: status,
                decode_answer: Vec::new(),
                client_answer: Vec::new(),
                prefill_error: Some(answer),
                echoed_request_id: None,
            };
        }
        let params = answer["kv_transfer_params"].clone();
        assert!(params.is_object(), "the prefill answered with params: {answer}");
        let cached =
            answer["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);

        let mut decode_body = client.clone();
        decode_body["kv_transfer_params"] = params;
        let (status, echoed, text) =
            post(&format!("{}{path}", self.decode.url), &decode_body, &request_id);
        assert_eq!(status, 200, "decode leg: {text}");
        let decode_answer: Vec<Value> = if client["stream"] == json!(true) {
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|p| *p != "[DONE]")
                .map(|p| serde_json::from_str(p).unwrap())
                .collect()
        } else {
            vec![serde_json::from_str(&text).unwrap()]
        };
        let client_answer = decode_answer
            .iter()
            .map(|v| {
                let mut v = v.clone();
                if let Some(usage) = v.get_mut("usage").and_then(Value::as_object_mut) {
                    let details = usage.entry("prompt_tokens_details").or_insert(json!({}));
                    details["cached_tokens"] = json!(cached);
                }
                v
            })
            .collect();
        Exchange {
            request_id,
            prefill_status: 200,
            decode_answer,
            client_answer,
            prefill_error: None,
            echoed_request_id: echoed,
        }
    }
}

/// The text of each choice, in index order, from a JSON answer or the
/// chunks of a stream.
fn texts(answer: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in answer {
        for c in v["choices"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap() as usize;
            let piece = c["text"]
                .as_str()
                .or_else(|| c["message"]["content"].as_str())
                .or_else(|| c["delta"]["content"].as_str())
                .unwrap_or("");
            if out.len() <= i {
                out.resize(i + 1, String::new());
            }
            out[i].push_str(piece);
        }
    }
    out
}

const SOURCES: [&str; 5] = ["local_compute", "local_cache_hit", "host", "disk", "remote"];

/// What the engines' `/metrics` had counted, for a before/after difference.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    prefill_sources: [f64; 5],
    prefill_recomputed: f64,
    decode_prompt: f64,
    decode_sources: [f64; 5],
    decode_generated: f64,
}

impl Counts {
    fn read(prefill: &Engine, decode: &Engine) -> Self {
        let sources = |e: &Engine| {
            SOURCES.map(|s| e.metric("strata:prompt_tokens_by_tier_total", &[("source", s)]))
        };
        Self {
            prefill_sources: sources(prefill),
            prefill_recomputed: prefill.metric("strata:prompt_tokens_recomputed_total", &[]),
            decode_prompt: decode.metric("vllm:prompt_tokens_total", &[]),
            decode_sources: sources(decode),
            decode_generated: decode.metric("vllm:generation_tokens_total", &[]),
        }
    }
}

/// The client's usage after the overwrite equals what the engines counted
/// for this exchange (A18), and the overwrite changed nothing.
fn check_usage(x: &Exchange, before: &Counts, after: &Counts, n: f64, label: &str) {
    let usage = x.usage();
    let decode_usage =
        x.decode_answer.iter().rev().find_map(|v| v.get("usage").filter(|u| u.is_object()));
    assert_eq!(Some(usage), decode_usage, "{label}: the sidecar's overwrite is a no-op");
    let get = |v: &Value| v.as_u64().unwrap() as f64;
    let details = &usage["prompt_tokens_details"];
    // Prompt tokens: the decode engine ran the prompt once per choice.
    assert_eq!(get(&usage["prompt_tokens"]), after.decode_prompt - before.decode_prompt, "{label}");
    let decode_ran: f64 = (0..5).map(|i| after.decode_sources[i] - before.decode_sources[i]).sum();
    assert_eq!(decode_ran, after.decode_prompt - before.decode_prompt, "{label}");
    assert_eq!(
        get(&usage["completion_tokens"]),
        after.decode_generated - before.decode_generated,
        "{label}"
    );
    // Sources: the prefill engine's, once per choice.
    let prefill = |i: usize| (after.prefill_sources[i] - before.prefill_sources[i]) * n;
    for (i, s) in SOURCES.iter().enumerate() {
        assert_eq!(get(&details["sources"][s]), prefill(i), "{label}: {s} in {usage}");
    }
    assert_eq!(get(&details["cached_tokens"]), prefill(1) + prefill(2) + prefill(3), "{label}");
    assert_eq!(
        get(&details["recomputed_tokens"]),
        (after.prefill_recomputed - before.prefill_recomputed) * n,
        "{label}"
    );
}

fn accounting_lines(path: &Path, request_id: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["x_request_id"] == json!(request_id))
        .count()
}

/// Waits (bounded) until the accounting log holds `want` lines of the id.
fn wait_accounting(path: &Path, request_id: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = accounting_lines(path, request_id);
        if got >= want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A P/D engine on loopback. The prefill engine reads the secret from
/// `STRATA_KV_TRANSFER_SECRET` (as a Kubernetes Secret feeds it), the
/// decode engine from the flag: a pull authenticates only if both got it.
fn pd_engine(role: &str, accounting: &Path) -> Engine {
    let log = accounting.to_str().unwrap();
    let mut args = vec!["--kv-connector", "pd", "--kv-role", role, "--kv-transfer-port", "0"];
    args.extend(["--accounting-log", log]);
    if role == "prefill" {
        Engine::start(&args, &[("STRATA_KV_TRANSFER_SECRET", SECRET)])
    } else {
        args.extend(["--kv-transfer-secret", SECRET]);
        Engine::start(&args, &[])
    }
}

#[test]
fn a_strata_pair_behind_the_llm_d_sidecar_answers_as_one_engine_and_accounts_once() {
    let dir = tempfile::tempdir().unwrap();
    let (p_log, d_log) = (dir.path().join("prefill.jsonl"), dir.path().join("decode.jsonl"));
    let prefill = pd_engine("prefill", &p_log);
    let decode = pd_engine("decode", &d_log);
    let single = Engine::start(&[], &[]);
    let sidecar = Sidecar { prefill: &prefill, decode: &decode };

    let prompt: String = (0..90).map(|i| format!("w{} ", i * 17 % 103)).collect();
    let chat_text: String = (0..40).map(|i| format!("c{} ", i * 7 % 61)).collect();
    let messages = json!([{"role": "user", "content": chat_text}]);
    let cases: Vec<(&str, &str, Value, f64)> = vec![
        (
            "completions",
            "/v1/completions",
            json!({"model": "builtin", "prompt": prompt, "max_tokens": 10, "temperature": 0}),
            1.0,
        ),
        // The same again: the prefill engine hits its prefix cache (cached
        // tokens to carry over) and the decode engine its own.
        (
            "completions, repeated",
            "/v1/completions",
            json!({"model": "builtin", "prompt": prompt, "max_tokens": 10, "temperature": 0}),
            1.0,
        ),
        (
            "chat",
            "/v1/chat/completions",
            json!({"model": "builtin", "messages": messages, "max_tokens": 8, "temperature": 0}),
            1.0,
        ),
        (
            "chat, streamed with usage",
            "/v1/chat/completions",
            json!({"model": "builtin", "messages": messages, "max_completion_tokens": 8,
                   "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
            1.0,
        ),
        (
            "completions, n = 2, seeded",
            "/v1/completions",
            json!({"model": "builtin", "prompt": format!("n two {prompt}"), "max_tokens": 8,
                   "temperature": 0.8, "seed": 11, "n": 2}),
            2.0,
        ),
        (
            "completions, n = 2, streamed with usage",
            "/v1/completions",
            json!({"model": "builtin", "prompt": format!("streamed {prompt}"), "max_tokens": 6,
                   "temperature": 0, "n": 2, "stream": true,
                   "stream_options": {"include_usage": true}}),
            2.0,
        ),
    ];
    let mut ids = Vec::new();
    for (label, path, body, n) in &cases {
        let before = Counts::read(&prefill, &decode);
        let x = sidecar.call(path, body);
        assert_eq!(x.prefill_status, 200, "{label}: {:?}", x.prefill_error);
        let after = Counts::read(&prefill, &decode);
        let (_, _, alone) = post(&format!("{}{path}", single.url), body, &uuid());
        let alone: Vec<Value> = if body["stream"] == json!(true) {
            alone
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|p| *p != "[DONE]")
                .map(|p| serde_json::from_str(p).unwrap())
                .collect()
        } else {
            vec![serde_json::from_str(&alone).unwrap()]
        };
        let got = texts(&x.client_answer);
        assert_eq!(got.len(), *n as usize, "{label}: one answer per choice");
        assert_eq!(got, texts(&alone), "{label}: the pair answers as one engine");
        check_usage(&x, &before, &after, *n, label);
        if label.ends_with("repeated") {
            let cached = &x.usage()["prompt_tokens_details"]["cached_tokens"];
            assert!(cached.as_u64().unwrap() > 0, "{label}: the prefill's hits carry over");
        }
        // The id names the answer and comes back in its headers.
        assert_eq!(x.echoed_request_id.as_deref(), Some(x.request_id.as_str()), "{label}");
        let prefix = if path.contains("chat") { "chatcmpl" } else { "cmpl" };
        assert_eq!(x.client_answer[0]["id"], json!(format!("{prefix}-{}", x.request_id)));
        ids.push((x.request_id, *n as usize));
    }

    // No lease waited to expire: each was pulled (or released) n times.
    assert_eq!(prefill.wait_metric("strata:kv_leases_held_tokens", 0.0), 0.0);
    assert_eq!(prefill.metric("strata:kv_leases_expired_total", &[]), 0.0);
    assert_eq!(prefill.wait_metric("vllm:kv_cache_usage_perc", 0.0), 0.0, "the prefill frees");
    assert_eq!(decode.metric("strata:kv_transfer_failures_total", &[]), 0.0);
    // The id in both engines' logs and accounting logs: the prefill ran one
    // engine request for the n choices, the decode n.
    for (id, n) in &ids {
        assert_eq!(wait_accounting(&p_log, id, 1), 1, "prefill accounting line for {id}");
        assert_eq!(wait_accounting(&d_log, id, *n), *n, "decode accounting lines for {id}");
        assert!(prefill.logged(id) && decode.logged(id), "{id} in both engines' logs");
    }
}

#[test]
fn cache_salt_separates_tenants_through_the_sidecar_and_an_empty_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let prefill = pd_engine("prefill", &dir.path().join("p.jsonl"));
    let decode = pd_engine("decode", &dir.path().join("d.jsonl"));
    let sidecar = Sidecar { prefill: &prefill, decode: &decode };
    let prompt: String = (0..80).map(|i| format!("s{} ", i * 13 % 89)).collect();
    let body = |salt: &str| {
        json!({"model": "builtin", "prompt": prompt, "max_tokens": 3, "temperature": 0,
               "cache_salt": salt})
    };
    let cached = |x: &Exchange| x.usage()["prompt_tokens_details"]["cached_tokens"].as_u64();
    let first = sidecar.call("/v1/completions", &body("tenant-a"));
    assert_eq!(cached(&first), Some(0));
    let other_tenant = sidecar.call("/v1/completions", &body("tenant-b"));
    assert_eq!(cached(&other_tenant), Some(0), "another salt never hits tenant a's blocks");
    let same_tenant = sidecar.call("/v1/completions", &body("tenant-a"));
    assert!(cached(&same_tenant).unwrap() > 0, "the same salt hits: {}", same_tenant.usage());
    assert_eq!(texts(&first.client_answer), texts(&same_tenant.client_answer));

    let refused = sidecar.call("/v1/completions", &body(""));
    assert_eq!(refused.prefill_status, 400, "an empty salt is refused by the prefill leg");
    let error = refused.prefill_error.unwrap();
    assert_eq!(error["error"]["param"], json!("cache_salt"), "{error}");
    assert_eq!(prefill.wait_metric("strata:kv_leases_held_tokens", 0.0), 0.0);
    assert_eq!(prefill.metric("strata:kv_leases_expired_total", &[]), 0.0);
}

/// Runs `strata serve ARGS` expecting it to refuse to start; returns its
/// stderr.
fn refused(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--port", "0", "--kv-connector", "pd"])
        .args(args)
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started with {args:?}: {stderr}");
    stderr
}

#[test]
fn a_kv_port_beyond_loopback_needs_a_secret_and_an_address_to_advertise() {
    let prefill = ["--kv-role", "prefill", "--kv-transfer-port", "0"];
    let with = |more: &[&'static str]| [&prefill[..], more].concat();
    let secret = [("STRATA_KV_TRANSFER_SECRET", SECRET)];
    let err = refused(&with(&["--kv-transfer-host", "0.0.0.0"]), &secret);
    assert!(err.contains("set --kv-transfer-advertise-host"), "{err}");
    let err = refused(&with(&["--kv-transfer-host", "pod.local"]), &secret);
    assert!(err.contains("not an IP address"), "{err}");
    // 192.0.2.1 (TEST-NET-1) is never this machine's: once the checks
    // pass, binding it fails, so nothing listens beyond loopback here.
    let remote = ["--kv-transfer-host", "192.0.2.1"];
    let err = refused(&with(&remote), &[]);
    assert!(err.contains("beyond loopback, without a secret"), "{err}");
    let err = refused(&with(&remote), &secret);
    assert!(err.contains("starting the KV transfer server on 192.0.2.1"), "{err}");
    let err = refused(&with(&[&remote[..], &["--kv-transfer-insecure"]].concat()), &[]);
    assert!(err.contains("starting the KV transfer server on 192.0.2.1"), "{err}");
    assert!(err.contains("--kv-transfer-insecure: serving KV"), "the insecure mode warns: {err}");

    // Decode engines are told the advertised host, not the bind address.
    let advertise = ["--kv-connector", "pd", "--kv-transfer-advertise-host", "localhost"];
    let engine = Engine::start(&with(&advertise), &[]);
    let (status, _, text) = post(
        &format!("{}/v1/completions", engine.url),
        &json!({"prompt": "an advertised host", "max_tokens": 1,
                "kv_transfer_params": {"do_remote_decode": true}}),
        &uuid(),
    );
    assert_eq!(status, 200, "{text}");
    let params = &serde_json::from_str::<Value>(&text).unwrap()["kv_transfer_params"];
    assert_eq!(params["remote_host"], json!("localhost"), "{params}");
}
