//! AVX2 register-tiled products of K-quant weight rows (Q4_K, Q5_K, Q6_K)
//! with many quantized input rows: prefill and batched decode.
//!
//! The dot-product kernels of `avx2` unpack a weight row once per four
//! input rows and finish each 256-value block with scalar work (scales,
//! minimums) per input row; with many input rows that scalar work costs as
//! much as the multiplications. Here one weight row meets eight input rows
//! at a time, with eight integer accumulators in registers (measured:
//! eight beats four and six by 15-30%), and every per-block term is vector
//! work:
//!
//! - the sub-block scales are unpacked once per weight row and block (the
//!   6-bit Q4_K/Q5_K layout as four 32-bit masks, llama.cpp's trick) and
//!   selected per sub-block with a byte shuffle;
//! - `maddubs` (unsigned weight bytes times signed input bytes, pairs to
//!   i16) then `madd` with the sub-block scale (to i32) is the whole
//!   integer product: 64 multiply-adds in four instructions;
//! - the Q4_K/Q5_K minimums and the Q6_K offset of 32 are taken out once
//!   per block through the inputs' 16-value sums (`bsums`), one `madd` per
//!   input row (each minimum paired with two sums), instead of per value;
//! - each block's integer sums are scaled in f32 (the weight's and the
//!   input's block scales). For a whole group of eight input rows this is
//!   done one input row per lane: the eight accumulators are summed across
//!   into one vector (`hadd`s, on the shuffle port the products leave
//!   idle), the minimums/offsets come from the group's transposed sums
//!   ([`Q8KGroup`]), and one multiply-add scales all eight rows; that took
//!   the Q4_K kernel from 61 to 70 GMAC/s on one thread. A partial group
//!   scales each row's eight-lane accumulator, summed at the end.
//!
//! The integers are the portable kernels' exactly (`dot`); only the f32
//! accumulation order differs. Ranges are those of `avx2` (no i16
//! saturation: a `maddubs` pair is at most 2 * 63 * 128).

use std::arch::x86_64::*;

use super::avx2::k45_values;
use super::{Q8KBlock, Q8KGroup, QuantType};
use crate::simd::hsum;

/// Input rows per tile (one weight row against this many).
const TILE: usize = 8;

/// 32 bytes at `p`, unaligned.
///
/// # Safety
/// `p..p + 32` is readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load(p: *const u8) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// How far ahead of the block being read the weight row is prefetched:
/// a single input row (decode) streams the weights from memory, and the
/// hardware prefetcher alone leaves that short of the bandwidth.
const PREFETCH_BYTES: usize = 1024;

/// Asks for the weight bytes `PREFETCH_BYTES` past `p` (a hint: it never
/// faults, whatever the address).
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch_ahead(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES).cast());
}

/// The f16 at `p` widened.
///
/// # Safety
/// `p..p + 2` is readable.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller's contract; the read is unaligned.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The 8 scales and 8 minimums of a Q4_K/Q5_K block (its 12 scale bytes
/// at `p`) as i16: scales in lanes 0..8, minimums in lanes 8..16.
///
/// # Safety
/// `p..p + 12` is readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn scales_mins_k4(p: *const u8) -> __m256i {
    // SAFETY: the caller's contract.
    let q = unsafe { std::slice::from_raw_parts(p, 12) };
    let (scales, mins) = super::formats::scales_mins_k4(q);
    _mm256_cvtepu8_epi16(_mm_set_epi64x(mins as i64, scales as i64))
}

/// The shuffle that copies i16 lane `j` (of each 128-bit half) to every
/// lane.
#[inline]
#[target_feature(enable = "avx2")]
fn lane_i16(j: usize) -> __m256i {
    let pair = (((2 * j + 1) << 8) | (2 * j)) as i16;
    _mm256_set1_epi16(pair)
}

/// The shuffle that copies byte `2t` to every byte of the low half and
/// byte `2t + 1` to every byte of the high half.
#[inline]
#[target_feature(enable = "avx2")]
fn bytes_2t(t: usize) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi8((2 * t + 1) as i8), _mm_set1_epi8((2 * t) as i8))
}

/// The per-block f32 step: `acc += (f32(sum) * d - f32(sub) * dsub) * da`
/// with `da` (the input block's scale) broadcast from memory.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn scaled(acc: __m256, sum: __m256i, d: __m256, sub: __m256i, dsub: __m256, da: &f32) -> __m256 {
    let sub = _mm256_mul_ps(_mm256_cvtepi32_ps(sub), dsub);
    let block = _mm256_fmsub_ps(_mm256_cvtepi32_ps(sum), d, sub);
    _mm256_fmadd_ps(block, _mm256_broadcast_ss(da), acc)
}

/// The 16 i16 at `v`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_i16(v: &[i16; 16]) -> __m256i {
    // SAFETY: `v` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// Lane `c` of the result is the sum of the eight lanes of `v[c]` (`C`
/// is 8 wherever this is reached).
#[inline]
#[target_feature(enable = "avx2")]
fn reduce8<const C: usize>(v: &[__m256i; C]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    // Each 128-bit half: rows 0..4 (then 4..8) summed over that half.
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(h0123, h4567),
        _mm256_permute2x128_si256::<0x31>(h0123, h4567),
    )
}

/// [`scaled`] with one input row per lane: `da` holds the eight scales.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn scaled_lanes(
    acc: __m256,
    sum: __m256i,
    d: __m256,
    sub: __m256i,
    dsub: __m256,
    da: &[f32; 8],
) -> __m256 {
    let sub = _mm256_mul_ps(_mm256_cvtepi32_ps(sub), dsub);
    let block = _mm256_fmsub_ps(_mm256_cvtepi32_ps(sum), d, sub);
    // SAFETY: `da` is 32 readable bytes; the load is unaligned.
    _mm256_fmadd_ps(block, unsafe { _mm256_loadu_ps(da.as_ptr()) }, acc)
}

/// A kernel's `C` results: each accumulator summed across, or (grouped)
/// the lanes of the one accumulator.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn finish<const C: usize>(acc: [__m256; C], lanes: __m256, grouped: bool) -> [f32; C] {
    if grouped {
        let mut out = [0.0f32; 8];
        // SAFETY: `out` is 32 writable bytes; the store is unaligned.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), lanes) };
        std::array::from_fn(|c| out[c])
    } else {
        acc.map(|v| hsum(v))
    }
}

/// One Q4_K (`FIVE` false) or Q5_K weight row against `C` input rows.
/// With `group` (`C` is 8: the rows of one [`Q8KGroup`] run, `nb` of
/// them), the per-block terms are computed one input row per lane.
///
/// # Safety
/// `w` points at `nb` blocks of the type; each `a[c]` at `nb` input
/// blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q45k<const FIVE: bool, const C: usize>(
    w: *const u8,
    a: [*const Q8KBlock; C],
    group: Option<*const Q8KGroup>,
    nb: usize,
) -> [f32; C] {
    let bytes = if FIVE { 176 } else { 144 };
    let mut acc = [_mm256_setzero_ps(); C];
    let mut lanes = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: (whole block) i < nb keeps every weight read inside block
        // i of the row (offsets below 176) and every input read inside
        // input block i.
        unsafe {
            let blk = w.add(i * bytes);
            prefetch_ahead(blk);
            prefetch_ahead(blk.add(64));
            if FIVE {
                prefetch_ahead(blk.add(128));
            }
            let act: [&Q8KBlock; C] = std::array::from_fn(|c| &*a[c].add(i));
            let sm = scales_mins_k4(blk.add(4));
            let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
            // Each minimum twice, to meet the inputs' 16-value sums.
            let mins = _mm256_extracti128_si256::<1>(sm);
            let mins =
                _mm256_set_m128i(_mm_unpackhi_epi16(mins, mins), _mm_unpacklo_epi16(mins, mins));
            let qs = blk.add(if FIVE { 48 } else { 16 });
            let mut sumi = [_mm256_setzero_si256(); C];
            let qh = FIVE.then(|| load(blk.add(16)));
            for p in 0..4 {
                let (lo, hi) = k45_values(load(qs.add(32 * p)), qh, p);
                let s_lo = _mm256_shuffle_epi8(scales, lane_i16(2 * p));
                let s_hi = _mm256_shuffle_epi8(scales, lane_i16(2 * p + 1));
                for c in 0..C {
                    let q = act[c].qs.as_ptr().cast::<u8>().add(64 * p);
                    let p_lo = _mm256_madd_epi16(s_lo, _mm256_maddubs_epi16(lo, load(q)));
                    let p_hi = _mm256_madd_epi16(s_hi, _mm256_maddubs_epi16(hi, load(q.add(32))));
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            let d = _mm256_set1_ps(f16_at(blk));
            let dmin = _mm256_set1_ps(f16_at(blk.add(2)));
            if let Some(group) = group {
                // Lane c is input row c: the sums reduced across, the
                // minimums as four pair products with the transposed sums.
                let g = &*group.add(i);
                let pairs = _mm256_broadcastsi128_si256(_mm256_extracti128_si256::<1>(sm));
                let m = _mm256_add_epi32(
                    _mm256_add_epi32(
                        _mm256_madd_epi16(
                            _mm256_shuffle_epi32::<0x00>(pairs),
                            load_i16(&g.sums32[0]),
                        ),
                        _mm256_madd_epi16(
                            _mm256_shuffle_epi32::<0x55>(pairs),
                            load_i16(&g.sums32[1]),
                        ),
                    ),
                    _mm256_add_epi32(
                        _mm256_madd_epi16(
                            _mm256_shuffle_epi32::<0xAA>(pairs),
                            load_i16(&g.sums32[2]),
                        ),
                        _mm256_madd_epi16(
                            _mm256_shuffle_epi32::<0xFF>(pairs),
                            load_i16(&g.sums32[3]),
                        ),
                    ),
                );
                lanes = scaled_lanes(lanes, reduce8(&sumi), d, m, dmin, &g.d);
            } else {
                for c in 0..C {
                    let bsums = _mm256_loadu_si256(act[c].bsums.as_ptr().cast());
                    let m = _mm256_madd_epi16(mins, bsums);
                    acc[c] = scaled(acc[c], sumi[c], d, m, dmin, &act[c].d);
                }
            }
        }
    }
    finish(acc, lanes, group.is_some())
}

/// One Q6_K weight row against `C` input rows.
///
/// # Safety
/// As for [`tile_q45k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q6k<const C: usize>(
    w: *const u8,
    a: [*const Q8KBlock; C],
    group: Option<*const Q8KGroup>,
    nb: usize,
) -> [f32; C] {
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = [_mm256_setzero_ps(); C];
    let mut lanes = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: (whole block) as in `tile_q45k`, with 210-byte blocks.
        unsafe {
            let blk = w.add(i * 210);
            prefetch_ahead(blk);
            prefetch_ahead(blk.add(64));
            prefetch_ahead(blk.add(128));
            prefetch_ahead(blk.add(192));
            let act: [&Q8KBlock; C] = std::array::from_fn(|c| &*a[c].add(i));
            // The 16 signed scales as bytes in both halves, for the shuffles.
            let sc8 = _mm_loadu_si128(blk.add(192).cast());
            let scales = _mm256_broadcastsi128_si256(sc8);
            let mut sumi = [_mm256_setzero_si256(); C];
            for t in 0..8 {
                // Values 32t..32t + 32: low nibbles of 32 bytes (t even) or
                // their high nibbles, and two bits of the high-bit bytes.
                let (half, s) = (t / 4, t % 4);
                let ql = load(blk.add(64 * half + 32 * (s % 2)));
                let ql = if s < 2 { ql } else { _mm256_srli_epi16::<4>(ql) };
                let qh = load(blk.add(128 + 32 * half));
                let qh = match s {
                    0 => _mm256_slli_epi16::<4>(qh),
                    1 => _mm256_slli_epi16::<2>(qh),
                    2 => qh,
                    _ => _mm256_srli_epi16::<2>(qh),
                };
                let q = _mm256_or_si256(
                    _mm256_and_si256(ql, m4),
                    _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                );
                // Scale 2t for the first 16 values, 2t + 1 for the next:
                // each byte copied to both bytes of an i16, then
                // sign-extended by the arithmetic shift.
                let scale = _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(scales, bytes_2t(t)));
                for c in 0..C {
                    let qa = load(act[c].qs.as_ptr().cast::<u8>().add(32 * t));
                    let p = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q, qa));
                    sumi[c] = _mm256_add_epi32(sumi[c], p);
                }
            }
            // The weights are q - 32: take out 32 * scale * (input sum).
            let wide = _mm256_cvtepi8_epi16(sc8);
            let d = _mm256_set1_ps(f16_at(blk.add(208)));
            let d32 = _mm256_mul_ps(d, _mm256_set1_ps(32.0));
            if let Some(group) = group {
                // Lane c is input row c; scale pair h (scales 2h, 2h + 1)
                // meets the transposed 16-value sums of pair h.
                let g = &*group.add(i);
                let mut offset = _mm256_setzero_si256();
                for (h, sums) in g.sums16.iter().enumerate() {
                    let pair = _mm256_permutevar8x32_epi32(wide, _mm256_set1_epi32(h as i32));
                    offset = _mm256_add_epi32(offset, _mm256_madd_epi16(pair, load_i16(sums)));
                }
                lanes = scaled_lanes(lanes, reduce8(&sumi), d, offset, d32, &g.d);
            } else {
                for c in 0..C {
                    let bsums = _mm256_loadu_si256(act[c].bsums.as_ptr().cast());
                    let offset = _mm256_madd_epi16(wide, bsums);
                    acc[c] = scaled(acc[c], sumi[c], d, offset, d32, &act[c].d);
                }
            }
        }
    }
    finish(acc, lanes, group.is_some())
}

/// One weight row of a K type against `C` input rows.
///
/// # Safety
/// As for [`tile_q45k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const C: usize>(
    t: QuantType,
    w: *const u8,
    a: [*const Q8KBlock; C],
    group: Option<*const Q8KGroup>,
    nb: usize,
) -> [f32; C] {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match t {
            QuantType::Q4K => tile_q45k::<false, C>(w, a, group, nb),
            QuantType::Q5K => tile_q45k::<true, C>(w, a, group, nb),
            QuantType::Q6K => tile_q6k::<C>(w, a, group, nb),
            _ => unreachable!("invariant: only K types are tiled"),
        }
    }
}

/// `out + i * ld + j` receives `w_j . x_i` for the `nr` consecutive rows
/// `w_j` of a K type `t` in `w` and the `m` input rows in `a` (`nb` blocks
/// each).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; for every `i < m` and `j < nr`,
/// `out + i * ld + j` is valid for writes and nobody else's during the
/// call.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_k(
    t: QuantType,
    w: &[u8],
    nr: usize,
    a: &[Q8KBlock],
    groups: &[Q8KGroup],
    m: usize,
    nb: usize,
    out: *mut f32,
    ld: usize,
) {
    let row_bytes = nb * t.block_bytes();
    assert_eq!(w.len(), nr * row_bytes, "invariant: nr weight rows of nb blocks");
    assert_eq!(a.len(), m * nb, "invariant: m input rows of nb blocks");
    assert_eq!(groups.len(), m / TILE * nb, "invariant: each whole group of rows, nb blocks");
    let (done_rows, done_inputs) = if m >= VNNI_PACKED_MIN_ROWS && crate::simd::avx512_vnni() {
        // SAFETY: AVX-512 VNNI (with F, BW and VL) was detected at run
        // time; the other CPU features and the output contract are this
        // function's; the lengths were asserted above.
        unsafe { super::vnni_panel::gemm_packed16(t, w, nr, a, groups, nb, out, ld) };
        (nr / super::vnni_panel::ROWS * super::vnni_panel::ROWS, m / TILE * TILE)
    } else if m >= VNNI_PACKED_MIN_ROWS && crate::simd::vnni() {
        // SAFETY: AVX-VNNI was detected at run time; the other CPU
        // features and the output contract are this function's; the
        // lengths were asserted above.
        unsafe { super::vnni_panel::gemm_packed(t, w, nr, a, groups, nb, out, ld) };
        (nr / super::vnni_panel::ROWS * super::vnni_panel::ROWS, m / TILE * TILE)
    } else if m >= PACKED_MIN_ROWS {
        // SAFETY: the CPU features and the output contract are this
        // function's; the lengths were asserted above.
        unsafe { super::avx2_panel::gemm_packed(t, w, nr, a, groups, nb, out, ld) };
        (nr / super::avx2_panel::ROWS * super::avx2_panel::ROWS, m / TILE * TILE)
    } else {
        (0, 0)
    };
    // What the packed kernel left: the last inputs of the rows it did,
    // then every input of the rows after them.
    // SAFETY: the ranges are inside 0..nr x 0..m; the rest is the caller's.
    unsafe {
        tiles(t, w, row_bytes, 0..done_rows, a, groups, nb, done_inputs..m, out, ld);
        tiles(t, w, row_bytes, done_rows..nr, a, groups, nb, 0..m, out, ld);
    }
}

/// Input rows from which [`gemm_k`] unpacks the weights first
/// ([`super::avx2_panel`]). Measured on the Llama-3.2-1B gate/up and down
/// shapes (2 threads): at 16 rows unpacking is a wash (0.87-1.06x), at 24
/// it gains 3-17%, at 32 and above more.
const PACKED_MIN_ROWS: usize = 24;

/// The same threshold for the AVX-VNNI and AVX-512 VNNI kernels
/// ([`super::vnni_panel`]). Llama-3.2-1B Q4_K_M decode (`strata bench`,
/// 2 threads): at 16 rows 69.7 tok/s against 63.6 on the stored blocks,
/// at 8 rows 45.7 against 60.0 (AVX-VNNI); with AVX-512 VNNI at 8 rows
/// 73-74 against 76-79.
const VNNI_PACKED_MIN_ROWS: usize = 16;

/// [`gemm_k`]'s product for weight rows `rows` and input rows `inputs`,
/// with the kernels above.
///
/// # Safety
/// As for [`gemm_k`], with `rows` inside `0..nr` and `inputs` inside
/// `0..m`; `inputs.start` is a multiple of [`TILE`].
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles(
    t: QuantType,
    w: &[u8],
    row_bytes: usize,
    rows: std::ops::Range<usize>,
    a: &[Q8KBlock],
    groups: &[Q8KGroup],
    nb: usize,
    inputs: std::ops::Range<usize>,
    out: *mut f32,
    ld: usize,
) {
    debug_assert_eq!(inputs.start % TILE, 0, "invariant: inputs start at a group");
    let wp = |j: usize| w[j * row_bytes..].as_ptr();
    let ap = |i: usize| a[i * nb..].as_ptr();
    let mut i = inputs.start;
    while i < inputs.end {
        let c = TILE.min(inputs.end - i);
        for j in rows.clone() {
            macro_rules! run {
                ($c:literal) => {{
                    let inputs = std::array::from_fn(|x| ap(i + x));
                    let group = ($c == TILE).then(|| groups[i / TILE * nb..].as_ptr());
                    // SAFETY: row j and inputs i..i + $c exist (c was
                    // clamped to what is left), each of nb blocks, and a
                    // whole group i / TILE has nb entries, as gemm_k's
                    // asserted lengths guarantee.
                    let got = unsafe { tile::<$c>(t, wp(j), inputs, group, nb) };
                    for (y, v) in got.iter().enumerate() {
                        // SAFETY: i + y < m and j < nr: the caller's
                        // contract.
                        unsafe { out.add((i + y) * ld + j).write(*v) };
                    }
                }};
            }
            match c {
                8 => run!(8),
                7 => run!(7),
                6 => run!(6),
                5 => run!(5),
                4 => run!(4),
                3 => run!(3),
                2 => run!(2),
                _ => run!(1),
            }
        }
        i += c;
    }
}
