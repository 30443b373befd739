//! The two-hop flow of `POST /v1/completions` and `/v1/chat/completions`:
//! prefill (one token, KV held for the decode), then decode (the answer,
//! streamed or not), with the client's usage composed from both.
//!
//! Both hops go under one `X-Request-Id` ([`request_id`]), which the
//! answer carries back, error answers included (but for the 400 of a bad
//! id, which names none).
//!
//! Disconnects: each upstream request lives in the handler's future or in
//! the response body's stream. When the client goes away, hyper drops
//! that future or stream, which drops the reqwest request with it; the
//! engine sees its connection close and aborts the request. Nothing here
//! has to notice the disconnect, only to hold nothing upstream elsewhere.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use serde_json::Value;
use tracing::Instrument;

use super::error::RouterError;
use super::metrics::{ErrorKind, Hop};
use super::pool::{Engine, InFlight};
use super::request_id;
use super::rewrite::{decode_body, prefill_body, ClientRequest, SseRewriter, UsageComposer};
use super::RouterState;
use crate::completions::parse_body;

pub(super) async fn completions(
    State(state): State<Arc<RouterState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, "/v1/completions", headers, body).await
}

pub(super) async fn chat_completions(
    State(state): State<Arc<RouterState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, "/v1/chat/completions", headers, body).await
}

async fn handle(
    state: Arc<RouterState>,
    path: &'static str,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    state.metrics.request(path);
    let id = match request_id::for_request(&headers) {
        Ok(id) => id,
        Err(e) => return state.respond(Err(e.into())),
    };
    let forward = Forward { auth: headers.get(header::AUTHORIZATION), request_id: &id };
    let mut watch = DisconnectWatch::new(state.clone());
    let result = two_hop(&state, path, forward, body, &mut watch)
        .instrument(tracing::debug_span!("route", path, x_request_id = id.as_str()))
        .await;
    watch.disarm();
    request_id::echo(state.respond(result), Some(&id))
}

/// What both hops carry from the client's request besides its body.
#[derive(Clone, Copy, Debug)]
struct Forward<'a> {
    /// The client's `Authorization`, so engines run with the same
    /// `--api-key` accept it.
    auth: Option<&'a HeaderValue>,
    /// The client's `X-Request-Id`, or the one made for it.
    request_id: &'a str,
}

/// Counts `client_disconnected` if dropped while armed: the handler's
/// future (or a streamed body) was dropped before the answer was complete,
/// which only happens when the client went away.
#[derive(Debug)]
struct DisconnectWatch {
    state: Arc<RouterState>,
    armed: bool,
}

impl DisconnectWatch {
    fn new(state: Arc<RouterState>) -> Self {
        Self { state, armed: true }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Moves the watch into a streamed body (this one stops watching).
    fn hand_off(&mut self) -> Self {
        self.armed = false;
        Self::new(self.state.clone())
    }
}

impl Drop for DisconnectWatch {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!("client went away; upstream request dropped");
            self.state.metrics.error(ErrorKind::ClientDisconnected);
        }
    }
}

async fn two_hop(
    state: &RouterState,
    path: &'static str,
    forward: Forward<'_>,
    body: Result<Bytes, BytesRejection>,
    watch: &mut DisconnectWatch,
) -> Result<Response, RouterError> {
    let client: Value = parse_body(body)?;
    let req = ClientRequest::check(&client)?;

    // Hop 1: prefill. The whole answer is small (one token), so it is read
    // before the in-flight count drops.
    let prefill = state.prefill.acquire(state.policy);
    let started = Instant::now();
    let resp =
        send(state, Hop::Prefill, prefill.engine(), path, &prefill_body(&client, req.n), forward)
            .await?;
    let status = resp.status();
    let bytes = read_all(Hop::Prefill, prefill.engine(), resp).await?;
    state.metrics.hop(Hop::Prefill, started.elapsed().as_secs_f64());
    let prefill_url = prefill.engine().url.clone();
    drop(prefill);
    if !status.is_success() {
        return Err(RouterError::upstream(Hop::Prefill, status, &bytes));
    }
    let answer: Value = serde_json::from_slice(&bytes).map_err(|e| RouterError::BadAnswer {
        hop: Hop::Prefill,
        url: prefill_url.clone(),
        detail: e.to_string(),
    })?;
    let Some(Value::Object(params)) = answer.get("kv_transfer_params") else {
        return Err(RouterError::NoKvTransferParams { url: prefill_url });
    };
    let composer = UsageComposer::from_prefill(&answer, req.n);
    tracing::debug!(prefill = %prefill_url, "prefill done");

    // Hop 2: decode, timed to its response headers (its first byte).
    let decode = state.decode.acquire(state.policy);
    let started = Instant::now();
    let resp =
        send(state, Hop::Decode, decode.engine(), path, &decode_body(&client, params), forward)
            .await?;
    state.metrics.hop(Hop::Decode, started.elapsed().as_secs_f64());
    let status = resp.status();
    if !status.is_success() {
        let bytes = read_all(Hop::Decode, decode.engine(), resp).await?;
        return Err(RouterError::upstream(Hop::Decode, status, &bytes));
    }
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        return Ok(sse_response(resp, decode, composer, watch.hand_off()));
    }
    let bytes = read_all(Hop::Decode, decode.engine(), resp).await?;
    let mut answer: Value = serde_json::from_slice(&bytes).map_err(|e| RouterError::BadAnswer {
        hop: Hop::Decode,
        url: decode.engine().url.clone(),
        detail: e.to_string(),
    })?;
    composer.apply(&mut answer);
    Ok((status, Json(answer)).into_response())
}

/// POSTs a JSON body to an engine, with what it [`Forward`]s.
async fn send(
    state: &RouterState,
    hop: Hop,
    engine: &Engine,
    path: &str,
    body: &Value,
    forward: Forward<'_>,
) -> Result<reqwest::Response, RouterError> {
    let mut req = state
        .client
        .post(format!("{}{path}", engine.url))
        .header(header::CONTENT_TYPE, "application/json")
        .header(request_id::HEADER, forward.request_id)
        .body(body.to_string());
    if let Some(auth) = forward.auth {
        req = req.header(header::AUTHORIZATION, auth.clone());
    }
    req.send().await.map_err(|e| unreachable(hop, engine, &e))
}

async fn read_all(
    hop: Hop,
    engine: &Engine,
    resp: reqwest::Response,
) -> Result<Bytes, RouterError> {
    resp.bytes().await.map_err(|e| unreachable(hop, engine, &e))
}

/// An engine that could not be reached (logged with its URL and the
/// connection error by `RouterState::respond`).
fn unreachable(hop: Hop, engine: &Engine, e: &reqwest::Error) -> RouterError {
    RouterError::Unreachable { hop, url: engine.url.clone(), detail: error_chain(e) }
}

/// reqwest's message without its causes says little ("error sending
/// request"); the chain names the refused connection.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// What the streamed body owns: the upstream stream, the decode engine's
/// in-flight count, and the disconnect watch, all dropped together.
struct Relay<S> {
    upstream: S,
    rewriter: SseRewriter,
    _in_flight: InFlight,
    watch: DisconnectWatch,
}

/// Passes the decode engine's SSE through as it arrives, with the usage
/// chunk rewritten. A broken upstream ends the body with an error, so the
/// client's HTTP stack reports a cut stream instead of a clean end.
fn sse_response(
    resp: reqwest::Response,
    in_flight: InFlight,
    composer: UsageComposer,
    watch: DisconnectWatch,
) -> Response {
    let url = in_flight.engine().url.clone();
    let relay = Relay {
        upstream: resp.bytes_stream(),
        rewriter: SseRewriter::new(composer),
        _in_flight: in_flight,
        watch,
    };
    let events = stream::unfold(Some(relay), move |relay| {
        let url = url.clone();
        async move {
            let mut relay = relay?;
            loop {
                match relay.upstream.next().await {
                    Some(Ok(chunk)) => {
                        let out = relay.rewriter.push(&chunk);
                        if !out.is_empty() {
                            return Some((Ok(out), Some(relay)));
                        }
                    }
                    Some(Err(e)) => {
                        relay.watch.disarm();
                        let message = error_chain(&e);
                        tracing::warn!(url = %url, "decode stream broke: {message}");
                        relay.watch.state.metrics.error(ErrorKind::DecodeError);
                        return Some((Err(std::io::Error::other(message)), None));
                    }
                    None => {
                        relay.watch.disarm();
                        let rest = relay.rewriter.finish();
                        return (!rest.is_empty()).then_some((Ok(rest), None));
                    }
                }
            }
        }
    });
    let headers =
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
    (headers, Body::from_stream(events)).into_response()
}
