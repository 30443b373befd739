//! Structured outputs: a request whose output must follow a grammar (a
//! JSON schema, a regex, a choice, a Lark grammar), as vLLM's
//! `StructuredOutputManager` serves them.
//!
//! The core knows grammars only through two traits, so it stays free of
//! any grammar engine (strata-structured implements them with
//! llguidance):
//! - a [`CompiledGrammar`] is shared by every request that asks for the
//!   same constraint (the server caches them), and makes one
//!   [`GrammarMatcher`] per request;
//! - each step the scheduler asks the matchers of the sequences that
//!   sample for the tokens allowed next ([`TokenMask`]), in parallel when
//!   there are several; the executor's sampler gives every other token
//!   zero probability; `update_from_output` feeds each sampled token back,
//!   and a matcher that reaches the end of its grammar ends its request
//!   (`stop`).
//!
//! The matcher lives with the request, so preemption (recompute keeps the
//! output tokens) and prefix-cache hits do not disturb it.

use std::sync::Arc;

use crate::ids::TokenId;

/// Tokens allowed next: one bit per vocabulary token, 32 per word (bit
/// `t % 32` of word `t / 32`), as vLLM's grammar bitmask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u32>,
}

impl TokenMask {
    /// A mask of `vocab_size` tokens, none allowed.
    pub fn new(vocab_size: usize) -> Self {
        Self { words: vec![0; vocab_size.div_ceil(32)] }
    }

    pub fn words(&self) -> &[u32] {
        &self.words
    }

    pub fn words_mut(&mut self) -> &mut [u32] {
        &mut self.words
    }

    pub fn allow(&mut self, token: TokenId) {
        if let Some(w) = self.words.get_mut(token as usize / 32) {
            *w |= 1 << (token % 32);
        }
    }

    pub fn is_allowed(&self, token: TokenId) -> bool {
        self.words.get(token as usize / 32).is_some_and(|w| w & (1 << (token % 32)) != 0)
    }

    /// Allows every token.
    pub fn allow_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = u32::MAX);
    }

    /// Whether no token is allowed.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }
}

/// One request's position in its grammar.
pub trait GrammarMatcher: Send + std::fmt::Debug {
    /// Sets the bits of the tokens allowed next in `mask` (all clear on
    /// entry); the end-of-sequence tokens are allowed where the grammar
    /// may end.
    fn fill_next_token_mask(&mut self, mask: &mut TokenMask) -> Result<(), String>;
    /// Advances past a sampled token; an error means the token breaks the
    /// grammar (the mask should have prevented it).
    fn accept_token(&mut self, token: TokenId) -> Result<(), String>;
    /// The grammar has reached its end: nothing may follow.
    fn is_terminated(&self) -> bool;
}

/// A constraint compiled once, shared by the requests that use it.
pub trait CompiledGrammar: Send + Sync + std::fmt::Debug {
    /// A fresh matcher at the start of the grammar.
    fn matcher(&self) -> Box<dyn GrammarMatcher>;
}

/// What a request carries: the compiled constraint (cloning a `NewRequest`
/// shares it; each request makes its own matcher).
pub type SharedGrammar = Arc<dyn CompiledGrammar>;

/// `inner`, starting only once `token` has been sampled (a reasoning
/// model's end of thinking, as vLLM starts the grammar after the
/// reasoning): before it every token is allowed and nothing is fed to
/// `inner`; `token` itself is not part of the constrained output.
pub fn after_token(inner: SharedGrammar, token: TokenId) -> SharedGrammar {
    Arc::new(AfterToken { inner, token })
}

#[derive(Debug)]
struct AfterToken {
    inner: SharedGrammar,
    token: TokenId,
}

impl CompiledGrammar for AfterToken {
    fn matcher(&self) -> Box<dyn GrammarMatcher> {
        Box::new(AfterTokenMatcher {
            inner: self.inner.matcher(),
            token: self.token,
            started: false,
        })
    }
}

#[derive(Debug)]
struct AfterTokenMatcher {
    inner: Box<dyn GrammarMatcher>,
    token: TokenId,
    started: bool,
}

impl GrammarMatcher for AfterTokenMatcher {
    fn fill_next_token_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        if self.started {
            self.inner.fill_next_token_mask(mask)
        } else {
            mask.allow_all();
            Ok(())
        }
    }

    fn accept_token(&mut self, token: TokenId) -> Result<(), String> {
        if self.started {
            return self.inner.accept_token(token);
        }
        self.started = token == self.token;
        Ok(())
    }

    fn is_terminated(&self) -> bool {
        self.started && self.inner.is_terminated()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_follow_the_token_ids() {
        let mut m = TokenMask::new(70);
        assert_eq!(m.words().len(), 3);
        assert!(m.is_empty());
        for t in [0, 31, 32, 69] {
            m.allow(t);
        }
        m.allow(500);
        assert!([0, 31, 32, 69].iter().all(|&t| m.is_allowed(t)));
        assert!(!m.is_allowed(1) && !m.is_allowed(33) && !m.is_allowed(500));
        assert_eq!(m.words()[0], 1 | 1 << 31);
    }

    /// Allows only token 7, then ends.
    #[derive(Debug)]
    struct Seven(bool);

    impl GrammarMatcher for Seven {
        fn fill_next_token_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
            mask.allow(7);
            Ok(())
        }
        fn accept_token(&mut self, token: TokenId) -> Result<(), String> {
            self.0 = token == 7;
            if self.0 {
                Ok(())
            } else {
                Err("not 7".into())
            }
        }
        fn is_terminated(&self) -> bool {
            self.0
        }
    }

    #[derive(Debug)]
    struct SevenGrammar;

    impl CompiledGrammar for SevenGrammar {
        fn matcher(&self) -> Box<dyn GrammarMatcher> {
            Box::new(Seven(false))
        }
    }

    #[test]
    fn a_grammar_after_a_token_allows_anything_until_it() {
        let mut m = after_token(Arc::new(SevenGrammar), 99).matcher();
        let mut mask = TokenMask::new(128);
        m.fill_next_token_mask(&mut mask).unwrap();
        assert!(mask.is_allowed(3) && mask.is_allowed(127));
        m.accept_token(3).unwrap();
        m.accept_token(99).unwrap();
        assert!(!m.is_terminated());
        let mut mask = TokenMask::new(128);
        m.fill_next_token_mask(&mut mask).unwrap();
        assert!(mask.is_allowed(7) && !mask.is_allowed(3));
        m.accept_token(7).unwrap();
        assert!(m.is_terminated());
    }
}
