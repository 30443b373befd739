//! Prefix-cache block hashes.
//!
//! A full block's hash chains its parent's hash, its token ids and the
//! request's extra keys (the cache salt, so tenants can be isolated: the
//! same tokens under different salts never share blocks). Only full blocks
//! are hashed, so a hash names exactly one token prefix. The function is a
//! fixed 64-bit mix (splitmix64 finalisers), stable across runs, processes
//! and machines, so hashes can key blocks outside this process (offload
//! tiers, peers).

use serde::{Deserialize, Serialize};

use crate::ids::TokenId;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct BlockHash(pub u64);

const SEED: u64 = 0x7374_7261_7461_2d31; // "strata-1"

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn absorb(state: u64, word: u64) -> u64 {
    mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15) ^ word)
}

/// Hash of one full block given its parent's hash (`None` for the first).
pub fn hash_block(
    parent: Option<BlockHash>,
    tokens: &[TokenId],
    extra_key: Option<&str>,
) -> BlockHash {
    let mut h = absorb(SEED, parent.map_or(0, |p| p.0));
    h = absorb(h, tokens.len() as u64);
    for pair in tokens.chunks(2) {
        let word = pair[0] as u64 | (pair.get(1).copied().unwrap_or(0) as u64) << 32;
        h = absorb(h, word);
    }
    if let Some(salt) = extra_key {
        h = absorb(h, 0x5341_4c54); // "SALT": keeps salt bytes apart from tokens
        for chunk in salt.as_bytes().chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = absorb(h, u64::from_le_bytes(w));
        }
        h = absorb(h, salt.len() as u64);
    }
    BlockHash(h)
}

/// Hashes of every full block of `tokens`, extending `hashes` (which holds
/// the hashes of the blocks already hashed, in order).
pub fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    tokens: &[TokenId],
    block_size: usize,
    extra_key: Option<&str>,
) {
    let full = tokens.len() / block_size;
    for b in hashes.len()..full {
        let parent = b.checked_sub(1).map(|p| hashes[p]);
        // The salt keys the first block; every later block inherits it
        // through the chain.
        let salt = if b == 0 { extra_key } else { None };
        let h = hash_block(parent, &tokens[b * block_size..(b + 1) * block_size], salt);
        hashes.push(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_chain_and_depend_on_salt_and_every_token() {
        let toks: Vec<u32> = (0..64).collect();
        let mut a = Vec::new();
        extend_block_hashes(&mut a, &toks, 16, None);
        assert_eq!(a.len(), 4);
        let mut b = Vec::new();
        extend_block_hashes(&mut b, &toks[..40], 16, None);
        assert_eq!(&a[..2], &b[..]);
        extend_block_hashes(&mut b, &toks, 16, None);
        assert_eq!(a, b, "incremental hashing equals hashing at once");
        let mut salted = Vec::new();
        extend_block_hashes(&mut salted, &toks, 16, Some("tenant-a"));
        assert!(salted.iter().zip(&a).all(|(x, y)| x != y), "the salt reaches every block");
        let mut changed = toks.clone();
        changed[20] += 1;
        let mut c = Vec::new();
        extend_block_hashes(&mut c, &changed, 16, None);
        assert_eq!(c[0], a[0]);
        assert!(
            c[1..].iter().zip(&a[1..]).all(|(x, y)| x != y),
            "a change moves its block and all after"
        );
    }
}
