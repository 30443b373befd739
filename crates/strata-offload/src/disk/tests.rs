use proptest::prelude::*;

use std::os::unix::fs::FileExt;

use super::*;

fn payload(seed: u8) -> Vec<u8> {
    (0..256u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

const FP: u64 = 7;
const LEN: usize = 256;

fn slab(dir: &Path, max_slots: u32) -> (Slab, Scan) {
    Slab::open(&model_dir(dir, FP), FP, LEN, max_slots, false).unwrap()
}

fn read(slab: &Slab, slot: u32, hash: u64) -> Result<Vec<u8>, OffloadFailure> {
    let mut out = vec![0u8; LEN];
    slab.read(slot, BlockHash(hash), &mut out, &mut ReadScratch::default()).map(|()| out)
}

/// Flips bits of the slab file at `at`.
fn flip(slab: &Slab, at: u64) {
    let mut b = [0u8; 1];
    slab.file.read_exact_at(&mut b, at).unwrap();
    slab.file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

#[test]
fn a_written_block_reads_back_and_every_kind_of_damage_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (s, scan) = slab(root.path(), 8);
    assert_eq!(scan, Scan::default(), "a new slab is empty");
    assert_eq!(stride(LEN), 4096);
    s.write(0, false, BlockHash(0xabc), 0, &payload(1)).unwrap();
    s.write(3, false, BlockHash(0xdef), 1, &payload(2)).unwrap();
    assert_eq!(read(&s, 0, 0xabc).unwrap(), payload(1));
    assert_eq!(read(&s, 3, 0xdef).unwrap(), payload(2));

    // Another block's slot, a slot never written, another length.
    assert_eq!(read(&s, 3, 0xabc), Err(OffloadFailure::Foreign));
    assert_eq!(read(&s, 1, 0xabc), Err(OffloadFailure::Truncated), "a hole: no header");
    assert_eq!(read(&s, 5, 0xabc), Err(OffloadFailure::Truncated), "past the end");
    let mut short = vec![0u8; LEN / 2];
    assert_eq!(
        s.read(0, BlockHash(0xabc), &mut short, &mut ReadScratch::default()),
        Err(OffloadFailure::Foreign)
    );

    // One flipped payload byte; one flipped header byte.
    flip(&s, 100);
    assert_eq!(read(&s, 0, 0xabc), Err(OffloadFailure::Corrupt));
    flip(&s, 3 * 4096 + LEN as u64 + 22);
    assert_eq!(read(&s, 3, 0xdef), Err(OffloadFailure::Corrupt));

    // Another model's slab, same bytes.
    drop(s);
    let other = model_dir(root.path(), FP + 1);
    fs::create_dir_all(&other).unwrap();
    fs::copy(slab_path(&model_dir(root.path(), FP)), slab_path(&other)).unwrap();
    let (s, scan) = Slab::open(&other, FP + 1, LEN, 8, false).unwrap();
    assert!(scan.blocks.is_empty(), "another model's blocks are never indexed");
    assert_eq!(scan.num_removed, 2, "both headers cleared");
    assert_eq!(read(&s, 0, 0xabc), Err(OffloadFailure::Truncated));
}

#[test]
fn start_up_finds_blocks_oldest_first_and_cleans_up() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), FP);
    {
        let (s, _) = slab(root.path(), 16);
        // Written out of slot order; block 2 written twice (the newer
        // copy wins), slot 5 damaged.
        for (slot, hash, seq) in [(4, 3u64, 10), (1, 1, 11), (0, 2, 5), (2, 2, 12), (5, 9, 13)] {
            s.write(slot, false, BlockHash(hash), seq, &payload(hash as u8)).unwrap();
        }
        flip(&s, 5 * 4096 + LEN as u64 + 1);
        // A store cut short while extending the file: part of slot 6.
        s.file.write_all_at(&payload(6)[..100], 6 * 4096).unwrap();
    }
    // Files of the one-file-per-block format, and someone else's file.
    fs::write(dir.join("0000000000000009.kv.tmp"), b"partial").unwrap();
    fs::write(dir.join("0000000000000003.kv"), b"old").unwrap();
    fs::write(dir.join("notes.txt"), b"not a block").unwrap();

    let (s, scan) = slab(root.path(), 16);
    assert_eq!(scan.blocks, vec![(BlockHash(3), 4), (BlockHash(1), 1), (BlockHash(2), 2)]);
    assert_eq!(scan.num_removed, 1, "the damaged header");
    assert_eq!(scan.num_legacy_removed, 2);
    assert_eq!(scan.num_slots, 6, "the partial slot is cut off");
    assert_eq!(fs::metadata(s.path()).unwrap().len(), 6 * 4096);
    let mut free = scan.free.clone();
    free.sort_unstable();
    assert_eq!(free, vec![0, 3, 5], "the older copy, the hole, the damaged slot");
    assert_eq!(scan.next_seq, 13, "after the newest valid write");
    assert!(!dir.join("0000000000000009.kv.tmp").exists());
    assert!(!dir.join("0000000000000003.kv").exists());
    assert!(dir.join("notes.txt").exists(), "files that are not ours are left alone");
    assert_eq!(read(&s, 2, 2).unwrap(), payload(2));

    // The index: free slots reused lowest first, then the oldest write
    // evicted.
    let mut index = DiskIndex::from_scan(6, &scan);
    index.check_invariants().unwrap();
    for (hash, slot) in [(20, 0), (21, 3), (22, 5)] {
        assert_eq!(
            index.begin_write(BlockHash(hash)),
            Some(Reserved { slot, fresh: false, evicted: vec![] })
        );
    }
    let r = index.begin_write(BlockHash(23)).unwrap();
    assert_eq!(
        r,
        Reserved { slot: 4, fresh: false, evicted: vec![BlockHash(3)] },
        "the oldest write goes"
    );
    index.check_invariants().unwrap();

    // A smaller capacity cuts the file (slot 0 still holds the older,
    // valid, copy of block 2).
    drop(s);
    let (_s, scan) = slab(root.path(), 2);
    assert_eq!(scan.num_slots, 2);
    assert_eq!(scan.blocks, vec![(BlockHash(2), 0), (BlockHash(1), 1)]);
}

#[test]
fn a_second_engine_cannot_open_the_same_slab() {
    let root = tempfile::tempdir().unwrap();
    let (_held, _) = slab(root.path(), 4);
    let err = Slab::open(&model_dir(root.path(), FP), FP, LEN, 4, false).unwrap_err();
    assert!(err.to_string().contains("in use by another process"), "{err}");
}

#[test]
fn a_store_overwriting_a_slot_clears_its_header_first() {
    let root = tempfile::tempdir().unwrap();
    let (s, _) = slab(root.path(), 4);
    s.write(0, false, BlockHash(1), 0, &payload(1)).unwrap();
    // What a process killed between the store's first two writes leaves.
    s.file.write_all_at(&[0u8; HEADER_LEN], LEN as u64).unwrap();
    s.file.write_all_at(&payload(2)[..50], 0).unwrap();
    drop(s);
    let (s, scan) = slab(root.path(), 4);
    assert!(scan.blocks.is_empty(), "a slot without a header is never trusted");
    assert_eq!(scan.num_removed, 0);
    s.write(0, false, BlockHash(2), 1, &payload(2)).unwrap();
    assert_eq!(read(&s, 0, 2).unwrap(), payload(2));
}

#[test]
fn direct_io_reads_the_same_bytes_where_supported() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), FP);
    {
        let (s, _) = slab(root.path(), 4);
        s.write(1, false, BlockHash(5), 0, &payload(5)).unwrap();
    }
    let (s, scan) = Slab::open(&dir, FP, LEN, 4, true).unwrap();
    assert_eq!(scan.blocks, vec![(BlockHash(5), 1)]);
    // tmpfs refuses O_DIRECT; the tier then reads through the page cache.
    eprintln!("O_DIRECT in use: {}", s.uses_direct_io());
    assert_eq!(read(&s, 1, 5).unwrap(), payload(5));
    flip(&s, 4096 + 7);
    assert_eq!(read(&s, 1, 5), Err(OffloadFailure::Corrupt));
}

#[test]
fn an_unwritable_directory_fails_to_open() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    assert!(Slab::open(&file.join("sub"), FP, LEN, 4, false).is_err());
}

#[test]
fn the_index_evicts_least_recently_used_ready_blocks_only() {
    let mut d = DiskIndex::new(2);
    let (a, b, c) = (BlockHash(1), BlockHash(2), BlockHash(3));
    assert_eq!(d.begin_write(a), Some(Reserved { slot: 0, fresh: true, evicted: vec![] }));
    assert_eq!(d.begin_write(b), Some(Reserved { slot: 1, fresh: true, evicted: vec![] }));
    assert!(!d.is_ready(a), "not loadable while being written");
    assert_eq!(d.begin_write(c), None, "both are being written");
    d.finish_write(a, Ok(()));
    d.finish_write(b, Ok(()));
    d.touch(a);
    assert_eq!(d.pin(a), Some(0));
    assert_eq!(d.begin_write(c), Some(Reserved { slot: 1, fresh: false, evicted: vec![b] }));
    assert_eq!(d.begin_write(BlockHash(4)), None, "a pinned, c writing");
    // Two loads of `a`; the first finds it damaged.
    assert_eq!(d.pin(a), Some(0));
    d.unpin(a, false);
    assert!(!d.is_ready(a) && d.pin(a).is_none(), "never served again");
    assert_eq!(d.begin_write(BlockHash(4)), None, "its slot is busy until the other load ends");
    d.unpin(a, true);
    assert!(!d.contains(a), "a failed load drops the block");
    assert_eq!(
        d.begin_write(BlockHash(4)),
        Some(Reserved { slot: 0, fresh: false, evicted: vec![] })
    );
    d.check_invariants().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Write(u8),
    Finish(u8, bool),
    Pin(u8),
    Unpin(u8, bool),
    Touch(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..10).prop_map(Op::Write),
        (0u8..10, any::<bool>()).prop_map(|(k, ok)| Op::Finish(k, ok)),
        (0u8..10).prop_map(Op::Pin),
        (0u8..10, any::<bool>()).prop_map(|(k, ok)| Op::Unpin(k, ok)),
        (0u8..10).prop_map(Op::Touch),
    ]
}

proptest! {
    /// Random write / finish / pin / unpin / touch: capacity holds, pinned
    /// and in-flight blocks are never evicted, invariants hold.
    #[test]
    fn the_index_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..200)) {
        let mut d = DiskIndex::new(3);
        let mut pinned: Vec<u8> = Vec::new();
        let mut writing: Vec<u8> = Vec::new();
        for op in ops {
            match op {
                Op::Write(k) => {
                    let h = BlockHash(k as u64);
                    if !d.contains(h) {
                        if let Some(Reserved { evicted, .. }) = d.begin_write(h) {
                            for e in evicted {
                                prop_assert!(!pinned.contains(&(e.0 as u8)), "a pinned block was evicted");
                                prop_assert!(!writing.contains(&(e.0 as u8)), "a block being written was evicted");
                            }
                            writing.push(k);
                        }
                    }
                }
                Op::Finish(k, ok) => {
                    if let Some(i) = writing.iter().position(|&w| w == k) {
                        writing.remove(i);
                        let result = if ok { Ok(()) } else { Err(OffloadFailure::Io) };
                        d.finish_write(BlockHash(k as u64), result);
                    }
                }
                Op::Pin(k) => {
                    if d.pin(BlockHash(k as u64)).is_some() {
                        pinned.push(k);
                    }
                }
                Op::Unpin(k, ok) => {
                    if let Some(i) = pinned.iter().position(|&p| p == k) {
                        pinned.remove(i);
                        d.unpin(BlockHash(k as u64), ok);
                    }
                }
                Op::Touch(k) => d.touch(BlockHash(k as u64)),
            }
            d.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn a_full_device_shrinks_the_index_to_what_it_holds_so_writes_evict() {
    let mut index = DiskIndex::new(100);
    for i in 0..5 {
        assert!(index.begin_write(BlockHash(i)).is_some());
        index.finish_write(BlockHash(i), Ok(()));
    }
    // A write in flight when the device said ENOSPC does not count, and
    // its slot (which the device had no room for) is not used again.
    assert_eq!(
        index.begin_write(BlockHash(10)),
        Some(Reserved { slot: 5, fresh: true, evicted: vec![] })
    );
    index.finish_write(BlockHash(10), Err(OffloadFailure::NoSpace));
    index.shrink_to_fit();
    assert_eq!(index.capacity(), 5);
    // The next write makes room by evicting the least recently used, into
    // its slot.
    assert_eq!(
        index.begin_write(BlockHash(11)),
        Some(Reserved { slot: 0, fresh: false, evicted: vec![BlockHash(0)] })
    );
    // Shrinking never grows the capacity back.
    index.finish_write(BlockHash(11), Ok(()));
    index.shrink_to_fit();
    assert_eq!(index.capacity(), 5);
    assert_eq!(index.check_invariants(), Ok(()));
}
