//! The bodies the router rewrites: the two upstream requests built from the
//! client's, and the usage the client gets back (docs/accounting.md, A18).
//!
//! The router treats requests and answers as opaque JSON and touches only
//! the fields the P/D protocol needs, so a field an engine learns later
//! passes through without a router change. Likewise `kv_transfer_params`
//! is opaque except for `do_remote_decode`, `do_remote_prefill` and
//! `num_pulls`.
//!
//! Usage: the decode engine computed the completion and saw the prompt
//! arrive as a transfer (`remote`), which is not what the client's prompt
//! cost the fleet. The prefill engine's record is (its cache hits and its
//! computed tokens), so the client's `prompt_tokens_details` is the
//! prefill's, once per choice: the decode engine runs `n` requests of the
//! same prompt and each is attributed like the prefill's one (rule 5),
//! which keeps the sources summing to the decode's `prompt_tokens` (P × n).

use axum::body::Bytes;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// What the router needs to know of a client's body, checked before any
/// engine sees it (a mistake here would leave a prefill lease behind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    /// Choices asked for (`n`, default 1): the decode engine's pulls.
    pub n: u32,
}

impl ClientRequest {
    pub fn check(body: &Value) -> Result<Self, ApiError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
        let n = match obj.get("n") {
            None | Some(Value::Null) => 1,
            Some(v) => {
                v.as_u64().filter(|&n| n >= 1).and_then(|n| u32::try_from(n).ok()).ok_or_else(
                    || ApiError::invalid("n", format!("n must be a positive integer, got {v}")),
                )?
            }
        };
        match obj.get("stream") {
            None | Some(Value::Null | Value::Bool(_)) => {}
            Some(v) => {
                return Err(ApiError::invalid(
                    "stream",
                    format!("stream must be a boolean, got {v}"),
                ))
            }
        }
        Ok(Self { n })
    }
}

/// The prefill hop's body: the client's, cut to one token, one choice, no
/// stream, asking the engine to hold the KV for `n` pulls.
///
/// `max_completion_tokens` is cut too whenever present (both endpoints
/// honour it over `max_tokens`), and `min_tokens` is dropped (it would
/// exceed a budget of one token; the one token is discarded anyway).
pub fn prefill_body(client: &Value, n: u32) -> Value {
    let mut body = client.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("max_tokens".into(), json!(1));
        if obj.get("max_completion_tokens").is_some_and(|v| !v.is_null()) {
            obj.insert("max_completion_tokens".into(), json!(1));
        }
        obj.remove("min_tokens");
        obj.insert("stream".into(), json!(false));
        obj.remove("stream_options");
        obj.insert("n".into(), json!(1));
        obj.insert("kv_transfer_params".into(), json!({"do_remote_decode": true, "num_pulls": n}));
    }
    body
}

/// The decode hop's body: the client's, plus the prefill's params turned
/// into a pull (`do_remote_prefill`).
pub fn decode_body(client: &Value, prefill_params: &Map<String, Value>) -> Value {
    let mut params = prefill_params.clone();
    params.insert("do_remote_prefill".into(), json!(true));
    params.insert("do_remote_decode".into(), json!(false));
    let mut body = client.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("kv_transfer_params".into(), Value::Object(params));
    }
    body
}

/// Turns the decode engine's answer (or its usage chunk) into what the
/// client sees.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageComposer {
    /// The prefill's `usage.prompt_tokens_details`, already scaled by `n`;
    /// `None` when the prefill gave none (then the client gets none rather
    /// than the decode side's transfer counted as a cache hit).
    details: Option<Value>,
}

impl UsageComposer {
    pub fn from_prefill(prefill_answer: &Value, n: u32) -> Self {
        let details = prefill_answer
            .get("usage")
            .and_then(|u| u.get("prompt_tokens_details"))
            .filter(|d| d.is_object())
            .map(|d| scale(d, u64::from(n)));
        Self { details }
    }

    /// Strips `kv_transfer_params` and, if the body has a usage object,
    /// replaces its `prompt_tokens_details`. Returns whether it changed
    /// anything (so unchanged stream chunks pass byte for byte).
    pub fn apply(&self, body: &mut Value) -> bool {
        let Some(obj) = body.as_object_mut() else { return false };
        let mut changed = obj.remove("kv_transfer_params").is_some();
        if let Some(usage) = obj.get_mut("usage").and_then(Value::as_object_mut) {
            match &self.details {
                Some(d) => {
                    usage.insert("prompt_tokens_details".into(), d.clone());
                }
                None => {
                    usage.remove("prompt_tokens_details");
                }
            }
            changed = true;
        }
        changed
    }
}

/// Every unsigned integer in `v` times `n` (nested objects included).
fn scale(v: &Value, n: u64) -> Value {
    match v {
        Value::Number(x) => x.as_u64().map_or_else(|| v.clone(), |x| json!(x.saturating_mul(n))),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), scale(v, n))).collect())
        }
        other => other.clone(),
    }
}

/// Rewrites an SSE byte stream event by event: events pass as soon as
/// they are complete, unchanged unless they carry usage or
/// `kv_transfer_params`; an event split across reads waits for its end.
#[derive(Debug)]
pub struct SseRewriter {
    composer: UsageComposer,
    buf: Vec<u8>,
}

impl SseRewriter {
    pub fn new(composer: UsageComposer) -> Self {
        Self { composer, buf: Vec::new() }
    }

    /// Feeds bytes read upstream; returns the complete events among them.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some((event_len, next)) = event_end(&self.buf[start..]) {
            let event = &self.buf[start..start + event_len];
            match rewrite_event(&self.composer, event) {
                Some(new) => {
                    out.extend_from_slice(new.as_bytes());
                    out.push(b'\n');
                }
                None => out.extend_from_slice(&self.buf[start..start + next]),
            }
            start += next;
        }
        self.buf.drain(..start);
        Bytes::from(out)
    }

    /// The bytes left when the upstream ended (an unterminated event),
    /// passed on as they are.
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

/// Where the first event in `b` ends: (its length including its last line
/// break, the offset after the blank line that ends it).
fn event_end(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c == b'\n') {
        let nl = i + p;
        match b.get(nl + 1..) {
            Some([b'\n', ..]) => return Some((nl + 1, nl + 2)),
            Some([b'\r', b'\n', ..]) => return Some((nl + 1, nl + 3)),
            _ => i = nl + 1,
        }
    }
    None
}

/// The event rewritten (lines joined by `\n`, ending in one), or `None`
/// when it passes unchanged.
fn rewrite_event(composer: &UsageComposer, event: &[u8]) -> Option<String> {
    // Cheap screen: most events are token deltas that need no parsing.
    let text = std::str::from_utf8(event).ok()?;
    if !text.contains("usage") && !text.contains("kv_transfer_params") {
        return None;
    }
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let payload = line.strip_prefix("data:").map(|p| p.strip_prefix(' ').unwrap_or(p));
        let rewritten = payload.and_then(|p| {
            let mut v: Value = serde_json::from_str(p).ok()?;
            composer.apply(&mut v).then(|| format!("data: {v}"))
        });
        match rewritten {
            Some(l) => {
                changed = true;
                out.push_str(&l);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests;
