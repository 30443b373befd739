#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde::Deserialize;

use super::*;

/// One case of `fixtures/tool_calls/<parser>.json` (see its README).
#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    output: String,
    content: Option<String>,
    tool_calls: Vec<Call>,
    /// The request's `tools` (OpenAI's shape), when the case gives them.
    #[serde(default)]
    tools: Vec<serde_json::Value>,
}

/// A case's tools as `tool_choice.rs` hands them to the parsers.
fn schemas(tools: &[serde_json::Value]) -> Arc<[ToolSchema]> {
    tools
        .iter()
        .map(|t| ToolSchema {
            name: t["function"]["name"].as_str().unwrap().to_owned(),
            parameters: t["function"]["parameters"].clone(),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct Call {
    name: String,
    arguments: String,
}

fn cases(parser: &str) -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tool_calls")
        .join(format!("{parser}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Streams `pieces`; returns the joined content and the calls, checking
/// that each call starts before its arguments, indices in order.
fn streamed(parser: &dyn ToolCallParser, tools: &Arc<[ToolSchema]>, pieces: &[&str]) -> Parsed {
    let mut stream = parser.stream(tools.clone());
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(stream.push(piece));
    }
    events.extend(stream.finish());
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for event in events {
        match event {
            StreamEvent::Content(text) => {
                assert!(!text.is_empty(), "empty content event");
                content.push_str(&text);
            }
            StreamEvent::ToolCallStart { index, name } => {
                assert_eq!(index, calls.len(), "calls start in order");
                calls.push(ToolCall { name, arguments: String::new() });
            }
            StreamEvent::ToolCallArguments { index, fragment } => {
                assert_eq!(index + 1, calls.len(), "arguments follow their start");
                calls[index].arguments.push_str(&fragment);
            }
        }
    }
    Parsed { content: (!content.is_empty()).then_some(content), tool_calls: calls }
}

fn boundaries(text: &str) -> Vec<usize> {
    (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect()
}

/// One character a piece, and every cut into two pieces.
fn splits(text: &str) -> Vec<Vec<&str>> {
    let mut out = vec![text.char_indices().map(|(i, c)| &text[i..i + c.len_utf8()]).collect()];
    out.extend(boundaries(text).into_iter().map(|i| vec![&text[..i], &text[i..]]));
    out
}

#[test]
fn every_parser_has_fixtures_split_as_vllm_does_whole_and_streamed_at_every_boundary() {
    for &name in PARSERS {
        let parser = parser(name).unwrap();
        let cases = cases(name);
        assert!(cases.len() >= 6, "{name}: too few cases");
        for case in cases {
            let want = Parsed {
                content: case.content.clone(),
                tool_calls: case
                    .tool_calls
                    .iter()
                    .map(|c| ToolCall { name: c.name.clone(), arguments: c.arguments.clone() })
                    .collect(),
            };
            let tools = schemas(&case.tools);
            let got = parser.parse(&case.output, &tools);
            assert_eq!(got, want, "{name}/{}: parse", case.name);
            // Streamed content is compared joined: `None` and `""` both
            // stream as nothing.
            let want_streamed = Parsed {
                content: want.content.clone().filter(|c| !c.is_empty()),
                tool_calls: want.tool_calls.clone(),
            };
            for pieces in splits(&case.output) {
                let got = streamed(parser.as_ref(), &tools, &pieces);
                assert_eq!(got, want_streamed, "{name}/{}: streamed as {pieces:?}", case.name);
            }
        }
    }
}

#[test]
fn unknown_parser_names_are_none() {
    assert!(parser("jamba").is_none());
    assert!(PARSERS.iter().all(|n| parser(n).is_some()));
}

#[test]
fn plain_answers_stream_as_they_come() {
    for &name in PARSERS {
        let mut stream = parser(name).unwrap().stream(Arc::from([]));
        assert_eq!(stream.push("Hello"), vec![StreamEvent::Content("Hello".into())], "{name}");
        let mut rest = stream.push(" there <b");
        rest.extend(stream.push(">!"));
        rest.extend(stream.finish());
        let joined: String = rest
            .into_iter()
            .map(|e| match e {
                StreamEvent::Content(text) => text,
                other => panic!("{name}: {other:?}"),
            })
            .collect();
        assert_eq!(joined, " there <b>!", "{name}");
    }
}

#[test]
fn a_call_is_held_until_the_end() {
    let mut stream = parser("hermes").unwrap().stream(Arc::from([]));
    let mut events = stream.push("Let me check.<tool_c");
    assert_eq!(events, vec![StreamEvent::Content("Let me check.".into())]);
    events = stream.push("all>{\"name\": \"f\", \"arguments\": {\"a\":1}}</tool_call>");
    assert_eq!(events, vec![]);
    assert_eq!(
        stream.finish(),
        vec![
            StreamEvent::ToolCallStart { index: 0, name: "f".into() },
            StreamEvent::ToolCallArguments { index: 0, fragment: "{\"a\": 1}".into() },
        ]
    );
}
