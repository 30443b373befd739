//! A real Prometheus (Debian's package, installed by `scripts/test`)
//! scrapes a live `strata serve`; the counters it stores equal the sums of
//! the responses' usage, and `promtool check metrics` parses the
//! exposition. promtool's only complaints are lint about the names vLLM
//! chose (colons in every `vllm:` name, `_total` on the
//! `vllm:iteration_tokens_total` histogram), kept for compatibility.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{post_json, serve};

/// Fails, saying what to run, unless `prometheus` and `promtool` are on PATH.
fn require_prometheus() {
    let present =
        |bin: &str| Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success());
    for bin in ["prometheus", "promtool"] {
        assert!(
            present(bin),
            "`{bin}` is not on PATH: run scripts/test (it installs Debian's prometheus \
             package), or scripts/test --install-only before running single tests"
        );
    }
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> String {
    ureq::get(url).call().unwrap().body_mut().read_to_string().unwrap()
}

fn query(prom: &str, q: &str) -> Vec<(Value, f64)> {
    let body = get(&format!(
        "{prom}/api/v1/query?query={}",
        q.replace('{', "%7B").replace('}', "%7D").replace('"', "%22")
    ));
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|s| (s["metric"].clone(), s["value"][1].as_str().unwrap().parse().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn apt_prometheus_scrapes_counters_that_equal_the_usage_sums() {
    require_prometheus();
    let (_server, url) = serve("");
    let dir = tempfile::tempdir().unwrap();
    let target = url.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: strata\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prom = format!("http://127.0.0.1:{port}");
    let _prometheus = Guard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Requests with a shared prefix, so more than one source is non-zero.
    let mut sources = std::collections::BTreeMap::<String, f64>::new();
    let mut prompt_tokens = 0.0;
    for i in 0..6 {
        let body = serde_json::json!({"prompt": format!("A long shared system prompt for every request in this test, number {i}"), "max_tokens": 4, "n": 2});
        let v = post_json(&format!("{url}/v1/completions"), &body);
        prompt_tokens += v["usage"]["prompt_tokens"].as_f64().unwrap();
        for (k, n) in v["usage"]["prompt_tokens_details"]["sources"].as_object().unwrap() {
            *sources.entry(k.clone()).or_default() += n.as_f64().unwrap();
        }
    }
    assert!(sources["local_cache_hit"] > 0.0);
    // Wait (bounded) until Prometheus has scraped the final values.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = std::panic::catch_unwind(|| query(&prom, "sum(vllm:prompt_tokens_total)"));
        if let Ok(v) = got {
            if v.first().is_some_and(|(_, x)| *x == prompt_tokens) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw vllm:prompt_tokens_total = {prompt_tokens}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for (metric, value) in query(&prom, "strata:prompt_tokens_by_tier_total") {
        let source = metric["source"].as_str().unwrap().to_string();
        assert_eq!(
            value, sources[&source],
            "strata:prompt_tokens_by_tier_total{{source={source}}}"
        );
    }
    let external = sources["host"] + sources["disk"] + sources["remote"];
    for (metric, value) in query(&prom, "vllm:prompt_tokens_by_source_total") {
        let expected = match metric["source"].as_str().unwrap() {
            "local_compute" => sources["local_compute"],
            "local_cache_hit" => sources["local_cache_hit"],
            _ => external,
        };
        assert_eq!(value, expected, "{metric}");
    }
    // promtool parses the exposition; only the lint about vLLM's names remains.
    let text = get(&format!("{url}/metrics"));
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "promtool failed to parse: {report}");
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let allowed = line.ends_with("metric names should not contain ':'")
            || line == "vllm:iteration_tokens_total non-counter metrics should not have \"_total\" suffix";
        assert!(allowed, "promtool: {line}");
    }
}
