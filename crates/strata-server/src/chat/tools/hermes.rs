//! `hermes` (vLLM's `Hermes2ProToolParser`; Hermes 2 Pro / 3, Qwen2.5,
//! Qwen3 and the many models whose templates copy them):
//!
//! ```text
//! content<tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! <tool_call>
//! {"name": ..., "arguments": ...}
//! </tool_call>
//! ```
//!
//! As vLLM: no `<tool_call>` → all content. Otherwise every
//! `<tool_call>…</tool_call>` (the last may be unclosed: it runs to the
//! end) must hold one JSON object (`json.loads`: whitespace around it is
//! fine) with a string `name` and an `arguments` of any JSON type,
//! written back with `json.dumps`; if any does not, the whole output is
//! content. Content is the text before the first `<tool_call>` (`None`
//! when empty); text between and after the calls is dropped.

use super::pyjson::{self, PyValue};
use super::{Format, Gate, Parsed, ToolCall};

const START: &str = "<tool_call>";
const END: &str = "</tool_call>";

#[derive(Clone, Copy, Debug)]
pub(super) struct Hermes;

impl Format for Hermes {
    const GATE: Gate = Gate::Markers(&[START]);

    fn parse(&self, output: &str, _tools: &[super::ToolSchema]) -> Parsed {
        let Some(first) = output.find(START) else {
            return Parsed::content(output);
        };
        match calls(output) {
            Some(tool_calls) => {
                let content = &output[..first];
                Parsed { content: (!content.is_empty()).then(|| content.to_owned()), tool_calls }
            }
            None => Parsed::content(output),
        }
    }
}

/// `re.findall(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", DOTALL)`,
/// each body read as a call.
fn calls(output: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut pos = 0;
    while let Some(at) = output[pos..].find(START) {
        let body_start = pos + at + START.len();
        let (body, next) = match output[body_start..].find(END) {
            Some(end) => (&output[body_start..body_start + end], body_start + end + END.len()),
            None => (&output[body_start..], output.len()),
        };
        calls.push(call(&pyjson::loads(body)?)?);
        pos = next;
    }
    Some(calls)
}

/// `{"name": str, "arguments": any}` as a call.
pub(super) fn call(value: &PyValue) -> Option<ToolCall> {
    let PyValue::Str(name) = value.get("name")? else {
        return None;
    };
    Some(ToolCall { name: name.clone(), arguments: value.get("arguments")?.dumps() })
}
