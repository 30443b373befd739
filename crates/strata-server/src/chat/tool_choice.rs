//! Tool calling on chat completions, as vLLM serves it: `tools`,
//! `tool_choice` (`none`, `auto`, `required`, a named function) and
//! `parallel_tool_calls`.
//!
//! - `none`: the tools reach the chat template; the answer is text.
//! - `auto` (the default with tools): needs `--enable-auto-tool-choice`
//!   and `--tool-call-parser`; the model's text is split by the parser
//!   into content and tool calls (finish reason `tool_calls` when it made
//!   any).
//! - a named function: the output is constrained (structured outputs) to
//!   the function's parameter schema and returned as one call to it.
//! - `required`: the output is constrained to a JSON array of
//!   `{"name", "parameters"}` objects, one schema per tool (at most one
//!   call with `parallel_tool_calls: false`), returned as calls.
//!
//! With a reasoning parser, tool calls are read from the answer only.
//! Constrained calls end with the grammar (finish reason `stop`, as vLLM).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use minijinja::Value as TemplateValue;
use serde_json::{json, Value};
use strata_core::structured::SharedGrammar;
use strata_structured::Constraint;

use super::tools::{StreamEvent, ToolCallParser, ToolCallStream, ToolSchema};
use super::ChatCompletionRequest;
use crate::error::ApiError;
use crate::AppState;

/// How the request's answer is read.
#[derive(Debug, Clone)]
enum Mode {
    /// Text only (no tools, or `tool_choice: "none"`).
    Text,
    /// The parser, and the request's tools it converts values by.
    Auto(Arc<dyn ToolCallParser>, Arc<[ToolSchema]>),
    Required,
    Named(String),
}

/// A request's tool calling, decided before it runs.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    mode: Mode,
    /// The constraint of `required` and named choices.
    pub grammar: Option<SharedGrammar>,
    /// The tools, for the chat template.
    pub template_tools: Option<Vec<TemplateValue>>,
}

fn tools_of(req: &ChatCompletionRequest) -> Result<Vec<ToolSchema>, ApiError> {
    let Some(tools) = &req.tools else { return Ok(Vec::new()) };
    let tools = tools
        .as_array()
        .ok_or_else(|| ApiError::invalid("tools", "`tools` must be a list of tools"))?;
    tools
        .iter()
        .map(|t| {
            if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
                return Err(ApiError::invalid(
                    "tools",
                    "only tools of type `function` are supported",
                ));
            }
            let f = t.get("function").ok_or_else(|| {
                ApiError::invalid("tools", "each tool needs a `function` with a `name`")
            })?;
            let name = f.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
            let name = name.ok_or_else(|| {
                ApiError::invalid("tools", "each tool's function needs a non-empty `name`")
            })?;
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(p) if p.is_object() => p.clone(),
                Some(_) => {
                    return Err(ApiError::invalid(
                        "tools",
                        format!("the parameters of `{name}` must be a JSON schema object"),
                    ))
                }
            };
            Ok(ToolSchema { name: name.to_string(), parameters })
        })
        .collect()
}

/// Decides the request's tool calling; refuses what cannot be served.
pub fn plan(state: &AppState, req: &ChatCompletionRequest) -> Result<ToolPlan, ApiError> {
    let tools = tools_of(req)?;
    let choice = req.tool_choice.clone().unwrap_or(Value::Null);
    let constrained = req.sampling.response_format.as_ref().is_some_and(|v| !v.is_null())
        || req.sampling.structured_outputs.as_ref().is_some_and(|v| !v.is_null());
    let template_tools = (!tools.is_empty()).then(|| {
        req.tools
            .as_ref()
            .and_then(Value::as_array)
            .map(|a| a.iter().map(TemplateValue::from_serialize).collect())
            .unwrap_or_default()
    });
    let text = |template_tools| ToolPlan { mode: Mode::Text, grammar: None, template_tools };
    if tools.is_empty() {
        return match &choice {
            Value::Null => Ok(text(None)),
            Value::String(s) if s == "none" => Ok(text(None)),
            _ => Err(ApiError::invalid(
                "tool_choice",
                "When using `tool_choice`, `tools` must be set.",
            )),
        };
    }
    let mode = match &choice {
        Value::String(s) if s == "none" => Mode::Text,
        Value::Null => auto(state, &tools)?,
        Value::String(s) if s == "auto" => auto(state, &tools)?,
        Value::String(s) if s == "required" => Mode::Required,
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("tool_choice", "a named tool choice needs `function.name`"))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not among the tools"),
                ));
            }
            Mode::Named(name.to_string())
        }
        other => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("tool_choice must be \"none\", \"auto\", \"required\" or a named function, got {other}"),
            ))
        }
    };
    let constraint = match &mode {
        Mode::Named(name) => {
            let tool = tools.iter().find(|t| &t.name == name).expect("invariant: checked above");
            Some(Constraint::JsonSchema(spaced(tool.parameters.clone())))
        }
        Mode::Required => Some(Constraint::JsonSchema(spaced(required_schema(&tools, req)))),
        Mode::Text | Mode::Auto(..) => None,
    };
    let grammar = match constraint {
        Some(_) if constrained => {
            return Err(ApiError::invalid(
                "tool_choice",
                "a required or named tool_choice cannot be combined with response_format or structured_outputs",
            ))
        }
        Some(c) => {
            let compiler = state.grammars.as_ref().map_err(|why| {
                ApiError::invalid("tool_choice", format!("tool calls cannot be constrained for this model: {why}"))
            })?;
            Some(compiler.compile(&c).map_err(|e| {
                ApiError::invalid("tools", format!("the tools' parameter schemas cannot be compiled: {e}"))
            })?)
        }
        None => None,
    };
    Ok(ToolPlan { mode, grammar, template_tools })
}

fn auto(state: &AppState, tools: &[ToolSchema]) -> Result<Mode, ApiError> {
    match (&state.tool_call_parser, state.enable_auto_tool_choice) {
        (Some(p), true) => Ok(Mode::Auto(p.clone(), tools.into())),
        _ => Err(ApiError::invalid(
            "tool_choice",
            "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
        )),
    }
}

/// Tool-call JSON spaced as Python's `json.dumps` writes it (`", "` and
/// `": "`, nothing else): how models write their calls, and bounded, so a
/// weak model cannot pad a call with whitespace until `max_tokens` (vLLM
/// allows any whitespace here). A schema that is not an object (`true`)
/// is left as it is.
fn spaced(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// vLLM's schema for `required`: a non-empty array of calls, each a tool's
/// name with its parameters; strata also closes each call to other keys
/// (vLLM's leaves them open, which lets a weak model pad a call with keys
/// no client reads).
fn required_schema(tools: &[ToolSchema], req: &ChatCompletionRequest) -> Value {
    let calls: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({"properties": {"name": {"type": "string", "enum": [t.name]},
                                  "parameters": t.parameters},
                   "required": ["name", "parameters"], "additionalProperties": false})
        })
        .collect();
    let mut schema =
        json!({"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": calls}});
    if req.parallel_tool_calls == Some(false) {
        schema["maxItems"] = json!(1);
    }
    schema
}

/// vLLM's tool-call ids: `chatcmpl-tool-` and 32 hex digits.
fn call_id() -> String {
    format!("chatcmpl-tool-{}", crate::router::request_id::generate().replace('-', ""))
}

fn call_json(id: Option<String>, index: Option<usize>, name: &str, arguments: &str) -> Value {
    let mut call = json!({"type": "function", "function": {"name": name, "arguments": arguments}});
    if let Some(id) = id {
        call["id"] = json!(id);
    }
    if let Some(i) = index {
        call["index"] = json!(i);
    }
    call
}

/// The calls of a `required` answer (a JSON array of name/parameters).
fn required_calls(text: &str) -> Vec<(String, String)> {
    let Ok(Value::Array(calls)) = serde_json::from_str::<Value>(text) else { return Vec::new() };
    calls
        .iter()
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?.to_string();
            let args = c.get("parameters").cloned().unwrap_or_else(|| json!({}));
            Some((name, args.to_string()))
        })
        .collect()
}

impl ToolPlan {
    /// Rewrites a non-streamed `message` (`content` the model's answer);
    /// returns `tool_calls` when the finish reason must say so.
    pub fn message(&self, message: &mut Value) -> Option<&'static str> {
        let content = message.get("content").and_then(Value::as_str).unwrap_or("").to_string();
        let calls: Vec<(String, String)> = match &self.mode {
            Mode::Text => return None,
            Mode::Named(name) => vec![(name.clone(), content)],
            // An answer cut short (`length`) is no list of calls: it stays
            // the message's content.
            Mode::Required => match required_calls(&content) {
                calls if calls.is_empty() => return None,
                calls => calls,
            },
            Mode::Auto(parser, tools) => {
                let parsed = parser.parse(&content, tools);
                if parsed.tool_calls.is_empty() {
                    return None;
                }
                message["content"] = parsed.content.map_or(Value::Null, Value::String);
                let calls: Vec<Value> = parsed
                    .tool_calls
                    .iter()
                    .map(|c| call_json(Some(call_id()), None, &c.name, &c.arguments))
                    .collect();
                message["tool_calls"] = Value::Array(calls);
                return Some("tool_calls");
            }
        };
        message["content"] = json!("");
        message["tool_calls"] =
            calls.iter().map(|(n, a)| call_json(Some(call_id()), None, n, a)).collect();
        None
    }

    /// The per-choice state of a streamed request; `None` when the answer
    /// is text (nothing to rewrite).
    pub fn stream(&self) -> Option<ToolDeltas> {
        if matches!(self.mode, Mode::Text) {
            return None;
        }
        Some(ToolDeltas { mode: self.mode.clone(), choices: Mutex::new(BTreeMap::new()) })
    }
}

/// One streamed choice's tool-call state.
enum ChoiceStream {
    Auto { parser: Box<dyn ToolCallStream>, called: bool },
    Named { name: String, started: bool },
    Required { text: String },
}

impl ChoiceStream {
    /// The state of a new choice; `None` for a text answer.
    fn new(mode: &Mode) -> Option<Self> {
        Some(match mode {
            Mode::Text => return None,
            Mode::Auto(p, tools) => {
                ChoiceStream::Auto { parser: p.stream(tools.clone()), called: false }
            }
            Mode::Named(name) => ChoiceStream::Named { name: name.clone(), started: false },
            Mode::Required => ChoiceStream::Required { text: String::new() },
        })
    }
}

/// The tool-call state of a streamed request's choices, by index (the SSE
/// chunk builder is a shared `Fn`, hence the lock; never contended).
pub struct ToolDeltas {
    mode: Mode,
    choices: Mutex<BTreeMap<usize, ChoiceStream>>,
}

impl std::fmt::Debug for ToolDeltas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolDeltas").field("mode", &self.mode).finish()
    }
}

impl ToolDeltas {
    /// Rewrites a chunk's `delta` (its `content`, the answer's new text)
    /// into content and `tool_calls` deltas in OpenAI's shape (index, id,
    /// type and name first, then the arguments in pieces); `last` flushes
    /// what was held back. Returns `tool_calls` when the choice's finish
    /// reason must say so.
    pub fn delta(&self, index: usize, delta: &mut Value, last: bool) -> Option<&'static str> {
        let text = delta.get("content").and_then(Value::as_str).unwrap_or("").to_string();
        let mut choices = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        let state = choices.entry(index).or_insert_with(|| {
            ChoiceStream::new(&self.mode).expect("invariant: ToolDeltas is made for tool modes")
        });
        let mut content = String::new();
        let mut calls = Vec::new();
        let mut finish = None;
        match state {
            ChoiceStream::Named { name, started } => {
                if !*started && (!text.is_empty() || last) {
                    *started = true;
                    calls.push(call_json(Some(call_id()), Some(0), name, &text));
                } else if !text.is_empty() {
                    calls.push(json!({"index": 0, "function": {"arguments": text}}));
                }
            }
            ChoiceStream::Required { text: held } => {
                held.push_str(&text);
                if last {
                    for (i, (name, args)) in required_calls(held).iter().enumerate() {
                        calls.push(call_json(Some(call_id()), Some(i), name, args));
                    }
                }
            }
            ChoiceStream::Auto { parser, called } => {
                let mut events = parser.push(&text);
                if last {
                    events.extend(parser.finish());
                }
                for e in events {
                    match e {
                        StreamEvent::Content(c) => content.push_str(&c),
                        StreamEvent::ToolCallStart { index, name } => {
                            *called = true;
                            calls.push(call_json(Some(call_id()), Some(index), &name, ""));
                        }
                        StreamEvent::ToolCallArguments { index, fragment } => {
                            calls
                                .push(json!({"index": index, "function": {"arguments": fragment}}));
                        }
                    }
                }
                if last && *called {
                    finish = Some("tool_calls");
                }
            }
        }
        if last {
            choices.remove(&index);
        }
        match delta.as_object_mut() {
            Some(d) => {
                d.remove("content");
                if !content.is_empty() {
                    d.insert("content".into(), Value::String(content));
                }
                if !calls.is_empty() {
                    d.insert("tool_calls".into(), Value::Array(calls));
                }
            }
            None => *delta = json!({"role": "assistant"}),
        }
        finish
    }
}
