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

use super::avx2::{f16, load};
use super::formats::scales_mins_k4;
use super::{Q8KBlock, Q8KGroup, QuantType};

/// Weight rows per packed group.
pub(super) const ROWS: usize = 8;
/// Input rows per [`Q8KGroup`], and per tile.
const GROUP: usize = 8;

/// One 256-value block of `L` weight rows (8 or 16), unpacked: `B = 4 L`
/// bytes per vector of four values.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Panel<const B: usize, const L: usize> {
    /// `qs[q][4 r + t]`: value `4 q + t` of row `r`, unsigned (Q6_K
    /// without its offset of 32).
    qs: [[u8; B]; 64],
    /// `scales[s][r]`: row `r`'s scale of group `s` (32 values for
    /// Q4_K/Q5_K, 16 for Q6_K).
    scales: [[i32; L]; 16],
    /// `subs[h][r]`: row `r`'s coefficients of the input sums of groups
    /// `2h` and `2h + 1`, as an i16 pair.
    subs: [[u32; L]; 8],
    /// Each row's block scale.
    d: [f32; L],
    /// Each row's factor of the subtracted term (`dmin`, or `32 d`).
    m: [f32; L],
}

/// Eight rows: one 256-bit vector per four values ([`tile`]).
pub(super) type Packed8 = Panel<32, 8>;
/// Sixteen rows: one 512-bit vector per four values ([`tile16`]), the
/// two eight-row halves side by side.
type Packed16 = Panel<64, 16>;

impl<const B: usize, const L: usize> Panel<B, L> {
    const ZERO: Self = Self {
        qs: [[0; B]; 64],
        scales: [[0; L]; 16],
        subs: [[0; L]; 8],
        d: [0.0; L],
        m: [0.0; L],
    };

    /// Rows `8 h..8 h + 8` of this block from the stored blocks `b[r]` of
    /// type `t`, one per row.
    ///
    /// The stored bytes are transposed before they are unpacked: a 32-byte
    /// run of each row, transposed, is already in the panel's order (lane
    /// `r` of vector `j`: bytes `4 j..4 j + 4` of row `r`), and its nibbles
    /// and high bits are then split with lane-wise masks and shifts. That
    /// is one transpose per 32 stored bytes, where unpacking first needed
    /// one per 32 values (twice as many for Q4_K); the transposes run on
    /// the one shuffle port and were most of the packing time.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn set(&mut self, h: usize, t: QuantType, b: [&[u8]; ROWS]) {
        assert!(8 * h < L, "invariant: a half of the panel");
        let m4 = _mm256_set1_epi8(0xF);
        match t {
            QuantType::Q4K | QuantType::Q5K => {
                let five = t == QuantType::Q5K;
                // Q5_K's high bits: bit 2 p of qh[l] is value 64 p + l's,
                // bit 2 p + 1 value 64 p + 32 + l's.
                let qh = if five { columns(&b, 16) } else { [_mm256_setzero_si256(); ROWS] };
                let qs = if five { 48 } else { 16 };
                for p in 0..4 {
                    let bytes = columns(&b, qs + 32 * p);
                    for j in 0..ROWS {
                        // Values 64 p + 4 j.. (low nibbles) and 64 p + 32 + 4 j..
                        let mut lo = _mm256_and_si256(bytes[j], m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes[j]), m4);
                        if five {
                            lo = _mm256_or_si256(lo, bit_to_4(qh[j], 2 * p as i32));
                            hi = _mm256_or_si256(hi, bit_to_4(qh[j], 2 * p as i32 + 1));
                        }
                        self.store(h, 16 * p + j, lo);
                        self.store(h, 16 * p + 8 + j, hi);
                    }
                }
            }
            QuantType::Q6K => {
                let m30 = _mm256_set1_epi8(0x30);
                for half in 0..2 {
                    // Values 128 half + 32 s + l: a nibble of ql (low of
                    // ql0 for s = 0, of ql1 for 1; high ones for 2, 3) and
                    // bits 2 s, 2 s + 1 of qh[l] as bits 4, 5.
                    let ql0 = columns(&b, 64 * half);
                    let ql1 = columns(&b, 64 * half + 32);
                    let qh = columns(&b, 128 + 32 * half);
                    for j in 0..ROWS {
                        let join = |lo: __m256i, hi: __m256i| {
                            _mm256_or_si256(_mm256_and_si256(lo, m4), _mm256_and_si256(hi, m30))
                        };
                        let hb = qh[j];
                        let q = 32 * half + j;
                        self.store(h, q, join(ql0[j], _mm256_slli_epi16::<4>(hb)));
                        self.store(h, q + 8, join(ql1[j], _mm256_slli_epi16::<2>(hb)));
                        self.store(h, q + 16, join(_mm256_srli_epi16::<4>(ql0[j]), hb));
                        let hi = _mm256_srli_epi16::<2>(hb);
                        self.store(h, q + 24, join(_mm256_srli_epi16::<4>(ql1[j]), hi));
                    }
                }
            }
            _ => unreachable!("invariant: only K types are packed"),
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
                    self.d[8 * h + r] = f16(blk);
                    self.m[8 * h + r] = f16(&blk[2..]);
                }
                QuantType::Q6K => {
                    let word = |o: usize| -> [u8; 8] { blk[o..o + 8].try_into().expect("8 bytes") };
                    let (lo, hi) = (u64::from_le_bytes(word(192)), u64::from_le_bytes(word(200)));
                    scales[0][r] = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(lo as i64));
                    scales[1][r] = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(hi as i64));
                    subs[r] = _mm256_cvtepi8_epi16(_mm_set_epi64x(hi as i64, lo as i64));
                    let d = f16(&blk[208..]);
                    self.d[8 * h + r] = d;
                    self.m[8 * h + r] = 32.0 * d;
                }
                _ => unreachable!("invariant: only K types are packed"),
            }
        }
        for (half, rows) in scales.into_iter().enumerate() {
            for (s, v) in transpose(rows).into_iter().enumerate() {
                store8(&mut self.scales[8 * half + s][8 * h..], v);
            }
        }
        for (j, v) in transpose(subs).into_iter().enumerate() {
            store8(&mut self.subs[j][8 * h..], v);
        }
    }

    /// Rows `8 h..8 h + 8` of vector `q` of the values.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store(&mut self, h: usize, q: usize, v: __m256i) {
        store8(&mut self.qs[q][32 * h..], v);
    }
}

/// The 32 bytes of `v` at the start of `dst`.
#[inline]
#[target_feature(enable = "avx2")]
fn store8<T: Copy>(dst: &mut [T], v: __m256i) {
    assert!(size_of_val(dst) >= 32, "invariant: room for 32 bytes");
    // SAFETY: dst has 32 writable bytes (asserted); the panel's entries
    // are 64-aligned and every half starts 32 bytes in, so the store is
    // aligned.
    unsafe { _mm256_store_si256(dst.as_mut_ptr().cast(), v) };
}

/// The 32 bytes at `o` of each row's block, transposed: lane `r` of
/// vector `j` holds bytes `4 j..4 j + 4` of row `r`.
#[inline]
#[target_feature(enable = "avx2")]
fn columns(b: &[&[u8]; ROWS], o: usize) -> [__m256i; ROWS] {
    let mut v = [_mm256_setzero_si256(); ROWS];
    for r in 0..ROWS {
        v[r] = load(&b[r][o..]);
    }
    transpose(v)
}

/// Bit `bit` (below 8) of each byte of `v` as that byte's bit 4 (0x10),
/// the other bits cleared.
#[inline]
#[target_feature(enable = "avx2")]
fn bit_to_4(v: __m256i, bit: i32) -> __m256i {
    // A 16-bit shift moves bits across the byte boundary only into bit
    // positions the mask clears (shifts of at most 4 left, 3 right).
    let moved = if bit <= 4 {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128(4 - bit))
    } else {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(bit - 4))
    };
    _mm256_and_si256(moved, _mm256_set1_epi8(0x10))
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
                    sub = _mm256_dpwssd_avx_epi32(sub, coef, bcast4(inputs));
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

/// The stored bytes of the panel of `rows` rows after panel `x` of `w`
/// (rows of `row_bytes` bytes; contiguous), cut into one share for each
/// of the `tiles` tiles that multiply panel `x`: each tile asks for its
/// share ([`prefetch`]), so that the next panel arrives in L2 while this
/// one computes. Packing otherwise waits on memory.
pub(super) fn next_panel(
    w: &[u8],
    x: usize,
    rows: usize,
    row_bytes: usize,
    tiles: usize,
) -> std::slice::Chunks<'_, u8> {
    let next = w.get(rows * (x + 1) * row_bytes..).unwrap_or_default();
    let next = &next[..next.len().min(rows * row_bytes)];
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
/// The CPU has AVX2, FMA, F16C and AVX-VNNI; for every such `i` and `j`,
/// `out + i * ld + j` is valid for writes and nobody else's during the
/// call.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
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
                // SAFETY: AVX2 and F16C are this function's features.
                unsafe { p.set(0, t, blocks_of(rows, row_bytes, i, bb)) };
            }
            let mut ahead = next_panel(w, x, ROWS, row_bytes, tiles);
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

thread_local! {
    /// Each thread's sixteen-row panel, reused from call to call.
    static PANEL16: RefCell<Vec<Packed16>> = const { RefCell::new(Vec::new()) };
}

/// [`tile`] on sixteen weight rows in 512-bit vectors (AVX-512 VNNI):
/// the same integer and f32 operations lane by lane, so the same bits,
/// with twice the multiply-adds per instruction and, in 32 registers,
/// every accumulator held. Returns `out[c]` with lane `r` the product of
/// weight row `r` and input row `c`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `w`, each `a[c]` and `g` point at
/// `nb` readable entries.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn tile16<const GV: usize>(
    w: *const Packed16,
    a: [*const Q8KBlock; GROUP],
    g: *const Q8KGroup,
    nb: usize,
) -> [__m512; GROUP] {
    let groups = 64 / GV;
    let mut out = [_mm512_setzero_ps(); GROUP];
    for b in 0..nb {
        // SAFETY: as in `tile`: every read stays inside entry b of w, of
        // each a[c] and of g; the panel's vectors are 64-aligned.
        unsafe {
            let pb = &*w.add(b);
            let x: [*const i8; GROUP] = std::array::from_fn(|c| (*a[c].add(b)).qs.as_ptr());
            let mut isum = [_mm512_setzero_si512(); GROUP];
            for s in 0..groups {
                let mut acc = [_mm512_setzero_si512(); GROUP];
                for q in GV * s..GV * (s + 1) {
                    let wv = _mm512_load_si512(pb.qs[q].as_ptr().cast());
                    for c in 0..GROUP {
                        let xv = _mm512_set1_epi32(x[c].add(4 * q).cast::<i32>().read_unaligned());
                        acc[c] = _mm512_dpbusd_epi32(acc[c], wv, xv);
                    }
                }
                let sc = _mm512_load_si512(pb.scales[s].as_ptr().cast());
                for c in 0..GROUP {
                    isum[c] = _mm512_add_epi32(isum[c], _mm512_mullo_epi32(acc[c], sc));
                }
            }
            let g = &*g.add(b);
            let (d, m) = (_mm512_load_ps(pb.d.as_ptr()), _mm512_load_ps(pb.m.as_ptr()));
            for (c, o) in out.iter_mut().enumerate() {
                let lane = 2 * c;
                let mut sub = _mm512_setzero_si512();
                for h in 0..groups / 2 {
                    let inputs = if GV == 8 { &g.sums32[h][lane] } else { &g.sums16[h][lane] };
                    let pair = _mm512_set1_epi32(
                        std::ptr::from_ref(inputs).cast::<i32>().read_unaligned(),
                    );
                    let coef = _mm512_load_si512(pb.subs[h].as_ptr().cast());
                    sub = _mm512_dpwssd_epi32(sub, coef, pair);
                }
                let sub = _mm512_mul_ps(_mm512_cvtepi32_ps(sub), m);
                let block = _mm512_fmsub_ps(_mm512_cvtepi32_ps(isum[c]), d, sub);
                *o = _mm512_fmadd_ps(block, _mm512_set1_ps(g.d[c]), *o);
            }
        }
    }
    out
}

/// [`gemm_packed`] with sixteen-row panels and [`tile16`]: the same
/// contract and the same bits, on CPUs with AVX-512 VNNI. A last panel
/// of eight rows is packed twice into one sixteen-row panel and only its
/// first eight lanes are stored.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C and AVX-512 F, BW and VNNI; the output
/// contract is [`gemm_packed`]'s.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_packed16(
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
    let rows_done = nr / ROWS * ROWS;
    PANEL16.with_borrow_mut(|panel| {
        panel.resize(nb, Packed16::ZERO);
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
            let mut ahead = next_panel(w, x, 2 * ROWS, row_bytes, tiles);
            for i in (0..tiles * GROUP).step_by(GROUP) {
                prefetch(ahead.next().unwrap_or_default());
                let g = groups[i / GROUP * nb..].as_ptr();
                let inputs: [*const Q8KBlock; GROUP] =
                    std::array::from_fn(|c| a[(i + c) * nb..].as_ptr());
                // SAFETY: as in gemm_packed.
                let lanes = unsafe {
                    if t == QuantType::Q6K {
                        tile16::<4>(panel.as_ptr(), inputs, g, nb)
                    } else {
                        tile16::<8>(panel.as_ptr(), inputs, g, nb)
                    }
                };
                for (c, v) in lanes.iter().enumerate() {
                    let o = out.wrapping_add((i + c) * ld + first);
                    // SAFETY: i + c < m / 8 * 8 and first + 16 (or, for a
                    // last half panel, first + 8) <= nr / 8 * 8: places the
                    // caller's contract makes writable; unaligned stores.
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
