use proptest::prelude::*;

use super::*;

fn payload(seed: u8) -> Vec<u8> {
    (0..256u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn a_written_block_reads_back_and_every_kind_of_damage_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), 7);
    fs::create_dir_all(&dir).unwrap();
    let h = BlockHash(0xabc);
    write_block(&dir, 7, h, &payload(1)).unwrap();
    let mut out = vec![0u8; 256];
    read_block(&dir, 7, h, &mut out).unwrap();
    assert_eq!(out, payload(1));

    // Another model's fingerprint, another block, another length.
    assert_eq!(read_block(&dir, 8, h, &mut out), Err(OffloadFailure::Foreign));
    fs::copy(block_path(&dir, h), block_path(&dir, BlockHash(0xdef))).unwrap();
    assert_eq!(read_block(&dir, 7, BlockHash(0xdef), &mut out), Err(OffloadFailure::Foreign));
    assert_eq!(read_block(&dir, 7, h, &mut [0u8; 128]), Err(OffloadFailure::Foreign));

    // One flipped payload byte, one flipped header byte.
    let path = block_path(&dir, h);
    let good = fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[HEADER_LEN + 100] ^= 0x40;
    fs::write(&path, &bad).unwrap();
    assert_eq!(read_block(&dir, 7, h, &mut out), Err(OffloadFailure::Corrupt));
    let mut bad = good.clone();
    bad[30] ^= 1;
    fs::write(&path, &bad).unwrap();
    assert_eq!(read_block(&dir, 7, h, &mut out), Err(OffloadFailure::Corrupt));

    // Cut short, in the payload and in the header.
    fs::write(&path, &good[..good.len() - 10]).unwrap();
    assert_eq!(read_block(&dir, 7, h, &mut out), Err(OffloadFailure::Truncated));
    fs::write(&path, &good[..20]).unwrap();
    assert_eq!(read_block(&dir, 7, h, &mut out), Err(OffloadFailure::Truncated));

    // Missing.
    remove_block(&dir, h);
    assert_eq!(read_block(&dir, 7, h, &mut out), Err(OffloadFailure::Io));
}

#[test]
fn scan_finds_blocks_oldest_first_and_removes_leftovers() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), 1);
    fs::create_dir_all(&dir).unwrap();
    for (i, h) in [3u64, 1, 2].into_iter().enumerate() {
        write_block(&dir, 1, BlockHash(h), &payload(i as u8)).unwrap();
        // Distinct modification times, in this order.
        let f = fs::File::options().write(true).open(block_path(&dir, BlockHash(h))).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64))
            .unwrap();
    }
    fs::write(dir.join("0000000000000009.kv.tmp"), b"partial").unwrap();
    fs::write(block_path(&dir, BlockHash(5)), b"short").unwrap();
    fs::write(dir.join("notes.txt"), b"not a block").unwrap();
    let found = scan(&dir, 256).unwrap();
    assert_eq!(found.blocks, vec![BlockHash(3), BlockHash(1), BlockHash(2)]);
    assert_eq!(found.num_removed, 1, "the short file");
    assert!(!dir.join("0000000000000009.kv.tmp").exists());
    assert!(!block_path(&dir, BlockHash(5)).exists());
    assert!(dir.join("notes.txt").exists(), "files that are not ours are left alone");
}

#[test]
fn an_unwritable_directory_fails_the_store_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("does-not-exist");
    assert_eq!(write_block(&missing, 1, BlockHash(1), &payload(0)), Err(OffloadFailure::Io));
}

#[test]
fn the_index_evicts_least_recently_used_ready_blocks_only() {
    let mut d = DiskIndex::new(2);
    let (a, b, c) = (BlockHash(1), BlockHash(2), BlockHash(3));
    assert_eq!(d.begin_write(a), Some(vec![]));
    assert_eq!(d.begin_write(b), Some(vec![]));
    assert!(!d.is_ready(a), "not loadable while being written");
    assert_eq!(d.begin_write(c), None, "both are being written");
    d.finish_write(a, true);
    d.finish_write(b, true);
    d.touch(a);
    assert!(d.pin(a));
    assert_eq!(d.begin_write(c), Some(vec![b]));
    assert_eq!(d.begin_write(BlockHash(4)), None, "a pinned, c writing");
    d.unpin(a, false);
    assert!(!d.contains(a), "a failed load drops the block");
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
                        if let Some(evicted) = d.begin_write(h) {
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
                        d.finish_write(BlockHash(k as u64), ok);
                    }
                }
                Op::Pin(k) => {
                    if d.pin(BlockHash(k as u64)) {
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
        index.insert_ready(BlockHash(i));
    }
    // A write in flight when the device said ENOSPC does not count.
    assert_eq!(index.begin_write(BlockHash(10)), Some(vec![]));
    index.finish_write(BlockHash(10), false);
    index.shrink_to_fit();
    assert_eq!(index.capacity(), 5);
    // The next write makes room by evicting the least recently used.
    assert_eq!(index.begin_write(BlockHash(11)), Some(vec![BlockHash(0)]));
    // Shrinking never grows the capacity back.
    index.finish_write(BlockHash(11), true);
    index.shrink_to_fit();
    assert_eq!(index.capacity(), 5);
    assert_eq!(index.check_invariants(), Ok(()));
}
