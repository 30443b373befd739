//! Tool-call parsers (`--tool-call-parser NAME` with
//! `--enable-auto-tool-choice`): a model's raw output is split into the
//! answer's `content` and its `tool_calls`, as vLLM splits it.
//!
//! Followed: vLLM `main` of 2026, the `vllm/tool_parsers/` layout
//! (`hermes_tool_parser.py` @02bb669b, `llama_tool_parser.py` @055e47c2,
//! `mistral_tool_parser.py` @023f36c6, `pythonic_tool_parser.py` @0047fb9d,
//! `qwen3coder_tool_parser.py` and `qwen3xml_tool_parser.py` @00d0a333)
//! and its `tests/tool_parsers/`. Each parser's file says what it does and
//! where it departs from vLLM.
//!
//! Arguments are the JSON text vLLM's non-streamed path returns, byte for
//! byte: Python's `json.dumps(value, ensure_ascii=False)` of the parsed
//! arguments (separators `", "` and `": "`, keys in the model's order,
//! floats as Python's `repr`), see [`pyjson`]; `mistral` (v11+ format)
//! passes the model's argument text through untouched, as vLLM does.
//!
//! Parsers get the request's tools ([`ToolSchema`]) as vLLM's get
//! `request.tools`; only the Qwen3 ones read them (values converted by
//! their schema, see `schema.rs`).
//!
//! Invariants (checked by `tests.rs` on every fixture at every split):
//!
//! * The content a [`ToolCallStream`] emits, concatenated, equals
//!   [`ToolCallParser::parse`]'s `content` (empty for `None`); its calls
//!   (a [`StreamEvent::ToolCallStart`] then the argument fragments)
//!   equal `parse`'s `tool_calls`, in order, indices from 0.
//! * Content streams as it comes up to the point where a tool call may
//!   start (a partial marker at the end is held back); everything from
//!   there on is decided at [`ToolCallStream::finish`] by running `parse`
//!   on the whole output, which then emits the rest of the content and
//!   every call (name, then its whole arguments as one fragment).
//!
//! Why calls wait for the end: vLLM's non-streamed parsers are
//! all-or-nothing (one malformed call turns the whole output into
//! content), so no call can be emitted before the output is complete
//! without breaking the equality above. vLLM's own streaming path emits
//! the name as soon as it is known and the argument text as it arrives
//! (the model's raw spacing, or a partial-JSON diff), and its streamed
//! result can differ from its non-streamed one; strata's does not. A model
//! stops right after its last call, so the cost is the first call of a
//! parallel batch waiting for the last.

mod hermes;
mod llama;
mod mistral;
mod pyjson;
mod pythonic;
mod qwen3;
mod schema;

use std::sync::Arc;

/// One tool call the model made.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// JSON text of the arguments object
    pub arguments: String,
}

/// A complete output, split.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Parsed {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

impl Parsed {
    /// The whole output as content: no tool call (vLLM's fallback).
    fn content(output: &str) -> Self {
        Self { content: Some(output.to_owned()), tool_calls: Vec::new() }
    }
}

/// What an incremental parser emits for a piece of streamed text.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    Content(String),
    ToolCallStart { index: usize, name: String },
    ToolCallArguments { index: usize, fragment: String },
}

/// One tool of the request, as the parsers see it (vLLM hands its
/// parsers `request.tools`): only `qwen3_coder` and `qwen3_xml` read it,
/// to convert each parameter by its schema; the others ignore it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSchema {
    pub name: String,
    /// The function's `parameters` JSON schema.
    pub parameters: serde_json::Value,
}

pub trait ToolCallParser: Send + Sync + std::fmt::Debug {
    /// Splits a complete output; `tools` are the request's.
    fn parse(&self, output: &str, tools: &[ToolSchema]) -> Parsed;
    /// A stream over one output of a request with these `tools`.
    fn stream(&self, tools: Arc<[ToolSchema]>) -> Box<dyn ToolCallStream>;
}

pub trait ToolCallStream: Send {
    fn push(&mut self, text: &str) -> Vec<StreamEvent>;
    /// End of output: flush what was held back.
    fn finish(&mut self) -> Vec<StreamEvent>;
}

pub const PARSERS: &[&str] =
    &["hermes", "llama3_json", "mistral", "qwen3_xml", "qwen3_coder", "pythonic"];

/// A parser by its vLLM name (`None` for a name not in [`PARSERS`]).
pub fn parser(name: &str) -> Option<Box<dyn ToolCallParser>> {
    Some(match name {
        "hermes" => Box::new(Split(hermes::Hermes)),
        "llama3_json" => Box::new(Split(llama::Llama3Json)),
        "mistral" => Box::new(Split(mistral::Mistral)),
        "qwen3_xml" => Box::new(Split(qwen3::Qwen3Xml)),
        "qwen3_coder" => Box::new(Split(qwen3::Qwen3Coder)),
        "pythonic" => Box::new(Split(pythonic::Pythonic)),
        _ => return None,
    })
}

/// Where, in a growing output, content stops being certain.
#[derive(Clone, Copy, Debug)]
enum Gate {
    /// Text before the first of these markers is content whatever follows.
    Markers(&'static [&'static str]),
    /// An output starting with one of these may be all tool calls; any
    /// other output is all content.
    Starts(&'static [&'static str]),
}

/// One model family's format: the non-streamed split, and its gate.
trait Format: Clone + Send + Sync + std::fmt::Debug + 'static {
    fn parse(&self, output: &str, tools: &[ToolSchema]) -> Parsed;
    const GATE: Gate;
}

#[derive(Debug)]
struct Split<F>(F);

impl<F: Format> ToolCallParser for Split<F> {
    fn parse(&self, output: &str, tools: &[ToolSchema]) -> Parsed {
        self.0.parse(output, tools)
    }

    fn stream(&self, tools: Arc<[ToolSchema]>) -> Box<dyn ToolCallStream> {
        Box::new(Stream {
            format: self.0.clone(),
            tools,
            text: String::new(),
            sent: 0,
            phase: Phase::Open,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Content so far, up to `sent`; the rest may still start a call.
    Open,
    /// A call may have started: everything after `sent` waits for finish.
    Held,
    /// No call can come: everything is content.
    Content,
    Finished,
}

#[derive(Debug)]
struct Stream<F> {
    format: F,
    /// The request's tools, for the parse at finish.
    tools: Arc<[ToolSchema]>,
    /// The whole output so far.
    text: String,
    /// How much of `text` was emitted as content.
    sent: usize,
    phase: Phase,
}

impl<F: Format> Stream<F> {
    /// How far content is certain, and the phase after this piece.
    fn certain(&self) -> (usize, Phase) {
        let text = self.text.as_str();
        match F::GATE {
            Gate::Markers(markers) => {
                // A marker cannot start before `sent`: a suffix that could
                // grow into one is never sent.
                let from = self.sent;
                let first = markers.iter().filter_map(|m| text[from..].find(m)).min();
                match first {
                    Some(at) => (from + at, Phase::Held),
                    None => (text.len() - held_suffix(&text[from..], markers), Phase::Open),
                }
            }
            Gate::Starts(starts) => {
                if starts.iter().any(|s| text.starts_with(s)) {
                    (0, Phase::Held)
                } else if text.is_empty() || starts.iter().any(|s| s.starts_with(text)) {
                    (0, Phase::Open)
                } else {
                    (text.len(), Phase::Content)
                }
            }
        }
    }
}

impl<F: Format> ToolCallStream for Stream<F> {
    fn push(&mut self, piece: &str) -> Vec<StreamEvent> {
        self.text.push_str(piece);
        let upto = match self.phase {
            Phase::Open => {
                let (upto, phase) = self.certain();
                self.phase = phase;
                upto
            }
            Phase::Content => self.text.len(),
            Phase::Held | Phase::Finished => return Vec::new(),
        };
        let fresh = &self.text[self.sent..upto.max(self.sent)];
        self.sent = upto.max(self.sent);
        if fresh.is_empty() {
            Vec::new()
        } else {
            vec![StreamEvent::Content(fresh.to_owned())]
        }
    }

    fn finish(&mut self) -> Vec<StreamEvent> {
        if self.phase == Phase::Finished {
            return Vec::new();
        }
        self.phase = Phase::Finished;
        let parsed = self.format.parse(&self.text, &self.tools);
        let content = parsed.content.unwrap_or_default();
        let sent = &self.text[..self.sent];
        debug_assert!(content.starts_with(sent), "invariant: streamed content is a prefix");
        let mut out = Vec::new();
        if let Some(rest) = content.strip_prefix(sent).filter(|r| !r.is_empty()) {
            out.push(StreamEvent::Content(rest.to_owned()));
        }
        for (index, call) in parsed.tool_calls.into_iter().enumerate() {
            out.push(StreamEvent::ToolCallStart { index, name: call.name });
            out.push(StreamEvent::ToolCallArguments { index, fragment: call.arguments });
        }
        out
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of
/// one of `markers` (ASCII markers, so the cut is on a char boundary).
fn held_suffix(text: &str, markers: &[&str]) -> usize {
    let bytes = text.as_bytes();
    markers
        .iter()
        .flat_map(|m| {
            (1..m.len().min(bytes.len() + 1))
                .filter(move |&n| bytes[bytes.len() - n..] == m.as_bytes()[..n])
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
