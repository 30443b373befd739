//! AVX-VNNI products of Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weight panels with many
//! input rows: the 32-value types' counterpart of [`super::vnni_panel`],
//! on CPUs with `vpdpbusd` ([`crate::simd::vnni`]).
//!
//! A panel holds eight weight rows interleaved by four values
//! ([`Packed8x32`]), so one `vpdpbusd` with four input bytes broadcast to
//! every lane advances eight rows by four values; a 32-value block is
//! eight of them into one i32 lane per row. Each block is then scaled in
//! f32 as in [`super::avx2_panel32`]: `d_w d_a Σ q a` plus the offset term
//! `m_w s_a`, where `s_a = d_a Σ a` comes with the input block and `m_w`
//! is the block's minimum (Q4_1/Q5_1), `-8 d_w` / `-16 d_w` (Q4_0/Q5_0),
//! or `-128 d_w` for Q8_0: its signed bytes are stored with 128 added,
//! which makes them the unsigned operand `vpdpbusd` needs (the product is
//! exact: `Σ (q + 128) a` is at most `32 * 255 * 128` in an i32).

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx2::{f16, fifth_bits, load, nibbles_16};
pub(super) use super::vnni_panel::ROWS;
use super::vnni_panel::{blocks_of, next_panel, prefetch, transpose};
use super::{Q8Block, QuantType};

/// Input rows per tile.
const INPUTS: usize = 8;

/// Whether `t` has a packed kernel here.
pub(super) fn packs(t: QuantType) -> bool {
    matches!(
        t,
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q8_0
    )
}

/// One 32-value block of `L` weight rows (8 or 16), unpacked: `B = 4 L`
/// bytes per vector of four values.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Panel32<const B: usize, const L: usize> {
    /// `qs[q][4 r + t]`: value `4 q + t` of row `r`, unsigned.
    qs: [[u8; B]; 8],
    /// Each row's scale.
    d: [f32; L],
    /// Each row's offset factor.
    m: [f32; L],
}

/// Eight rows, for [`tile`].
pub(super) type Packed8x32 = Panel32<32, 8>;
/// Sixteen rows in 512-bit vectors, for [`tile16`].
type Packed16x32 = Panel32<64, 16>;

impl<const B: usize, const L: usize> Panel32<B, L> {
    const ZERO: Self = Self { qs: [[0; B]; 8], d: [0.0; L], m: [0.0; L] };

    /// Rows `8 h..8 h + 8` of this block from the stored blocks `b[r]` of
    /// type `t`, one per row.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn set(&mut self, h: usize, t: QuantType, b: [&[u8]; ROWS]) {
        assert!(8 * h < L, "invariant: a half of the panel");
        let quads = transpose(std::array::from_fn(|r| values(t, b[r])));
        for (q, v) in quads.into_iter().enumerate() {
            let dst = &mut self.qs[q][32 * h..32 * h + 32];
            // SAFETY: dst is 32 writable bytes; the store is aligned (the
            // panel is 64-aligned, its vectors 32 or 64 bytes, and a half
            // starts 32 bytes in).
            unsafe { _mm256_store_si256(dst.as_mut_ptr().cast(), v) };
        }
        for (r, blk) in b.iter().enumerate() {
            let d = f16(blk);
            self.d[8 * h + r] = d;
            self.m[8 * h + r] = match t {
                QuantType::Q4_0 => -8.0 * d,
                QuantType::Q5_0 => -16.0 * d,
                QuantType::Q8_0 => -128.0 * d,
                _ => f16(&blk[2..]),
            };
        }
    }
}

/// The 32 values of the block `b` of type `t` ([`packs`]) as unsigned
/// bytes: the 4- and 5-bit values as stored, Q8_0's with 128 added.
#[inline]
#[target_feature(enable = "avx2")]
fn values(t: QuantType, b: &[u8]) -> __m256i {
    assert_eq!(b.len(), t.block_bytes(), "invariant: one whole block");
    match t {
        QuantType::Q4_0 => nibbles_16(&b[2..]),
        QuantType::Q4_1 => nibbles_16(&b[4..]),
        QuantType::Q5_0 => _mm256_or_si256(nibbles_16(&b[6..]), fifth_bits(&b[2..])),
        QuantType::Q5_1 => _mm256_or_si256(nibbles_16(&b[8..]), fifth_bits(&b[4..])),
        QuantType::Q8_0 => _mm256_xor_si256(load(&b[2..]), _mm256_set1_epi8(-128)),
        _ => unreachable!("invariant: only the types of `packs` are packed here"),
    }
}

thread_local! {
    /// Each thread's packed panel, reused from call to call.
    static PANEL: RefCell<Vec<Packed8x32>> = const { RefCell::new(Vec::new()) };
}

/// Eight packed weight rows (`nb` blocks at `w`) against the input rows
/// `a`: lane `r` of `out[c]` is the product of weight row `r` and input
/// row `c`.
///
/// # Safety
/// The CPU has AVX-VNNI; `w` and each `a[c]` point at `nb` readable
/// blocks.
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn tile(w: *const Packed8x32, a: [*const Q8Block; INPUTS], nb: usize) -> [__m256; INPUTS] {
    let mut acc = [_mm256_setzero_ps(); INPUTS];
    for b in 0..nb {
        // SAFETY: b < nb keeps every read inside block b of w and a[c];
        // the input reads are four bytes at 4 q < 32.
        unsafe {
            let pb = &*w.add(b);
            let x: [&Q8Block; INPUTS] = std::array::from_fn(|c| &*a[c].add(b));
            let mut isum = [_mm256_setzero_si256(); INPUTS];
            for q in 0..8 {
                let wv = _mm256_load_si256(pb.qs[q].as_ptr().cast());
                for c in 0..INPUTS {
                    let xq = _mm256_set1_epi32(
                        x[c].qs.as_ptr().add(4 * q).cast::<i32>().read_unaligned(),
                    );
                    isum[c] = _mm256_dpbusd_avx_epi32(isum[c], wv, xq);
                }
            }
            let (d, m) = (_mm256_load_ps(pb.d.as_ptr()), _mm256_load_ps(pb.m.as_ptr()));
            for c in 0..INPUTS {
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(x[c].d));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), scale, acc[c]);
                acc[c] = _mm256_fmadd_ps(m, _mm256_set1_ps(x[c].s), acc[c]);
            }
        }
    }
    acc
}

/// `out + i * ld + j` receives `w_j . x_i` for the rows `j < nr / 8 * 8`
/// of the `nr` consecutive rows of type `t` ([`packs`]) in `w` and every
/// input row `i` of `a` (`nb` blocks each; a last partial group of inputs
/// is padded with copies of its last row, whose results are not stored).
/// The other weight rows are the caller's.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-VNNI; for every such `i` and `j`,
/// `out + i * ld + j` is valid for writes and nobody else's during the
/// call.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn gemm_packed(
    t: QuantType,
    w: &[u8],
    nr: usize,
    a: &[Q8Block],
    nb: usize,
    out: *mut f32,
    ld: usize,
) {
    let bb = t.block_bytes();
    let m = a.len() / nb;
    assert!(packs(t), "invariant: a type with a packed kernel");
    assert_eq!(w.len(), nr * nb * bb, "invariant: nr weight rows of nb blocks");
    assert_eq!(a.len(), m * nb, "invariant: m input rows of nb blocks");
    let row_bytes = nb * bb;
    PANEL.with_borrow_mut(|panel| {
        // One panel of eight rows at a time, packed and then multiplied
        // with every input; every entry is written whole.
        panel.resize(nb, Packed8x32::ZERO);
        for x in 0..nr / ROWS {
            let rows = &w[ROWS * x * row_bytes..][..ROWS * row_bytes];
            for (i, p) in panel.iter_mut().enumerate() {
                // SAFETY: gemm_packed's caller checked AVX2 and F16C.
                unsafe { p.set(0, t, blocks_of(rows, row_bytes, i, bb)) };
            }
            let mut ahead = next_panel(w, x, ROWS, row_bytes, m.div_ceil(INPUTS));
            for i in (0..m).step_by(INPUTS) {
                prefetch(ahead.next().unwrap_or_default());
                let valid = INPUTS.min(m - i);
                let inputs: [*const Q8Block; INPUTS] =
                    std::array::from_fn(|c| a[(i + c.min(valid - 1)) * nb..].as_ptr());
                // SAFETY: the panel and each input row (all below m) have
                // nb blocks (the lengths asserted above); the CPU features
                // are this function's.
                let lanes = unsafe { tile(panel.as_ptr(), inputs, nb) };
                for (c, v) in lanes.iter().enumerate().take(valid) {
                    // SAFETY: i + c < m and rows 8 x..8 x + 8 are below
                    // nr / 8 * 8: the caller's contract; unaligned store.
                    unsafe { _mm256_storeu_ps(out.add((i + c) * ld + ROWS * x), *v) };
                }
            }
        }
    });
}

thread_local! {
    /// Each thread's sixteen-row panel, reused from call to call.
    static PANEL16: RefCell<Vec<Packed16x32>> = const { RefCell::new(Vec::new()) };
}

/// [`tile`] on sixteen weight rows in 512-bit vectors (AVX-512 VNNI),
/// with the same operations lane by lane.
///
/// # Safety
/// The CPU has AVX-512 F and VNNI; `w` and each `a[c]` point at `nb`
/// readable blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni,fma")]
unsafe fn tile16(
    w: *const Packed16x32,
    a: [*const Q8Block; INPUTS],
    nb: usize,
) -> [__m512; INPUTS] {
    let mut acc = [_mm512_setzero_ps(); INPUTS];
    for b in 0..nb {
        // SAFETY: as in `tile`; the panel's vectors are 64-aligned.
        unsafe {
            let pb = &*w.add(b);
            let x: [&Q8Block; INPUTS] = std::array::from_fn(|c| &*a[c].add(b));
            let mut isum = [_mm512_setzero_si512(); INPUTS];
            for q in 0..8 {
                let wv = _mm512_load_si512(pb.qs[q].as_ptr().cast());
                for c in 0..INPUTS {
                    let xq = _mm512_set1_epi32(
                        x[c].qs.as_ptr().add(4 * q).cast::<i32>().read_unaligned(),
                    );
                    isum[c] = _mm512_dpbusd_epi32(isum[c], wv, xq);
                }
            }
            let (d, m) = (_mm512_load_ps(pb.d.as_ptr()), _mm512_load_ps(pb.m.as_ptr()));
            for c in 0..INPUTS {
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(x[c].d));
                acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[c]), scale, acc[c]);
                acc[c] = _mm512_fmadd_ps(m, _mm512_set1_ps(x[c].s), acc[c]);
            }
        }
    }
    acc
}

/// [`gemm_packed`] with sixteen-row panels and [`tile16`], on CPUs with
/// AVX-512 VNNI: the same contract and results. A last panel of eight
/// rows is packed twice into one sixteen-row panel and only its first
/// eight lanes are stored.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-512 F and VNNI; the output
/// contract is [`gemm_packed`]'s.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni")]
pub(super) unsafe fn gemm_packed16(
    t: QuantType,
    w: &[u8],
    nr: usize,
    a: &[Q8Block],
    nb: usize,
    out: *mut f32,
    ld: usize,
) {
    let bb = t.block_bytes();
    let m = a.len() / nb;
    assert!(packs(t), "invariant: a type with a packed kernel");
    assert_eq!(w.len(), nr * nb * bb, "invariant: nr weight rows of nb blocks");
    assert_eq!(a.len(), m * nb, "invariant: m input rows of nb blocks");
    let row_bytes = nb * bb;
    let rows_done = nr / ROWS * ROWS;
    PANEL16.with_borrow_mut(|panel| {
        panel.resize(nb, Packed16x32::ZERO);
        for x in 0..rows_done.div_ceil(2 * ROWS) {
            let first = 2 * ROWS * x;
            let whole = first + 2 * ROWS <= rows_done;
            let rows = &w[first * row_bytes..];
            let second = if whole { &rows[ROWS * row_bytes..] } else { rows };
            for (i, p) in panel.iter_mut().enumerate() {
                // SAFETY: AVX2 and F16C are this function's features.
                unsafe {
                    p.set(0, t, blocks_of(rows, row_bytes, i, bb));
                    p.set(1, t, blocks_of(second, row_bytes, i, bb));
                }
            }
            let mut ahead = next_panel(w, x, 2 * ROWS, row_bytes, m.div_ceil(INPUTS));
            for i in (0..m).step_by(INPUTS) {
                prefetch(ahead.next().unwrap_or_default());
                let valid = INPUTS.min(m - i);
                let inputs: [*const Q8Block; INPUTS] =
                    std::array::from_fn(|c| a[(i + c.min(valid - 1)) * nb..].as_ptr());
                // SAFETY: as in gemm_packed.
                let lanes = unsafe { tile16(panel.as_ptr(), inputs, nb) };
                for (c, v) in lanes.iter().enumerate().take(valid) {
                    let o = out.wrapping_add((i + c) * ld + first);
                    // SAFETY: i + c < m, and first + 16 (or, for a last
                    // half panel, first + 8) <= nr / 8 * 8: the caller's
                    // contract; unaligned stores.
                    unsafe {
                        if whole {
                            _mm512_storeu_ps(o, *v);
                        } else {
                            _mm256_storeu_ps(o, _mm512_castps512_ps256(*v));
                        }
                    }
                }
            }
        }
    });
}
