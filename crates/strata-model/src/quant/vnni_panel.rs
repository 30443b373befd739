//! AVX-VNNI products of K-quant weight panels (Q4_K, Q5_K, Q6_K) with
//! many input rows: the prefill and batched-decode kernel on CPUs that
//! have `vpdpbusd` in its 256-bit VEX form (Alder Lake and Sapphire
//! Rapids on; detected at run time, [`crate::simd::vnni`]).
//!
//! [`super::avx2_panel`] needs, per 128 multiply-adds, four `maddubs`,
//! one `madd` and four adds, five of them on the two multiply ports: it is
//! port-bound at about 28 multiply-adds a cycle. One `vpdpbusd` does 32
//! multiply-adds (unsigned weight bytes times signed input bytes, each
//! four summed into an i32 lane) on those same ports, so the work per
//! 256 multiply-adds drops to eight `vpdpbusd` and one `pmulld` with the
//! group's scale.
//!
//! The panel layout is llama.cpp's repacked `Q4_Kx8` with four-byte
//! interleaving ([`Packed8`]): one 32-byte vector holds four consecutive
//! values of eight weight rows, each lane one row, so a `vpdpbusd` with
//! four input bytes broadcast to every lane advances eight weight rows
//! by four values, and a row's sums never leave their lane. A tile is
//! eight weight rows by the eight input rows of a [`Q8KGroup`]: eight
//! independent `vpdpbusd` chains, enough to cover its latency (about five
//! cycles) on both ports.
//!
//! The integer sums (each group's i32 sum times its scale, added over the
//! block; the minimums or the offset of 32 through the group's input
//! sums) are the same integers the other kernels compute, and the block
//! is scaled in f32 with the same operations in the same order, so every
//! kernel gives the same bits (`vnni_gemm_gives_the_avx2_kernels_bits`).
//! Ranges: a group's i32 sum is at most `32 * 31 * 128` (Q5_K) or
//! `16 * 63 * 128` (Q6_K); times a scale below 64 (128 for Q6_K's signed
//! scales) and summed over a block, below 2^28.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx2_panel::unpack_part;
use super::formats::scales_mins_k4;
use super::{f16_at, Q8KBlock, Q8KGroup, QuantType};

/// Weight rows per packed group.
pub(super) const ROWS: usize = 8;
/// Input rows per [`Q8KGroup`], and per tile.
const GROUP: usize = 8;

/// One 256-value block of eight weight rows, unpacked.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct Packed8 {
    /// `qs[q][4 r + t]`: value `4 q + t` of row `r`, unsigned (Q6_K
    /// without its offset of 32).
    qs: [[u8; 32]; 64],
    /// `scales[s][r]`: row `r`'s scale of group `s` (32 values for
    /// Q4_K/Q5_K, 16 for Q6_K).
    scales: [[i32; 8]; 16],
    /// `subs[h][r]`: row `r`'s coefficients of the input sums of groups
    /// `2h` and `2h + 1`, as an i16 pair.
    subs: [[u32; 8]; 8],
    /// Each row's block scale.
    d: [f32; 8],
    /// Each row's factor of the subtracted term (`dmin`, or `32 d`).
    m: [f32; 8],
}

impl Packed8 {
    const ZERO: Packed8 = Packed8 {
        qs: [[0; 32]; 64],
        scales: [[0; 8]; 16],
        subs: [[0; 8]; 8],
        d: [0.0; 8],
        m: [0.0; 8],
    };

    /// This block from the stored blocks `b[r]` of type `t`, one per row.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn set(&mut self, t: QuantType, b: [&[u8]; ROWS]) {
        for p in 0..4 {
            // (Plain loops: written with `array::from_fn` closures, the
            // unpacking was not inlined and took 12% of a decode step.)
            let mut parts = [[_mm256_setzero_si256(); ROWS]; 2];
            for r in 0..ROWS {
                let [lo, hi] = unpack_part(t, b[r], p);
                parts[0][r] = lo;
                parts[1][r] = hi;
            }
            for (e, rows) in parts.into_iter().enumerate() {
                // Vector 2 p + e of each row: quads 8 (2 p + e)..+8.
                let quads = transpose(rows);
                for (j, v) in quads.into_iter().enumerate() {
                    // SAFETY: 16 p + 8 e + j < 64: an entry of qs; the
                    // store is aligned (Packed8 and qs are 32-aligned).
                    unsafe {
                        _mm256_store_si256(self.qs[16 * p + 8 * e + j].as_mut_ptr().cast(), v)
                    };
                }
            }
        }
        // Each row's group scales (i32) and input-sum coefficients (i16
        // pairs) as vectors, one lane per group (pair), then transposed to
        // one lane per row as the tile reads them.
        let mut scales = [[_mm256_setzero_si256(); ROWS]; 2];
        let mut subs = [_mm256_setzero_si256(); ROWS];
        for (r, blk) in b.iter().enumerate() {
            match t {
                QuantType::Q4K | QuantType::Q5K => {
                    let (sc, mins) = scales_mins_k4(&blk[4..16]);
                    scales[0][r] = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64));
                    subs[r] =
                        _mm256_castsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(mins as i64)));
                    self.d[r] = f16_at(blk);
                    self.m[r] = f16_at(&blk[2..]);
                }
                QuantType::Q6K => {
                    let word = |o: usize| -> [u8; 8] { blk[o..o + 8].try_into().expect("8 bytes") };
                    let (lo, hi) = (u64::from_le_bytes(word(192)), u64::from_le_bytes(word(200)));
                    scales[0][r] = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(lo as i64));
                    scales[1][r] = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(hi as i64));
                    subs[r] = _mm256_cvtepi8_epi16(_mm_set_epi64x(hi as i64, lo as i64));
                    let d = f16_at(&blk[208..]);
                    self.d[r] = d;
                    self.m[r] = 32.0 * d;
                }
                _ => unreachable!("invariant: only K types are packed"),
            }
        }
        for (half, rows) in scales.into_iter().enumerate() {
            for (s, v) in transpose(rows).into_iter().enumerate() {
                // SAFETY: 8 half + s < 16: an entry of scales; aligned.
                unsafe { _mm256_store_si256(self.scales[8 * half + s].as_mut_ptr().cast(), v) };
            }
        }
        for (h, v) in transpose(subs).into_iter().enumerate() {
            // SAFETY: h < 8: an entry of subs; aligned.
            unsafe { _mm256_store_si256(self.subs[h].as_mut_ptr().cast(), v) };
        }
    }
}

/// The 8 x 8 transpose of i32 lanes: lane `r` of vector `j` is lane `j`
/// of `v[r]`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn transpose(v: [__m256i; 8]) -> [__m256i; 8] {
    let lo: [__m256i; 4] = std::array::from_fn(|i| _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]));
    let hi: [__m256i; 4] = std::array::from_fn(|i| _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    // u[k] (k < 4): lane k (low half) and k + 4 (high half) of rows 0..4;
    // u[k + 4]: the same of rows 4..8.
    let u = [
        _mm256_unpacklo_epi64(lo[0], lo[1]),
        _mm256_unpackhi_epi64(lo[0], lo[1]),
        _mm256_unpacklo_epi64(hi[0], hi[1]),
        _mm256_unpackhi_epi64(hi[0], hi[1]),
        _mm256_unpacklo_epi64(lo[2], lo[3]),
        _mm256_unpackhi_epi64(lo[2], lo[3]),
        _mm256_unpacklo_epi64(hi[2], hi[3]),
        _mm256_unpackhi_epi64(hi[2], hi[3]),
    ];
    std::array::from_fn(|j| {
        if j < 4 {
            _mm256_permute2x128_si256::<0x20>(u[j], u[j + 4])
        } else {
            _mm256_permute2x128_si256::<0x31>(u[j - 4], u[j])
        }
    })
}

thread_local! {
    /// Each thread's packed panel, reused from call to call.
    static PANEL: RefCell<Vec<Packed8>> = const { RefCell::new(Vec::new()) };
}

/// The four bytes at `p` in every lane.
///
/// # Safety
/// `p..p + 4` is readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bcast4<T>(p: *const T) -> __m256i {
    // SAFETY: the caller's contract; the read is unaligned.
    _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// Eight packed weight rows (`nb` blocks at `w`) against the eight input
/// rows `a` of one group (`g`: its `nb` transposed
/// blocks); groups of `GV` vectors share a scale (8: Q4_K/Q5_K, 4:
/// Q6_K). Returns `out[c]` with lane `r` the product of weight row `r`
/// and input row `c`.
///
/// # Safety
/// The CPU has AVX-VNNI; `w`, each `a[c]` and `g` point at `nb` readable
/// entries.
#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn tile<const GV: usize>(
    w: *const Packed8,
    a: [*const Q8KBlock; GROUP],
    g: *const Q8KGroup,
    nb: usize,
) -> [__m256; GROUP] {
    let groups = 64 / GV;
    let mut out = [_mm256_setzero_ps(); GROUP];
    for b in 0..nb {
        // SAFETY: (whole block) b < nb keeps every read inside entry b of
        // w, of each a[c] and of g; vector indices stay below 64 (groups *
        // GV == 64), group indices below 16, input lanes below 16.
        unsafe {
            let pb = &*w.add(b);
            let x: [*const i8; GROUP] = std::array::from_fn(|c| (*a[c].add(b)).qs.as_ptr());
            let mut isum = [_mm256_setzero_si256(); GROUP];
            for s in 0..groups {
                let mut acc = [_mm256_setzero_si256(); GROUP];
                for q in GV * s..GV * (s + 1) {
                    let wv = _mm256_load_si256(pb.qs[q].as_ptr().cast());
                    for c in 0..GROUP {
                        acc[c] = _mm256_dpbusd_avx_epi32(acc[c], wv, bcast4(x[c].add(4 * q)));
                    }
                }
                let sc = _mm256_load_si256(pb.scales[s].as_ptr().cast());
                for c in 0..GROUP {
                    isum[c] = _mm256_add_epi32(isum[c], _mm256_mullo_epi32(acc[c], sc));
                }
            }
            let g = &*g.add(b);
            let (d, m) = (_mm256_load_ps(pb.d.as_ptr()), _mm256_load_ps(pb.m.as_ptr()));
            for (c, o) in out.iter_mut().enumerate() {
                let lane = 2 * c;
                let mut sub = _mm256_setzero_si256();
                for h in 0..groups / 2 {
                    let inputs = if GV == 8 { &g.sums32[h][lane] } else { &g.sums16[h][lane] };
                    let coef = _mm256_load_si256(pb.subs[h].as_ptr().cast());
                    sub = _mm256_add_epi32(sub, _mm256_madd_epi16(coef, bcast4(inputs)));
                }
                let sub = _mm256_mul_ps(_mm256_cvtepi32_ps(sub), m);
                let block = _mm256_fmsub_ps(_mm256_cvtepi32_ps(isum[c]), d, sub);
                *o = _mm256_fmadd_ps(block, _mm256_set1_ps(g.d[c]), *o);
            }
        }
    }
    out
}

/// Block `i` (of `bb` bytes) of each of the eight rows of `row_bytes`
/// bytes in `rows`.
pub(super) fn blocks_of(rows: &[u8], row_bytes: usize, i: usize, bb: usize) -> [&[u8]; ROWS] {
    std::array::from_fn(|r| &rows[r * row_bytes + i * bb..][..bb])
}

/// The stored bytes of the eight-row panel after panel `x` of `w` (rows of
/// `row_bytes` bytes; contiguous), cut into one share for each of the
/// `tiles` tiles that multiply panel `x`: each tile asks for its share
/// ([`prefetch`]), so that the next panel arrives in L2 while this one
/// computes. Packing otherwise waits on memory.
pub(super) fn next_panel(
    w: &[u8],
    x: usize,
    row_bytes: usize,
    tiles: usize,
) -> std::slice::Chunks<'_, u8> {
    let next = w.get(ROWS * (x + 1) * row_bytes..).unwrap_or_default();
    let next = &next[..next.len().min(ROWS * row_bytes)];
    next.chunks((next.len().div_ceil(64 * tiles.max(1)) * 64).max(64))
}

/// Asks for the cache lines of `bytes` in L2 (a hint: nothing is read).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn prefetch(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast());
    }
}

/// `out + i * ld + j` receives `w_j . x_i` for the rows `j < nr / 8 * 8`
/// of the `nr` consecutive rows of K type `t` in `w` and the input rows
/// `i < m / 8 * 8` of `a` (`nb` blocks each, `groups` their
/// [`Q8KGroup`]s). The other rows and inputs are the caller's.
///
/// # Safety
/// The CPU has AVX2, FMA and AVX-VNNI; for every such `i` and `j`,
/// `out + i * ld + j` is valid for writes and nobody else's during the
/// call.
#[target_feature(enable = "avx2,fma,avxvnni")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_packed(
    t: QuantType,
    w: &[u8],
    nr: usize,
    a: &[Q8KBlock],
    groups: &[Q8KGroup],
    nb: usize,
    out: *mut f32,
    ld: usize,
) {
    let bb = t.block_bytes();
    let m = a.len() / nb;
    assert_eq!(w.len(), nr * nb * bb, "invariant: nr weight rows of nb blocks");
    assert_eq!(a.len(), m * nb, "invariant: m input rows of nb blocks");
    assert_eq!(groups.len(), m / GROUP * nb, "invariant: each whole group of rows, nb blocks");
    let row_bytes = nb * bb;
    let tiles = m / GROUP;
    PANEL.with_borrow_mut(|panel| {
        // One panel of eight rows at a time, packed and then multiplied
        // with every input: it stays in L1/L2 while the inputs stream from
        // L2. Every entry is written whole: no need to clear old ones.
        panel.resize(nb, Packed8::ZERO);
        for x in 0..nr / ROWS {
            let rows = &w[ROWS * x * row_bytes..][..ROWS * row_bytes];
            for (i, p) in panel.iter_mut().enumerate() {
                // SAFETY: gemm_packed's caller checked AVX2.
                unsafe { p.set(t, blocks_of(rows, row_bytes, i, bb)) };
            }
            let mut ahead = next_panel(w, x, row_bytes, tiles);
            for i in (0..tiles * GROUP).step_by(GROUP) {
                prefetch(ahead.next().unwrap_or_default());
                let g = groups[i / GROUP * nb..].as_ptr();
                let inputs: [*const Q8KBlock; GROUP] =
                    std::array::from_fn(|c| a[(i + c) * nb..].as_ptr());
                // SAFETY: the panel, inputs i..i + 8 and group i / 8 each
                // have nb entries (the lengths asserted above); the CPU
                // features are this function's.
                let lanes = unsafe {
                    if t == QuantType::Q6K {
                        tile::<4>(panel.as_ptr(), inputs, g, nb)
                    } else {
                        tile::<8>(panel.as_ptr(), inputs, g, nb)
                    }
                };
                for (c, v) in lanes.iter().enumerate() {
                    // SAFETY: i + c < m / 8 * 8 and 8 x + 8 <= nr / 8 * 8:
                    // eight places the caller's contract makes writable;
                    // the store is unaligned.
                    unsafe { _mm256_storeu_ps(out.add((i + c) * ld + ROWS * x), *v) };
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::formats::{scale_min_k4, scales_mins_k4};

    proptest! {
        /// The word-wise unpacking equals ggml's per-sub-block one on any
        /// 12 bytes.
        #[test]
        fn scales_mins_match_ggml(q in prop::array::uniform12(any::<u8>())) {
            let (scales, mins) = scales_mins_k4(&q);
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, &q);
                prop_assert_eq!((scales >> (8 * j)) as u8, s);
                prop_assert_eq!((mins >> (8 * j)) as u8, m);
            }
        }
    }
}
