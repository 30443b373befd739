//! ggml's block-quantized weight formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32
//! elements a block) and the K-quants Q4_K, Q5_K, Q6_K (256 a block), as
//! GGUF files store them.
//!
//! - [`dequantize_row`] widens blocks to f32 exactly as ggml (and the `gguf`
//!   Python package) does, bit for bit: the same f32 operations in the same
//!   order, never fused.
//! - [`quantize_row`] is ggml's reference quantizer of each type
//!   (`quantize_row_*_ref`), for `--quantization` at load time.
//! - [`quantize_activations`] + [`vec_dot`] are the matmul: the inputs are
//!   quantized once per 32 (or 256) values to 8 bits with an f32 scale, as
//!   llama.cpp does (its scales are f16; f32 loses nothing), and each
//!   weight row is an integer dot product per block, scaled once per block.
//!   AVX2 kernels when the CPU has them (detected at run time), a portable
//!   version otherwise; both sum the same integers, so they differ only in
//!   the f32 rounding of the per-block sums.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_gemm;
#[cfg(target_arch = "x86_64")]
mod avx2_panel;
#[cfg(target_arch = "x86_64")]
mod avx2_panel32;
mod dot;
mod formats;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vnni_panel;
#[cfg(target_arch = "x86_64")]
mod vnni_panel32;

pub use formats::{dequantize_row, quantize_row};
use rayon::prelude::*;

/// A block-quantized storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    pub const ALL: [QuantType; 8] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    /// ggml's type id (`enum ggml_type`).
    pub fn ggml_type(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
        }
    }

    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.ggml_type() == id)
    }

    /// ggml's name ("Q4_K").
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// The type named `name`, in any case ("q4_k", "Q8_0").
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name().eq_ignore_ascii_case(name))
    }

    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Bytes of a row of `cols` values, or `None` when `cols` is not a
    /// whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_elems())
            .then(|| cols / self.block_elems() * self.block_bytes())
    }

    /// Whether the inputs are quantized in 256-value blocks (Q8_K).
    fn super_blocks(self) -> bool {
        self.block_elems() == 256
    }
}

/// 32 inputs quantized to 8 bits: `x ≈ d * qs`, and `s = d * Σ qs` (the
/// term a block with an offset, Q4_1/Q5_1, needs).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// 256 inputs quantized to 8 bits (`x ≈ d * qs`), with the sums of each
/// 16 (for the K-quants' per-sub-block minimums and offsets).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

/// One 256-value block of eight consecutive input rows, its per-block
/// terms transposed so that lane `c` belongs to input row `c`: what the
/// tiled kernels need once per block, read with one load instead of eight.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct Q8KGroup {
    /// Each row's scale.
    pub d: [f32; 8],
    /// `sums32[j][2c + e]`: row `c`'s sum of values `32 (2j + e)..+32`.
    pub sums32: [[i16; 16]; 4],
    /// `sums16[g][2c + e]`: row `c`'s sum of values `16 (2g + e)..+16`.
    pub sums16: [[i16; 16]; 8],
}

impl Q8KGroup {
    /// The group of `rows` (eight blocks at the same position).
    fn new(rows: [&Q8KBlock; 8]) -> Self {
        let mut g = Q8KGroup { d: [0.0; 8], sums32: [[0; 16]; 4], sums16: [[0; 16]; 8] };
        for (c, b) in rows.iter().enumerate() {
            g.d[c] = b.d;
            for e in 0..2 {
                for j in 0..4 {
                    let s = 2 * (2 * j + e);
                    g.sums32[j][2 * c + e] = b.bsums[s] + b.bsums[s + 1];
                }
                for (h, sums) in g.sums16.iter_mut().enumerate() {
                    sums[2 * c + e] = b.bsums[2 * h + e];
                }
            }
        }
        g
    }
}

/// The `m x k` inputs of a matmul, quantized per block for one weight type.
/// `Q8K` also holds, for each whole group of eight rows and each block,
/// the transposed terms of [`Q8KGroup`] (row-group-major).
#[derive(Clone, Debug)]
pub enum ActQuant {
    Q8 { rows: usize, cols: usize, blocks: Vec<Q8Block> },
    Q8K { rows: usize, cols: usize, blocks: Vec<Q8KBlock>, groups: Vec<Q8KGroup> },
}

impl ActQuant {
    pub fn rows(&self) -> usize {
        match self {
            Self::Q8 { rows, .. } | Self::Q8K { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::Q8 { cols, .. } | Self::Q8K { cols, .. } => *cols,
        }
    }
}

/// Quantizes the `m x k` row-major `x` for products with `t` weights.
pub fn quantize_activations(t: QuantType, x: &[f32], m: usize, k: usize) -> ActQuant {
    assert_eq!(x.len(), m * k, "invariant: activations are m x k");
    assert!(t.row_bytes(k).is_some(), "invariant: {} rows of {k} values", t.name());
    if t.super_blocks() {
        let blocks: Vec<Q8KBlock> =
            x.par_chunks_exact(256).with_min_len(64).map(quantize_q8k).collect();
        let nb = k / 256;
        let groups = blocks
            .par_chunks_exact(8 * nb)
            .flat_map_iter(|rows| {
                (0..nb).map(move |i| Q8KGroup::new(std::array::from_fn(|c| &rows[c * nb + i])))
            })
            .collect();
        ActQuant::Q8K { rows: m, cols: k, blocks, groups }
    } else {
        let blocks = x.par_chunks_exact(32).with_min_len(512).map(quantize_q8).collect();
        ActQuant::Q8 { rows: m, cols: k, blocks }
    }
}

/// One block of 256 inputs to 8 bits (Q8_K), with the AVX2 kernel where
/// the CPU has it (the same bits as the portable one).
fn quantize_q8k(x: &[f32]) -> Q8KBlock {
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { avx2::quantize_q8k(x) };
    }
    dot::quantize_q8k(x)
}

/// One block of 32 inputs to 8 bits (Q8_0 with its sum), with the AVX2
/// kernel where the CPU has it (the same bits as the portable one).
fn quantize_q8(x: &[f32]) -> Q8Block {
    #[cfg(target_arch = "x86_64")]
    if simd_available() {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { avx2::quantize_q8(x) };
    }
    dot::quantize_q8(x)
}

/// `out[i] = w . x[i, :]` for one weight row of type `t` and each of the
/// `acts.rows()` quantized input rows.
pub fn vec_dot(t: QuantType, w: &[u8], acts: &ActQuant, out: &mut [f32]) {
    let k = acts.cols();
    assert_eq!(Some(w.len()), t.row_bytes(k), "invariant: a {} row of {k} values", t.name());
    assert_eq!(out.len(), acts.rows(), "invariant: one output per input row");
    #[cfg(target_arch = "x86_64")]
    {
        if simd_available() {
            // SAFETY: AVX2, FMA and F16C were detected at run time; the lengths
            // were checked above.
            unsafe { avx2::vec_dot(t, w, acts, out) };
            return;
        }
    }
    dot::vec_dot(t, w, acts, out);
}

/// `out[i * nr + j] = w_j . x_i` for the `nr` consecutive weight rows
/// `w_j` of type `t` in `w` and every input row `x_i` of `acts` (an
/// `m x nr` result): the product for prefill and decode batches. The K
/// types have register-tiled AVX2 kernels ([`has_tiled_gemm`]); other
/// types, and CPUs without AVX2, run [`vec_dot`] row by row.
pub fn gemm(t: QuantType, w: &[u8], nr: usize, acts: &ActQuant, out: &mut [f32]) {
    assert_eq!(out.len(), acts.rows() * nr, "invariant: an m x nr output");
    // SAFETY: `out` is the whole m x nr result, borrowed exclusively.
    unsafe { gemm_strided(t, w, nr, acts, out.as_mut_ptr(), nr) };
}

/// [`gemm()`] writing `w_j . x_i` to `out + i * ld + j`: a column strip of
/// a wider output, which parallel callers write in place (a copy through
/// a buffer cost 5% of a 1B model's prefill: `ld`-strided rows of 64
/// bytes, every one a cache miss, written twice).
///
/// # Safety
/// For every `i < acts.rows()` and `j < nr`, `out + i * ld + j` is valid
/// for writes and nothing else reads or writes it during the call.
pub unsafe fn gemm_strided(
    t: QuantType,
    w: &[u8],
    nr: usize,
    acts: &ActQuant,
    out: *mut f32,
    ld: usize,
) {
    let (m, k) = (acts.rows(), acts.cols());
    let row_bytes = t.row_bytes(k).expect("invariant: whole blocks");
    assert_eq!(w.len(), nr * row_bytes, "invariant: nr rows of {} x {k}", t.name());
    assert!(nr <= ld || m <= 1, "invariant: output rows do not overlap");
    #[cfg(target_arch = "x86_64")]
    {
        if has_tiled_gemm(t, m) {
            match acts {
                ActQuant::Q8K { blocks, groups, .. } => {
                    // SAFETY: has_tiled_gemm checked AVX2/FMA/F16C at run
                    // time; the kernel asserts the lengths it reads; the
                    // output contract is the caller's, passed on.
                    unsafe { avx2_gemm::gemm_k(t, w, nr, blocks, groups, m, k / 256, out, ld) };
                }
                ActQuant::Q8 { blocks, .. } => {
                    let done_rows = if avx512_available() {
                        // SAFETY: as above, and AVX-512 F and VNNI were
                        // detected at run time.
                        unsafe { vnni_panel32::gemm_packed16(t, w, nr, blocks, k / 32, out, ld) };
                        nr / vnni_panel32::ROWS * vnni_panel32::ROWS
                    } else if vnni_available() {
                        // SAFETY: as above, and AVX-VNNI was detected at
                        // run time.
                        unsafe { vnni_panel32::gemm_packed(t, w, nr, blocks, k / 32, out, ld) };
                        nr / vnni_panel32::ROWS * vnni_panel32::ROWS
                    } else {
                        // SAFETY: as above.
                        unsafe { avx2_panel32::gemm_packed(t, w, nr, blocks, k / 32, out, ld) };
                        nr / avx2_panel32::ROWS * avx2_panel32::ROWS
                    };
                    // The packed kernel leaves the rows after the last
                    // whole group of rows.
                    // SAFETY: rows done_rows..nr: the caller's contract.
                    unsafe { dot_rows(t, w, done_rows..nr, acts, out, ld) };
                }
            }
            return;
        }
    }
    // SAFETY: the caller's contract, for all nr rows.
    unsafe { dot_rows(t, w, 0..nr, acts, out, ld) };
}

/// [`vec_dot`] of weight rows `rows` of `w` with every row of `acts`, the
/// result of row `j` and input `i` written to `out + i * ld + j`.
///
/// # Safety
/// As for [`gemm_strided`], for these rows and `acts.rows()` inputs.
unsafe fn dot_rows(
    t: QuantType,
    w: &[u8],
    rows: std::ops::Range<usize>,
    acts: &ActQuant,
    out: *mut f32,
    ld: usize,
) {
    let row_bytes = t.row_bytes(acts.cols()).expect("invariant: whole blocks");
    let mut col = vec![0.0f32; acts.rows()];
    for j in rows {
        vec_dot(t, &w[j * row_bytes..(j + 1) * row_bytes], acts, &mut col);
        for (i, v) in col.iter().enumerate() {
            // SAFETY: i < acts.rows() and j is one of the rows: the
            // caller's contract.
            unsafe { out.add(i * ld + j).write(*v) };
        }
    }
}

/// Input rows from which Q4_0/Q4_1/Q5_0/Q5_1 weights are multiplied by
/// the packed integer kernels (`avx2_panel32`, `vnni_panel32`, which
/// also takes Q8_0); fewer take the f32 path.
pub const PACKED32_MIN_ROWS: usize = 24;

/// The same threshold for the AVX-VNNI kernel (`vnni_panel32`), which
/// wins from the smallest batches: Llama-3.2-1B Q8_0 decode (`strata
/// bench`, 2 threads) at 8 rows 35.8 tok/s against 26.1 on the f32 path,
/// at 16 rows 57.0 against 31.3.
pub const VNNI_PACKED32_MIN_ROWS: usize = 8;

/// Whether [`gemm()`] has a register-tiled kernel for `t` with `m` input
/// rows on this CPU: the K types at every `m`, Q4_0/Q4_1/Q5_0/Q5_1 from
/// [`PACKED32_MIN_ROWS`] (with AVX-VNNI or AVX-512 VNNI from [`VNNI_PACKED32_MIN_ROWS`]),
/// and Q8_0 from there too where the CPU has either.
pub fn has_tiled_gemm(t: QuantType, m: usize) -> bool {
    simd_available()
        && match t {
            QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => true,
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 => {
                m >= if any_vnni() { VNNI_PACKED32_MIN_ROWS } else { PACKED32_MIN_ROWS }
            }
            // Signed weight bytes: only `vpdpbusd` (with 128 added to
            // them) makes an integer product cheaper than the f32 one.
            QuantType::Q8_0 => m >= VNNI_PACKED32_MIN_ROWS && any_vnni(),
        }
}

/// The portable kernels, whatever the CPU (tests compare both paths).
pub fn vec_dot_portable(t: QuantType, w: &[u8], acts: &ActQuant, out: &mut [f32]) {
    let k = acts.cols();
    assert_eq!(Some(w.len()), t.row_bytes(k), "invariant: a {} row of {k} values", t.name());
    assert_eq!(out.len(), acts.rows(), "invariant: one output per input row");
    dot::vec_dot(t, w, acts, out);
}

/// Whether the batched products use the AVX-VNNI kernels (see
/// [`cap_cpu_isa`]).
fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::vnni()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the batched products use the AVX-512 VNNI kernels (see
/// [`cap_cpu_isa`]).
fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::avx512_vnni()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the batched products have a `vpdpbusd` kernel of either
/// width.
fn any_vnni() -> bool {
    vnni_available() || avx512_available()
}

/// Whether [`vec_dot`] uses the AVX2/FMA/F16C kernels on this CPU.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The instruction-set levels of the batched quantized products on
/// x86-64, in order: each adds kernels to the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CpuIsa {
    /// AVX2, FMA and F16C (or, where the CPU lacks them, the portable
    /// kernels).
    Avx2 = 0,
    /// `vpdpbusd` on 256-bit vectors (AVX-VNNI, VEX-encoded: Alder Lake
    /// and Sapphire Rapids on), for every quantized type.
    AvxVnni = 1,
    /// `vpdpbusd` on 512-bit vectors (AVX-512 F, BW, VL and VNNI: Ice
    /// Lake, Sapphire Rapids, Zen 4 on), for the K types.
    Avx512Vnni = 2,
}

/// Caps the instruction sets of the batched quantized products for this
/// process (benchmarks compare the levels in one run; the environment's
/// `STRATA_CPU_ISA=avx2|avxvnni` caps them from the start). Returns the
/// level now in use, which also needs a CPU that has it. The K-quant
/// kernels of every level give the same bits.
pub fn cap_cpu_isa(cap: CpuIsa) -> CpuIsa {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::cap_isa(cap)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cap;
        CpuIsa::Avx2
    }
}

/// The instruction sets the quantized kernels use on this CPU, for logs
/// and benchmark reports: `avx2+avx512-vnni` (with `+avx-vnni` where the
/// CPU has both), `avx2+avx-vnni`, `avx2` or `portable`.
pub fn kernel_isa() -> &'static str {
    if avx512_available() {
        return if vnni_available() { "avx2+avx-vnni+avx512-vnni" } else { "avx2+avx512-vnni" };
    }
    if vnni_available() {
        "avx2+avx-vnni"
    } else if simd_available() {
        "avx2"
    } else {
        "portable"
    }
}

/// An f16 stored little-endian at `b[0..2]`, widened.
#[inline]
fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// ggml's `nearest_int`: round half to even through the f32 mantissa
/// (for |x| < 2^22).
#[inline]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}
