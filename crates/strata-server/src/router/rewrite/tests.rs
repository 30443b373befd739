#![allow(clippy::unwrap_used)]

use super::*;

fn prefill_answer() -> Value {
    json!({"usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41,
        "prompt_tokens_details": {"cached_tokens": 16,
            "sources": {"local_compute": 24, "local_cache_hit": 16, "host": 0, "disk": 0, "remote": 0},
            "recomputed_tokens": 0}}})
}

#[test]
fn check_reads_n_and_refuses_bad_fields() {
    assert_eq!(ClientRequest::check(&json!({"prompt": "x"})).unwrap().n, 1);
    assert_eq!(ClientRequest::check(&json!({"n": 4})).unwrap().n, 4);
    assert_eq!(ClientRequest::check(&json!({"n": null, "stream": true})).unwrap().n, 1);
    for bad in [
        json!([1]),
        json!({"n": 0}),
        json!({"n": -1}),
        json!({"n": "2"}),
        json!({"n": 1.5}),
        json!({"stream": "yes"}),
    ] {
        assert!(ClientRequest::check(&bad).is_err(), "{bad}");
    }
}

#[test]
fn prefill_body_is_one_token_one_choice_no_stream() {
    let client = json!({"model": "m", "prompt": "p", "max_tokens": 50, "max_completion_tokens": 60,
        "min_tokens": 5, "n": 3, "stream": true, "stream_options": {"include_usage": true},
        "temperature": 0.5, "seed": 7, "kv_transfer_params": {"junk": 1}});
    let body = prefill_body(&client, 3);
    assert_eq!(
        body,
        json!({"model": "m", "prompt": "p", "max_tokens": 1, "max_completion_tokens": 1, "n": 1,
            "stream": false, "temperature": 0.5, "seed": 7,
            "kv_transfer_params": {"do_remote_decode": true, "num_pulls": 3}})
    );
    // max_completion_tokens appears only if the client set it.
    let body = prefill_body(&json!({"prompt": "p"}), 1);
    assert!(body.get("max_completion_tokens").is_none());
}

#[test]
fn decode_body_turns_the_params_into_a_pull() {
    let params = json!({"do_remote_decode": true, "do_remote_prefill": false, "transfer_id": "t",
        "remote_block_ids": [1, 2], "num_pulls": 2, "future_field": "kept"});
    let client = json!({"prompt": "p", "n": 2, "stream": true});
    let body = decode_body(&client, params.as_object().unwrap());
    assert_eq!(
        body,
        json!({"prompt": "p", "n": 2, "stream": true, "kv_transfer_params": {
            "do_remote_decode": false, "do_remote_prefill": true, "transfer_id": "t",
            "remote_block_ids": [1, 2], "num_pulls": 2, "future_field": "kept"}})
    );
}

#[test]
fn usage_details_come_from_the_prefill_times_n() {
    let composer = UsageComposer::from_prefill(&prefill_answer(), 2);
    let mut decode = json!({"choices": [], "kv_transfer_params": null,
        "usage": {"prompt_tokens": 80, "completion_tokens": 10, "total_tokens": 90,
            "prompt_tokens_details": {"cached_tokens": 0,
                "sources": {"local_compute": 2, "local_cache_hit": 0, "host": 0, "disk": 0, "remote": 78},
                "recomputed_tokens": 0}}});
    assert!(composer.apply(&mut decode));
    assert_eq!(
        decode,
        json!({"choices": [], "usage": {"prompt_tokens": 80, "completion_tokens": 10, "total_tokens": 90,
            "prompt_tokens_details": {"cached_tokens": 32,
                "sources": {"local_compute": 48, "local_cache_hit": 32, "host": 0, "disk": 0, "remote": 0},
                "recomputed_tokens": 0}}})
    );
}

#[test]
fn no_prefill_details_means_none_for_the_client() {
    let composer = UsageComposer::from_prefill(&json!({"usage": {"prompt_tokens": 3}}), 1);
    let mut decode =
        json!({"usage": {"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}});
    composer.apply(&mut decode);
    assert_eq!(decode, json!({"usage": {"prompt_tokens": 3}}));
}

#[test]
fn sse_passes_deltas_unchanged_and_rewrites_the_usage_chunk() {
    let mut r = SseRewriter::new(UsageComposer::from_prefill(&prefill_answer(), 1));
    let delta = "data: {\"choices\":[{\"text\":\"hi\"}]}\n\n";
    let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n";
    let input = format!("{delta}{usage}data: [DONE]\n\n");
    // Split at every byte boundary class: one byte at a time.
    let mut out = Vec::new();
    for b in input.as_bytes() {
        out.extend_from_slice(&r.push(std::slice::from_ref(b)));
    }
    out.extend_from_slice(&r.finish());
    let out = String::from_utf8(out).unwrap();
    let events: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(events.len(), 4, "{out}");
    assert_eq!(format!("{}\n\n", events[0]), delta);
    let chunk: Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(chunk["usage"]["prompt_tokens"], 40);
    assert_eq!(chunk["usage"]["prompt_tokens_details"]["cached_tokens"], 16);
    assert_eq!(events[2], "data: [DONE]");
    assert_eq!(events[3], "");
}

#[test]
fn sse_handles_crlf_and_strips_params_from_chunks() {
    let mut r = SseRewriter::new(UsageComposer::from_prefill(&prefill_answer(), 1));
    let out = r.push(b"event: x\r\ndata: {\"usage\":null,\"kv_transfer_params\":{\"a\":1}}\r\n\r\ndata: [DONE]\r\n\r\n");
    let out = std::str::from_utf8(&out).unwrap();
    assert_eq!(out, "event: x\ndata: {\"usage\":null}\n\ndata: [DONE]\r\n\r\n");
    assert!(r.finish().is_empty());
}

#[test]
fn sse_leftover_passes_at_the_end() {
    let mut r = SseRewriter::new(UsageComposer::from_prefill(&json!({}), 1));
    assert!(r.push(b"data: {\"usage\"").is_empty());
    assert_eq!(&r.finish()[..], b"data: {\"usage\"");
}
