//! Structured outputs in the scheduler with a toy grammar: the masks reach
//! the executor for exactly the constrained sampling sequences, every
//! sampled token is fed back, the grammar's end ends the request (`stop`),
//! a token it refuses ends it (`error`), and preemption changes nothing.

use std::sync::{Arc, Mutex};

use super::*;
use crate::sampling::SamplingParams;
use crate::structured::{CompiledGrammar, GrammarMatcher, TokenMask};
use crate::testing::Harness;

/// Allows exactly `script` in order (then ends), recording what it saw.
#[derive(Debug)]
struct Script {
    script: Vec<u32>,
    seen: Arc<Mutex<Vec<u32>>>,
    /// Hand out a mask allowing nothing (a failed matcher).
    broken: bool,
}

#[derive(Debug)]
struct ScriptMatcher {
    script: Vec<u32>,
    at: usize,
    seen: Arc<Mutex<Vec<u32>>>,
    broken: bool,
}

impl CompiledGrammar for Script {
    fn matcher(&self) -> Box<dyn GrammarMatcher> {
        Box::new(ScriptMatcher {
            script: self.script.clone(),
            at: 0,
            seen: self.seen.clone(),
            broken: self.broken,
        })
    }
}

impl GrammarMatcher for ScriptMatcher {
    fn fill_next_token_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        if self.broken {
            return Err("broken".into());
        }
        mask.allow(self.script[self.at]);
        Ok(())
    }

    fn accept_token(&mut self, token: u32) -> Result<(), String> {
        self.seen.lock().unwrap().push(token);
        if self.script.get(self.at) != Some(&token) {
            return Err(format!("{token} refused"));
        }
        self.at += 1;
        Ok(())
    }

    fn is_terminated(&self) -> bool {
        self.at == self.script.len()
    }
}

fn engine(num_blocks: usize) -> Harness<crate::testing::FakeExecutor> {
    Harness::fake(SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        block_size: 4,
        num_blocks,
        ..SchedulerConfig::default()
    })
}

fn script(tokens: &[u32], broken: bool) -> (Arc<Script>, Arc<Mutex<Vec<u32>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    (Arc::new(Script { script: tokens.to_vec(), seen: seen.clone(), broken }), seen)
}

#[test]
fn the_mask_decides_every_token_and_the_grammar_end_stops_the_request() {
    let mut e = engine(64);
    let want = [7, 700, 9, 42, 3];
    let (g, seen) = script(&want, false);
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(50) };
    let constrained = e.add(NewRequest::new((10..30).collect(), params.clone()).with_structured(g));
    let free = e.add(NewRequest::new((10..30).collect(), SamplingParams::greedy(5)));
    let run = e.drain(200);
    assert_eq!(run.tokens[&constrained], want);
    assert_eq!(run.reasons[&constrained], FinishReason::Stop);
    assert_eq!(*seen.lock().unwrap(), want);
    assert_eq!(run.tokens[&free].len(), 5, "an unconstrained neighbour is untouched");
}

#[test]
fn a_failed_matcher_ends_its_request_with_an_error() {
    let mut e = engine(64);
    let (g, _) = script(&[7, 8], true);
    let id =
        e.add(NewRequest::new((10..20).collect(), SamplingParams::greedy(10)).with_structured(g));
    let run = e.drain(100);
    assert_eq!(run.reasons[&id], FinishReason::Error);
    assert_eq!(run.tokens[&id].len(), 1);
}

#[test]
fn preemption_keeps_the_matcher_where_it_was() {
    // Six requests in a pool that holds about three: recomputes happen.
    let want: Vec<u32> = (0..24).map(|i| 100 + i * 7).collect();
    let run_with = |num_blocks| {
        let mut e = engine(num_blocks);
        let ids: Vec<_> = (0..6)
            .map(|i| {
                let (g, _) = script(&want, false);
                let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(40) };
                e.add(NewRequest::new((i * 10..i * 10 + 12).collect(), params).with_structured(g))
            })
            .collect();
        let run = e.drain(2000);
        let preempted: u32 =
            run.results.iter().filter_map(|r| r.step).map(|s| s.num_preemptions).sum();
        (ids.iter().map(|id| run.tokens[id].clone()).collect::<Vec<_>>(), preempted)
    };
    let (roomy, none) = run_with(256);
    let (tight, some) = run_with(24);
    assert_eq!(none, 0);
    assert!(some > 0, "the small pool preempted");
    assert_eq!(tight, roomy);
    assert!(tight.iter().all(|t| *t == want));
}
