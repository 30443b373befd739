//! `llama3_json` (vLLM's `Llama3JsonToolParser`; Llama 3.1 / 3.2 / 3.3 /
//! 4 with JSON tool calls): the output is one or more JSON objects
//! `{"name": ..., "parameters": {...}}` (or `"arguments"`), optionally
//! after `<|python_tag|>`, several separated by `; `.
//!
//! Departure, the gate: vLLM's streaming path treats an output as tool
//! calls only when it starts with `<|python_tag|>` or `{`; its
//! non-streamed path looks for a `{` anywhere. strata follows the
//! streaming path's gate for both (as the reasoning parsers do where
//! vLLM's two paths disagree), so that an ordinary answer streams as it
//! comes; an output not starting so is all content.
//!
//! Past the gate, as vLLM's non-streamed path: every `{` not inside an
//! object already read (nor right at its end: vLLM's `<=`) starts a JSON
//! value (`raw_decode`); it must decode, have `name` (a string) and
//! `arguments`, else `parameters` (any JSON), or the whole output is
//! content. Text around the objects is dropped: with calls, content is
//! `None`; with none (`<|python_tag|>` and no `{`), all content.

use super::pyjson;
use super::{Format, Gate, Parsed, ToolCall};

const BOT: &str = "<|python_tag|>";

#[derive(Clone, Copy, Debug)]
pub(super) struct Llama3Json;

impl Format for Llama3Json {
    const GATE: Gate = Gate::Starts(&[BOT, "{"]);

    fn parse(&self, output: &str, _tools: &[super::ToolSchema]) -> Parsed {
        if !(output.starts_with(BOT) || output.starts_with('{')) {
            return Parsed::content(output);
        }
        match calls(output) {
            Some(tool_calls) if !tool_calls.is_empty() => Parsed { content: None, tool_calls },
            _ => Parsed::content(output),
        }
    }
}

fn calls(output: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut end: Option<usize> = None;
    for (start, _) in output.match_indices('{') {
        if end.is_some_and(|end| start <= end) {
            continue;
        }
        let (value, len) = pyjson::raw_decode(&output[start..])?;
        end = Some(start + len);
        let pyjson::PyValue::Str(name) = value.get("name")? else {
            return None;
        };
        let arguments = value.get("arguments").or_else(|| value.get("parameters"))?;
        calls.push(ToolCall { name: name.clone(), arguments: arguments.dumps() });
    }
    Some(calls)
}
