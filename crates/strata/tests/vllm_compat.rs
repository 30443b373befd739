//! A vLLM user's command line and request fields against the real `strata`
//! binary on the built-in model: `--config FILE.yaml`, vLLM flags that mean
//! nothing here (accepted at their default, refused otherwise), `/version`,
//! `/ping`, `/load`, a batch of prompts, `echo`, stop strings that end the
//! request in the engine (booked as `stop` in `/metrics`, with the token
//! counts the client saw), `include_stop_str_in_output`, `stop_reason`, and
//! fields strata does not implement refused by name.

#![allow(clippy::unwrap_used)]

mod common;

use common::{post_json, serve_with};
use serde_json::{json, Value};

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap()),
        Err(ureq::Error::StatusCode(code)) => (code, String::new()),
        Err(e) => panic!("{e}"),
    }
}

/// POSTs JSON and returns the status and the JSON body, whatever the status.
fn post(url: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r =
        agent.post(url).header("content-type", "application/json").send(body.to_string()).unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
}

/// The sum of a metric family's samples whose line contains `filter`.
fn metric(base: &str, name: &str, filter: &str) -> f64 {
    let (_, text) = get(&format!("{base}/metrics"));
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn strata(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn vllm_flags_without_meaning_are_accepted_at_their_default_and_refused_otherwise() {
    let out = strata(&["serve", "--tensor-parallel-size", "2", "--port", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tensor-parallel-size 2") && err.contains("one device"), "{err}");
    let out = strata(&["serve", "--gpu-memory-utilization", "0.5", "--port", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kv-cache-memory"));
    // At their defaults the server starts (and says they do nothing).
    let (_server, url) = serve_with(vec![
        "--tensor-parallel-size",
        "1",
        "--gpu-memory-utilization",
        "0.9",
        "--enforce-eager",
        "--disable-log-requests",
    ]);
    assert_eq!(get(&format!("{url}/ping")).0, 200);
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.yaml");
    std::fs::write(
        &path,
        "served_model_name: from-config\nmax-num-seqs: 3\nenable_prefix_caching: false\nport: 1\n",
    )
    .unwrap();
    // `--port 0` on the command line wins over the file's port 1.
    let (_server, url) = serve_with(vec!["--config", path.to_str().unwrap()]);
    let (_, models) = get(&format!("{url}/v1/models"));
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "from-config");
    // Prefix caching is off: the same prompt twice hits nothing.
    let body = json!({"prompt": "a repeated prompt that fills more than one block of sixteen tokens, twice over", "max_tokens": 1});
    post_json(&format!("{url}/v1/completions"), &body);
    let second = post_json(&format!("{url}/v1/completions"), &body);
    assert_eq!(second["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

#[test]
fn version_ping_and_load_answer_as_vllm_does() {
    let (_server, url) = serve_with(vec![]);
    let (status, text) = get(&format!("{url}/version"));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(get(&format!("{url}/ping")).0, 200);
    let (status, text) = get(&format!("{url}/load"));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["server_load"], 0);
}

#[test]
fn a_stop_string_ends_the_request_in_the_engine_as_stop() {
    let (_server, url) = serve_with(vec![]);
    let completions = format!("{url}/v1/completions");
    let base = json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "ignore_eos": true});
    let free = post_json(&completions, &base);
    let text = free["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(free["choices"][0]["finish_reason"], "length");
    // A stop string from the middle of the greedy text.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "{text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = text.find(&stop).unwrap();
    let mut body = base.clone();
    body["stop"] = json!([stop]);
    let stopped = post_json(&completions, &body);
    let choice = &stopped["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["stop_reason"], json!(stop));
    assert_eq!(choice["text"], json!(&text[..cut]));
    body["include_stop_str_in_output"] = json!(true);
    let kept = post_json(&completions, &body);
    assert_eq!(kept["choices"][0]["text"], json!(&text[..cut + stop.len()]));
    // /metrics books the two stopped requests as `stop`, and counts exactly
    // the tokens the clients were told about (no token past the string).
    let told: f64 = [&free, &stopped, &kept]
        .iter()
        .map(|r| r["usage"]["completion_tokens"].as_f64().unwrap())
        .sum();
    assert!(stopped["usage"]["completion_tokens"].as_f64().unwrap() < 24.0);
    assert_eq!(metric(&url, "vllm:generation_tokens_total", ""), told);
    assert_eq!(metric(&url, "vllm:request_success_total", "finished_reason=\"stop\""), 2.0);
    assert_eq!(metric(&url, "vllm:request_success_total", "finished_reason=\"abort\""), 0.0);
    assert_eq!(metric(&url, "vllm:request_success_total", "finished_reason=\"length\""), 1.0);
}

#[test]
fn a_batch_of_prompts_echo_and_truncation() {
    let (_server, url) = serve_with(vec![]);
    let completions = format!("{url}/v1/completions");
    let one = |p: &str| {
        post_json(&completions, &json!({"prompt": p, "max_tokens": 5, "temperature": 0}))["choices"]
            [0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (one("The first prompt"), one("And a second one"));
    let batch = post_json(
        &completions,
        &json!({"prompt": ["The first prompt", "And a second one"], "max_tokens": 5, "temperature": 0, "n": 2}),
    );
    let choices = batch["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for c in choices {
        let i = c["index"].as_u64().unwrap();
        assert_eq!(c["text"], json!(if i < 2 { &a } else { &b }), "choice {i}");
    }
    let echoed = post_json(
        &completions,
        &json!({"prompt": "The first prompt", "max_tokens": 5, "temperature": 0, "echo": true}),
    );
    assert_eq!(echoed["choices"][0]["text"], json!(format!("The first prompt{a}")));
    // Token prompts and left truncation: the last 3 tokens only.
    let ids: Vec<u32> = (100..110).collect();
    let truncated = post_json(
        &completions,
        &json!({"prompt": ids, "max_tokens": 2, "truncate_prompt_tokens": 3}),
    );
    assert_eq!(truncated["usage"]["prompt_tokens"], 3);
}

#[test]
fn fields_strata_does_not_implement_are_refused_by_name() {
    let (_server, url) = serve_with(vec![]);
    let completions = format!("{url}/v1/completions");
    let (status, body) = post(&completions, &json!({"prompt": "x", "suffix": "y"}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "suffix");
    assert!(body["error"]["message"].as_str().unwrap().contains("`suffix` is not supported"));
    let (status, body) =
        post(&completions, &json!({"prompt": "x", "guided_json": {"type": "object"}}));
    assert_eq!((status, body["error"]["param"].clone()), (400, json!("guided_json")));
    // The SDK's defaults and unknown fields pass (unknown ones are logged).
    let (status, _) = post(
        &completions,
        &json!({"prompt": "x", "max_tokens": 1, "suffix": null, "best_of": null, "some_new_field": 1}),
    );
    assert_eq!(status, 200);
}

#[test]
fn seed_fixes_the_samples_of_requests_without_a_seed() {
    let sample = |seed: &str| {
        let (_server, url) = serve_with(vec!["--seed", seed]);
        post_json(
            &format!("{url}/v1/completions"),
            &json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0, "ignore_eos": true}),
        )["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b, c) = (sample("7"), sample("7"), sample("8"));
    assert_eq!(a, b);
    assert_ne!(a, c);
}
