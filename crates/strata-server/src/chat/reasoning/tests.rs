#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use super::*;

/// One case of `fixtures/reasoning/cases.json` (see its README).
#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    parser: String,
    #[serde(default = "yes")]
    enable_thinking: bool,
    output: String,
    reasoning: Option<String>,
    content: Option<String>,
}

fn yes() -> bool {
    true
}

fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/reasoning/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Streams `pieces` through a fresh parser; returns the joined reasoning
/// and answer.
fn streamed(parser: ReasoningParser, thinking: bool, pieces: &[&str]) -> Split {
    let mut stream = parser.stream(thinking);
    let mut all = Split::default();
    for piece in pieces {
        all.append(stream.push(piece));
    }
    all.append(stream.finish());
    all
}

fn boundaries(text: &str) -> Vec<usize> {
    (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect()
}

/// Every way of cutting `text` into two or three pieces at character
/// boundaries, and one character a piece.
fn splits(text: &str) -> Vec<Vec<&str>> {
    let cuts = boundaries(text);
    let mut out = vec![text.char_indices().map(|(i, c)| &text[i..i + c.len_utf8()]).collect()];
    for (n, &i) in cuts.iter().enumerate() {
        out.push(vec![&text[..i], &text[i..]]);
        for &j in &cuts[n..] {
            out.push(vec![&text[..i], &text[i..j], &text[j..]]);
        }
    }
    out
}

#[test]
fn fixtures_split_as_vllm_does_whole_and_streamed_at_every_boundary() {
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in cases {
        let parser: ReasoningParser = case.parser.parse().unwrap();
        let (reasoning, content) = parser.parse(&case.output, case.enable_thinking);
        assert_eq!(reasoning, case.reasoning, "{}: reasoning", case.name);
        assert_eq!(content, case.content, "{}: content", case.name);
        let want = Split {
            reasoning: reasoning.unwrap_or_default(),
            content: content.unwrap_or_default(),
        };
        for pieces in splits(&case.output) {
            let got = streamed(parser, case.enable_thinking, &pieces);
            assert_eq!(got, want, "{}: streamed as {pieces:?}", case.name);
        }
    }
}

#[test]
fn a_tag_split_across_pieces_never_leaks_into_either_side() {
    let parser = ReasoningParser::DeepSeekR1;
    let mut stream = parser.stream(true);
    let mut seen = Vec::new();
    for piece in ["<", "thi", "nk>", "\nhm <", "/th", "ink", ">", "\n\nAn", "swer"] {
        let s = stream.push(piece);
        assert!(!s.reasoning.contains('<') && !s.content.contains('<'), "{piece:?} gave {s:?}");
        seen.push(s);
    }
    seen.push(stream.finish());
    let reasoning: String = seen.iter().map(|s| s.reasoning.as_str()).collect();
    let content: String = seen.iter().map(|s| s.content.as_str()).collect();
    assert_eq!((reasoning.as_str(), content.as_str()), ("\nhm ", "\n\nAnswer"));
    // Held text goes out as soon as it can no longer be a tag.
    let mut stream = parser.stream(true);
    assert_eq!(stream.push("a </thi").reasoning, "a ");
    assert_eq!(stream.push("s").reasoning, "</this");
}

/// Where vLLM's streamed and non-streamed paths disagree, strata follows
/// the streamed one for both (see the module header).
#[test]
fn edge_cases_follow_vllms_streaming_path() {
    let r1 = ReasoningParser::DeepSeekR1;
    // Text before `<think>` stays reasoning (vLLM's non-streamed path drops it).
    assert_eq!(r1.parse("\n<think>a</think>b", true), (Some("\na".into()), Some("b".into())));
    // Only the first `<think>` is dropped; tags after `</think>` are answer.
    assert_eq!(
        r1.parse("<think>a<think>b</think>c", true),
        (Some("a<think>b".into()), Some("c".into()))
    );
    assert_eq!(
        r1.parse("a</think>b<think>c</think>d", true),
        (Some("a".into()), Some("b<think>c</think>d".into()))
    );
    // `<tool_call>` ends only qwen3's reasoning.
    assert_eq!(r1.parse("x<tool_call>y", true), (Some("x<tool_call>y".into()), None));
    // Disabled thinking is not parsed at all.
    assert_eq!(
        ReasoningParser::Qwen3.parse("a</think>b", false),
        (None, Some("a</think>b".into()))
    );
    // Empty output: empty reasoning (vLLM returns `("", None)`).
    assert_eq!(r1.parse("", true), (Some(String::new()), None));
}

#[test]
fn names_are_vllms_and_unknown_names_list_the_known_ones() {
    for (name, parser) in ReasoningParser::ALL {
        assert_eq!(name.parse::<ReasoningParser>().unwrap(), parser);
        assert_eq!(parser.name(), name);
    }
    let err = "granite".parse::<ReasoningParser>().unwrap_err();
    assert_eq!(err, "unknown reasoning parser `granite`; known: deepseek_r1, qwen3");
}

fn request(extra: serde_json::Value) -> ChatCompletionRequest {
    let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(body).unwrap()
}

#[test]
fn requests_choose_thinking_and_whether_reasoning_is_included() {
    let qwen3 = Some(ReasoningParser::Qwen3);
    assert!(RequestReasoning::new(None, &request(json!({}))).is_none());
    let r = RequestReasoning::new(qwen3, &request(json!({}))).unwrap();
    let text = "<think>hm</think>Hi";
    assert_eq!(r.message(text), json!({"role": "assistant", "content": "Hi", "reasoning": "hm"}));
    let off = request(json!({"chat_template_kwargs": {"enable_thinking": false}}));
    let r = RequestReasoning::new(qwen3, &off).unwrap();
    assert_eq!(r.message("Hi"), json!({"role": "assistant", "content": "Hi", "reasoning": null}));
    let on = request(json!({"chat_template_kwargs": {"enable_thinking": true, "x": 1}}));
    let r = RequestReasoning::new(qwen3, &on).unwrap();
    assert_eq!(r.message("hm"), json!({"role": "assistant", "content": null, "reasoning": "hm"}));
    let hidden = request(json!({"include_reasoning": false}));
    let r = RequestReasoning::new(qwen3, &hidden).unwrap();
    assert_eq!(r.message(text), json!({"role": "assistant", "content": "Hi", "reasoning": null}));
}

#[test]
fn stream_deltas_keep_one_parser_per_choice() {
    let req = request(json!({}));
    let deltas = RequestReasoning::new(Some(ReasoningParser::DeepSeekR1), &req).unwrap().stream();
    assert_eq!(deltas.delta(0, "a</th", false), json!({"role": "assistant", "reasoning": "a"}));
    assert_eq!(
        deltas.delta(1, "b</think>B", false),
        json!({"role": "assistant", "reasoning": "b", "content": "B"})
    );
    assert_eq!(deltas.delta(0, "ink>A", false), json!({"role": "assistant", "content": "A"}));
    assert_eq!(deltas.delta(1, "<", false), json!({"role": "assistant", "content": "<"}));
    assert_eq!(deltas.delta(0, "", true), json!({"role": "assistant"}));
    let hidden = request(json!({"include_reasoning": false}));
    let deltas =
        RequestReasoning::new(Some(ReasoningParser::DeepSeekR1), &hidden).unwrap().stream();
    assert_eq!(deltas.delta(0, "a</think>", false), json!({"role": "assistant"}));
    assert_eq!(deltas.delta(0, "A", true), json!({"role": "assistant", "content": "A"}));
    // A choice that ends mid-tag gets the held text with its last chunk.
    let deltas = RequestReasoning::new(Some(ReasoningParser::DeepSeekR1), &req).unwrap().stream();
    assert_eq!(
        deltas.delta(0, "x </thi", true),
        json!({"role": "assistant", "reasoning": "x </thi"})
    );
}
