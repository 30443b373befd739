//! `POST /v1/chat/completions`: the messages rendered with the model's chat
//! template as Hugging Face transformers' `apply_chat_template` renders
//! them (after vLLM's preparation of the request's messages), then served
//! like a completion.
//!
//! What the template sees, as under vLLM (which hands transformers the
//! request's messages after its own normalisation):
//!
//! * `messages`: each message's `role`; its `content` as a string (text
//!   parts joined with `\n`, `null` as `""`), or, for a template that loops
//!   over a message's content ([`ContentFormat`], vLLM's "auto" detection),
//!   as a list of `{"type": "text", "text": ...}` parts; an assistant's
//!   `tool_calls` (`{id, type, function: {name, arguments}}`, the
//!   `arguments` JSON string parsed into an object, `{}` when it does not
//!   parse; an empty list is dropped) and its `reasoning` (also as
//!   `reasoning_content`; either spelling is accepted); a tool message's
//!   `tool_call_id` (its content always a string); any message's `name`.
//!   Roles are not restricted (vLLM passes any role through); a
//!   `developer` message gets `tools: None` as under vLLM.
//! * `tools` (the request's tool definitions, or `None`), `documents`
//!   (or `None`), `add_generation_prompt`.
//! * the tokenizer's special tokens (`bos_token`, `eos_token`, ...: those
//!   set in `tokenizer_config.json`), then `chat_template_kwargs`, which
//!   override them.
//!
//! The environment is transformers' (see [`jinja`]): `trim_blocks`,
//! `lstrip_blocks`, loop controls, `raise_exception`, `strftime_now` and
//! `tojson` as `json.dumps(ensure_ascii=False)`.
//!
//! `continue_final_message` leaves the final message open as transformers
//! does: a marker is appended to its text, the template renders, and
//! everything from the marker on is cut.
//!
//! Tool calling and structured output are not implemented: a request with
//! `tools`, `tool_choice` (other than `"none"`), `functions`,
//! `function_call` or `response_format` is refused with a 400 naming the
//! field. The rendering path takes tools ([`TemplateInputs::tools`]), so
//! the fixtures cover tool definitions in templates.

mod detect;
pub mod jinja;
pub mod reasoning;
pub mod tool_choice;
pub mod tools;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use minijinja::value::ValueKind;
use serde::Deserialize;
use serde_json::{json, Value};
use strata_tokenizer::{ChatConfig, SpecialToken};

pub use detect::{detect as detect_content_format, ContentFormat};

use crate::completions::{
    check_model, collect, encode, finish_str, json_answer, kv_transfer_json, now_secs, pd,
    prompt_logprobs_json, request_id, sampling_params_for, sse, submit_choices, truncate_prompt,
    Choice, ChoiceOptions, MaxTokensDefault,
};
use crate::error::ApiError;
use crate::openai::{SamplingFields, Usage};
use crate::AppState;

/// A JSON value as a template sees it: objects keep their keys in the
/// request's order (Python's `json.loads` does, and `tojson` and `items()`
/// show it).
pub type TemplateValue = minijinja::Value;

/// A message's `content`: a string, or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a content list: a typed part, or (as vLLM accepts) a bare
/// string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ContentPart {
    Text(String),
    Typed(TypedPart),
}

/// A typed content part; only the text kinds are served (`text`,
/// `input_text`, `output_text`: `text`; `refusal`: `refusal`; `thinking`:
/// `thinking`).
#[derive(Debug, Clone, Deserialize)]
pub struct TypedPart {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub text: Option<String>,
    pub refusal: Option<String>,
    pub thinking: Option<String>,
}

/// A tool call of an earlier assistant message.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// OpenAI's JSON string (vLLM parses it for the template), or already
    /// an object.
    #[serde(default)]
    pub arguments: Option<TemplateValue>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    pub name: Option<String>,
    pub tool_calls: Option<Vec<ToolCall>>,
    pub tool_call_id: Option<String>,
    pub reasoning: Option<String>,
    /// The older spelling of `reasoning` (vLLM accepts both).
    pub reasoning_content: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
    /// Open an assistant turn after the messages (default: true, or false
    /// with `continue_final_message`).
    pub add_generation_prompt: Option<bool>,
    /// Leave the final message open for the model to continue.
    #[serde(default)]
    pub continue_final_message: bool,
    /// A template for this request (or the name of one of the model's
    /// named templates).
    pub chat_template: Option<String>,
    /// Extra template variables (e.g. Qwen3's `enable_thinking`).
    pub chat_template_kwargs: Option<TemplateValue>,
    /// Documents for retrieval-augmented templates.
    pub documents: Option<TemplateValue>,
    /// Tool calling ([`tool_choice`]).
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    /// vLLM's: false leaves the reasoning out of the answer (with
    /// `--reasoning-parser`; default true).
    pub include_reasoning: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// The fields of [`ChatCompletionRequest`] besides the sampling fields.
pub const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "logprobs",
    "top_logprobs",
    "add_generation_prompt",
    "continue_final_message",
    "chat_template",
    "chat_template_kwargs",
    "documents",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "include_reasoning",
];

/// Fields strata reads only to refuse: OpenAI's deprecated function
/// calling (use `tools`). Sent as `null` or empty they ask for nothing and
/// pass.
pub const REFUSED: &[&str] = &["functions", "function_call"];

/// What the client is told when the model's template fails for any reason
/// other than its own `raise_exception` (minijinja's message, with the
/// template's name, line numbers and source, stays in the log).
pub const TEMPLATE_FAILED: &str = "the chat template could not be rendered for these messages";

/// Work a request's own `chat_template` may do (minijinja instructions).
pub const REQUEST_TEMPLATE_FUEL: u64 = 20_000_000;

/// transformers' marker for `continue_final_message`.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// Everything a chat template renders besides the template itself.
#[derive(Debug, Clone, Default)]
pub struct TemplateInputs {
    pub messages: Vec<ChatMessage>,
    /// Tool definitions (`None`: the template sees `tools` as `None`).
    pub tools: Option<Vec<TemplateValue>>,
    pub documents: Option<TemplateValue>,
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    /// Extra variables; they override the special tokens.
    pub kwargs: Vec<(String, TemplateValue)>,
}

/// Why a template did not render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The template refused the messages with `raise_exception(message)`.
    Raised(String),
    /// The request does not fit (an unsupported content part, a final
    /// message the template does not show): the client's fault.
    Invalid(String),
    /// The template failed otherwise (its own fault; the detail is for
    /// the log).
    Template(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Raised(m) | Self::Invalid(m) | Self::Template(m) => f.write_str(m),
        }
    }
}

/// Does `v` ask for something (not `null`, `false`, empty, or `"none"`)?
fn asks_for_something(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty() && s != "none",
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(_) | Value::Bool(true) => true,
    }
}

fn template_value_asks(v: &TemplateValue) -> bool {
    !(v.is_none() || v.is_undefined() || (v.len() == Some(0) && v.kind() != ValueKind::Number))
        && v.as_str() != Some("none")
}

/// Refuses what strata cannot serve yet (see [`REFUSED`]).
fn refuse_unsupported(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    let others = [("functions", &req.functions), ("function_call", &req.function_call)];
    for (name, value) in others {
        if value.as_ref().is_some_and(asks_for_something) {
            return Err(ApiError::invalid(name, format!("`{name}` is not supported by strata")));
        }
    }
    Ok(())
}

/// The template inputs of a request: its messages and documents, its
/// `chat_template_kwargs` (which may also set `add_generation_prompt`,
/// `continue_final_message` and `documents`, as under vLLM, where they
/// are merged over the request's), and the two flags
/// (`add_generation_prompt` defaults to `!continue_final_message`; both
/// true is refused, as vLLM and transformers refuse it).
pub fn request_inputs(req: &ChatCompletionRequest) -> Result<TemplateInputs, ApiError> {
    let mut add_generation_prompt = req.add_generation_prompt;
    let mut continue_final_message = req.continue_final_message;
    let mut documents = req.documents.clone().filter(|d| !d.is_none());
    let mut kwargs = Vec::new();
    if let Some(given) = req.chat_template_kwargs.as_ref().filter(|k| !k.is_none()) {
        if given.kind() != ValueKind::Map {
            return Err(ApiError::invalid(
                "chat_template_kwargs",
                "chat_template_kwargs must be an object",
            ));
        }
        for key in given.try_iter().map_err(|_| {
            ApiError::invalid("chat_template_kwargs", "chat_template_kwargs must be an object")
        })? {
            let value = given.get_item(&key).unwrap_or_default();
            let name = key.as_str().unwrap_or_default().to_owned();
            match name.as_str() {
                "chat_template" | "tokenize" => {
                    return Err(ApiError::invalid(
                        "chat_template_kwargs",
                        format!("Found unexpected chat template kwargs from request: {{'{name}'}}"),
                    ))
                }
                "messages" | "conversation" => {
                    return Err(ApiError::invalid(
                        "chat_template_kwargs",
                        format!("chat_template_kwargs must not set `{name}`"),
                    ))
                }
                "tools" => {
                    if template_value_asks(&value) {
                        return Err(ApiError::invalid(
                            "chat_template_kwargs",
                            "set `tools` on the request, not in chat_template_kwargs",
                        ));
                    }
                }
                // apply_chat_template's own parameters: transformers takes
                // them, the template never sees them.
                "padding"
                | "truncation"
                | "max_length"
                | "return_tensors"
                | "return_dict"
                | "return_assistant_tokens_mask"
                | "tokenizer_kwargs" => {}
                "add_generation_prompt" => add_generation_prompt = Some(value.is_true()),
                "continue_final_message" => continue_final_message = value.is_true(),
                "documents" => documents = Some(value).filter(|d| !d.is_none()),
                _ => kwargs.push((name, value)),
            }
        }
    }
    let add_generation_prompt = add_generation_prompt.unwrap_or(!continue_final_message);
    if add_generation_prompt && continue_final_message {
        return Err(ApiError::invalid(
            "continue_final_message",
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
        ));
    }
    let tools = req.tools.as_ref().and_then(Value::as_array).filter(|t| !t.is_empty());
    Ok(TemplateInputs {
        messages: req.messages.clone(),
        tools: tools.map(|t| t.iter().map(TemplateValue::from_serialize).collect()),
        documents,
        add_generation_prompt,
        continue_final_message,
        kwargs,
    })
}

/// The text of a content part, `None` for a text part without text;
/// an error for a part strata does not serve.
fn part_text(part: &ContentPart) -> Result<Option<&str>, String> {
    match part {
        ContentPart::Text(t) => Ok(Some(t)),
        ContentPart::Typed(p) => match p.kind.as_deref() {
            Some("text" | "input_text" | "output_text") => Ok(p.text.as_deref()),
            Some("refusal") => Ok(p.refusal.as_deref()),
            Some("thinking") => Ok(p.thinking.as_deref()),
            Some(kind) => Err(format!("content part type `{kind}` is not supported (text only)")),
            None => Err("a content part has no `type`".to_owned()),
        },
    }
}

/// A message's content as the template will see it, before it is made a
/// value (so `continue_final_message` can mark its text).
#[derive(Debug, Clone)]
enum TemplateContent {
    Text(String),
    Parts(Vec<String>),
}

#[derive(Debug, Clone)]
struct TemplateMessage {
    role: String,
    content: TemplateContent,
    rest: Vec<(&'static str, TemplateValue)>,
}

impl TemplateMessage {
    fn to_value(&self) -> TemplateValue {
        let content = match &self.content {
            TemplateContent::Text(t) => TemplateValue::from(t.as_str()),
            TemplateContent::Parts(parts) => parts
                .iter()
                .map(|t| {
                    [
                        ("type", TemplateValue::from("text")),
                        ("text", TemplateValue::from(t.as_str())),
                    ]
                    .into_iter()
                    .collect::<TemplateValue>()
                })
                .collect(),
        };
        [("role", TemplateValue::from(self.role.as_str())), ("content", content)]
            .into_iter()
            .chain(self.rest.iter().cloned())
            .collect()
    }
}

/// vLLM's `_postprocess_messages` for one tool call's arguments: a JSON
/// string becomes the value it holds (`{}` when it does not parse), an
/// object or list stays, anything else is `{}`.
fn tool_call_arguments(arguments: Option<&TemplateValue>) -> TemplateValue {
    let empty = || TemplateValue::from_iter(std::iter::empty::<(String, TemplateValue)>());
    match arguments {
        Some(a) if a.kind() == ValueKind::String => {
            serde_json::from_str::<TemplateValue>(a.as_str().unwrap_or_default())
                .unwrap_or_else(|_| empty())
        }
        Some(a) if matches!(a.kind(), ValueKind::Map | ValueKind::Seq) => a.clone(),
        _ => empty(),
    }
}

fn template_message(m: &ChatMessage, format: ContentFormat) -> Result<TemplateMessage, String> {
    let mut texts = Vec::new();
    match &m.content {
        None => {}
        Some(Content::Text(t)) => texts.push(t.clone()),
        Some(Content::Parts(parts)) => {
            for part in parts {
                if let Some(t) = part_text(part)? {
                    texts.push(t.to_owned());
                }
            }
        }
    }
    // A tool message's content is always a string (vLLM flattens text
    // parts for it whatever the format).
    let content = if format == ContentFormat::String || m.role == "tool" {
        TemplateContent::Text(texts.join("\n"))
    } else {
        TemplateContent::Parts(texts)
    };
    let mut rest: Vec<(&'static str, TemplateValue)> = Vec::new();
    if m.role == "assistant" {
        if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) {
            let calls: Vec<TemplateValue> = calls
                .iter()
                .map(|c| {
                    let function: TemplateValue = [
                        ("name", TemplateValue::from(c.function.name.as_str())),
                        ("arguments", tool_call_arguments(c.function.arguments.as_ref())),
                    ]
                    .into_iter()
                    .collect();
                    let mut fields = Vec::new();
                    if let Some(id) = &c.id {
                        fields.push(("id", TemplateValue::from(id.as_str())));
                    }
                    fields.push((
                        "type",
                        TemplateValue::from(c.kind.as_deref().unwrap_or("function")),
                    ));
                    fields.push(("function", function));
                    fields.into_iter().collect()
                })
                .collect();
            rest.push(("tool_calls", TemplateValue::from(calls)));
        }
        if let Some(r) = m.reasoning.as_ref().or(m.reasoning_content.as_ref()) {
            rest.push(("reasoning", TemplateValue::from(r.as_str())));
            rest.push(("reasoning_content", TemplateValue::from(r.as_str())));
        }
    }
    if m.role == "tool" {
        if let Some(id) = &m.tool_call_id {
            rest.push(("tool_call_id", TemplateValue::from(id.as_str())));
        }
    }
    if let Some(name) = &m.name {
        rest.push(("name", TemplateValue::from(name.as_str())));
    }
    if m.role == "developer" {
        rest.push(("tools", TemplateValue::from(())));
    }
    Ok(TemplateMessage { role: m.role.clone(), content, rest })
}

/// The messages as a template sees them (see the module's documentation).
pub fn template_messages(
    messages: &[ChatMessage],
    format: ContentFormat,
) -> Result<Vec<TemplateValue>, RenderError> {
    messages
        .iter()
        .map(|m| template_message(m, format).map(|t| t.to_value()))
        .collect::<Result<_, _>>()
        .map_err(RenderError::Invalid)
}

/// The content format of a template, remembered for the last few
/// templates (vLLM caches it too; detection parses the template).
fn content_format(template: &str) -> ContentFormat {
    static CACHE: Mutex<Vec<(String, ContentFormat)>> = Mutex::new(Vec::new());
    if let Ok(cache) = CACHE.lock() {
        if let Some((_, f)) = cache.iter().find(|(t, _)| t == template) {
            return *f;
        }
    }
    let format = detect::detect(template);
    if let Ok(mut cache) = CACHE.lock() {
        if cache.len() >= 8 {
            cache.remove(0);
        }
        cache.push((template.to_owned(), format));
    }
    format
}

fn special_token_value(t: &SpecialToken) -> TemplateValue {
    match t {
        SpecialToken::One(s) => TemplateValue::from(s.as_str()),
        SpecialToken::Many(v) => v.iter().map(|s| TemplateValue::from(s.as_str())).collect(),
    }
}

/// Renders `inputs` with `template` as transformers' `apply_chat_template`
/// (`tokenize=False`) does, with `special_tokens` as the tokenizer's. With
/// `fuel`, the template may execute at most that many instructions.
pub fn render_template(
    template: &str,
    special_tokens: &[(String, SpecialToken)],
    inputs: &TemplateInputs,
    fuel: Option<u64>,
) -> Result<String, RenderError> {
    let source = jinja::preprocess(template);
    let format = content_format(&source);
    let mut messages = inputs
        .messages
        .iter()
        .map(|m| template_message(m, format))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RenderError::Invalid)?;
    // transformers: mark the final message's (last) text, cut there later.
    let mut final_text = None;
    if inputs.continue_final_message {
        let last = messages
            .last_mut()
            .ok_or_else(|| RenderError::Invalid("messages must not be empty".into()))?;
        match &mut last.content {
            TemplateContent::Text(t) => {
                final_text = Some(t.clone());
                t.push_str(CONTINUE_TAG);
            }
            TemplateContent::Parts(parts) => match parts.last_mut() {
                Some(t) => {
                    final_text = Some(t.clone());
                    t.push_str(CONTINUE_TAG);
                }
                None => {
                    return Err(RenderError::Invalid(
                        "continue_final_message is set but we could not find any text to continue in the final message!".into(),
                    ))
                }
            },
        }
    }
    let raised = jinja::Raised::default();
    let mut env = jinja::environment(raised.clone());
    env.set_fuel(fuel);
    env.add_template("chat", &source).map_err(|e| RenderError::Template(format!("{e:#}")))?;
    let tmpl = env.get_template("chat").map_err(|e| RenderError::Template(format!("{e:#}")))?;
    let mut ctx: Vec<(String, TemplateValue)> =
        special_tokens.iter().map(|(name, t)| (name.clone(), special_token_value(t))).collect();
    ctx.extend(inputs.kwargs.iter().cloned());
    ctx.push(("messages".into(), messages.iter().map(TemplateMessage::to_value).collect()));
    ctx.push((
        "tools".into(),
        inputs
            .tools
            .as_ref()
            .map_or_else(|| TemplateValue::from(()), |t| TemplateValue::from(t.clone())),
    ));
    ctx.push((
        "documents".into(),
        inputs.documents.clone().unwrap_or_else(|| TemplateValue::from(())),
    ));
    ctx.push(("add_generation_prompt".into(), TemplateValue::from(inputs.add_generation_prompt)));
    let ctx: TemplateValue = ctx.into_iter().collect();
    let rendered = tmpl.render(ctx).map_err(|e| match raised.get() {
        Some(msg) => RenderError::Raised(msg.clone()),
        None => RenderError::Template(format!("{e:#}")),
    })?;
    match final_text {
        None => Ok(rendered),
        Some(text) => cut_at_continue_tag(rendered, &text),
    }
}

/// transformers' end of `continue_final_message`: the rendered chat up to
/// the marker (less trailing whitespace when the template trimmed the
/// marker's own space).
fn cut_at_continue_tag(rendered: String, final_text: &str) -> Result<String, RenderError> {
    let tag = CONTINUE_TAG.trim_end();
    let text = jinja::py_strip_both(final_text);
    if !rendered.contains(text) || !rendered.contains(tag) {
        return Err(RenderError::Invalid(
            "continue_final_message is set but the final message does not appear in the chat after \
             applying the chat template! This can happen if the chat template deletes portions of \
             the final message. Please verify the chat template and final message in your chat to \
             ensure they are compatible."
                .into(),
        ));
    }
    let at = rendered.rfind(tag).unwrap_or(rendered.len());
    if rendered[at..].starts_with(CONTINUE_TAG) {
        Ok(rendered[..at].to_owned())
    } else {
        Ok(jinja::py_rstrip(&rendered[..at]).to_owned())
    }
}

/// Renders a request's messages with the model's chat template (or the
/// request's own `chat_template`).
///
/// A template that refuses the messages with `raise_exception("...")`
/// (e.g. roles that do not alternate) gets its message to the client in a
/// 400, as transformers surfaces it; any other failure of the model's
/// template is the template's fault, a 500 with [`TEMPLATE_FAILED`]; a
/// request's own template that fails is the request's fault, a 400 with
/// the error.
pub fn render_request(state: &AppState, req: &ChatCompletionRequest) -> Result<String, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    refuse_unsupported(req)?;
    if req.chat_template.is_some() && !state.trust_request_chat_template {
        return Err(ApiError::invalid(
            "chat_template",
            "a chat template was passed with the request, but the server was not started with \
             --trust-request-chat-template",
        ));
    }
    let inputs = request_inputs(req)?;
    render_with(state.tokenizer.chat_config(), req.chat_template.as_deref(), &inputs)
}

/// [`render_request`] for given inputs: `request_template` is the
/// request's own `chat_template`, if any.
pub fn render_with(
    chat: &ChatConfig,
    request_template: Option<&str>,
    inputs: &TemplateInputs,
) -> Result<String, ApiError> {
    let (template, own) = match request_template {
        Some(given) => (chat.request_template(given), true),
        None => {
            let t = chat.template(inputs.tools.is_some()).ok_or_else(|| {
                ApiError::invalid(
                    "messages",
                    "this model has no chat template; use /v1/completions",
                )
            })?;
            (t, false)
        }
    };
    let fuel = own.then_some(REQUEST_TEMPLATE_FUEL);
    render_template(template, &chat.special_tokens, inputs, fuel).map_err(|e| match e {
        RenderError::Raised(msg) => {
            tracing::debug!("the chat template rejected the messages: {msg}");
            ApiError::invalid("messages", format!("the chat template rejected the messages: {msg}"))
        }
        RenderError::Invalid(msg) => ApiError::invalid("messages", msg),
        RenderError::Template(detail) if own => {
            tracing::debug!("the request's chat template failed: {detail}");
            ApiError::invalid(
                "chat_template",
                format!(
                    "the request's chat_template could not be rendered: {}",
                    first_line(&detail)
                ),
            )
        }
        RenderError::Template(detail) => {
            tracing::error!("the chat template failed to render: {detail}");
            ApiError::Internal(TEMPLATE_FAILED)
        }
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    request_id::handle(&headers, |id| chat(state, body, id)).await
}

async fn chat(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    request_id: Option<String>,
) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = crate::fields::CHAT.parse(body)?;
    let model = check_model(&state, req.model.as_deref())?;
    let prompt = render_request(&state, &req)?;
    // The template already holds any BOS the model wants.
    let prompt_ids = encode(&state, &prompt, false, "messages")?;
    let prompt_ids = truncate_prompt(&state, prompt_ids, &req.sampling)?;
    let logprobs = req.logprobs.then(|| req.top_logprobs.unwrap_or(0));
    // Without `max_tokens` a chat may run to the end of the context (vLLM).
    let max_default = MaxTokensDefault::RestOfContext { prompt_tokens: prompt_ids.len() };
    let params = sampling_params_for(&state, &req.sampling, logprobs, max_default)?;
    let tools = tool_choice::plan(&state, &req)?;
    let mut grammar = match tools.grammar.clone() {
        Some(g) => Some(g),
        None => crate::structured::grammar(&state, &req.sampling)?,
    };
    // With a thinking model the constraint starts after the thinking.
    let reasoning = reasoning::RequestReasoning::new(state.reasoning_parser, &req);
    let thinking_end =
        reasoning.filter(|r| r.thinking()).and_then(|r| state.tokenizer.token_to_id(r.end_tag()));
    if let Some(end) = thinking_end {
        grammar = grammar.map(|g| strata_core::structured::after_token(g, end));
    }
    let options = ChoiceOptions {
        request_id: request_id.clone(),
        grammar,
        ..ChoiceOptions::from_fields(&req.sampling)?
    };
    let stream = req.sampling.stream.unwrap_or(false);
    let n = req.sampling.n.unwrap_or(1);
    let plan = pd::plan(req.sampling.kv_transfer_params.as_ref(), n, stream, 1)?;
    let choices =
        submit_choices(&state, prompt_ids, params, plan.engine_n, options, plan.kv_transfer_params)
            .await?;
    let id = request_id::response_id("chatcmpl", request_id.as_deref(), choices[0].id);
    let created = now_secs();
    // With `--reasoning-parser`, the thinking is split from the answer.
    if stream {
        let include_usage = req.sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let (id2, model2) = (id.clone(), model.clone());
        let deltas = reasoning.map(|r| r.stream());
        let tool_deltas = tools.stream();
        let chunk = move |c: &mut Choice, text: &str| {
            let (index, finish, logprobs) = (c.index, c.finish, c.take_chat_logprobs());
            let mut delta = match &deltas {
                Some(d) => d.delta(index, text, finish.is_some()),
                None => json!({"role": "assistant", "content": text}),
            };
            let called =
                tool_deltas.as_ref().and_then(|t| t.delta(index, &mut delta, finish.is_some()));
            // Nothing to say (a tag, a call held back): no chunk, as vLLM.
            let empty = delta.as_object().is_some_and(|d| d.keys().all(|k| k == "role"));
            if empty && finish.is_none() && logprobs.is_null() {
                return Value::Null;
            }
            let finish = called.map(Value::from).unwrap_or(json!(finish_str(finish)));
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": index, "delta": delta,
                                "logprobs": logprobs, "finish_reason": finish,
                                "stop_reason": c.stop_reason}]})
        };
        let usage_chunk = move |usage: Usage| json!({"id": id2, "object": "chat.completion.chunk", "created": created, "model": model2, "choices": [], "usage": usage});
        return Ok(sse(state, choices, chunk, usage_chunk, include_usage).into_response());
    }
    let choices = collect(&state, choices).await?;
    let usage = pd::usage(&choices, plan.usage_scale);
    let kv = kv_transfer_json(&choices);
    let out: Vec<Value> = choices
        .into_iter()
        .map(|mut c| {
            let logprobs = c.take_chat_logprobs();
            let mut message = match &reasoning {
                Some(r) => r.message(&c.text),
                None => json!({"role": "assistant", "content": c.text}),
            };
            let called = tools.message(&mut message);
            let finish = called.map(Value::from).unwrap_or(json!(finish_str(c.finish)));
            let mut choice = json!({"index": c.index, "message": message,
                   "logprobs": logprobs, "finish_reason": finish,
                   "stop_reason": c.stop_reason});
            if req.sampling.prompt_logprobs.is_some() {
                choice["prompt_logprobs"] = prompt_logprobs_json(&state, &c);
            }
            choice
        })
        .collect();
    let body = json!({"id": id, "object": "chat.completion", "created": created, "model": model, "choices": out, "usage": usage});
    Ok(json_answer(body, kv))
}
