//! Identifier newtypes.
//!
//! Ids that index tables or cross crate boundaries are newtypes so that a
//! block id can never be passed where a request id is expected. Token ids
//! stay plain `u32`, as in every tokenizer and model file.

use std::fmt;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

/// A token id in the model's vocabulary.
pub type TokenId = u32;

/// A request, unique within one engine for its lifetime.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(NonZeroU64);

impl RequestId {
    /// Builds an id from a non-zero integer; `None` for zero.
    pub fn new(raw: u64) -> Option<Self> {
        NonZeroU64::new(raw).map(Self)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

/// A block of the device KV pool: an index into every layer's K and V
/// storage. Block `b` holds the token slots `b * block_size ..
/// (b + 1) * block_size`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct BlockId(pub u32);

impl BlockId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_rejects_zero_and_prints_compactly() {
        assert!(RequestId::new(0).is_none());
        let id = RequestId::new(7).expect("non-zero");
        assert_eq!(id.get(), 7);
        assert_eq!(format!("{id:?}"), "req-7");
    }
}
