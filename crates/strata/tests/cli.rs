//! `strata` as a user runs it: the real binary, real files.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

const GREEDY: [&str; 6] =
    ["--max-tokens", "12", "--temperature", "0", "--ignore-eos", "--show-token-ids"];

#[test]
fn generate_with_the_builtin_model_prints_text() {
    let out =
        stdout(&strata(&[&["generate", "--prompt", "Hello, my name is"][..], &GREEDY].concat()));
    let ids_line = out.lines().last().unwrap();
    let ids: Vec<u32> = serde_json::from_str(ids_line).unwrap();
    assert_eq!(ids.len(), 12);
}

#[test]
fn exported_builtin_loads_through_the_checkpoint_path_with_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    stdout(&strata(&["export-builtin", d]));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let args = |model: &str| {
        [&["generate", "--model", model, "--prompt", "The engine"][..], &GREEDY]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let a = strata(&args("builtin").iter().map(String::as_str).collect::<Vec<_>>());
    let b = strata(&args(d).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn generate_from_a_transformers_checkpoint() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-qwen3");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let case = &reference["cases"][1];
    let out = stdout(&strata(
        &[
            &[
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--prompt",
                case["prompt"].as_str().unwrap(),
            ][..],
            &GREEDY,
        ]
        .concat(),
    ));
    let ids: Vec<u64> = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let expected: Vec<u64> =
        case["greedy_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids, expected);
}

#[test]
fn prompts_file_gives_one_json_line_per_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    let prompts: Vec<String> = (0..300)
        .map(|i| format!("A shared system prompt about the engine and its cache. Question {i}?"))
        .collect();
    std::fs::write(&file, prompts.join("\n")).unwrap();
    let out = stdout(&strata(&[
        "generate",
        "--prompts-file",
        file.to_str().unwrap(),
        "--max-tokens",
        "5",
        "--seed",
        "7",
    ]));
    let lines: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 300);
    let mut cached = 0;
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["prompt"], prompts[i]);
        assert!(l["num_generated_tokens"].as_u64().unwrap() <= 5);
        // The record proves where every prompt token came from.
        let s = &l["prompt_sources"];
        let total: u64 = ["local_compute", "local_cache_hit", "host", "disk", "remote"]
            .iter()
            .map(|k| s[k].as_u64().unwrap())
            .sum();
        assert_eq!(total, l["num_prompt_tokens"].as_u64().unwrap());
        assert!(s["local_compute"].as_u64().unwrap() >= 1);
        cached += s["local_cache_hit"].as_u64().unwrap();
    }
    assert!(cached > 0, "the shared prefix was served from the prefix cache");
}

#[test]
fn bad_model_directory_is_a_clear_error() {
    let o = strata(&["generate", "--model", "/nonexistent/dir", "--prompt", "x"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/dir/config.json"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn invalid_sampling_values_are_rejected() {
    let o = strata(&["generate", "--prompt", "x", "--top-p", "1.5"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("top_p"));
}

#[test]
fn bench_reports_every_batch_size() {
    let out = stdout(&strata(&[
        "bench",
        "--batch-sizes",
        "1,2",
        "--prompt-len",
        "8",
        "--decode-steps",
        "2",
    ]));
    assert!(out.contains("| 1 |") && out.contains("| 2 |") && out.contains("peak RSS"), "{out}");
}

#[test]
fn loadgen_streams_from_a_simulated_server_without_errors() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--model", "sim", "--port", "18493"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    // Wait (bounded) for the port to open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect("127.0.0.1:18493").is_err() {
        assert!(std::time::Instant::now() < deadline, "the server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = strata(&[
        "loadgen",
        "--addr",
        "127.0.0.1:18493",
        "--clients",
        "20",
        "--duration-secs",
        "1",
        "--max-tokens",
        "8",
    ]);
    let _ = server.kill();
    let _ = server.wait();
    let text = stdout(&out);
    assert!(text.contains(" 0 errors") && text.contains("streamed tokens"), "{text}");
}

#[test]
fn sigterm_finishes_in_flight_streams_and_exits_zero() {
    use std::io::{Read, Write};
    let mut server = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--port", "18494"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut conn = loop {
        if let Ok(c) = std::net::TcpStream::connect("127.0.0.1:18494") {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let body = r#"{"prompt": "Hello", "max_tokens": 200, "stream": true, "ignore_eos": true}"#;
    write!(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 64];
    let _ = conn.read(&mut first).unwrap();
    // The shell's own `kill` (sh is always there; /usr/bin/kill is procps).
    assert!(Command::new("sh")
        .args(["-c", "kill -TERM \"$0\"", &server.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    conn.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "the in-flight stream was finished");
    let status = server.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}
