//! Tool calling against a real `strata serve` on the built-in
//! random-weight model, through the official OpenAI client
//! (scripts/tool_calls_check.py): `required` and named choices always give
//! calls whose arguments validate, streamed deltas reassemble into the
//! non-streamed answer, results go back through the template.

#![allow(clippy::unwrap_used)]

mod common;

#[test]
fn pypi_openai_client_tool_calls_are_valid_streamed_or_not() {
    let (_s, url) =
        common::serve_with(vec!["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]);
    common::run_client_script("tool_calls_check.py", &[&url]);
}

#[test]
fn auto_tool_choice_flags_are_checked_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--port", "0", "--enable-auto-tool-choice"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tool-call-parser"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--port", "0", "--tool-call-parser", "nonesuch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hermes"), "lists the known parsers");
}
