//! What the server's test files share.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::FakeExecutor;
use strata_core::EngineCore;
use strata_metrics::{CacheConfigInfo, EngineMetrics};
use strata_server::{AppState, EngineHandle};
use strata_tokenizer::Tokenizer;

/// An `AppState` over the fake executor (256 blocks of 16 tokens, 1024
/// tokens of context, a 512-token vocabulary) serving "builtin": no API
/// key, 64 requests in flight, no model defaults, no request templates.
pub fn fake_state(tokenizer: Tokenizer) -> AppState {
    let mut exec = FakeExecutor::new(256, 16, 1024);
    exec.vocab_size = 512;
    let config = SchedulerConfig {
        max_num_seqs: 32,
        max_num_batched_tokens: 256,
        block_size: 16,
        num_blocks: 256,
        max_model_len: 1024,
        ..SchedulerConfig::default()
    };
    let engine = EngineCore::new(exec, config);
    let cache = CacheConfigInfo::device(16, 256);
    let metrics = EngineMetrics::new("builtin", "0", 1024, &cache);
    let tokenizer = Arc::new(tokenizer);
    let grammars = strata_structured::GrammarCompiler::new(tokenizer.clone(), 512).map(Arc::new);
    AppState {
        engine: EngineHandle::spawn(engine, metrics, Duration::from_secs(10)),
        tokenizer,
        served_model_name: "builtin".into(),
        model_aliases: Vec::new(),
        max_model_len: 1024,
        generation_defaults: Default::default(),
        trust_request_chat_template: false,
        api_key: None,
        max_queued_requests: 64,
        grammars,
        tool_call_parser: None,
        enable_auto_tool_choice: false,
        reasoning_parser: None,
    }
}
