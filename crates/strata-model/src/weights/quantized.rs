//! Weight matrices stored in ggml's block formats (or raw 16/32-bit rows
//! from a GGUF file), kept as bytes: a slice of the memory-mapped file
//! when nothing needs changing, owned otherwise (quantized at load, or
//! fused from parts).
//!
//! A matrix is a stack of [`RowBlock`]s, each with its own storage type:
//! fusing q/k/v (or gate/up) of a Q4_K_M file, where `attn_v` is often
//! Q6_K while `attn_q` is Q4_K, stacks the three as they are instead of
//! converting any of them.

use std::ops::Deref;
use std::sync::Arc;

use half::f16;
use memmap2::Mmap;
use rayon::prelude::*;

use super::HostData;
use crate::gguf::TensorType;
use crate::quant::{self, QuantType};

/// A tensor's bytes.
#[derive(Clone)]
pub enum Bytes {
    /// A range of a memory-mapped file (shared, never copied).
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<[u8]>),
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, Self::Mapped { .. }) { "mapped" } else { "owned" };
        write!(f, "Bytes[{} {kind}]", self.len())
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped { map, start, len } => &map[*start..*start + *len],
            Self::Owned(v) => v,
        }
    }
}

/// Consecutive rows in one storage type.
#[derive(Clone, Debug)]
pub struct RowBlock {
    pub ty: TensorType,
    pub rows: usize,
    pub bytes: Bytes,
}

/// A `rows x cols` matrix as a stack of row blocks.
#[derive(Clone)]
pub struct QuantData {
    pub cols: usize,
    pub blocks: Vec<RowBlock>,
}

impl std::fmt::Debug for QuantData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<String> =
            self.blocks.iter().map(|b| format!("{}x{}", b.ty.name(), b.rows)).collect();
        write!(f, "Quant[{} cols: {}]", self.cols, types.join(" + "))
    }
}

impl QuantData {
    /// One block of `rows` rows in `ty`; `bytes` must hold exactly that.
    pub fn single(ty: TensorType, rows: usize, cols: usize, bytes: Bytes) -> Self {
        assert_eq!(
            ty.row_bytes(cols).map(|rb| rb * rows),
            Some(bytes.len()),
            "invariant: block bytes match rows x cols in {}",
            ty.name()
        );
        Self { cols, blocks: vec![RowBlock { ty, rows, bytes }] }
    }

    /// Quantizes an f32 matrix row by row (`--quantization`).
    pub fn quantize(q: QuantType, values: &[f32], rows: usize, cols: usize) -> Self {
        let row_bytes = q.row_bytes(cols).expect("invariant: caller checked block divisibility");
        let mut out = vec![0u8; rows * row_bytes];
        out.par_chunks_mut(row_bytes)
            .zip(values.par_chunks(cols))
            .for_each(|(dst, src)| quant::quantize_row(q, src, dst));
        Self::single(TensorType::Quant(q), rows, cols, Bytes::Owned(out.into()))
    }

    /// A matrix of `rows` rows as a stack: GGUF data as it is, dense
    /// values as one raw little-endian block (for fusing with GGUF parts).
    pub fn from_dense_or_quant(data: HostData, rows: usize) -> Self {
        let cols = data.len() / rows.max(1);
        let (ty, bytes): (TensorType, Vec<u8>) = match data {
            HostData::Quant(q) => return q,
            HostData::F32(v) => (TensorType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            HostData::F16(v) => (TensorType::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            HostData::BF16(v) => {
                (TensorType::BF16, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
        };
        Self::single(ty, rows, cols, Bytes::Owned(bytes.into()))
    }

    /// Stacks matrices of equal width.
    pub fn concat(parts: Vec<QuantData>) -> Self {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols), "invariant: fused parts share their width");
        Self { cols, blocks: parts.into_iter().flat_map(|p| p.blocks).collect() }
    }

    pub fn rows(&self) -> usize {
        self.blocks.iter().map(|b| b.rows).sum()
    }

    pub fn byte_len(&self) -> usize {
        self.blocks.iter().map(|b| b.bytes.len()).sum()
    }

    /// The storage types of the blocks, without repeats.
    pub fn quant_types(&self) -> Vec<QuantType> {
        let mut out = Vec::new();
        for b in &self.blocks {
            if let TensorType::Quant(q) = b.ty {
                if !out.contains(&q) {
                    out.push(q);
                }
            }
        }
        out
    }

    /// Row `r`'s storage type and bytes.
    pub fn row(&self, mut r: usize) -> (TensorType, &[u8]) {
        for b in &self.blocks {
            if r < b.rows {
                let rb = b.bytes.len() / b.rows;
                return (b.ty, &b.bytes[r * rb..(r + 1) * rb]);
            }
            r -= b.rows;
        }
        panic!("invariant: row index within the matrix");
    }

    /// Row `r` widened (dequantized) to f32.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let (ty, bytes) = self.row(r);
        decode_row(ty, bytes, out);
    }

    /// The whole matrix in f32 (a reference, or `--dtype` on a GGUF file).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows() * self.cols];
        out.par_chunks_mut(self.cols).enumerate().for_each(|(r, row)| self.row_to_f32(r, row));
        out
    }
}

/// One row of `ty` values in `bytes`, widened to f32.
pub fn decode_row(ty: TensorType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        TensorType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        TensorType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        TensorType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        TensorType::Quant(q) => quant::dequantize_row(q, bytes, out),
    }
}
