//! `POST /v1/chat/completions`: messages rendered with the model's chat
//! template (`tokenizer_config.json`, or the built-in model's ChatML) by
//! minijinja with Python-compatible string methods, then served like a
//! completion.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::completions::{
    check_model, collect, encode, finish_str, json_answer, kv_transfer_json, now_secs, parse_body,
    sampling_params, sse, submit_choices, Choice,
};
use crate::error::ApiError;
use crate::openai::{SamplingFields, Usage};
use crate::AppState;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

fn text_of(content: &Option<Content>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match (p.kind.as_str(), &p.text) {
                ("text", Some(t)) => Ok(t.as_str()),
                (kind, _) => Err(ApiError::invalid(
                    "messages",
                    format!("content part type `{kind}` is not supported (text only)"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat()),
    }
}

/// What the client is told when the template fails for any reason other
/// than its own `raise_exception` (minijinja's message, with the template's
/// name, line numbers and source, stays in the log).
pub const TEMPLATE_FAILED: &str = "the chat template could not be rendered for these messages";

/// Renders `messages` with the tokenizer's chat template.
///
/// A template that refuses the messages with `raise_exception("...")`
/// (e.g. roles that do not alternate) gets its message to the client in a
/// 400, as transformers surfaces it; any other template failure is the
/// model's template's fault, a 500 with [`TEMPLATE_FAILED`].
pub fn render(state: &AppState, messages: &[ChatMessage]) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let chat = state.tokenizer.chat_config();
    let template = chat.template.as_deref().ok_or_else(|| {
        ApiError::invalid("messages", "this model has no chat template; use /v1/completions")
    })?;
    let msgs = messages
        .iter()
        .map(|m| Ok(json!({"role": m.role, "content": text_of(&m.content)?})))
        .collect::<Result<Vec<Value>, ApiError>>()?;
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // The template's own message, kept apart from minijinja's error (which
    // adds its kind, the template's name and line).
    let raised = Arc::new(OnceLock::<String>::new());
    let slot = raised.clone();
    env.add_function("raise_exception", move |msg: String| -> Result<String, minijinja::Error> {
        let _ = slot.set(msg.clone());
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| {
        tracing::error!("the chat template does not compile: {e:#}");
        ApiError::Internal(TEMPLATE_FAILED)
    })?;
    let tmpl = env.get_template("chat").map_err(|e| {
        tracing::error!("the chat template could not be loaded: {e:#}");
        ApiError::Internal(TEMPLATE_FAILED)
    })?;
    tmpl.render(minijinja::context! {
        messages => msgs,
        add_generation_prompt => true,
        bos_token => chat.bos_token.clone().unwrap_or_default(),
        eos_token => chat.eos_token.clone().unwrap_or_default(),
    })
    .map_err(|e| match raised.get() {
        Some(msg) => {
            tracing::debug!("the chat template rejected the messages: {e}");
            ApiError::invalid("messages", format!("the chat template rejected the messages: {msg}"))
        }
        None => {
            tracing::error!("the chat template failed to render: {e:#}");
            ApiError::Internal(TEMPLATE_FAILED)
        }
    })
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = parse_body(body)?;
    check_model(&state, req.model.as_deref())?;
    let prompt = render(&state, &req.messages)?;
    // The template already holds any BOS the model wants.
    let prompt_ids = encode(&state, &prompt, false, "messages")?;
    let logprobs = req.logprobs.then(|| req.top_logprobs.unwrap_or(0));
    let params = sampling_params(&req.sampling, logprobs)?;
    let stop = req.sampling.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    let choices = submit_choices(
        &state,
        prompt_ids,
        params,
        req.sampling.n.unwrap_or(1),
        stop,
        req.sampling.kv_transfer_params.clone(),
    )
    .await?;
    let id = format!("chatcmpl-{}", choices[0].id.get());
    let created = now_secs();
    let model = state.served_model_name.clone();
    if req.sampling.stream.unwrap_or(false) {
        let include_usage = req.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let (id2, model2) = (id.clone(), model.clone());
        let chunk = move |c: &mut Choice, text: &str| {
            let (index, finish, logprobs) = (c.index, c.finish, c.take_chat_logprobs());
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": index, "delta": {"role": "assistant", "content": text},
                                "logprobs": logprobs, "finish_reason": finish_str(finish)}]})
        };
        let usage_chunk = move |usage: Usage| json!({"id": id2, "object": "chat.completion.chunk", "created": created, "model": model2, "choices": [], "usage": usage});
        return Ok(sse(state, choices, chunk, usage_chunk, include_usage).into_response());
    }
    let (choices, usage) = collect(&state, choices).await;
    let kv = kv_transfer_json(&choices);
    let out: Vec<Value> = choices
        .into_iter()
        .map(|mut c| {
            let logprobs = c.take_chat_logprobs();
            json!({"index": c.index, "message": {"role": "assistant", "content": c.text},
                   "logprobs": logprobs, "finish_reason": finish_str(c.finish)})
        })
        .collect();
    let body = json!({"id": id, "object": "chat.completion", "created": created, "model": model, "choices": out, "usage": usage});
    Ok(json_answer(body, kv))
}
