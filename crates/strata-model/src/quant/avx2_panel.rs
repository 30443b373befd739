//! AVX2 products of K-quant weight panels (Q4_K, Q5_K, Q6_K) with many
//! input rows: the prefill kernel.
//!
//! [`super::avx2_gemm`] reads the weights as stored and pays, per 32
//! values and input row, one `maddubs` (bytes to i16 pairs), one `madd`
//! with the sub-block scale (to i32) and one add: three instructions, two
//! of them on the two multiply ports, for 32 multiply-adds. Here a panel
//! of weight rows is first unpacked, once, into a layout where one 32-byte
//! vector holds eight consecutive values of four weight rows
//! ([`Packed4`]; the interleaving of llama.cpp's repacked `Q4_Kx8`, done
//! per panel in a reused buffer instead of at load time). A `maddubs` of
//! that vector with eight input bytes broadcast four times gives i16 pair
//! sums for four weight rows, and the sums of a whole scale group (32
//! values for Q4_K/Q5_K, 16 for Q6_K) are added as i16 before the one
//! `madd` with the scales: per 128 multiply-adds, four `maddubs`, one
//! `madd` and four adds for Q4_K/Q5_K, against four, four and eight.
//! The i16 sums cannot overflow: a lane adds `2 * 32 / 8` products of at
//! most `31 * 128` (Q5_K) or four of `63 * 128` (Q6_K, two vectors).
//!
//! Four weight rows meet eight input rows (one [`Q8KGroup`]) with eight
//! i32 accumulators in registers. After each 256-value block the sums are
//! transposed to one input row per lane, the minimums (Q4_K/Q5_K) or the
//! offset of 32 (Q6_K) are taken out through the group's transposed
//! input sums, and the block is scaled in f32 exactly as the grouped path
//! of `avx2_gemm` does, so both give the same bits.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx2::k45_values;
use super::formats::{scales_mins_k4, KBlock};
use super::{f16_at, Q8KBlock, Q8KGroup, QuantType};

/// Weight rows per packed group.
pub(super) const ROWS: usize = 4;
/// Input rows per tile (a whole [`Q8KGroup`]).
pub(super) const TILE: usize = 8;

/// One 256-value block of four weight rows, unpacked.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct Packed4 {
    /// `qs[q][8 r + t]`: value `8 q + t` of row `r`, unsigned (Q6_K
    /// without its offset of 32).
    qs: [[u8; 32]; 32],
    /// `scales[s][4 r + t]`: row `r`'s scale of group `s` (groups of 32
    /// values for Q4_K/Q5_K, 16 for Q6_K), four times.
    scales: [[i16; 16]; 16],
    /// `subs[r][h]`: row `r`'s coefficients of the input sums of groups
    /// `2h` and `2h + 1`, as an i16 pair (Q4_K/Q5_K: the minimums; Q6_K:
    /// the scales, the offset's factor 32 being in `m`).
    subs: [[u32; 8]; 4],
    /// Each row's block scale.
    d: [f32; 4],
    /// Each row's factor of the subtracted term (`dmin`, or `32 d`).
    m: [f32; 4],
}

impl Packed4 {
    const ZERO: Packed4 = Packed4 {
        qs: [[0; 32]; 32],
        scales: [[0; 16]; 16],
        subs: [[0; 8]; 4],
        d: [0.0; 4],
        m: [0.0; 4],
    };

    /// Row `r` of this block from the stored block `b` of type `t`.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn set_row(&mut self, t: QuantType, r: usize, b: &[u8]) {
        let BlockTerms { scales, subs, d, m } = BlockTerms::of(t, b);
        self.d[r] = d;
        self.m[r] = m;
        let vals = unpack(t, b);
        for (q, chunk) in self.qs.iter_mut().enumerate() {
            chunk[8 * r..8 * r + 8].copy_from_slice(&vals[8 * q..8 * q + 8]);
        }
        for (s, lanes) in self.scales.iter_mut().enumerate() {
            lanes[4 * r..4 * r + 4].fill(scales[s]);
        }
        for (h, pair) in self.subs[r].iter_mut().enumerate() {
            *pair = u32::from(subs[2 * h] as u16) | (u32::from(subs[2 * h + 1] as u16) << 16);
        }
    }
}

/// A K block's per-group terms, as the four-row layout stores them.
pub(super) struct BlockTerms {
    /// Each group's scale (groups of 32 values for Q4_K/Q5_K, 16 for Q6_K).
    pub scales: [i16; 16],
    /// Each group's coefficient of its input sum (Q4_K/Q5_K: the
    /// minimum; Q6_K: the scale, the offset's factor 32 being in `m`).
    pub subs: [i16; 16],
    /// The block scale.
    pub d: f32,
    /// The factor of the subtracted term (`dmin`, or `32 d`).
    pub m: f32,
}

impl BlockTerms {
    /// The terms of the stored block `b` of K type `t`.
    pub(super) fn of(t: QuantType, b: &[u8]) -> Self {
        let (mut scales, mut subs) = ([0i16; 16], [0i16; 16]);
        match t {
            QuantType::Q4K | QuantType::Q5K => {
                let KBlock { d, dmin, scales: sc, .. } = KBlock::of(t, b);
                let (sc, mins) = scales_mins_k4(sc);
                for sub in 0..8 {
                    scales[sub] = i16::from((sc >> (8 * sub)) as u8);
                    subs[sub] = i16::from((mins >> (8 * sub)) as u8);
                }
                Self { scales, subs, d, m: dmin }
            }
            QuantType::Q6K => {
                for (j, s) in b[192..208].iter().enumerate() {
                    scales[j] = i16::from(*s as i8);
                    subs[j] = scales[j];
                }
                let d = f16_at(&b[208..]);
                Self { scales, subs, d, m: 32.0 * d }
            }
            _ => unreachable!("invariant: only K types are packed"),
        }
    }
}

/// The 256 values of the K block `b` of type `t` as unsigned bytes
/// (Q6_K without its offset of 32), in order.
#[target_feature(enable = "avx2")]
fn unpack(t: QuantType, b: &[u8]) -> [u8; 256] {
    assert_eq!(b.len(), t.block_bytes(), "invariant: one whole block");
    let mut vals = [0u8; 256];
    for p in 0..4 {
        for (e, v) in unpack_part(t, b, p).into_iter().enumerate() {
            // SAFETY: 64 p + 32 e + 32 <= 256: inside `vals`; the store is
            // unaligned.
            unsafe { _mm256_storeu_si256(vals[64 * p + 32 * e..].as_mut_ptr().cast(), v) };
        }
    }
    vals
}

/// Values `64 p..64 p + 64` (`p < 4`) of the K block `b` of type `t` as
/// unsigned bytes (Q6_K without its offset of 32), in two vectors.
///
/// # Panics
/// If `b` is not one whole block of `t`, or `p >= 4`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn unpack_part(t: QuantType, b: &[u8], p: usize) -> [__m256i; 2] {
    assert!(b.len() == t.block_bytes() && p < 4, "invariant: one whole block, part below 4");
    // SAFETY: every load below starts at most 32 bytes before the end of
    // the block, whose length was asserted (Q4_K 144 bytes, Q5_K 176,
    // Q6_K 210); the loads are unaligned.
    let at = |o: usize| unsafe { _mm256_loadu_si256(b.as_ptr().add(o).cast()) };
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            let five = t == QuantType::Q5K;
            let qs = if five { 48 } else { 16 };
            let (lo, hi) = k45_values(at(qs + 32 * p), five.then(|| at(16)), p);
            [lo, hi]
        }
        QuantType::Q6K => {
            let m4 = _mm256_set1_epi8(0xF);
            let m30 = _mm256_set1_epi8(0x30);
            let half = p / 2;
            let (ql0, ql1) = (at(64 * half), at(64 * half + 32));
            let qh = at(128 + 32 * half);
            // Values 128 half + 32 s + l: a nibble of ql and bits 2s, 2s + 1
            // of qh[l] as bits 4, 5; this part holds s = 2 (p % 2) and the
            // next.
            let (a, b) = if p.is_multiple_of(2) {
                (
                    (_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(qh)),
                    (_mm256_and_si256(ql1, m4), _mm256_slli_epi16::<2>(qh)),
                )
            } else {
                (
                    (_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), qh),
                    (_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), _mm256_srli_epi16::<2>(qh)),
                )
            };
            let join =
                |(lo, hi): (__m256i, __m256i)| _mm256_or_si256(lo, _mm256_and_si256(hi, m30));
            [join(a), join(b)]
        }
        _ => unreachable!("invariant: only K types are packed"),
    }
}

/// Writes a tile's results for its first `inputs` input rows: lane `c`
/// of `lanes[r]` to `out + c * ld + r`.
///
/// # Safety
/// Those `inputs` (at most eight) by four places are valid for writes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn store_tile(lanes: &[__m256; ROWS], inputs: usize, out: *mut f32, ld: usize) {
    for (r, v) in lanes.iter().enumerate() {
        let mut col = [0.0f32; TILE];
        // SAFETY: col is 32 writable bytes; the store is unaligned.
        unsafe { _mm256_storeu_ps(col.as_mut_ptr(), *v) };
        for (c, v) in col.iter().enumerate().take(inputs) {
            // SAFETY: c < inputs and r < 4: the caller's contract.
            unsafe { out.add(c * ld + r).write(*v) };
        }
    }
}

/// Fills `panel` with the `nr / 4` four-row groups of the `nr` weight
/// rows in `w` (`nb` blocks of `bb` bytes each), group-major:
/// `set_row(entry, r, block)` packs row `r`'s block into its entry.
pub(super) fn pack<P: Copy>(
    panel: &mut Vec<P>,
    zero: P,
    w: &[u8],
    nr: usize,
    nb: usize,
    bb: usize,
    mut set_row: impl FnMut(&mut P, usize, &[u8]),
) {
    panel.clear();
    panel.resize(nr / ROWS * nb, zero);
    for (x, packed) in panel.chunks_exact_mut(nb).enumerate() {
        for r in 0..ROWS {
            let row = &w[(ROWS * x + r) * nb * bb..][..nb * bb];
            for (p, blk) in packed.iter_mut().zip(row.chunks_exact(bb)) {
                set_row(p, r, blk);
            }
        }
    }
}

thread_local! {
    /// Each thread's packed panel, reused from call to call.
    static PANEL: RefCell<Vec<Packed4>> = const { RefCell::new(Vec::new()) };
}

/// 32 bytes at `p`.
///
/// # Safety
/// `p..p + 32` is readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load<T>(p: *const T) -> __m256i {
    // SAFETY: the caller's contract; the load is unaligned.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// The eight bytes at `p`, four times.
///
/// # Safety
/// `p..p + 8` is readable.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn bcast8(p: *const i8) -> __m256i {
    // SAFETY: the caller's contract; the read is unaligned.
    _mm256_set1_epi64x(unsafe { p.cast::<i64>().read_unaligned() })
}

/// Lane `c` of vector `r`: the sum of lanes `2r` and `2r + 1` of `acc[c]`.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose(acc: &[__m256i; TILE]) -> [__m256i; ROWS] {
    // Each hadd: (c r0, c r1, c' r0, c' r1 | c r2, c r3, c' r2, c' r3);
    // reordered to the qwords r0 (c, c'), r1, r2, r3.
    let order = _mm256_setr_epi32(0, 2, 1, 3, 4, 6, 5, 7);
    let p: [__m256i; 4] = std::array::from_fn(|i| {
        _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(acc[2 * i], acc[2 * i + 1]), order)
    });
    let (lo01, lo23) = (_mm256_unpacklo_epi64(p[0], p[1]), _mm256_unpacklo_epi64(p[2], p[3]));
    let (hi01, hi23) = (_mm256_unpackhi_epi64(p[0], p[1]), _mm256_unpackhi_epi64(p[2], p[3]));
    [
        _mm256_permute2x128_si256::<0x20>(lo01, lo23),
        _mm256_permute2x128_si256::<0x20>(hi01, hi23),
        _mm256_permute2x128_si256::<0x31>(lo01, lo23),
        _mm256_permute2x128_si256::<0x31>(hi01, hi23),
    ]
}

/// Four packed weight rows (`nb` blocks at `w`) against the eight input
/// rows `a` of one group (`g`: its `nb` transposed blocks); `PER` chunks
/// of eight values share a scale (4: Q4_K/Q5_K, 2: Q6_K). Returns
/// `out[r]` with lane `c` the product of weight row `r` and input row `c`.
///
/// # Safety
/// `w`, each `a[c]` and `g` point at `nb` readable entries.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const PER: usize>(
    w: *const Packed4,
    a: [*const Q8KBlock; TILE],
    g: *const Q8KGroup,
    nb: usize,
) -> [__m256; ROWS] {
    let groups = 32 / PER;
    let mut out = [_mm256_setzero_ps(); ROWS];
    for b in 0..nb {
        // SAFETY: (whole block) b < nb keeps every read inside entry b of
        // w, of each a[c] and of g; chunk and group indices stay below 32
        // and 16 (groups * PER == 32).
        unsafe {
            let pb = &*w.add(b);
            let mut acc = [_mm256_setzero_si256(); TILE];
            for s in 0..groups {
                let wv: [__m256i; 4] = std::array::from_fn(|q| {
                    if q < PER {
                        load(pb.qs[PER * s + q].as_ptr())
                    } else {
                        _mm256_setzero_si256()
                    }
                });
                let sc = load(pb.scales[s].as_ptr());
                for c in 0..TILE {
                    let x = (*a[c].add(b)).qs.as_ptr().add(8 * PER * s);
                    let mut sum = _mm256_maddubs_epi16(wv[0], bcast8(x));
                    for q in 1..PER {
                        let x = bcast8(x.add(8 * q));
                        sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wv[q], x));
                    }
                    acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(sum, sc));
                }
            }
            let sums = transpose(&acc);
            let g = &*g.add(b);
            let da = _mm256_loadu_ps(g.d.as_ptr());
            for (r, o) in out.iter_mut().enumerate() {
                let mut sub = _mm256_setzero_si256();
                for h in 0..groups / 2 {
                    let inputs = if PER == 4 { &g.sums32[h] } else { &g.sums16[h] };
                    let coef = _mm256_set1_epi32(pb.subs[r][h] as i32);
                    sub = _mm256_add_epi32(sub, _mm256_madd_epi16(coef, load(inputs.as_ptr())));
                }
                let sub = _mm256_mul_ps(_mm256_cvtepi32_ps(sub), _mm256_set1_ps(pb.m[r]));
                let block =
                    _mm256_fmsub_ps(_mm256_cvtepi32_ps(sums[r]), _mm256_set1_ps(pb.d[r]), sub);
                *o = _mm256_fmadd_ps(block, da, *o);
            }
        }
    }
    out
}

/// `out + i * ld + j` receives `w_j . x_i` for the rows `j < nr / 4 * 4`
/// of the `nr` consecutive rows of K type `t` in `w` and the input rows
/// `i < m / 8 * 8` of `a` (`nb` blocks each, `groups` their
/// [`Q8KGroup`]s). The other rows and inputs are the caller's.
///
/// # Safety
/// The CPU has AVX2 and FMA; for every such `i` and `j`, `out + i * ld + j`
/// is valid for writes and nobody else's during the call.
#[target_feature(enable = "avx2,fma")]
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
    assert_eq!(groups.len(), m / TILE * nb, "invariant: each whole group of rows, nb blocks");
    PANEL.with_borrow_mut(|panel| {
        // SAFETY: gemm_packed's caller checked AVX2.
        pack(panel, Packed4::ZERO, w, nr, nb, bb, |p, r, b| unsafe { p.set_row(t, r, b) });
        for i in (0..m / TILE * TILE).step_by(TILE) {
            let inputs: [*const Q8KBlock; TILE] =
                std::array::from_fn(|c| a[(i + c) * nb..].as_ptr());
            let g = groups[i / TILE * nb..].as_ptr();
            for (x, packed) in panel.chunks_exact(nb).enumerate() {
                // SAFETY: packed, inputs i..i + 8 and group i / 8 each have
                // nb entries (the lengths asserted above).
                let lanes = unsafe {
                    if t == QuantType::Q6K {
                        tile::<2>(packed.as_ptr(), inputs, g, nb)
                    } else {
                        tile::<4>(packed.as_ptr(), inputs, g, nb)
                    }
                };
                // SAFETY: i + 8 <= m / 8 * 8 and 4 x + 4 <= nr / 4 * 4: the
                // caller's contract.
                unsafe { store_tile(&lanes, TILE, out.add(i * ld + ROWS * x), ld) };
            }
        }
    });
}
