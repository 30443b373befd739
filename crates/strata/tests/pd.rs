//! P/D between two real `strata serve` processes over loopback TCP: the
//! two hops a router makes, done by hand (the router has its own tests).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{metric, post_json, serve_with};
use serde_json::{json, Value};

fn sources(usage: &Value) -> (u64, u64, u64) {
    let s = &usage["prompt_tokens_details"]["sources"];
    (
        s["local_compute"].as_u64().unwrap(),
        s["local_cache_hit"].as_u64().unwrap(),
        s["remote"].as_u64().unwrap(),
    )
}

/// Waits (bounded) until a gauge reads `want`.
fn wait_metric(url: &str, prefix: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(url, prefix);
        if v == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_prompt_prefilled_on_one_engine_decodes_on_another_with_the_same_output() {
    let (_p, prefill) = serve_with(vec![
        "--kv-connector",
        "pd",
        "--kv-role",
        "prefill",
        "--kv-transfer-port",
        "0",
        "--kv-transfer-secret",
        "s",
    ]);
    let (_d, decode) = serve_with(vec![
        "--kv-connector",
        "pd",
        "--kv-role",
        "decode",
        "--kv-transfer-secret",
        "s",
    ]);
    let (_s, single) = serve_with(vec![]);
    let prompt: String = (0..120).map(|i| format!("t{} ", i * 13 % 101)).collect();
    let body = |extra: Value| {
        let mut b =
            json!({"model": "builtin", "prompt": prompt, "max_tokens": 12, "temperature": 0});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let alone = post_json(&format!("{single}/v1/completions"), &body(json!({})));

    // Hop 1: prefill only, holding the KV under a lease.
    let first = post_json(
        &format!("{prefill}/v1/completions"),
        &body(json!({"max_tokens": 1, "kv_transfer_params": {"do_remote_decode": true}})),
    );
    let params = first["kv_transfer_params"].clone();
    assert_eq!(params["do_remote_prefill"], json!(true), "{first}");
    assert!(params["remote_port"].as_u64().unwrap() > 0);
    let p = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(sources(&first["usage"]), (p, 0, 0));
    assert_eq!(wait_metric(&prefill, "strata:kv_leases_held_tokens{", p as f64), p as f64);

    // Hop 2: decode pulls everything but the last prompt token (A1).
    let second = post_json(
        &format!("{decode}/v1/completions"),
        &body(json!({"kv_transfer_params": params})),
    );
    assert_eq!(
        second["choices"][0]["text"], alone["choices"][0]["text"],
        "P/D output equals one engine's"
    );
    // A18: the decode engine's usage is the prefill's record, which came
    // in the params; its remote tokens are a transfer, never cached tokens.
    assert_eq!(sources(&second["usage"]), (p, 0, 0), "A18: {}", second["usage"]);
    assert_eq!(second["usage"]["prompt_tokens_details"]["cached_tokens"], json!(0));
    // The lease ended with the pull: the prefill engine's blocks are free.
    assert_eq!(wait_metric(&prefill, "vllm:kv_cache_usage_perc{", 0.0), 0.0);
    assert_eq!(wait_metric(&decode, "vllm:kv_cache_usage_perc{", 0.0), 0.0);
    assert_eq!(metric(&decode, "vllm:prompt_tokens_by_source_total{model_name=\"builtin\",engine=\"0\",source=\"external_kv_transfer\"}"), (p - 1) as f64);
    // ... while its own metrics count what it did: the pull (A1).
    assert_eq!(metric(&decode, "vllm:prompt_tokens_by_source_total{model_name=\"builtin\",engine=\"0\",source=\"local_compute\"}"), 1.0);
}

#[test]
fn a_decode_engine_with_a_wrong_secret_recomputes_and_counts_it() {
    let (_p, prefill) = serve_with(vec![
        "--kv-connector",
        "pd",
        "--kv-role",
        "prefill",
        "--kv-transfer-port",
        "0",
        "--kv-transfer-secret",
        "right",
        "--kv-lease-timeout",
        "1",
    ]);
    let (_d, decode) = serve_with(vec![
        "--kv-connector",
        "pd",
        "--kv-role",
        "decode",
        "--kv-transfer-secret",
        "wrong",
        "--kv-load-failure-policy",
        "recompute",
    ]);
    let prompt =
        "a prompt long enough to span a few blocks of sixteen tokens each, twice over and more";
    let first = post_json(
        &format!("{prefill}/v1/completions"),
        &json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "kv_transfer_params": {"do_remote_decode": true}}),
    );
    let second = post_json(
        &format!("{decode}/v1/completions"),
        &json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "kv_transfer_params": first["kv_transfer_params"]}),
    );
    let p = second["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(sources(&second["usage"]), (p, 0, 0), "nothing from an unauthenticated peer");
    assert!(second["usage"]["prompt_tokens_details"]["recomputed_tokens"].as_u64().unwrap() > 0);
    assert!(metric(&decode, "strata:kv_transfer_failures_total{model_name=\"builtin\",engine=\"0\",reason=\"auth\"}") >= 1.0);
    assert_eq!(metric(&prefill, "strata:kv_transfer_failures_total{model_name=\"builtin\",engine=\"0\",reason=\"auth\"}"), 1.0);
    // The refused lease expires on the prefill side and frees its blocks.
    assert_eq!(wait_metric(&prefill, "vllm:kv_cache_usage_perc{", 0.0), 0.0);
    assert_eq!(wait_metric(&prefill, "strata:kv_leases_expired_total{", 1.0), 1.0);
}

/// Hop 1 on `prefill`, optional `between` (e.g. kill it), hop 2 on
/// `decode`; returns the decode answer.
fn two_hops(prefill: &str, decode: &str, prompt: &str, between: impl FnOnce()) -> Value {
    let first = post_json(
        &format!("{prefill}/v1/completions"),
        &json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "kv_transfer_params": {"do_remote_decode": true}}),
    );
    between();
    post_json(
        &format!("{decode}/v1/completions"),
        &json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "kv_transfer_params": first["kv_transfer_params"]}),
    )
}

/// A single engine's greedy answer (6 tokens), the reference for P/D.
fn one_engine_text(prompt: &str) -> Value {
    let (_s, single) = serve_with(vec![]);
    post_json(
        &format!("{single}/v1/completions"),
        &json!({"prompt": prompt, "max_tokens": 6, "temperature": 0}),
    )["choices"][0]["text"]
        .clone()
}

const FAULT_PROMPT: &str = "Faults are injected into the KV transfer between the two engines here; the answer must not change.";

#[test]
fn transport_faults_between_real_processes_recompute_or_fail_cleanly() {
    let expected = one_engine_text(FAULT_PROMPT);
    for (fault, reason) in
        [("drop-after=2", "transport"), ("corrupt=1", "invalid"), ("delay-ms=1500", "timeout")]
    {
        let (_p, prefill) = serve_with(vec![
            "--kv-connector",
            "pd",
            "--kv-role",
            "prefill",
            "--kv-transfer-port",
            "0",
            "--kv-transfer-fault",
            fault,
            "--kv-lease-timeout",
            "3",
        ]);
        for policy in ["recompute", "fail"] {
            let (_d, decode) = serve_with(vec![
                "--kv-connector",
                "pd",
                "--kv-role",
                "decode",
                "--kv-load-failure-policy",
                policy,
                "--kv-transfer-timeout",
                "1",
            ]);
            let answer = two_hops(&prefill, &decode, FAULT_PROMPT, || {});
            let label = format!("{fault} / {policy}");
            if policy == "recompute" {
                assert_eq!(answer["choices"][0]["text"], expected, "{label}: correct output");
                assert!(
                    answer["usage"]["prompt_tokens_details"]["recomputed_tokens"].as_u64().unwrap()
                        > 0,
                    "{label}"
                );
            } else {
                assert_eq!(answer["choices"][0]["finish_reason"], json!("error"), "{label}: A5");
            }
            let failures = metric(&decode, &format!("strata:kv_transfer_failures_total{{model_name=\"builtin\",engine=\"0\",reason=\"{reason}\"}}"));
            assert_eq!(failures, 1.0, "{label}");
            assert_eq!(
                wait_metric(&decode, "vllm:kv_cache_usage_perc{", 0.0),
                0.0,
                "{label}: nothing leaks on decode"
            );
        }
        assert_eq!(
            wait_metric(&prefill, "vllm:kv_cache_usage_perc{", 0.0),
            0.0,
            "{fault}: nothing leaks on prefill"
        );
    }
}

#[test]
fn a_prefill_engine_killed_before_the_pull_costs_a_recompute_not_the_request() {
    let expected = one_engine_text(FAULT_PROMPT);
    for policy in ["recompute", "fail"] {
        let (mut p, prefill) = serve_with(vec![
            "--kv-connector",
            "pd",
            "--kv-role",
            "prefill",
            "--kv-transfer-port",
            "0",
        ]);
        let (_d, decode) = serve_with(vec![
            "--kv-connector",
            "pd",
            "--kv-role",
            "decode",
            "--kv-load-failure-policy",
            policy,
            "--kv-transfer-timeout",
            "2",
        ]);
        let answer = two_hops(&prefill, &decode, FAULT_PROMPT, || p.kill());
        if policy == "recompute" {
            assert_eq!(answer["choices"][0]["text"], expected);
            let p_tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap();
            assert_eq!(
                sources(&answer["usage"]),
                (p_tokens, 0, 0),
                "nothing is attributed to the dead peer"
            );
        } else {
            assert_eq!(answer["choices"][0]["finish_reason"], json!("error"));
        }
        assert_eq!(
            metric(&decode, "strata:kv_transfer_failures_total{model_name=\"builtin\",engine=\"0\",reason=\"transport\"}"),
            1.0
        );
        assert!(metric(&decode, "strata:kv_transfer_failed_tokens_total{") > 0.0);
        assert_eq!(wait_metric(&decode, "vllm:kv_cache_usage_perc{", 0.0), 0.0);
    }
}

#[test]
fn a_prefill_engine_with_offload_tiers_serves_repeats_from_host_and_still_hands_off() {
    let host_gb = format!("{}", 100.0 * (4 * 2 * 16 * 128 * 4) as f64 / 1e9);
    let (_p, prefill) = serve_with(vec![
        "--kv-connector",
        "pd",
        "--kv-role",
        "prefill",
        "--kv-transfer-port",
        "0",
        "--num-kv-blocks",
        "48",
        "--kv-offload-host-gb",
        &host_gb,
    ]);
    let (_d, decode) = serve_with(vec!["--kv-connector", "pd", "--kv-role", "decode"]);
    let prompt: String = (0..70).map(|i| format!("m{} ", (i * 7 + 1) % 97)).collect();
    let expected = one_engine_text(&prompt);
    let cold = two_hops(&prefill, &decode, &prompt, || {});
    assert_eq!(cold["choices"][0]["text"], expected);
    // Other prompts push it out of the prefill engine's 48-block pool.
    for seed in 0..3 {
        let other: String = (0..70).map(|i| format!("o{seed}x{} ", i * 3 % 89)).collect();
        post_json(&format!("{prefill}/v1/completions"), &json!({"prompt": other, "max_tokens": 1}));
    }
    let first = post_json(
        &format!("{prefill}/v1/completions"),
        &json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "kv_transfer_params": {"do_remote_decode": true}}),
    );
    let usage = &first["usage"]["prompt_tokens_details"];
    assert!(
        usage["sources"]["host"].as_u64().unwrap() > 0,
        "the repeat came from the host tier: {usage}"
    );
    assert_eq!(usage["cached_tokens"], usage["sources"]["host"], "host hits are cached tokens");
    let second = post_json(
        &format!("{decode}/v1/completions"),
        &json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "kv_transfer_params": first["kv_transfer_params"]}),
    );
    assert_eq!(
        second["choices"][0]["text"], expected,
        "KV loaded from host, then pulled, gives the same answer"
    );
    assert_eq!(wait_metric(&prefill, "vllm:kv_cache_usage_perc{", 0.0), 0.0);
}
