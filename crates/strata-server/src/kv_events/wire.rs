//! vLLM's KV-event wire format, in msgpack written by hand.
//!
//! A batch is the positional array `[ts_seconds: f64, events: array,
//! data_parallel_rank: int]` (what llm-d and Dynamo decode). Each event is
//! either a map tagged under `"type"` (vLLM since its #42892, the default
//! here) or a positional array with the tag first (older vLLM; what older
//! llm-d accepts). Fields, in vLLM's order:
//! - `BlockStored`: `block_hashes`, `parent_block_hash`, `token_ids`,
//!   `block_size`, `lora_id`, `medium`, `lora_name`, `extra_keys`,
//!   `group_idx`, `kv_cache_spec_kind`, `kv_cache_spec_sliding_window`;
//! - `BlockRemoved`: `block_hashes`, `medium`, `group_idx`;
//! - `AllBlocksCleared`: none.
//!
//! Hashes are always written as full uint64 (marker 0xcf): llm-d's decoder
//! rejects a batch whose hash a compact encoder shrank to a small int. The
//! cache salt goes in block 0's `extra_keys`, as vLLM puts it there.

use rmp::encode;
use strata_core::kv::{BlockHash, KvCacheEvent, KvEventBatch};

/// How events are laid out (the batch is always an array).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// Maps tagged under `"type"` (current vLLM).
    #[default]
    Map,
    /// Positional arrays with the tag first (vLLM before #42892).
    Array,
}

/// Encodes one batch.
pub fn encode_batch(ts: f64, events: &KvEventBatch, format: EventFormat) -> Vec<u8> {
    let mut w = Writer { buf: Vec::with_capacity(64 + 160 * events.len()), format };
    w.array(3);
    done(encode::write_f64(&mut w.buf, ts));
    w.array(events.len());
    for e in events.iter() {
        w.event(&e);
    }
    w.uint(0); // data-parallel rank: strata runs one engine per process
    w.buf
}

fn done<E: std::fmt::Debug>(r: Result<impl Sized, E>) {
    r.expect("invariant: writing msgpack into a Vec cannot fail");
}

struct Writer {
    buf: Vec<u8>,
    format: EventFormat,
}

/// A field value, so one table drives both layouts.
enum Value<'a> {
    Nil,
    Uint(u64),
    Str(&'a str),
    Hashes(&'a [BlockHash]),
    Hash(Option<BlockHash>),
    Tokens(&'a [u32]),
    /// `extra_keys`: `[[salt], nil, nil, …]`, one entry per block, or nil.
    Salt(Option<&'a str>, usize),
}

impl Writer {
    fn array(&mut self, len: usize) {
        let r = encode::write_array_len(&mut self.buf, len as u32);
        done(r);
    }

    fn uint(&mut self, v: u64) {
        let r = encode::write_uint(&mut self.buf, v);
        done(r);
    }

    fn str(&mut self, s: &str) {
        let r = encode::write_str(&mut self.buf, s);
        done(r);
    }

    fn hash(&mut self, h: BlockHash) {
        let r = encode::write_u64(&mut self.buf, h.0);
        done(r);
    }

    fn value(&mut self, v: &Value<'_>) {
        match *v {
            Value::Nil => done(encode::write_nil(&mut self.buf)),
            Value::Uint(n) => self.uint(n),
            Value::Str(s) => self.str(s),
            Value::Hashes(hs) => {
                self.array(hs.len());
                hs.iter().for_each(|&h| self.hash(h));
            }
            Value::Hash(Some(h)) => self.hash(h),
            Value::Hash(None) => self.value(&Value::Nil),
            Value::Tokens(ts) => {
                self.array(ts.len());
                ts.iter().for_each(|&t| self.uint(t as u64));
            }
            Value::Salt(None, _) => self.value(&Value::Nil),
            Value::Salt(Some(salt), blocks) => {
                self.array(blocks);
                self.array(1);
                self.str(salt);
                (1..blocks).for_each(|_| self.value(&Value::Nil));
            }
        }
    }

    fn tagged(&mut self, tag: &str, fields: &[(&str, Value<'_>)]) {
        match self.format {
            EventFormat::Map => {
                let r = encode::write_map_len(&mut self.buf, 1 + fields.len() as u32);
                done(r);
                self.str("type");
                self.str(tag);
                for (name, v) in fields {
                    self.str(name);
                    self.value(v);
                }
            }
            EventFormat::Array => {
                self.array(1 + fields.len());
                self.str(tag);
                fields.iter().for_each(|(_, v)| self.value(v));
            }
        }
    }

    fn event(&mut self, e: &KvCacheEvent<'_>) {
        match e {
            KvCacheEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                cache_salt,
                medium,
            } => self.tagged(
                "BlockStored",
                &[
                    ("block_hashes", Value::Hashes(block_hashes)),
                    ("parent_block_hash", Value::Hash(*parent_block_hash)),
                    ("token_ids", Value::Tokens(token_ids)),
                    ("block_size", Value::Uint(*block_size as u64)),
                    ("lora_id", Value::Nil),
                    ("medium", Value::Str(medium.wire_name())),
                    ("lora_name", Value::Nil),
                    ("extra_keys", Value::Salt(*cache_salt, block_hashes.len())),
                    ("group_idx", Value::Uint(0)),
                    ("kv_cache_spec_kind", Value::Str("full_attention")),
                    ("kv_cache_spec_sliding_window", Value::Nil),
                ],
            ),
            KvCacheEvent::BlockRemoved { block_hashes, medium } => self.tagged(
                "BlockRemoved",
                &[
                    ("block_hashes", Value::Hashes(block_hashes)),
                    ("medium", Value::Str(medium.wire_name())),
                    ("group_idx", Value::Uint(0)),
                ],
            ),
            KvCacheEvent::AllBlocksCleared => self.tagged("AllBlocksCleared", &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use strata_core::kv::KvMedium;

    use super::*;

    fn stored(b: &mut KvEventBatch) {
        let hashes = [BlockHash(1), BlockHash(u64::MAX)];
        b.stored(&hashes, None, &[5, 6, 7, 8], 2, Some("s"), KvMedium::Device);
    }

    #[test]
    fn small_hashes_are_written_as_full_uint64() {
        let mut b = KvEventBatch::default();
        stored(&mut b);
        let bytes = encode_batch(1.5, &b, EventFormat::Array);
        // [0x93, f64 (9 bytes), 0x91, event array (0x9c: 12 entries),
        //  "BlockStored" (0xab + 11 bytes), hashes array 0x92, 0xcf + 8 bytes]
        let at = 1 + 9 + 1 + 1 + 12;
        assert_eq!(bytes[at], 0x92);
        assert_eq!(&bytes[at + 1..at + 10], &[0xcf, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(bytes[at + 10], 0xcf);
    }

    #[test]
    fn map_and_array_layouts_carry_the_same_fields() {
        let mut events = KvEventBatch::default();
        stored(&mut events);
        events.removed(BlockHash(9), KvMedium::Host);
        events.cleared();
        let map = encode_batch(2.0, &events, EventFormat::Map);
        let array = encode_batch(2.0, &events, EventFormat::Array);
        assert_eq!(map[0], 0x93);
        assert_eq!(array[0], 0x93);
        // The map layout adds each field's name and the "type" key.
        assert!(map.len() > array.len());
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for name in ["parent_block_hash", "extra_keys", "medium"] {
            assert!(has(&map, name.as_bytes()), "{name}");
            assert!(!has(&array, name.as_bytes()), "{name}");
        }
        for value in ["GPU", "CPU", "AllBlocksCleared", "full_attention"] {
            assert!(has(&map, value.as_bytes()) && has(&array, value.as_bytes()), "{value}");
        }
    }
}
