//! Weights on the host, before a backend takes them.
//!
//! A [`WeightSource`] hands out named tensors with their shape checked:
//! [`SafetensorsWeights`] reads a checkpoint directory (one file or a
//! sharded set), [`DummyWeights`] makes deterministic random values for any
//! config, like vLLM's `load_format=dummy`. Low-precision values stay in
//! their 16-bit form until the backend decides how to store them.

mod dummy;
mod gguf;
mod quantized;
mod safetensors;

pub(crate) use dummy::splitmix64;
pub use dummy::DummyWeights;
pub use gguf::{config_from_gguf, GgufWeights};
pub use quantized::{decode_row, Bytes, QuantData, RowBlock};
pub use safetensors::SafetensorsWeights;

use half::{bf16, f16};

use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn from_torch_name(name: &str) -> Option<Self> {
        match name.trim_start_matches("torch.") {
            "float32" | "float" | "f32" => Some(Self::F32),
            "float16" | "half" | "f16" => Some(Self::F16),
            "bfloat16" | "bf16" => Some(Self::BF16),
            _ => None,
        }
    }

    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

/// Tensor values in host memory. 16-bit formats keep their raw bits;
/// GGUF matrices keep their block formats ([`QuantData`]).
#[derive(Clone)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<u16>),
    BF16(Vec<u16>),
    Quant(QuantData),
}

impl HostData {
    /// The dense dtype, or `None` for a GGUF matrix.
    pub fn dtype(&self) -> Option<DType> {
        match self {
            Self::F32(_) => Some(DType::F32),
            Self::F16(_) => Some(DType::F16),
            Self::BF16(_) => Some(DType::BF16),
            Self::Quant(_) => None,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) | Self::BF16(v) => v.len(),
            Self::Quant(q) => q.rows() * q.cols,
        }
    }

    /// Bytes the values occupy.
    pub fn byte_len(&self) -> usize {
        match self {
            Self::F32(v) => v.len() * 4,
            Self::F16(v) | Self::BF16(v) => v.len() * 2,
            Self::Quant(q) => q.byte_len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.clone(),
            Self::F16(v) => v.iter().map(|&b| f16::from_bits(b).to_f32()).collect(),
            Self::BF16(v) => v.iter().map(|&b| bf16::from_bits(b).to_f32()).collect(),
            Self::Quant(q) => q.to_f32(),
        }
    }

    /// The values in `dtype` (rounding to nearest when narrowing;
    /// dequantizing a GGUF matrix).
    pub fn convert(self, dtype: DType) -> Self {
        if self.dtype() == Some(dtype) {
            return self;
        }
        let values = self.to_f32();
        match dtype {
            DType::F32 => Self::F32(values),
            DType::F16 => Self::F16(values.iter().map(|&x| f16::from_f32(x).to_bits()).collect()),
            DType::BF16 => {
                Self::BF16(values.iter().map(|&x| bf16::from_f32(x).to_bits()).collect())
            }
        }
    }
}

impl std::fmt::Debug for HostData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quant(q) => write!(f, "{q:?}"),
            Self::F32(_) | Self::F16(_) | Self::BF16(_) => {
                write!(f, "{:?}[{}]", self.dtype().expect("invariant: dense"), self.len())
            }
        }
    }
}

/// A named tensor in host memory.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn rows(&self) -> usize {
        if self.shape.len() == 2 {
            self.shape[0]
        } else {
            1
        }
    }

    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
}

/// Where a model's named tensors come from.
pub trait WeightSource {
    /// Whether a tensor of this name exists (for optional tensors such as
    /// an untied `lm_head.weight`).
    fn contains(&self, name: &str) -> bool;

    /// Loads `name`, checking that its shape is `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor>;

    /// Total bytes of all tensors, for progress reporting.
    fn total_bytes(&self) -> u64;
}
