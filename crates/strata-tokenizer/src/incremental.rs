//! Incremental detokenization for streaming: text is released only once
//! it can no longer change, so a multi-byte UTF-8 character split across
//! tokens is never emitted half (as vLLM's `detokenize_incrementally`).
//!
//! Two offsets into the token list: `prefix_offset` starts a short window
//! of already-emitted tokens that gives the decoder context (spaces and
//! merges depend on neighbours), `read_offset` is where unemitted tokens
//! begin. Each step decodes the window with and without the new tokens and
//! emits the difference, unless the decoded text ends in U+FFFD (an
//! incomplete character), in which case it waits for more tokens.

use crate::{Result, Tokenizer};

/// Context tokens kept before the unemitted ones.
const WINDOW: usize = 5;

#[derive(Debug, Default, Clone)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDetokenizer {
    pub fn new(skip_special_tokens: bool) -> Self {
        Self { skip_special_tokens, ..Self::default() }
    }

    /// Adds one token and returns the text that became final (possibly
    /// empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special_tokens)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.ends_with('\u{FFFD}') || full.len() <= prefix.len() || !full.starts_with(&prefix) {
            return Ok(String::new());
        }
        let new = full[prefix.len()..].to_string();
        self.read_offset = self.ids.len();
        self.prefix_offset = self.read_offset.saturating_sub(WINDOW);
        Ok(new)
    }

    /// Text held back at the end of the stream (an incomplete character is
    /// flushed as U+FFFD, as a full decode would show it).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let prefix = tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special_tokens)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.read_offset = self.ids.len();
        self.prefix_offset = self.read_offset;
        Ok(full.strip_prefix(&prefix).map(str::to_owned).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_pieces_join_to_the_full_decode_and_never_split_a_character() {
        let t = Tokenizer::builtin();
        for text in [
            "Hello, world! The engine runs.",
            "café naïve 日本語 🚀 done",
            "  spaces\tand\nlines  ",
        ] {
            let ids = t.encode(text, false).unwrap();
            let mut d = IncrementalDetokenizer::new(true);
            let mut out = String::new();
            for &id in &ids {
                let piece = d.push(&t, id).unwrap();
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "a piece of {text:?} split a character: {piece:?}"
                );
                out.push_str(&piece);
            }
            out.push_str(&d.finish(&t).unwrap());
            assert_eq!(out, t.decode(&ids, true).unwrap());
            assert_eq!(out, text);
        }
    }

    #[test]
    fn special_tokens_are_skipped_when_asked() {
        let t = Tokenizer::builtin();
        let mut ids = t.encode("Hi", false).unwrap();
        ids.push(crate::builtin::EOS_TOKEN_IDS[1]);
        let mut d = IncrementalDetokenizer::new(true);
        let out: String = ids.iter().map(|&id| d.push(&t, id).unwrap()).collect();
        assert_eq!(out, "Hi");
    }
}
