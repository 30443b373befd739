//! `X-Request-Id` across the two hops. The client's id when it sent one,
//! else one made here for the client's request (as llm-d's routing sidecar
//! makes a UUID for each request), goes to the prefill engine and to the
//! decode engine alike and comes back on the router's answer. The engines
//! take it as the request's id ([`crate::completions::request_id`]): it
//! names their accounting log lines and their `cmpl-ID`, so the two
//! halves of one client request join on it.
//!
//! A client's id is checked as the engines check it, so a bad one is the
//! router's 400 before a prefill leases KV for a decode that would be
//! refused. A made id is a random UUID (version 4 layout): strata-server
//! has no dependency for randomness, and std's `RandomState` keys are
//! drawn from the operating system's, so SipHash under a fresh one of a
//! process-wide counter gives ids no other router instance repeats.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderMap;

use crate::completions::request_id::from_headers;
pub use crate::completions::request_id::{echo, HEADER};
use crate::error::ApiError;

/// The id a client request goes upstream under: the client's, or a new
/// one; a 400 for a header the engines would refuse.
pub fn for_request(headers: &HeaderMap) -> Result<String, ApiError> {
    Ok(from_headers(headers)?.unwrap_or_else(generate))
}

/// A new random id, formatted as a version 4 UUID (RFC 9562).
pub fn generate() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let keys = RandomState::new();
    let word = |half: u64| {
        let mut h = keys.build_hasher();
        h.write_u64(n);
        h.write_u64(half);
        h.finish()
    };
    // The version nibble (4) and the variant bits (0b10).
    let hi = (word(0) & !0xf000) | 0x4000;
    let lo = (word(1) & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_made_id_is_a_v4_uuid_the_engines_accept_and_never_repeats() {
        let ids: Vec<String> = (0..1000).map(|_| generate()).collect();
        for id in &ids {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{id}");
            assert_eq!(&id[14..15], "4", "version: {id}");
            assert!("89ab".contains(&id[19..20]), "variant: {id}");
            let mut h = HeaderMap::new();
            h.insert(HEADER, HeaderValue::from_str(id).unwrap());
            assert_eq!(from_headers(&h).unwrap().as_deref(), Some(id.as_str()));
        }
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn the_clients_id_is_kept_and_a_bad_one_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(for_request(&h).unwrap().len(), 36);
        h.insert(HEADER, HeaderValue::from_static("client-7"));
        assert_eq!(for_request(&h).unwrap(), "client-7");
        h.insert(HEADER, HeaderValue::from_static("two words"));
        assert_eq!(for_request(&h).unwrap_err().status().as_u16(), 400);
    }
}
