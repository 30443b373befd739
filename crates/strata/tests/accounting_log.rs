//! `strata serve --accounting-log`: one JSON line per finished request,
//! agreeing with the response's usage.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{post_json, serve_with};

#[test]
fn each_finished_request_gets_a_line_that_matches_its_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounting.jsonl");
    let (_server, url) = serve_with(vec!["--accounting-log", path.to_str().unwrap()]);
    let mut usages = Vec::new();
    for i in 0..3 {
        let body = serde_json::json!({"prompt": format!("An accounting test prompt that is long enough, {i}"), "max_tokens": 3});
        usages.push(post_json(&format!("{url}/v1/completions"), &body)["usage"].clone());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= 3 {
            break lines;
        }
        assert!(Instant::now() < deadline, "only {} lines were written", lines.len());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 3);
    for (line, usage) in lines.iter().zip(&usages) {
        assert_eq!(line["finish_reason"], "length");
        assert_eq!(line["prompt_tokens"], usage["prompt_tokens"]);
        assert_eq!(line["completion_tokens"], usage["completion_tokens"]);
        assert_eq!(line["sources"], usage["prompt_tokens_details"]["sources"]);
        assert!(
            line["queue_time_s"].as_f64().unwrap() >= 0.0
                && line["decode_time_s"].as_f64().unwrap() >= 0.0
        );
    }
}
