//! AVX2/FMA dot products of quantized weight rows with quantized inputs.
//!
//! Each weight block is unpacked to bytes once and multiplied with up to
//! four input rows (`maddubs`: unsigned weight bytes times signed input
//! bytes, pairs summed to i16; `madd` widens to i32 with the sub-block
//! scale), so prefill and decode batches share the unpacking. The integer
//! sums are the portable kernels' exactly; only the f32 accumulation of the
//! per-block results differs (eight lanes, summed at the end).
//!
//! Ranges: a Q6_K byte is at most 63, an input byte at least -127, so a
//! `maddubs` pair is within ±16002 and minus `32 * input` within ±24130:
//! no i16 saturation in any type.

use std::arch::x86_64::*;

use super::formats::scale_min_k4;
use super::{ActQuant, Q8Block, Q8KBlock, QuantType};
use crate::simd::hsum;

/// 32 bytes at the start of `s` (which must hold them).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn load(s: &[u8]) -> __m256i {
    let s: &[u8; 32] = s[..32].try_into().expect("invariant: 32 bytes");
    // SAFETY: `s` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_i8(s: &[i8]) -> __m256i {
    let s: &[i8; 32] = s[..32].try_into().expect("invariant: 32 bytes");
    // SAFETY: as in `load`.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// 16 bytes of nibbles: low nibbles in lanes 0..16, high in 16..32.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn nibbles_16(s: &[u8]) -> __m256i {
    let s: &[u8; 16] = s[..16].try_into().expect("invariant: 16 bytes");
    // SAFETY: `s` is 16 readable bytes; the load is unaligned.
    let v = unsafe { _mm_loadu_si128(s.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
}

/// 0x10 in each byte `j` whose bit `j` of the little-endian `qh` is set.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn fifth_bits(qh: &[u8]) -> __m256i {
    let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]) as i32;
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// How far ahead of the block being read the weight stream is
/// prefetched: the hardware prefetcher alone leaves a single-threaded
/// row scan short of the memory bandwidth.
const PREFETCH_BYTES: usize = 1024;

/// Asks for the weight bytes `PREFETCH_BYTES` past `b` (a hint: an address
/// past the end of the mapping is never dereferenced).
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch_ahead(b: &[u8]) {
    // A prefetch only hints the cache and does not fault on any address;
    // the pointer is computed with wrapping arithmetic.
    _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(PREFETCH_BYTES).cast());
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f16(b: &[u8]) -> f32 {
    let bits = i32::from(u16::from_le_bytes([b[0], b[1]]));
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// Unsigned weight bytes times signed input bytes, summed to i32 x 8.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_u8_i8(w: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
}

/// Signed times signed (`|w| * sign(a, w)`), summed to i32 x 8.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_i8_i8(w: __m256i, a: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
}

/// A 32-value block type (ggml id `T`) with `N` input rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_32<const T: u32, const N: usize>(w: &[u8], a: [&[Q8Block]; N]) -> [f32; N] {
    let q = QuantType::from_ggml_type(T).expect("invariant: a ggml id");
    let mut acc = [_mm256_setzero_ps(); N];
    let mut offset = [0.0f32; N];
    for (i, b) in w.chunks_exact(q.block_bytes()).enumerate() {
        prefetch_ahead(b);
        let d = f16(b);
        // (weight bytes, signed?, the block's offset for Q4_1/Q5_1)
        let (wq, signed, m) = match q {
            QuantType::Q4_0 => {
                (_mm256_sub_epi8(nibbles_16(&b[2..]), _mm256_set1_epi8(8)), true, 0.0)
            }
            QuantType::Q4_1 => (nibbles_16(&b[4..]), false, f16(&b[2..])),
            QuantType::Q5_0 => {
                let v = _mm256_or_si256(nibbles_16(&b[6..]), fifth_bits(&b[2..]));
                (_mm256_sub_epi8(v, _mm256_set1_epi8(16)), true, 0.0)
            }
            QuantType::Q5_1 => {
                (_mm256_or_si256(nibbles_16(&b[8..]), fifth_bits(&b[4..])), false, f16(&b[2..]))
            }
            QuantType::Q8_0 => (load(&b[2..]), true, 0.0),
            _ => unreachable!("invariant: a 32-value type"),
        };
        for r in 0..N {
            let ab = &a[r][i];
            let qa = load_i8(&ab.qs);
            let p = if signed { dot_i8_i8(wq, qa) } else { dot_u8_i8(wq, qa) };
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(p), acc[r]);
            offset[r] += m * ab.s;
        }
    }
    std::array::from_fn(|r| hsum(acc[r]) + offset[r])
}

/// Values `64 p..64 p + 32` and `64 p + 32..64 p + 64` of a Q4_K/Q5_K
/// block as bytes, from its 32 bytes of nibbles `bits` at `32 p` and, for
/// Q5_K, its 32 high-bit bytes `qh` (value `32 sub + l` has bit `sub` of
/// `qh[l]` as bit 4).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn k45_values(bits: __m256i, qh: Option<__m256i>, p: usize) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0xF);
    let mut lo = _mm256_and_si256(bits, m4);
    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
    if let Some(qh) = qh {
        let high = |sub: usize| {
            let mask = _mm256_set1_epi8(1 << sub);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, mask), mask);
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        };
        lo = _mm256_or_si256(lo, high(2 * p));
        hi = _mm256_or_si256(hi, high(2 * p + 1));
    }
    (lo, hi)
}

/// Q4_K (`FIVE` false) or Q5_K blocks with `N` input rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q45k<const FIVE: bool, const N: usize>(w: &[u8], a: [&[Q8KBlock]; N]) -> [f32; N] {
    let bytes = if FIVE { 176 } else { 144 };
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0.0f32; N];
    for (i, b) in w.chunks_exact(bytes).enumerate() {
        prefetch_ahead(b);
        prefetch_ahead(&b[64..]);
        let (d, dmin) = (f16(b), f16(&b[2..]));
        let mut sc = [0i16; 8];
        let mut mn = [0i32; 8];
        for j in 0..8 {
            let (s, m) = scale_min_k4(j, &b[4..16]);
            sc[j] = i16::from(s);
            mn[j] = i32::from(m);
        }
        let (qh, qs) = if FIVE { (Some(load(&b[16..])), &b[48..176]) } else { (None, &b[16..144]) };
        let mut sumi = [_mm256_setzero_si256(); N];
        for c in 0..4 {
            let (lo, hi) = k45_values(load(&qs[32 * c..]), qh, c);
            let (s_lo, s_hi) = (_mm256_set1_epi16(sc[2 * c]), _mm256_set1_epi16(sc[2 * c + 1]));
            for r in 0..N {
                let qa = &a[r][i].qs[64 * c..];
                let p_lo = _mm256_madd_epi16(s_lo, _mm256_maddubs_epi16(lo, load_i8(qa)));
                let p_hi = _mm256_madd_epi16(s_hi, _mm256_maddubs_epi16(hi, load_i8(&qa[32..])));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p_lo, p_hi));
            }
        }
        for r in 0..N {
            let ab = &a[r][i];
            let msum: i32 = (0..8)
                .map(|j| mn[j] * (i32::from(ab.bsums[2 * j]) + i32::from(ab.bsums[2 * j + 1])))
                .sum();
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
            mins[r] += ab.d * dmin * msum as f32;
        }
    }
    std::array::from_fn(|r| hsum(acc[r]) - mins[r])
}

/// Q6_K blocks with `N` input rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k<const N: usize>(w: &[u8], a: [&[Q8KBlock]; N]) -> [f32; N] {
    let m4 = _mm256_set1_epi8(0xF);
    let m32 = _mm256_set1_epi8(32);
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, b) in w.chunks_exact(210).enumerate() {
        prefetch_ahead(b);
        prefetch_ahead(&b[64..]);
        prefetch_ahead(&b[128..]);
        let d = f16(&b[208..]);
        let sc = &b[192..208];
        let mut sumi = [_mm256_setzero_si256(); N];
        for half in 0..2 {
            let qh = load(&b[128 + 32 * half..]);
            let b1 = load(&b[64 * half..]);
            let b2 = load(&b[64 * half + 32..]);
            let hbits = |mask: i8| _mm256_and_si256(qh, _mm256_set1_epi8(mask));
            let q = [
                _mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_slli_epi16(hbits(0x03), 4)),
                _mm256_or_si256(_mm256_and_si256(b2, m4), _mm256_slli_epi16(hbits(0x0C), 2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), hbits(0x30)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                    _mm256_srli_epi16(hbits(0xC0u8 as i8), 2),
                ),
            ];
            for (s, q) in q.into_iter().enumerate() {
                let g = 8 * half + 2 * s;
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(i16::from(sc[g + 1] as i8)),
                    _mm_set1_epi16(i16::from(sc[g] as i8)),
                );
                for r in 0..N {
                    let qa = load_i8(&a[r][i].qs[128 * half + 32 * s..]);
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(q, qa),
                        _mm256_maddubs_epi16(m32, qa),
                    );
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(scale, p));
                }
            }
        }
        for r in 0..N {
            acc[r] =
                _mm256_fmadd_ps(_mm256_set1_ps(d * a[r][i].d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    std::array::from_fn(|r| hsum(acc[r]))
}

/// Runs `$kernel` over the input rows four at a time, then one at a time.
macro_rules! by_rows {
    ($blocks:expr, $nb:expr, $out:expr, |$a:ident| $kernel:expr) => {{
        let rows: usize = $out.len();
        let mut r = 0;
        while r + 4 <= rows {
            let $a: [_; 4] = std::array::from_fn(|i| &$blocks[(r + i) * $nb..(r + i + 1) * $nb]);
            $out[r..r + 4].copy_from_slice(&$kernel);
            r += 4;
        }
        while r < rows {
            let $a = [&$blocks[r * $nb..(r + 1) * $nb]];
            $out[r..r + 1].copy_from_slice(&$kernel);
            r += 1;
        }
    }};
}

/// `out[i] = w . x[i]` for each quantized input row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn vec_dot(t: QuantType, w: &[u8], acts: &ActQuant, out: &mut [f32]) {
    match acts {
        ActQuant::Q8 { cols, blocks, .. } => {
            let nb = cols / 32;
            match t {
                QuantType::Q4_0 => by_rows!(blocks, nb, out, |a| dot_32::<2, _>(w, a)),
                QuantType::Q4_1 => by_rows!(blocks, nb, out, |a| dot_32::<3, _>(w, a)),
                QuantType::Q5_0 => by_rows!(blocks, nb, out, |a| dot_32::<6, _>(w, a)),
                QuantType::Q5_1 => by_rows!(blocks, nb, out, |a| dot_32::<7, _>(w, a)),
                QuantType::Q8_0 => by_rows!(blocks, nb, out, |a| dot_32::<8, _>(w, a)),
                _ => unreachable!("invariant: K types use Q8_K inputs"),
            }
        }
        ActQuant::Q8K { cols, blocks, .. } => {
            let nb = cols / 256;
            match t {
                QuantType::Q4K => by_rows!(blocks, nb, out, |a| dot_q45k::<false, _>(w, a)),
                QuantType::Q5K => by_rows!(blocks, nb, out, |a| dot_q45k::<true, _>(w, a)),
                QuantType::Q6K => by_rows!(blocks, nb, out, |a| dot_q6k(w, a)),
                _ => unreachable!("invariant: 32-value types use Q8 inputs"),
            }
        }
    }
}

/// [`super::dot::quantize_q8k`] eight lanes at a time, with its bits: the
/// extreme is found exactly (a vector max of absolute values, then the
/// first value of that magnitude, as the scalar scan keeps the first),
/// the scaling is the same multiply and add of ggml's `nearest_int`, and
/// the sums are of the same integers.
#[target_feature(enable = "avx2")]
pub(super) fn quantize_q8k(x: &[f32]) -> Q8KBlock {
    let x: &[f32; 256] = x.try_into().expect("invariant: a 256-value block");
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let load = |i: usize| {
        let v: &[f32; 8] = x[8 * i..8 * i + 8].try_into().expect("8 values");
        // SAFETY: v is 8 readable f32; the load is unaligned.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    };
    // The scalar scan skips NaN (`>` is false); `max_ps` returns its
    // second operand when the first is NaN, so it does too.
    let mut amax = _mm256_setzero_ps();
    for i in 0..32 {
        amax = _mm256_max_ps(_mm256_and_ps(load(i), abs_mask), amax);
    }
    let amax = {
        let h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)))
    };
    let mut b = Q8KBlock { d: 0.0, qs: [0; 256], bsums: [0; 16] };
    if amax == 0.0 {
        return b;
    }
    let max = *x.iter().find(|v| v.abs() == amax).expect("invariant: amax is one of the values");
    let iscale = -127.0 / max;
    let scale = _mm256_set1_ps(iscale);
    let magic = _mm256_set1_ps(12_582_912.0);
    let quantize = |i: usize| {
        let v = _mm256_add_ps(_mm256_mul_ps(scale, load(i)), magic);
        let q = _mm256_sub_epi32(
            _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x0040_0000),
        );
        _mm256_min_epi32(q, _mm256_set1_epi32(127))
    };
    for g in 0..8 {
        // 32 values as four vectors of i32; `as i8` keeps each one's low
        // byte (they are within -127..=127 unless an input was NaN).
        let v: [__m256i; 4] = std::array::from_fn(|j| quantize(4 * g + j));
        for (s, pair) in v.chunks(2).enumerate() {
            let low = |q: __m256i| _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(q));
            let sum = _mm256_add_epi32(low(pair[0]), low(pair[1]));
            let h = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
            let h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0b01_00_11_10));
            let h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0b10_11_00_01));
            b.bsums[2 * g + s] = _mm_cvtsi128_si32(h) as i16;
        }
        let dst: &mut [i8; 32] = (&mut b.qs[32 * g..32 * g + 32]).try_into().expect("32 bytes");
        // SAFETY: dst is 32 writable bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), low_bytes(v)) };
    }
    b.d = 1.0 / iscale;
    b
}

/// The low byte of each i32 lane of `v[0]`, then `v[1]`, ... in order.
#[inline]
#[target_feature(enable = "avx2")]
fn low_bytes(v: [__m256i; 4]) -> __m256i {
    // Vector j's four low bytes of each 128-bit half go to bytes
    // 4 j..4 j + 4 of that half; the halves are then interleaved by dword.
    let mut out = _mm256_setzero_si256();
    for (j, &vj) in v.iter().enumerate() {
        let mut idx = [-1i8; 16];
        for t in 0..4 {
            idx[4 * j + t] = (4 * t) as i8;
        }
        let idx = i128::from_le_bytes(idx.map(|b| b as u8));
        let mask =
            _mm256_set_epi64x((idx >> 64) as i64, idx as i64, (idx >> 64) as i64, idx as i64);
        out = _mm256_or_si256(out, _mm256_shuffle_epi8(vj, mask));
    }
    _mm256_permutevar8x32_epi32(out, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// [`super::dot::quantize_q8`] eight lanes at a time, with its bits:
/// `round` (half away from zero) as truncation plus a step where the
/// remainder is at least one half (both exact), and `as i8`'s saturation
/// and NaN to 0.
#[target_feature(enable = "avx2")]
pub(super) fn quantize_q8(x: &[f32]) -> Q8Block {
    let x: &[f32; 32] = x.try_into().expect("invariant: a 32-value block");
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let v: [__m256; 4] = std::array::from_fn(|i| {
        let s: &[f32; 8] = x[8 * i..8 * i + 8].try_into().expect("8 values");
        // SAFETY: s is 8 readable f32; the load is unaligned.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    });
    // `f32::max` skips NaN; so does `max_ps` with the running maximum as
    // its second operand.
    let mut amax = _mm256_setzero_ps();
    for &vi in &v {
        amax = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), amax);
    }
    let amax = {
        let h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)))
    };
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let sign_mask = _mm256_set1_ps(-0.0);
    let q: [__m256i; 4] = std::array::from_fn(|i| {
        let y = _mm256_mul_ps(v[i], _mm256_set1_ps(id));
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
        let half = _mm256_cmp_ps::<_CMP_GE_OQ>(
            _mm256_andnot_ps(sign_mask, _mm256_sub_ps(y, t)),
            _mm256_set1_ps(0.5),
        );
        let step = _mm256_or_ps(_mm256_and_ps(y, sign_mask), _mm256_set1_ps(1.0));
        let r = _mm256_add_ps(t, _mm256_and_ps(half, step));
        // `as i8`: saturated (infinities come from a subnormal scale),
        // NaN to 0.
        let r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-128.0)), _mm256_set1_ps(127.0));
        _mm256_cvttps_epi32(_mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y)))
    });
    let mut qs = [0i8; 32];
    // SAFETY: qs is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), low_bytes(q)) };
    let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
    Q8Block { d, s: d * sum as f32, qs }
}
