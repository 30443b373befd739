//! The P/D router in process, over real HTTP on loopback, in front of fake
//! prefill and decode engines (small axum apps that record what they get
//! and answer canned JSON or SSE). Checks the two hop bodies, the usage
//! the client sees (docs/accounting.md A18, n > 1, the streamed usage chunk),
//! error pass-through (one OpenAI error body, no engine URL or upstream
//! detail in it), the request id on both hops, health, the policies and
//! client disconnects.
//! Every wait is bounded.

#![allow(clippy::unwrap_used)]

#[path = "router/support.rs"]
mod support;

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::routing::get;
use serde_json::{json, Value};
use strata_server::router::{Policy, RouterConfig, RouterState};

use support::*;

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_goes_to_prefill_then_decode() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let client_body = json!({"model": "m", "prompt": "hello", "max_tokens": 20, "temperature": 0.0, "seed": 3});
        let (status, answer) = post_json(&r, "/v1/completions", &client_body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");

        let prefill = p.rec.seen();
        assert_eq!(prefill.len(), 1);
        assert_eq!(prefill[0].path, "/v1/completions");
        assert_eq!(
            prefill[0].body,
            json!({"model": "m", "prompt": "hello", "max_tokens": 1, "temperature": 0.0, "seed": 3,
                "stream": false, "n": 1, "kv_transfer_params": {"do_remote_decode": true, "num_pulls": 1}})
        );

        let decode = d.rec.seen();
        assert_eq!(decode.len(), 1);
        assert_eq!(decode[0].path, "/v1/completions");
        let mut params = prefill_params();
        params["do_remote_prefill"] = json!(true);
        params["do_remote_decode"] = json!(false);
        let mut want = client_body.clone();
        want["kv_transfer_params"] = params;
        assert_eq!(decode[0].body, want);

        // A18: prompt and completion counts from the decode engine, the
        // prompt's sources from the prefill engine; no params leak.
        assert!(answer.get("kv_transfer_params").is_none(), "{answer}");
        assert_eq!(answer["choices"][0]["text"], "abc");
        let usage = &answer["usage"];
        assert_eq!(usage["prompt_tokens"], 40);
        assert_eq!(usage["completion_tokens"], 5);
        assert_eq!(usage["total_tokens"], 45);
        assert_eq!(usage["prompt_tokens_details"], prefill_usage()["prompt_tokens_details"]);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 16);

        assert_eq!(metric(&r, "strata:router_requests_total{endpoint=\"/v1/completions\"}").await, 1.0);
        assert_eq!(metric(&r, "strata:router_hop_seconds_count{hop=\"prefill\"}").await, 1.0);
        assert_eq!(metric(&r, "strata:router_hop_seconds_count{hop=\"decode\"}").await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_sampling_pulls_n_times_and_scales_the_prefill_record() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, answer) =
            post_json(&r, "/v1/completions", &json!({"prompt": "hello", "n": 3})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let prefill = &p.rec.seen()[0].body;
        assert_eq!(prefill["n"], 1);
        assert_eq!(
            prefill["kv_transfer_params"],
            json!({"do_remote_decode": true, "num_pulls": 3})
        );
        assert_eq!(d.rec.seen()[0].body["n"], 3);

        let usage = &answer["usage"];
        assert_eq!(usage["prompt_tokens"], 120);
        assert_eq!(usage["completion_tokens"], 15);
        let details = &usage["prompt_tokens_details"];
        assert_eq!(details["cached_tokens"], 48);
        assert_eq!(
            details["sources"],
            json!({"local_compute": 72, "local_cache_hit": 48, "host": 0, "disk": 0, "remote": 0})
        );
        // The sources partition the prompt tokens the client is billed for.
        let sum: u64 =
            details["sources"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(sum, 120);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_cuts_max_completion_tokens_on_the_prefill_hop_only() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 50, "min_tokens": 4});
        let (status, answer) = post_json(&r, "/v1/chat/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let prefill = &p.rec.seen()[0];
        assert_eq!(prefill.path, "/v1/chat/completions");
        assert_eq!(prefill.body["max_tokens"], 1);
        assert_eq!(prefill.body["max_completion_tokens"], 1);
        assert!(prefill.body.get("min_tokens").is_none());
        assert_eq!(prefill.body["messages"], body["messages"]);
        let decode = &d.rec.seen()[0];
        assert_eq!(decode.path, "/v1/chat/completions");
        assert_eq!(decode.body["max_completion_tokens"], 50);
        assert_eq!(decode.body["min_tokens"], 4);
        assert!(decode.body.get("max_tokens").is_none());
        assert_eq!(
            metric(&r, "strata:router_requests_total{endpoint=\"/v1/chat/completions\"}").await,
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_passes_chunks_through_and_rewrites_the_usage_chunk() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let body = json!({"prompt": "hello", "n": 2, "stream": true, "stream_options": {"include_usage": true}});
        let resp = client().post(format!("{}/v1/completions", r.server.url)).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
        let data = sse_data(&resp.text().await.unwrap());

        let prefill = &p.rec.seen()[0].body;
        assert_eq!(prefill["stream"], false);
        assert!(prefill.get("stream_options").is_none());
        assert_eq!(prefill["kv_transfer_params"]["num_pulls"], 2);
        let decode = &d.rec.seen()[0].body;
        assert_eq!(decode["stream"], true);
        assert_eq!(decode["stream_options"], json!({"include_usage": true}));
        assert_eq!(decode["kv_transfer_params"]["do_remote_prefill"], true);

        // 3 texts x 2 choices, byte for byte, then usage, then [DONE].
        assert_eq!(data.len(), 8, "{data:?}");
        let mut want = Vec::new();
        for text in ["a", "b", "c"] {
            for i in 0..2 {
                want.push(chunk(i, text));
            }
        }
        assert_eq!(data[..6], want[..]);
        let usage: Value = serde_json::from_str(&data[6]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 80);
        assert_eq!(usage["usage"]["completion_tokens"], 10);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["sources"]["local_compute"], 48);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["sources"]["remote"], 0);
        assert_eq!(data[7], "[DONE]");

        // Without include_usage no chunk carries usage.
        let body = json!({"prompt": "hello", "stream": true});
        let resp = client().post(format!("{}/v1/completions", r.server.url)).json(&body).send().await.unwrap();
        let data = sse_data(&resp.text().await.unwrap());
        assert_eq!(data.len(), 4);
        assert!(data.iter().all(|d| !d.contains("usage")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_error_passes_through_with_its_status() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "fail"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["message"], "prefill refused");
        assert_eq!(body["error"]["code"], 400);
        assert!(d.rec.seen().is_empty());
        assert_eq!(metric(&r, &errors("prefill_error")).await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_error_passes_through_with_its_status() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, body) =
            post_json(&r, "/v1/completions", &json!({"prompt": "decodefail", "stream": true}))
                .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["message"], "decode overloaded");
        assert_eq!(metric(&r, &errors("decode_error")).await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_kv_transfer_params_is_a_bad_gateway() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "noparams"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let e = error_body(status, &body);
        assert_eq!(e["type"], "BadGatewayError");
        assert_eq!(
            e["message"],
            "the upstream prefill engine returned no kv_transfer_params (is it running with a P/D connector?)"
        );
        assert_no_upstream_detail(&body.to_string(), &[p.url(), d.url()]);
        assert!(d.rec.seen().is_empty());
        assert_eq!(metric(&r, &errors("no_kv_transfer_params")).await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_without_touching_the_engines() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let url = format!("{}/v1/completions", r.server.url);
        let bodies = [
            "{not json",
            "",
            "[1, 2]",
            r#"{"prompt": "x", "n": 0}"#,
            r#"{"prompt": "x", "stream": "yes"}"#,
        ];
        for raw in bodies {
            let resp = client()
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(raw)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{raw}");
            let body: Value = resp.json().await.unwrap();
            let e = error_body(StatusCode::BAD_REQUEST, &body);
            assert_eq!(e["type"], "BadRequestError", "{raw}");
            // The field at fault, where there is one.
            let param = match raw {
                r#"{"prompt": "x", "n": 0}"# => json!("n"),
                r#"{"prompt": "x", "stream": "yes"}"# => json!("stream"),
                _ => Value::Null,
            };
            assert_eq!(e["param"], param, "{raw}");
        }
        assert!(p.rec.seen().is_empty());
        assert!(d.rec.seen().is_empty());
        assert_eq!(metric(&r, &errors("bad_request")).await, bodies.len() as f64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_a_bad_gateway() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let closed = closed_url().await;
        let r = router_with(vec![closed.clone()], vec![d.url()], Policy::RoundRobin, None).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "hello"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let e = error_body(status, &body);
        assert_eq!(e["type"], "BadGatewayError");
        assert_eq!(e["message"], "upstream prefill engine unavailable");
        assert_eq!(e["param"], Value::Null);
        assert_no_upstream_detail(&body.to_string(), &[closed.clone(), d.url()]);
        assert_eq!(metric(&r, &errors("upstream_unreachable")).await, 1.0);
        let url = &r.state.prefill.engines[0].url;
        assert_eq!(metric(&r, &in_flight("prefill", url)).await, 0.0);

        // The same for the decode hop, after a prefill that succeeded.
        let r = router_with(vec![p.url()], vec![closed.clone()], Policy::RoundRobin, None).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "hello"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let e = error_body(status, &body);
        assert_eq!(e["message"], "upstream decode engine unavailable");
        assert_no_upstream_detail(&body.to_string(), &[p.url(), closed.clone()]);

        // /v1/models with no decode engine answering.
        let (status, text) = get_text(&format!("{}/v1/models", r.server.url)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_str(&text).unwrap();
        let e = error_body(status, &body);
        assert_eq!(e["type"], "ServiceUnavailableError");
        assert_eq!(e["message"], "no decode engine answered /v1/models");
        assert_no_upstream_detail(&text, &[p.url(), closed]);
    })
    .await;
}

/// An engine's answer that is not an OpenAI body (an error page, or a 200
/// that is not JSON) reaches the client as the router's own error body,
/// without the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_engine_answer_does_not_reach_the_client() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "crash"})).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let e = error_body(status, &body);
        assert_eq!(e["type"], "InternalServerError");
        assert_eq!(e["message"], "the prefill engine answered 500 Internal Server Error");
        assert_no_upstream_detail(&body.to_string(), &[p.url(), d.url()]);
        assert_eq!(metric(&r, &errors("prefill_error")).await, 1.0);

        let (status, body) = post_json(&r, "/v1/completions", &json!({"prompt": "garbage"})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let e = error_body(status, &body);
        assert_eq!(e["type"], "BadGatewayError");
        assert_eq!(e["message"], "the upstream prefill engine gave an unreadable answer");
        assert_no_upstream_detail(&body.to_string(), &[p.url(), d.url()]);
        assert_eq!(metric(&r, &errors("prefill_error")).await, 2.0);
        assert!(d.rec.seen().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_a_prefill_and_a_decode_engine_up() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let down = closed_url().await;
        let r = router_with(vec![p.url()], vec![down.clone()], Policy::RoundRobin, None).await;
        let (status, text) = get_text(&format!("{}/health", r.server.url)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["decode"]["down"], json!([down]));
        assert_eq!(body["prefill"]["up"], json!([p.url()]));

        // One decode engine of two is enough.
        let r =
            router_with(vec![p.url()], vec![down.clone(), d.url()], Policy::RoundRobin, None).await;
        let (status, text) = get_text(&format!("{}/health", r.server.url)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["decode"]["up"], json!([d.url()]));
        assert_eq!(body["decode"]["down"], json!([down]));

        // An engine that does not answer within the timeout is down.
        let hung = serve(axum::Router::new().route(
            "/health",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK
            }),
        ))
        .await;
        let r = router_with(vec![hung.url.clone()], vec![d.url()], Policy::RoundRobin, None).await;
        let started = std::time::Instant::now();
        let (status, _) = get_text(&format!("{}/health", r.server.url)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_secs(10));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_decode_engines() {
    bounded(async {
        let (p, a, b) = (fake_prefill().await, fake_decode().await, fake_decode().await);
        let r = router_with(vec![p.url()], vec![a.url(), b.url()], Policy::RoundRobin, None).await;
        for i in 0..4 {
            let (status, _) =
                post_json(&r, "/v1/completions", &json!({"prompt": format!("r{i}")})).await;
            assert_eq!(status, StatusCode::OK);
        }
        let prompts =
            |f: &Fake| f.rec.seen().iter().map(|s| marker(&s.body).to_owned()).collect::<Vec<_>>();
        assert_eq!(prompts(&a), ["r0", "r2"]);
        assert_eq!(prompts(&b), ["r1", "r3"]);
        assert_eq!(p.rec.seen().len(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_picks_the_idle_engine() {
    bounded(async {
        let (p, a, b) = (fake_prefill().await, fake_decode().await, fake_decode().await);
        let r = router_with(vec![p.url()], vec![a.url(), b.url()], Policy::LeastLoaded, None).await;
        // Hold a stream open on the first engine.
        let body = json!({"prompt": "hold", "stream": true});
        let mut held = client()
            .post(format!("{}/v1/completions", r.server.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), StatusCode::OK);
        assert!(held.chunk().await.unwrap().is_some());
        assert_eq!(a.rec.seen().len(), 1);
        let gauge = |f: &Fake| in_flight("decode", &f.url());
        assert_eq!(metric(&r, &gauge(&a)).await, 1.0);
        // Round-robin would send one of these back to the busy engine.
        for i in 0..2 {
            let (status, _) =
                post_json(&r, "/v1/completions", &json!({"prompt": format!("l{i}")})).await;
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(a.rec.seen().len(), 1);
        assert_eq!(b.rec.seen().len(), 2);
        assert_eq!(metric(&r, &gauge(&b)).await, 0.0);
        drop(held);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_drops_the_decode_stream() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let body = json!({"prompt": "hold", "stream": true});
        let mut resp = client()
            .post(format!("{}/v1/completions", r.server.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(std::str::from_utf8(&first).unwrap().contains("data: "));
        let dropped = d.rec.stream_dropped.notified();
        drop(resp);
        tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .expect("the decode engine's stream was not dropped after the client left");
        wait_metric(&r, &errors("client_disconnected"), 1.0).await;
        wait_metric(&r, &in_flight("decode", &d.url()), 0.0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_and_is_passed_to_the_engines() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r =
            router_with(vec![p.url()], vec![d.url()], Policy::RoundRobin, Some("sk-test")).await;
        let url = format!("{}/v1/completions", r.server.url);
        let body = json!({"prompt": "hello"});
        let resp = client().post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let answer: Value = resp.json().await.unwrap();
        let e = error_body(StatusCode::UNAUTHORIZED, &answer);
        assert_eq!(e["type"], "AuthenticationError");
        assert_eq!(e["message"], "missing or invalid API key");
        let resp = client().post(&url).bearer_auth("wrong").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let resp = client().get(format!("{}/v1/models", r.server.url)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(p.rec.seen().is_empty());
        let resp = client().post(&url).bearer_auth("sk-test").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(p.rec.seen()[0].auth.as_deref(), Some("Bearer sk-test"));
        assert_eq!(d.rec.seen()[0].auth.as_deref(), Some("Bearer sk-test"));
        // /health and /metrics stay open.
        assert_eq!(get_text(&format!("{}/health", r.server.url)).await.0, StatusCode::OK);
        assert_eq!(metric(&r, &errors("unauthorized")).await, 3.0);
    })
    .await;
}

/// Both hops carry one `X-Request-Id`, so the engines' accounting lines of
/// a client request join on it: the client's, or one the router makes per
/// client request (a UUID); the answer echoes it, an error answer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_reaches_both_engines_and_comes_back() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let url = |path: &str| format!("{}{path}", r.server.url);
        let ids = |f: &Fake| f.rec.seen().iter().map(|s| s.request_id.clone()).collect::<Vec<_>>();
        let echoed = |resp: &reqwest::Response| {
            resp.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned())
        };

        // The client's own, on a completion and on a streamed chat.
        let resp = client()
            .post(url("/v1/completions"))
            .header("x-request-id", "client-req-1")
            .json(&json!({"prompt": "hello"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(echoed(&resp).as_deref(), Some("client-req-1"));
        let chat = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
        let resp = client()
            .post(url("/v1/chat/completions"))
            .header("x-request-id", "client-req-2")
            .json(&chat)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(echoed(&resp).as_deref(), Some("client-req-2"));
        assert_eq!(sse_data(&resp.text().await.unwrap()).last().unwrap(), "[DONE]");
        let want = [Some("client-req-1".to_owned()), Some("client-req-2".to_owned())];
        assert_eq!(ids(&p), want);
        assert_eq!(ids(&d), want);

        // None given: one made for each client request, shared by its hops.
        let mut made = Vec::new();
        for _ in 0..2 {
            let resp =
                client().post(url("/v1/completions")).json(&json!({"prompt": "hi"})).send().await;
            let resp = resp.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            made.push(echoed(&resp).expect("a made id is echoed"));
        }
        assert_ne!(made[0], made[1]);
        for id in &made {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "not a UUID: {id}");
        }
        let made: Vec<_> = made.into_iter().map(Some).collect();
        assert_eq!(ids(&p)[2..], made[..]);
        assert_eq!(ids(&d)[2..], made[..]);

        // An engine's error answer still names the request.
        let resp = client()
            .post(url("/v1/completions"))
            .header("x-request-id", "client-req-3")
            .json(&json!({"prompt": "fail"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(echoed(&resp).as_deref(), Some("client-req-3"));
        assert_eq!(ids(&p)[4].as_deref(), Some("client-req-3"));

        // An id the engines would refuse is the router's 400, before them.
        let resp = client()
            .post(url("/v1/completions"))
            .header("x-request-id", "two words")
            .json(&json!({"prompt": "hello"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(echoed(&resp), None);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(error_body(StatusCode::BAD_REQUEST, &body)["type"], "BadRequestError");
        assert_eq!((p.rec.seen().len(), d.rec.seen().len()), (5, 4));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_come_from_a_healthy_decode_engine() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r =
            router_with(vec![p.url()], vec![closed_url().await, d.url()], Policy::RoundRobin, None)
                .await;
        for _ in 0..2 {
            let (status, text) = get_text(&format!("{}/v1/models", r.server.url)).await;
            assert_eq!(status, StatusCode::OK, "{text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["data"][0]["id"], "m");
        }
        let r =
            router_with(vec![p.url()], vec![closed_url().await], Policy::RoundRobin, None).await;
        let (status, text) = get_text(&format!("{}/v1/models", r.server.url)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_router_family_from_the_start() {
    bounded(async {
        let (p, d) = (fake_prefill().await, fake_decode().await);
        let r = router(&p, &d).await;
        let (status, text) = get_text(&format!("{}/metrics", r.server.url)).await;
        assert_eq!(status, StatusCode::OK);
        for family in [
            "# TYPE strata:router_requests_total counter",
            "# TYPE strata:router_errors_total counter",
            "# TYPE strata:router_hop_seconds histogram",
            "# TYPE strata:router_engine_in_flight gauge",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
        for kind in [
            "prefill_error",
            "decode_error",
            "no_kv_transfer_params",
            "upstream_unreachable",
            "client_disconnected",
        ] {
            assert_eq!(metric(&r, &errors(kind)).await, 0.0);
        }
        assert_eq!(metric(&r, &in_flight("prefill", &p.url())).await, 0.0);
        assert!(!text.contains("# EOF"));
    })
    .await;
}

#[test]
fn config_refuses_missing_engines_and_bad_urls() {
    let ok = |p: &str, d: &str| RouterState::new(RouterConfig::new(vec![p.into()], vec![d.into()]));
    assert!(RouterState::new(RouterConfig::new(vec![], vec!["http://127.0.0.1:1".into()])).is_err());
    assert!(RouterState::new(RouterConfig::new(vec!["http://127.0.0.1:1".into()], vec![])).is_err());
    assert!(ok("https://127.0.0.1:1", "http://127.0.0.1:2").is_err());
    assert!(ok("http://127.0.0.1:1/?x=1", "http://127.0.0.1:2").is_err());
    let state = ok("127.0.0.1:1", "http://127.0.0.1:2/").unwrap();
    assert_eq!(state.prefill.engines[0].url, "http://127.0.0.1:1");
    assert_eq!(state.decode.engines[0].url, "http://127.0.0.1:2");
}
