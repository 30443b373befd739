//! The CPU backend: f32 activations in `Vec`s, weights in their stored
//! dtype or GGUF block format, matrix products through `matmul`
//! (hand-written AVX2 GEMV for decode-sized batches, integer dot products
//! on quantized blocks, `gemm` otherwise), rayon across rows.

mod attention;
mod matmul;
mod tile;

use rayon::prelude::*;

use super::{AttentionShape, Backend, StepMetadata};
use crate::error::{ModelError, Result};
use crate::weights::{DType, HostData, HostTensor};

pub use attention::reference as reference_attention;
pub use matmul::linear as matmul_linear;

/// A raw output pointer shared by rayon tasks that write disjoint columns
/// of one output matrix (the matmul kernels).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every user writes a column range no other task writes.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Taking `self` makes closures capture the whole (Send) wrapper
    /// rather than the raw pointer field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Rows handled per rayon task in row-wise element ops.
const ROWS_PER_TASK: usize = 8;

#[derive(Clone, Debug, Default)]
pub struct CpuBackend;

/// A row-major f32 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl CpuTensor {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { data: vec![0.0; rows * cols], rows, cols }
    }

    pub fn from_vec(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "invariant: tensor data matches its shape");
        Self { data, rows, cols }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A weight in its stored dtype: `rows x cols`, row-major (vectors have
/// one row).
#[derive(Clone, Debug)]
pub struct CpuWeight {
    pub rows: usize,
    pub cols: usize,
    pub data: HostData,
}

impl CpuWeight {
    fn f32_values(&self) -> &[f32] {
        match &self.data {
            HostData::F32(v) => v,
            _ => panic!("invariant: vectors are widened to f32 at upload"),
        }
    }

    fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            HostData::F32(v) => out.copy_from_slice(&v[range]),
            HostData::F16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[range]) {
                    *o = half::f16::from_bits(b).to_f32();
                }
            }
            HostData::BF16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[range]) {
                    *o = f32::from_bits((b as u32) << 16);
                }
            }
            HostData::Quant(q) => q.row_to_f32(r, out),
        }
    }
}

/// One layer's K and V: `[num_slots, kv_width]` each.
#[derive(Debug)]
pub struct CpuKvLayer {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub kv_width: usize,
}

fn rms_normalize(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

/// `out = silu(gate) * up`, `silu(g) = g / (1 + e^-g)`: eight lanes at a
/// time with the vector `exp` where the CPU has AVX2/FMA (one libm call
/// per value was 3% of a prefill), the rest as written.
fn silu_mul_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::simd::available() {
        // SAFETY: AVX2/FMA detected; the three slices have equal lengths.
        done = unsafe { simd_silu_mul(gate, up, out) };
    }
    for ((o, &g), &u) in out[done..].iter_mut().zip(&gate[done..]).zip(&up[done..]) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// The whole vectors of [`silu_mul_row`]; returns how many values it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn simd_silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let whole = out.len().min(gate.len()).min(up.len()) / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= whole, within each slice.
        unsafe {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = crate::simd::exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, u));
        }
    }
    whole
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvLayer = CpuKvLayer;
    type Step = StepMetadata;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, tensor: HostTensor) -> Result<CpuWeight> {
        let (rows, cols) = (tensor.rows(), tensor.cols());
        let data =
            if tensor.shape.len() == 1 { tensor.data.convert(DType::F32) } else { tensor.data };
        Ok(CpuWeight { rows, cols, data })
    }

    fn alloc_kv_layer(&self, num_slots: usize, kv_width: usize) -> Result<CpuKvLayer> {
        let len = num_slots
            .checked_mul(kv_width)
            .ok_or_else(|| ModelError::KvCache("KV pool size overflows".into()))?;
        let alloc = |what: &str| -> Result<Vec<f32>> {
            // Probe that the allocation can succeed (a huge pool is an
            // error, not an abort), then allocate zeroed memory, which the
            // OS maps lazily: the pool costs resident memory only as blocks
            // are written.
            Vec::<f32>::new().try_reserve_exact(len).map_err(|e| {
                ModelError::KvCache(format!("cannot allocate {what} store of {len} floats: {e}"))
            })?;
            Ok(vec![0.0; len])
        };
        Ok(CpuKvLayer { k: alloc("K")?, v: alloc("V")?, kv_width })
    }

    fn prepare_step(&self, meta: &StepMetadata) -> Result<StepMetadata> {
        Ok(meta.clone())
    }

    fn rows(&self, x: &CpuTensor) -> usize {
        x.rows
    }

    fn cols(&self, x: &CpuTensor) -> usize {
        x.cols
    }

    fn embedding(&self, table: &CpuWeight, step: &StepMetadata) -> CpuTensor {
        let mut out = CpuTensor::zeros(step.num_tokens(), table.cols);
        out.data.par_chunks_mut(table.cols).zip(&step.token_ids).for_each(|(row, &id)| {
            table.row_to_f32(id as usize, row);
        });
        out
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuWeight, eps: f32) -> CpuTensor {
        let mut out = CpuTensor::zeros(x.rows, x.cols);
        let w = w.f32_values();
        out.data
            .par_chunks_mut(x.cols * ROWS_PER_TASK)
            .zip(x.data.par_chunks(x.cols * ROWS_PER_TASK))
            .for_each(|(o, xin)| {
                for (orow, xrow) in o.chunks_mut(x.cols).zip(xin.chunks(x.cols)) {
                    rms_normalize(xrow, w, eps, orow);
                }
            });
        out
    }

    fn rms_norm_heads(&self, x: &mut CpuTensor, w: &CpuWeight, head_dim: usize, eps: f32) {
        let w = w.f32_values();
        x.data.par_chunks_mut(head_dim * 16).for_each(|heads| {
            for h in heads.chunks_mut(head_dim) {
                let copy: Vec<f32> = h.to_vec();
                rms_normalize(&copy, w, eps, h);
            }
        });
    }

    fn linear(&self, x: &CpuTensor, w: &CpuWeight, bias: Option<&CpuWeight>) -> CpuTensor {
        let mut out = CpuTensor::zeros(x.rows, w.rows);
        matmul::linear(&x.data, x.rows, x.cols, w, &mut out.data);
        if let Some(b) = bias {
            let b = b.f32_values();
            for row in out.data.chunks_mut(w.rows) {
                for (o, &bv) in row.iter_mut().zip(b) {
                    *o += bv;
                }
            }
        }
        out
    }

    fn split_cols(&self, x: &CpuTensor, widths: &[usize]) -> Vec<CpuTensor> {
        let mut start = 0;
        widths
            .iter()
            .map(|&w| {
                let mut out = CpuTensor::zeros(x.rows, w);
                for (r, orow) in out.data.chunks_mut(w).enumerate() {
                    orow.copy_from_slice(&x.row(r)[start..start + w]);
                }
                start += w;
                out
            })
            .collect()
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        head_dim: usize,
        table: &CpuWeight,
        step: &StepMetadata,
        interleaved: bool,
    ) {
        let table = table.f32_values();
        let half = head_dim / 2;
        x.data.par_chunks_mut(x.cols).zip(&step.positions).for_each(|(row, &pos)| {
            let t = &table[pos as usize * head_dim..(pos as usize + 1) * head_dim];
            let (cos, sin) = t.split_at(half);
            for h in row.chunks_mut(head_dim) {
                for i in 0..half {
                    let (ia, ib) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (a, b) = (h[ia], h[ib]);
                    h[ia] = a * cos[i] - b * sin[i];
                    h[ib] = b * cos[i] + a * sin[i];
                }
            }
        });
    }

    fn silu_mul(&self, gate_up: &CpuTensor) -> CpuTensor {
        let inter = gate_up.cols / 2;
        let mut out = CpuTensor::zeros(gate_up.rows, inter);
        out.data.par_chunks_mut(inter).zip(gate_up.data.par_chunks(gate_up.cols)).for_each(
            |(o, gu)| {
                let (gate, up) = gu.split_at(inter);
                silu_mul_row(gate, up, o);
            },
        );
        out
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) {
        for (a, &b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
    }

    fn write_kv(&self, layer: &mut CpuKvLayer, k: &CpuTensor, v: &CpuTensor, step: &StepMetadata) {
        let w = layer.kv_width;
        for (t, &slot) in step.slot_mapping.iter().enumerate() {
            if slot == super::PAD_SLOT {
                continue;
            }
            let dst = slot as usize * w..(slot as usize + 1) * w;
            layer.k[dst.clone()].copy_from_slice(k.row(t));
            layer.v[dst].copy_from_slice(v.row(t));
        }
    }

    fn paged_attention(
        &self,
        q: &CpuTensor,
        layer: &CpuKvLayer,
        shape: AttentionShape,
        step: &StepMetadata,
    ) -> CpuTensor {
        attention::paged_attention(q, layer, shape, step)
    }

    fn read_kv_slots(&self, layer: &CpuKvLayer, slots: std::ops::Range<usize>, out: &mut [u8]) {
        let w = layer.kv_width;
        let range = slots.start * w..slots.end * w;
        let half = range.len() * 4;
        out[..half].copy_from_slice(bytemuck::cast_slice(&layer.k[range.clone()]));
        out[half..2 * half].copy_from_slice(bytemuck::cast_slice(&layer.v[range]));
    }

    fn write_kv_slots(&self, layer: &mut CpuKvLayer, slots: std::ops::Range<usize>, data: &[u8]) {
        let w = layer.kv_width;
        let range = slots.start * w..slots.end * w;
        let half = range.len() * 4;
        // The pool is f32; `data` may be unaligned, so copy bytes.
        bytemuck::cast_slice_mut::<f32, u8>(&mut layer.k[range.clone()])
            .copy_from_slice(&data[..half]);
        bytemuck::cast_slice_mut::<f32, u8>(&mut layer.v[range])
            .copy_from_slice(&data[half..2 * half]);
    }

    fn select_rows(&self, x: &CpuTensor, rows: &[usize]) -> CpuTensor {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            data.extend_from_slice(x.row(r));
        }
        CpuTensor::from_vec(data, rows.len(), x.cols)
    }

    fn to_host(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }
}
