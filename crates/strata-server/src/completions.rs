//! `POST /v1/completions`, streaming (SSE) and not.
//!
//! Each of the `n` choices (of each prompt, for a list of prompts) is its
//! own engine request. Text is built with the incremental detokenizer; a
//! stop string ends the choice in the engine in the step that completes it
//! (see [`crate::stop`]), the text is cut before it (or after it, with
//! `include_stop_str_in_output`) and the finish reason is `stop`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use strata_core::{FinishReason, NewRequest, PrefillRecord, RequestId, SamplingParams};
use strata_tokenizer::IncrementalDetokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::driver::RequestUpdate;
use crate::error::ApiError;
use crate::openai::{CompletionRequest, Prompt, SamplingFields, Usage};
use crate::AppState;

pub(crate) mod pd;
pub(crate) mod request_id;

/// vLLM's default for completions when `max_tokens` is absent.
const DEFAULT_MAX_TOKENS: i64 = 16;
pub const MAX_N: u32 = 16;

/// `max_tokens` when a request sets none (vLLM's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensDefault {
    /// `/v1/completions`: 16.
    Completions,
    /// `/v1/chat/completions`: the rest of the context after this many
    /// prompt tokens (capped by the model's `max_new_tokens`, if any).
    RestOfContext { prompt_tokens: usize },
}

/// The request's sampling parameters, with the model's generation-config
/// defaults for what it leaves unset.
pub fn sampling_params_for(
    state: &AppState,
    f: &SamplingFields,
    logprobs: Option<u32>,
    max_default: MaxTokensDefault,
) -> Result<SamplingParams, ApiError> {
    let g = &state.generation_defaults;
    let max_tokens = match max_default {
        MaxTokensDefault::Completions => DEFAULT_MAX_TOKENS,
        MaxTokensDefault::RestOfContext { prompt_tokens } => {
            let rest = state.max_model_len.saturating_sub(prompt_tokens).max(1) as i64;
            g.max_new_tokens.map_or(rest, |m| rest.min(i64::from(m.max(1))))
        }
    };
    let with_defaults = SamplingFields {
        temperature: f.temperature.or(g.temperature),
        top_p: f.top_p.or(g.top_p),
        top_k: f.top_k.or(g.top_k),
        min_p: f.min_p.or(g.min_p),
        repetition_penalty: f.repetition_penalty.or(g.repetition_penalty),
        ..f.clone()
    };
    let mut params = build_sampling_params(&with_defaults, logprobs, max_tokens)?;
    if let Some(words) = &f.bad_words {
        params.bad_words_token_ids = bad_words_token_ids(state, words)?;
    }
    params.validate()?;
    Ok(params)
}

/// vLLM's tokenization of `bad_words`: each word as written (leading spaces
/// dropped) and, when it makes a different first token of the same length,
/// with one leading space, so the word is banned at the start of the text
/// and after a space.
fn bad_words_token_ids(state: &AppState, words: &[String]) -> Result<Vec<Vec<u32>>, ApiError> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    for word in words {
        let bare = word.trim_start();
        if bare.is_empty() {
            return Err(ApiError::invalid("bad_words", "a bad word must not be empty"));
        }
        let plain = encode(state, bare, false, "bad_words")?;
        let spaced = encode(state, &format!(" {bare}"), false, "bad_words")?;
        let differs = spaced.first() != plain.first() && spaced.len() == plain.len();
        out.push(plain);
        if differs {
            out.push(spaced);
        }
    }
    Ok(out)
}

fn build_sampling_params(
    f: &SamplingFields,
    logprobs: Option<u32>,
    default_max_tokens: i64,
) -> Result<SamplingParams, ApiError> {
    let max_tokens = f.max_completion_tokens.or(f.max_tokens).unwrap_or(default_max_tokens);
    if max_tokens < 1 || max_tokens > u32::MAX as i64 {
        let param =
            if f.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
        return Err(ApiError::invalid(
            param,
            format!("{param} must be at least 1, got {max_tokens}"),
        ));
    }
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 && k <= u32::MAX as i64 => k as u32,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1 (disabled) or at least 1, got {k}"),
            ))
        }
    };
    let params = SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_p: f.top_p.unwrap_or(1.0),
        top_k,
        min_p: f.min_p.unwrap_or(0.0),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        seed: f.seed,
        logprobs,
        max_tokens: max_tokens as u32,
        min_tokens: f.min_tokens.unwrap_or(0),
        ignore_eos: f.ignore_eos.unwrap_or(false),
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
        repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
        logit_bias: logit_bias(f)?,
        allowed_token_ids: f.allowed_token_ids.clone(),
        prompt_logprobs: f.prompt_logprobs,
        ..SamplingParams::default()
    };
    params.validate()?;
    Ok(params)
}

/// OpenAI's `logit_bias` map (token ids as string keys), in key order.
fn logit_bias(f: &SamplingFields) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = &f.logit_bias else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(map.len());
    for (key, &bias) in map {
        let token = key.trim().parse::<u32>().map_err(|_| {
            ApiError::invalid("logit_bias", format!("logit_bias key `{key}` is not a token id"))
        })?;
        out.push((token, bias));
    }
    out.sort_by_key(|&(t, _)| t);
    Ok(out)
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One choice's progress.
#[derive(Debug)]
pub struct Choice {
    pub index: usize,
    pub id: RequestId,
    pub rx: UnboundedReceiver<RequestUpdate>,
    pub detok: IncrementalDetokenizer,
    pub text: String,
    pub emitted: usize,
    pub record: Option<PrefillRecord>,
    pub completion_tokens: u64,
    pub finish: Option<FinishReason>,
    pub stop: Vec<String>,
    pub include_stop_str_in_output: bool,
    /// What ended the choice with `stop`: the stop string, or the stop
    /// token's id; `null` for EOS (vLLM's `stop_reason`).
    pub stop_reason: Value,
    pub stop_token_ids: Vec<u32>,
    pub last_token: Option<u32>,
    /// The prompt text to put before the generated text (`echo`).
    pub echo: Option<String>,
    /// The prompt's token ids (empty unless prompt logprobs were asked
    /// for) and their log-probabilities (`prompt_logprobs`, or `echo` with
    /// `logprobs`).
    pub prompt_ids: Vec<u32>,
    pub prompt_logprobs: Option<Vec<Option<strata_core::TopLogprobs>>>,
    /// Whether the completion `logprobs` start with the prompt's (`echo`).
    pub echo_logprobs: bool,
    /// Log-probabilities of tokens not yet reported (when asked for).
    pub logprobs: Vec<TokenLogprobs>,
    /// What a P/D prefill engine answers with (the lease on the KV).
    pub kv_transfer_params: Option<strata_core::KvTransferParams>,
    /// A P/D decode's record of its prompt from the prefill engine, which
    /// its usage reports (see [`Choice::usage_record`]).
    pub remote_prefill: Option<PrefillRecord>,
}

/// One token's log-probabilities, with token texts (`None` for the
/// first prompt token, which has no context).
#[derive(Debug, Clone)]
pub struct TokenLogprobs {
    pub token: String,
    pub logprob: Option<f32>,
    pub top: Option<Vec<(String, f32)>>,
}

impl Choice {
    /// Completions format (`tokens`, `token_logprobs`, `top_logprobs`) of
    /// the tokens not yet reported, or `null` when none were asked for.
    pub fn take_completion_logprobs(&mut self) -> Value {
        if self.logprobs.is_empty() {
            return Value::Null;
        }
        let lps = std::mem::take(&mut self.logprobs);
        json!({
            "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
            "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
            "top_logprobs": lps.iter().map(|l| l.top.as_ref().map(|top| top.iter().map(|(t, p)| (t.clone(), json!(p))).collect::<serde_json::Map<_, _>>())).collect::<Vec<_>>(),
        })
    }

    /// Chat format (`content: [{token, logprob, top_logprobs}]`).
    pub fn take_chat_logprobs(&mut self) -> Value {
        if self.logprobs.is_empty() {
            return Value::Null;
        }
        let lps = std::mem::take(&mut self.logprobs);
        let entry = |t: &str, p: f32| json!({"token": t, "logprob": p, "bytes": t.as_bytes()});
        json!({"content": lps.iter().map(|l| {
            let mut e = entry(&l.token, l.logprob.unwrap_or(f32::NEG_INFINITY));
            e["top_logprobs"] =
                l.top.iter().flatten().map(|(t, p)| entry(t, *p)).collect();
            e
        }).collect::<Vec<_>>()})
    }
}

impl Choice {
    /// Applies one update; returns new text to emit (if any).
    pub fn apply(&mut self, state: &AppState, update: RequestUpdate) -> String {
        match update {
            RequestUpdate::Prefill(r) => self.record = Some(r),
            RequestUpdate::PromptLogprobs(p) => {
                if self.echo_logprobs {
                    // The prompt's entries lead the completion logprobs.
                    let text = |id: u32| state.tokenizer.decode(&[id], false).unwrap_or_default();
                    let mut lead: Vec<TokenLogprobs> = self
                        .prompt_ids
                        .iter()
                        .zip(&p)
                        .map(|(&id, lp)| TokenLogprobs {
                            token: text(id),
                            logprob: lp.as_ref().map(|l| l.sampled.logprob),
                            top: lp.as_ref().map(|l| {
                                l.top.iter().map(|t| (text(t.token_id), t.logprob)).collect()
                            }),
                        })
                        .collect();
                    lead.append(&mut self.logprobs);
                    self.logprobs = lead;
                }
                self.prompt_logprobs = Some(p);
            }
            RequestUpdate::KvTransfer(p) => self.kv_transfer_params = Some(p),
            RequestUpdate::Token { token_id, logprobs } => {
                self.completion_tokens += 1;
                self.last_token = Some(token_id);
                if let Some(lp) = logprobs {
                    let text = |id: u32| state.tokenizer.decode(&[id], false).unwrap_or_default();
                    self.logprobs.push(TokenLogprobs {
                        token: text(lp.sampled.token_id),
                        logprob: Some(lp.sampled.logprob),
                        top: Some(lp.top.iter().map(|t| (text(t.token_id), t.logprob)).collect()),
                    });
                }
                if let Ok(piece) = self.detok.push(&state.tokenizer, token_id) {
                    self.text.push_str(&piece);
                }
                // The engine thread found the same string and ended the
                // request there (finish reason `stop`); cut the text.
                if let Some((at, s)) = crate::stop::find(&self.text, &self.stop) {
                    let end = if self.include_stop_str_in_output { at + s.len() } else { at };
                    self.text.truncate(end);
                    self.stop_reason = json!(s);
                    self.finish = Some(FinishReason::Stop);
                }
            }
            RequestUpdate::Finished(reason) => {
                if self.finish.is_none() {
                    if let Ok(rest) = self.detok.finish(&state.tokenizer) {
                        self.text.push_str(&rest);
                    }
                    if reason == FinishReason::Stop {
                        // A stop token (not EOS) is named; EOS is `null`.
                        if let Some(t) = self.last_token.filter(|t| self.stop_token_ids.contains(t))
                        {
                            self.stop_reason = json!(t);
                        }
                    }
                    self.finish = Some(reason);
                }
            }
        }
        let new = self.text.get(self.emitted..).unwrap_or("").to_string();
        // Hold back text that could be the start of a stop string.
        let hold = if self.finish.is_some() {
            0
        } else {
            crate::stop::pending_len(&self.text, &self.stop)
        };
        let keep = new.len().saturating_sub(hold);
        let mut end = keep;
        while !new.is_char_boundary(end) {
            end -= 1;
        }
        self.emitted += end;
        new[..end].to_string()
    }
}

/// What a request asks of its choices besides sampling: the text (stop
/// strings, special tokens) and its place in the engine (priority, cache
/// salt).
#[derive(Debug, Clone)]
pub struct ChoiceOptions {
    pub stop: Vec<String>,
    pub include_stop_str_in_output: bool,
    pub skip_special_tokens: bool,
    pub priority: i32,
    pub cache_salt: Option<String>,
    /// The client's `X-Request-Id` ([`request_id`]).
    pub request_id: Option<String>,
    /// The grammar the output follows (structured outputs).
    pub grammar: Option<strata_core::structured::SharedGrammar>,
}

impl From<Vec<String>> for ChoiceOptions {
    fn from(stop: Vec<String>) -> Self {
        Self {
            stop,
            include_stop_str_in_output: false,
            skip_special_tokens: true,
            priority: 0,
            cache_salt: None,
            request_id: None,
            grammar: None,
        }
    }
}

impl ChoiceOptions {
    pub fn from_fields(f: &SamplingFields) -> Result<Self, ApiError> {
        if f.cache_salt.as_deref() == Some("") {
            return Err(ApiError::invalid("cache_salt", "cache_salt must not be empty"));
        }
        Ok(Self {
            stop: f.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
            include_stop_str_in_output: f.include_stop_str_in_output.unwrap_or(false),
            skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
            priority: f.priority.unwrap_or(0),
            cache_salt: f.cache_salt.clone(),
            request_id: None,
            grammar: None,
        })
    }
}

/// The prompt's last `truncate_prompt_tokens` tokens (vLLM truncates on
/// the left; `-1` keeps what the context can hold).
pub fn truncate_prompt(
    state: &AppState,
    mut ids: Vec<u32>,
    f: &SamplingFields,
) -> Result<Vec<u32>, ApiError> {
    let keep = match f.truncate_prompt_tokens {
        None => return Ok(ids),
        Some(-1) => state.max_model_len,
        Some(k) if k >= 1 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "truncate_prompt_tokens",
                format!("truncate_prompt_tokens must be -1 or at least 1, got {k}"),
            ))
        }
    };
    if ids.len() > keep {
        ids.drain(..ids.len() - keep);
    }
    Ok(ids)
}

pub async fn submit_choices(
    state: &AppState,
    prompt_ids: Vec<u32>,
    params: SamplingParams,
    n: u32,
    options: impl Into<ChoiceOptions>,
    kv_transfer_params: Option<strata_core::KvTransferParams>,
) -> Result<Vec<Choice>, ApiError> {
    let options: ChoiceOptions = options.into();
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_N}, got {n}")));
    }
    if let Ok(m) = state.engine.metrics.lock() {
        m.observe_request_params_n(n);
    }
    if !state.engine.try_reserve(n as usize, state.max_queued_requests) {
        return Err(ApiError::Overloaded { limit: state.max_queued_requests });
    }
    let mut choices = Vec::new();
    for index in 0..n as usize {
        let mut p = params.clone();
        // Distinct samples per choice, reproducible from the request's seed.
        p.seed = params.seed.map(|s| s.wrapping_add(index as u64));
        let stop_token_ids = p.stop_token_ids.clone();
        // The prompt's ids are kept only to name the prompt logprobs.
        let scored_prompt =
            if p.prompt_logprobs.is_some() { prompt_ids.clone() } else { Vec::new() };
        let new = NewRequest {
            prompt_token_ids: prompt_ids.clone(),
            params: p,
            priority: options.priority,
            cache_salt: options.cache_salt.clone(),
            eos_token_ids: state.tokenizer.eos_token_ids().to_vec(),
            kv_transfer_params: kv_transfer_params.clone(),
            structured: options.grammar.clone(),
        };
        let watch = crate::stop::StopWatch::new(
            state.tokenizer.clone(),
            options.stop.clone(),
            options.skip_special_tokens,
        );
        let submitted = state.engine.submit_as(new, watch, options.request_id.clone()).await;
        if submitted.is_err() {
            // This choice's slot was released by the engine thread; the
            // later ones were never submitted.
            state.engine.release(n as usize - index - 1);
        }
        let (id, rx) = submitted?;
        if let Some(x) = &options.request_id {
            tracing::info!("x-request-id {x} is engine request {id}");
        }
        let remote_prefill =
            kv_transfer_params.as_ref().and_then(|p| p.remote_prefill_record(id, prompt_ids.len()));
        choices.push(Choice {
            index,
            id,
            rx,
            detok: IncrementalDetokenizer::new(options.skip_special_tokens),
            text: String::new(),
            emitted: 0,
            record: None,
            completion_tokens: 0,
            finish: None,
            stop: options.stop.clone(),
            include_stop_str_in_output: options.include_stop_str_in_output,
            stop_reason: Value::Null,
            stop_token_ids,
            last_token: None,
            echo: None,
            prompt_ids: scored_prompt,
            prompt_logprobs: None,
            echo_logprobs: false,
            logprobs: Vec::new(),
            kv_transfer_params: None,
            remote_prefill,
        });
    }
    Ok(choices)
}

pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the body is not valid UTF-8"))?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// The name to answer with: the one the request asked for (any served
/// name), or the first served name when it names none.
pub fn check_model(state: &AppState, model: Option<&str>) -> Result<String, ApiError> {
    match model {
        None => Ok(state.served_model_name.clone()),
        Some(m) if m == state.served_model_name || state.model_aliases.iter().any(|a| a == m) => {
            Ok(m.to_owned())
        }
        Some(m) => Err(ApiError::ModelNotFound(m.to_owned())),
    }
}

/// The token ids of `text`. The tokenizer's own error stays in the log:
/// the client learns which field could not be tokenized.
pub fn encode(
    state: &AppState,
    text: &str,
    add_special_tokens: bool,
    param: &'static str,
) -> Result<Vec<u32>, ApiError> {
    state.tokenizer.encode(text, add_special_tokens).map_err(|e| {
        tracing::warn!(param, "tokenizing a request failed: {e}");
        ApiError::invalid(param, format!("the {param} could not be tokenized"))
    })
}

pub fn finish_str(f: Option<FinishReason>) -> Value {
    f.map_or(Value::Null, |f| json!(f.as_str()))
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    request_id::handle(&headers, |id| complete(state, body, id)).await
}

async fn complete(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    request_id: Option<String>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = crate::fields::COMPLETIONS.parse(body)?;
    let model = check_model(&state, req.model.as_deref())?;
    if req.logprobs.is_some_and(|n| n > strata_core::sampling::MAX_LOGPROBS) {
        return Err(ApiError::invalid(
            "logprobs",
            format!("logprobs must be at most {}", strata_core::sampling::MAX_LOGPROBS),
        ));
    }
    // Each prompt (one, or a batch) with the text to echo.
    let prompts: Vec<(Option<String>, Vec<u32>)> = match &req.prompt {
        Prompt::Text(t) => vec![(Some(t.clone()), Vec::new())],
        Prompt::Tokens(ids) => vec![(None, ids.clone())],
        Prompt::Texts(ts) => ts.iter().map(|t| (Some(t.clone()), Vec::new())).collect(),
        Prompt::TokenLists(ls) => ls.iter().map(|ids| (None, ids.clone())).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt list is empty"));
    }
    let mut batch = Vec::with_capacity(prompts.len());
    for (text, ids) in prompts {
        let ids = match &text {
            Some(t) if t.is_empty() => {
                return Err(ApiError::invalid("prompt", "the prompt is empty"))
            }
            Some(t) => encode(&state, t, true, "prompt")?,
            None if ids.is_empty() => {
                return Err(ApiError::invalid("prompt", "the prompt is empty"))
            }
            None => ids,
        };
        let before = ids.len();
        let ids = truncate_prompt(&state, ids, &req.sampling)?;
        let echo = match (req.echo, text) {
            (false, _) => None,
            (true, Some(t)) if ids.len() == before => Some(t),
            (true, _) => Some(state.tokenizer.decode(&ids, false).map_err(|e| {
                tracing::warn!("decoding a prompt to echo failed: {e}");
                ApiError::Internal("the prompt could not be decoded to echo it")
            })?),
        };
        batch.push((echo, ids));
    }
    let mut params =
        sampling_params_for(&state, &req.sampling, req.logprobs, MaxTokensDefault::Completions)?;
    // `echo` with `logprobs` scores the prompt too (what evaluation
    // harnesses read for loglikelihoods), as vLLM does.
    let echo_logprobs = req.echo && req.logprobs.is_some();
    if echo_logprobs {
        params.prompt_logprobs = params.prompt_logprobs.max(req.logprobs);
        params.validate()?;
    }
    let options = ChoiceOptions {
        request_id: request_id.clone(),
        grammar: crate::structured::grammar(&state, &req.sampling)?,
        ..ChoiceOptions::from_fields(&req.sampling)?
    };
    let stream = req.sampling.stream.unwrap_or(false);
    let plan = pd::plan(
        req.sampling.kv_transfer_params.as_ref(),
        req.sampling.n.unwrap_or(1),
        stream,
        batch.len(),
    )?;
    let (n, kv) = (plan.engine_n, plan.kv_transfer_params);
    let mut choices = Vec::new();
    for (i, (echo, ids)) in batch.into_iter().enumerate() {
        let mut more =
            submit_choices(&state, ids, params.clone(), n, options.clone(), kv.clone()).await?;
        for c in &mut more {
            // OpenAI's numbering: prompt i's choices are i*n .. i*n + n.
            c.index += i * n as usize;
            c.echo = echo.clone();
            c.echo_logprobs = echo_logprobs;
        }
        choices.extend(more);
    }
    let id = request_id::response_id("cmpl", request_id.as_deref(), choices[0].id);
    let created = now_secs();
    if stream {
        let include_usage = req.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let stream_id = id.clone();
        let chunk_model = model.clone();
        let chunk = move |c: &mut Choice, text: &str| {
            let model = &chunk_model;
            let (index, finish, logprobs) = (c.index, c.finish, c.take_completion_logprobs());
            // The echoed prompt comes with the choice's first chunk.
            let text = match c.echo.take() {
                Some(prompt) => prompt + text,
                None => text.to_string(),
            };
            json!({"id": stream_id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                "finish_reason": finish_str(finish), "stop_reason": c.stop_reason}]})
        };
        let usage_chunk = {
            let (id, model) = (id.clone(), model.clone());
            move |usage: Usage| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage})
        };
        return Ok(sse(state, choices, chunk, usage_chunk, include_usage).into_response());
    }
    let choices = collect(&state, choices).await?;
    let usage = pd::usage(&choices, plan.usage_scale);
    let kv = kv_transfer_json(&choices);
    let out: Vec<Value> = choices
        .into_iter()
        .map(|mut c| {
            let logprobs = c.take_completion_logprobs();
            let text = c.echo.take().unwrap_or_default() + &c.text;
            let mut choice = json!({"index": c.index, "text": text, "logprobs": logprobs,
                   "finish_reason": finish_str(c.finish), "stop_reason": c.stop_reason});
            if req.sampling.prompt_logprobs.is_some() {
                choice["prompt_logprobs"] = prompt_logprobs_json(&state, &c);
            }
            choice
        })
        .collect();
    let body = json!({
        "id": id, "object": "text_completion", "created": created,
        "model": model, "choices": out, "usage": usage,
    });
    Ok(json_answer(body, kv))
}

/// The top-level `kv_transfer_params` of a non-streaming answer (vLLM's
/// place for it): the first choice's, when a connector gave one.
pub fn kv_transfer_json(choices: &[Choice]) -> Option<Value> {
    let p = choices.iter().find_map(|c| c.kv_transfer_params.as_ref())?;
    serde_json::to_value(p).ok()
}

/// A non-streaming answer, with `kv_transfer_params` (from
/// [`kv_transfer_json`]) at its top level when there are some.
pub fn json_answer(mut body: Value, kv: Option<Value>) -> Response {
    if let Some(kv) = kv {
        body["kv_transfer_params"] = kv;
    }
    Json(body).into_response()
}

/// vLLM's `prompt_logprobs` of a choice: `null` first, then per prompt
/// token a map from token id to `{logprob, rank, decoded_token}` holding the
/// prompt token and the top alternatives. A rank is the place in the top
/// list; the prompt token's is `null` when it is not in that list (strata
/// does not rank the whole vocabulary).
pub fn prompt_logprobs_json(state: &AppState, c: &Choice) -> Value {
    let Some(entries) = &c.prompt_logprobs else { return Value::Null };
    let text = |id: u32| state.tokenizer.decode(&[id], false).unwrap_or_default();
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let Some(lp) = e else { return Value::Null };
                let mut map = serde_json::Map::new();
                for (rank, t) in lp.top.iter().enumerate() {
                    map.insert(
                        t.token_id.to_string(),
                        json!({"logprob": t.logprob, "rank": rank + 1, "decoded_token": text(t.token_id)}),
                    );
                }
                map.entry(lp.sampled.token_id.to_string()).or_insert_with(|| {
                    json!({"logprob": lp.sampled.logprob, "rank": null,
                           "decoded_token": text(lp.sampled.token_id)})
                });
                Value::Object(map)
            })
            .collect(),
    )
}

/// Waits for every choice to finish (non-streaming responses); their
/// usage is [`pd::usage`]. A choice whose updates end before `Finished`
/// lost its engine thread: the request fails with
/// [`ApiError::EngineDied`] (see [`engine_died`]).
pub async fn collect(state: &AppState, choices: Vec<Choice>) -> Result<Vec<Choice>, ApiError> {
    let mut done = Vec::with_capacity(choices.len());
    for mut c in choices {
        while c.finish.is_none() {
            let Some(u) = c.rx.recv().await else { return Err(engine_died(&c)) };
            c.apply(state, u);
        }
        done.push(c);
    }
    Ok(done)
}

/// The error of a choice whose update channel closed before `Finished`.
///
/// Only the engine thread's exit closes a channel early: an abort by the
/// engine (a shutdown's included, which drains its requests before the
/// thread returns) still sends `Finished(abort)`, and the client keeps
/// that finish reason; a client that went away dropped its receiver, and
/// nobody is left to answer. So a channel closed early means the thread
/// died: vLLM's `EngineDeadError`, a 500, or an error event in a stream
/// that already answered 200.
fn engine_died(c: &Choice) -> ApiError {
    tracing::warn!("engine request {} ended without finishing: the engine thread is gone", c.id);
    ApiError::EngineDied
}

/// The SSE stream of several choices, then the usage chunk if asked, then
/// `[DONE]`. A dead engine thread ([`engine_died`]) ends it as vLLM ends a
/// stream on any error: one `data: {"error": {...}}` event (the body a
/// non-streaming request gets with its 500), then `[DONE]`, and no usage.
pub fn sse<C, U>(
    state: Arc<AppState>,
    choices: Vec<Choice>,
    chunk: C,
    usage_chunk: U,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    C: Fn(&mut Choice, &str) -> Value + Send + 'static,
    U: Fn(Usage) -> Value + Send + 'static,
{
    let total = choices.len();
    let events = stream::unfold(
        (state, choices, chunk, usage_chunk, 0usize, Usage::default(), false),
        move |(state, mut choices, chunk, usage_chunk, mut done, mut usage, finished)| async move {
            if finished {
                return None;
            }
            if done == total {
                let mut out = Vec::new();
                if include_usage {
                    out.push(Event::default().data(usage_chunk(usage).to_string()));
                }
                out.push(Event::default().data("[DONE]"));
                return Some((out, (state, choices, chunk, usage_chunk, done, usage, true)));
            }
            // Wait on whichever choice speaks first.
            let futures = choices.iter_mut().filter(|c| c.finish.is_none()).map(|c| {
                Box::pin(async move {
                    let u = c.rx.recv().await;
                    (c.index, u)
                })
            });
            let ((index, update), _, _) = futures_util::future::select_all(futures).await;
            let c = choices
                .iter_mut()
                .find(|c| c.index == index)
                .expect("invariant: index from this list");
            let Some(update) = update else {
                // Every choice went with the engine thread: the stream ends.
                let error = serde_json::to_string(&engine_died(c).body())
                    .expect("invariant: an error body serializes");
                let out = vec![Event::default().data(error), Event::default().data("[DONE]")];
                return Some((out, (state, choices, chunk, usage_chunk, done, usage, true)));
            };
            let mut out = Vec::new();
            let text = c.apply(&state, update);
            if !text.is_empty() || c.finish.is_some() {
                // A chunk builder answers `null` for a piece that says
                // nothing (a reasoning tag, a tool call held back).
                let value = chunk(c, &text);
                if !value.is_null() {
                    out.push(Event::default().data(value.to_string()));
                }
            }
            if c.finish.is_some() {
                usage.add(c.usage_record(), c.completion_tokens);
                done += 1;
            }
            Some((out, (state, choices, chunk, usage_chunk, done, usage, false)))
        },
    )
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Sse::new(events)
}
