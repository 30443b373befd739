//! Stop strings, found in the detokenized output.
//!
//! The engine sees tokens only, so stop strings are matched on text. The
//! engine thread watches each request that has them ([`StopWatch`]) and
//! ends it with finish reason `stop` (`EngineCore::finish_request`) in the
//! step whose token completed the string, before another step runs: the
//! request generates no token past it, and `/metrics` books it as `stop`
//! with the token count the client's `usage` reports. The request's
//! handler finds the same string in its own text (same detokenizer, same
//! tokens) to cut the text there.

use std::sync::Arc;

use strata_tokenizer::incremental::IncrementalDetokenizer;
use strata_tokenizer::Tokenizer;

/// The earliest stop string in `text`: its byte offset and the string.
pub fn find<'a>(text: &str, stop: &'a [String]) -> Option<(usize, &'a str)> {
    stop.iter()
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.as_str())))
        .min_by_key(|&(at, s)| (at, std::cmp::Reverse(s.len())))
}

/// Length of the longest suffix of `text` that is a proper prefix of one of
/// the stop strings (text that must be held back while streaming).
pub fn pending_len(text: &str, stop: &[String]) -> usize {
    stop.iter()
        .map(|s| {
            (1..s.len())
                .rev()
                .find(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

/// One request's stop strings and its text so far, on the engine thread.
pub struct StopWatch {
    tokenizer: Arc<Tokenizer>,
    stop: Vec<String>,
    detok: IncrementalDetokenizer,
    text: String,
}

impl std::fmt::Debug for StopWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopWatch").field("stop", &self.stop).finish()
    }
}

impl StopWatch {
    /// `None` when there is nothing to watch.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        stop: Vec<String>,
        skip_special_tokens: bool,
    ) -> Option<Self> {
        (!stop.is_empty()).then(|| Self {
            tokenizer,
            stop,
            detok: IncrementalDetokenizer::new(skip_special_tokens),
            text: String::new(),
        })
    }

    /// Adds a generated token; `true` once the text holds a stop string.
    pub fn push(&mut self, token_id: u32) -> bool {
        if let Ok(piece) = self.detok.push(&self.tokenizer, token_id) {
            self.text.push_str(&piece);
        }
        find(&self.text, &self.stop).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_stop_string_wins_and_the_longer_at_a_tie() {
        let stop = vec!["b".to_string(), "ab".to_string(), "a".to_string()];
        assert_eq!(find("xxabc", &stop), Some((2, "ab")));
        assert_eq!(find("xxx", &stop), None);
        assert_eq!(pending_len("hello wor", &["world".to_string()]), 3);
        assert_eq!(pending_len("hello", &["world".to_string()]), 0);
    }
}
