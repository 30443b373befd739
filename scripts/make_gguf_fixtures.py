#!/usr/bin/env python3
"""Generate small GGUF files for strata's GGUF-loading tests.

Writes, under fixtures/gguf/ (relative to the repo root, or --out):

  tiny-qwen2-{f16,q8_0,q4_0,q5_1}.gguf   from fixtures/models/tiny-qwen2 (f32, biases, tied)
  tiny-llama-{bf16,q8_0,q4_1,q5_0}.gguf  from fixtures/models/tiny-llama (bf16, 3 shards, llama3 rope)
  tiny-qwen3-{f32,q8_0}.gguf             from fixtures/models/tiny-qwen3 (f16, q/k norm, head_dim 32)
  tiny-k-llama-{q4_k_m,q5_k_m,q6_k}.gguf seeded random llama (hidden 256) so K types fit
  tiny-k-qwen2-q4_k_m.gguf               seeded random qwen2 (hidden 256, biases, tied)
  quant_blocks.gguf                      random blocks of every supported type + reference dequant
  manifest.json                          per file: sha256, file_type, tensor types/shapes

The files are laid out as llama.cpp's convert_hf_to_gguf.py writes them (f32 / f16 / bf16 /
q8_0 outtypes) and, for the other quantized files, as llama-quantize writes them from the
lossless converted file: same metadata keys, value types, key order, tensor names, tensor order,
per-tensor type choices and quantizers. The model-conversion logic below is a numpy
transcription of convert_hf_to_gguf.py (LlamaModel / Qwen2Model / Qwen3Model, TextModel,
ModelBase.prepare_tensors), src/llama-quant.cpp (type selection, fallback, tensor order, KV
copy) and ggml-quants.c (quantize_row_q{4,5,6}_K_ref); gguf-py (pinned) is used for the
writer, the metadata heuristics, SpecialVocab, the tensor-name map and the 32-block quantizers.

Deterministic: running it twice yields byte-identical files.
Run it through scripts/make_gguf_fixtures.sh, which sets up the pinned venv (.venv-gguf).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf import LlamaFileType as FT

F32 = np.float32
QK_K = 256

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"


# --------------------------------------------------------------------------
# safetensors reading (no torch): 8-byte LE header length + JSON header + raw data
# --------------------------------------------------------------------------
def read_safetensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        buf = raw[base + a: base + b]
        shape = tuple(meta["shape"])
        dt = meta["dtype"]
        if dt == "F32":
            arr = np.frombuffer(buf, dtype="<f4").reshape(shape)
        elif dt == "F16":
            arr = np.frombuffer(buf, dtype="<f2").reshape(shape)
        elif dt == "BF16":
            # widen bf16 -> f32 by putting the 16 bits in the top half (exact)
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        else:
            raise ValueError(f"{path}: unsupported dtype {dt} for {name}")
        out[name] = (dt, arr.copy())
    return out


def load_hf_tensors(model_dir: Path) -> list[tuple[str, str, np.ndarray]]:
    """Tensors in the order convert_hf_to_gguf.py visits them (ModelBase.index_tensors):
    part files sorted by name (from the index's weight_map when present), and within each
    part the tensor names sorted (gguf.utility.SafetensorsLocal)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        parts = sorted(dict.fromkeys(weight_map.values()))
    else:
        parts = sorted(p.name for p in model_dir.iterdir()
                       if p.name.startswith("model") and p.name.endswith(".safetensors"))
    out = []
    for part in parts:
        tensors = read_safetensors(model_dir / part)
        for name in sorted(tensors):
            dt, arr = tensors[name]
            out.append((name, dt, arr))
    return out


# --------------------------------------------------------------------------
# Tokenizer (TextModel.get_vocab_base / _set_vocab_gpt2 without transformers)
# --------------------------------------------------------------------------
# The converter picks tokenizer.ggml.pre by hashing the tokenization of a check string;
# the toy tokenizers cannot reproduce the real models' hashes, so the value the real
# Qwen2.5 / Llama-3 GGUF files carry is set by hand.
TOKENIZER_PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}


def does_token_look_special(tok: str) -> bool:
    s = tok in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    s = s or (tok.startswith("<|") and tok.endswith("|>"))
    s = s or (tok.startswith("<｜") and tok.endswith("｜>"))
    s = s or (tok.startswith("<unused") and tok.endswith(">"))
    return s


def get_vocab_base(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    reverse = {i: t for t, i in vocab.items()}
    assert max(reverse) < vocab_size
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
            continue
        tok = reverse[i]
        if tok in added:
            # (the converter round-trips non-normalized added tokens through
            # decode(encode(tok)); for these special tokens that is the identity)
            if added[tok]["special"] or does_token_look_special(tok):
                types.append(int(gguf.TokenType.CONTROL))
            else:
                tok = tok.replace("\u2581", " ")
                types.append(int(gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
        tokens.append(tok)
    return tokens, types


# --------------------------------------------------------------------------
# convert_hf_to_gguf.py
# --------------------------------------------------------------------------
HF_ARCH = {
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
    "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3,
}

OUTTYPE_FTYPE = {"f32": FT.ALL_F32, "f16": FT.MOSTLY_F16, "bf16": FT.MOSTLY_BF16, "q8_0": FT.MOSTLY_Q8_0}
FTYPE_QTYPE = {FT.ALL_F32: QT.F32, FT.MOSTLY_F16: QT.F16, FT.MOSTLY_BF16: QT.BF16, FT.MOSTLY_Q8_0: QT.Q8_0}


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """LlamaModel.permute: HF (rotate_half) row order -> GGML/Meta interleaved rope order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def llama3_rope_freqs(cfg: dict) -> np.ndarray | None:
    """LlamaModel.generate_extra_tensors, in float32 like the torch original."""
    rope = cfg.get("rope_scaling") or {}
    if str(rope.get("rope_type", rope.get("type", ""))).lower() != "llama3":
        return None
    base = F32(cfg.get("rope_theta", 10000.0))
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = F32(1.0) / (base ** (np.arange(0, dim, 2, dtype=F32) / F32(dim)))
    factor = F32(rope.get("factor", 8.0))
    low_freq_factor = F32(rope.get("low_freq_factor", 1.0))
    high_freq_factor = F32(rope.get("high_freq_factor", 4.0))
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / float(low_freq_factor)
    high_freq_wavelen = old_context_len / float(high_freq_factor)
    out = []
    for freq in freqs:
        wavelen = F32(2 * math.pi) / freq
        if wavelen < high_freq_wavelen:
            out.append(F32(1))
        elif wavelen > low_freq_wavelen:
            out.append(factor)
        else:
            smooth = (F32(old_context_len) / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(F32(1) / ((F32(1) - smooth) / factor + smooth))
    return np.array(out, dtype=F32)


class Converted:
    """What convert_hf_to_gguf.py produced: the writer (KV + tensors) plus each tensor's
    float32 values (what llama-quantize reads back from a lossless file)."""

    def __init__(self, writer: gguf.GGUFWriter, arch: str, block_count: int,
                 tensors: list[tuple[str, QT, np.ndarray, np.ndarray]]):
        self.writer = writer
        self.arch = arch
        self.block_count = block_count
        self.tensors = tensors  # (gguf name, stored type, stored data, float32 values)


def convert_hf_to_gguf(model_dir: Path, hf_tensors: list[tuple[str, str, np.ndarray]], outtype: str) -> Converted:
    cfg = json.loads((model_dir / "config.json").read_text())
    hf_arch = cfg["architectures"][0]
    model_arch = HF_ARCH[hf_arch]
    arch = gguf.MODEL_ARCH_NAMES[model_arch]
    ftype = OUTTYPE_FTYPE[outtype]
    block_count = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg["num_key_value_heads"]
    tensor_map = gguf.get_tensor_name_map(model_arch, block_count)

    w = gguf.GGUFWriter(path=None, arch=arch)  # writes general.architecture first

    # ---- ModelBase.prepare_tensors
    extra: list[tuple[str, str, np.ndarray]] = []
    if model_arch == gguf.MODEL_ARCH.LLAMA:
        rf = llama3_rope_freqs(cfg)
        if rf is not None:
            extra.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", "F32", rf))
    tensors: list[tuple[str, QT, np.ndarray, np.ndarray]] = []
    for name, _dt, data in extra + list(hf_tensors):
        if name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
            continue
        # "convert any unsupported data types to float32" (bf16 was widened on read)
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        if model_arch == gguf.MODEL_ARCH.LLAMA:  # LlamaModel.modify_tensors, undo_permute = True
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = llama_permute(data, n_head, n_head)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                data = llama_permute(data, n_head, n_head_kv)
        new_name = tensor_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"Can not map tensor {name!r}")
        n_dims = data.ndim
        qtype: QT | None = None
        if n_dims <= 1 or new_name.endswith("_norm.weight"):
            qtype = QT.F32
        if qtype is None and new_name[-7:] not in (".weight", ".lora_a", ".lora_b"):
            qtype = QT.F32
        if qtype is None:
            qtype = FTYPE_QTYPE[ftype]
        stored = gguf.quants.quantize(data, qtype)
        w.add_tensor(new_name, stored, raw_dtype=qtype)
        tensors.append((new_name, qtype, stored, np.ascontiguousarray(data, dtype=np.float32)))

    # ---- ModelBase.prepare_metadata
    total_params, shared_params, expert_params, expert_count = w.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, model_dir, None, total_params)
    if metadata.name is None:
        metadata.name = model_dir.name
    if metadata.size_label is None and total_params > 0:
        metadata.size_label = gguf.size_label(total_params, shared_params, expert_params, expert_count)
    w.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(w)

    # ---- set_gguf_parameters (TextModel, then LlamaModel / Qwen2Model / Qwen3Model)
    w.add_block_count(block_count)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    rope = dict(cfg.get("rope_scaling") or {})
    if "rope_theta" not in rope and cfg.get("rope_theta") is not None:
        rope["rope_theta"] = cfg["rope_theta"]
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type is not None and str(rope_type).lower() != "llama3":
        raise NotImplementedError(f"rope type {rope_type} not mirrored here")  # llama3: rope_freqs tensor
    if rope.get("rope_theta") is not None:
        w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if cfg.get("head_dim") is not None:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_file_type(ftype)
    if model_arch == gguf.MODEL_ARCH.LLAMA:
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // n_head)
    # (Qwen2Model._try_set_pooling_type: no modules.json -> nothing)

    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # ---- set_vocab -> _set_vocab_gpt2 (llama: sentencepiece / llama_hf paths fail first)
    tokens, toktypes = get_vocab_base(model_dir, cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(TOKENIZER_PRE[arch])
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=True)
    special_vocab.add_to_gguf(w, quiet=True)
    return Converted(w, arch, block_count, tensors)


# --------------------------------------------------------------------------
# ggml-quants.c reference K quantizers (quantize_row_q{4,5,6}_K_ref), in numpy float32.
# Vectorised over blocks; every sum keeps C's sequential element order and every
# operation is a single float32 op (no FMA contraction).
# --------------------------------------------------------------------------
def nearest_int(v: np.ndarray) -> np.ndarray:
    # ggml's nearest_int adds 1.5*2^23 in float32: round half to even
    return np.rint(v).astype(np.int32)


def fp16_round(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16)


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, weights: [B, n] float32. Returns (scale [B], the_min [B], L [B, n] uint8)."""
    B, n = x.shape
    mn = x[:, 0].copy()
    mx = x[:, 0].copy()
    sum_w = weights[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        xi = x[:, i]
        mn = np.where(xi < mn, xi, mn)
        mx = np.where(xi > mx, xi, mx)
        wi = weights[:, i]
        sum_w = sum_w + wi
        sum_x = sum_x + wi * xi
    mn = np.where(mn > 0, F32(0), mn)
    degenerate = mx == mn
    rng = np.where(degenerate, F32(1), mx - mn)
    iscale = F32(nmax) / rng
    scale = F32(1) / iscale
    L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best_error = np.zeros(B, dtype=F32)
    for i in range(n):
        diff = scale * L[:, i].astype(F32) + mn - x[:, i]
        diff = diff * diff
        best_error = best_error + weights[:, i] * diff
    Laux = np.empty_like(L)
    with np.errstate(divide="ignore", invalid="ignore"):
        for is_ in range(nstep + 1):
            # (C divides by (max - min) with min as updated by earlier better tries)
            rng = np.where(degenerate, F32(1), mx - mn)
            iscale = (F32(rmin) + F32(rdelta) * F32(is_) + F32(nmax)) / rng
            sum_l = np.zeros(B, dtype=F32)
            sum_l2 = np.zeros(B, dtype=F32)
            sum_xl = np.zeros(B, dtype=F32)
            for i in range(n):
                l = np.clip(nearest_int(iscale * (x[:, i] - mn)), 0, nmax)
                Laux[:, i] = l
                lf = l.astype(F32)
                wi = weights[:, i]
                sum_l = sum_l + wi * lf
                sum_l2 = sum_l2 + wi * lf * lf
                sum_xl = sum_xl + wi * lf * x[:, i]
            D = sum_w * sum_l2 - sum_l * sum_l
            ok = D > 0
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur_error = np.zeros(B, dtype=F32)
            for i in range(n):
                diff = this_scale * Laux[:, i].astype(F32) + this_min - x[:, i]
                diff = diff * diff
                cur_error = cur_error + weights[:, i] * diff
            better = ok & (cur_error < best_error)
            L = np.where(better[:, None], Laux, L)
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L = np.where(degenerate[:, None], 0, L)
    scale = np.where(degenerate, F32(0), scale)
    return scale.astype(F32), (-mn).astype(F32), L.astype(np.uint8)


def _q45_k_scales(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared part of quantize_row_q4_K_ref / quantize_row_q5_K_ref."""
    nb = x.shape[0]
    sub = x.reshape(nb, 8, 32)
    scales = np.empty((nb, 8), dtype=F32)
    mins = np.empty((nb, 8), dtype=F32)
    L = np.empty((nb, 8, 32), dtype=np.uint8)
    for j in range(8):
        xs = sub[:, j, :]
        sum_x2 = np.zeros(nb, dtype=F32)
        for l in range(32):
            sum_x2 = sum_x2 + xs[:, l] * xs[:, l]
        av_x = np.sqrt(sum_x2 / F32(32))
        weights = av_x[:, None] + np.abs(xs)
        scales[:, j], mins[:, j], L[:, j, :] = make_qkx2_quants(xs, weights, nmax, rmin, rdelta, nstep)
    max_scale = np.zeros(nb, dtype=F32)
    max_min = np.zeros(nb, dtype=F32)
    for j in range(8):
        max_scale = np.where(scales[:, j] > max_scale, scales[:, j], max_scale)
        max_min = np.where(mins[:, j] > max_min, mins[:, j], max_min)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    packed = np.zeros((nb, 12), dtype=np.uint8)
    for j in range(8):
        ls = np.minimum(nearest_int(inv_scale * scales[:, j]) & 0xFF, 63).astype(np.uint8)
        lm = np.minimum(nearest_int(inv_min * mins[:, j]) & 0xFF, 63).astype(np.uint8)
        if j < 4:
            packed[:, j] = ls
            packed[:, j + 4] = lm
        else:
            packed[:, j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            packed[:, j - 4] |= (ls >> 4) << 6
            packed[:, j] |= (lm >> 4) << 6
    d = fp16_round(max_scale / F32(63))
    dmin = fp16_round(max_min / F32(63))
    # requantize with the rounded scales (get_scale_min_k4)
    for j in range(8):
        if j < 4:
            sc = packed[:, j] & 63
            m = packed[:, j + 4] & 63
        else:
            sc = (packed[:, j + 4] & 0xF) | ((packed[:, j - 4] >> 6) << 4)
            m = (packed[:, j + 4] >> 4) | ((packed[:, j] >> 6) << 4)
        dd = d.astype(F32) * sc.astype(F32)
        dm = dmin.astype(F32) * m.astype(F32)
        nz = dd != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            l = np.clip(nearest_int((sub[:, j, :] + dm[:, None]) / dd[:, None]), 0, nmax).astype(np.uint8)
        L[:, j, :] = np.where(nz[:, None], l, L[:, j, :])
    return d, dmin, packed, L.reshape(nb, QK_K)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    rows, cols = x.shape
    xb = np.ascontiguousarray(x, dtype=F32).reshape(-1, QK_K)
    d, dmin, scales, L = _q45_k_scales(xb, 15, -1.0, 0.1, 20)
    L4 = L.reshape(-1, 4, 2, 32)
    qs = (L4[:, :, 0, :] | (L4[:, :, 1, :] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8), scales, qs], axis=1)
    return blocks.reshape(rows, cols // QK_K * 144)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    rows, cols = x.shape
    xb = np.ascontiguousarray(x, dtype=F32).reshape(-1, QK_K)
    d, dmin, scales, L = _q45_k_scales(xb, 31, -0.5, 0.1, 15)
    nb = xb.shape[0]
    qh = np.zeros((nb, 32), dtype=np.uint8)
    ql = np.zeros((nb, 128), dtype=np.uint8)
    m1, m2 = 1, 2
    for k, n0 in enumerate(range(0, QK_K, 64)):
        l1 = L[:, n0:n0 + 32].astype(np.int32)
        l2 = L[:, n0 + 32:n0 + 64].astype(np.int32)
        qh |= np.where(l1 > 15, m1, 0).astype(np.uint8)
        qh |= np.where(l2 > 15, m2, 0).astype(np.uint8)
        l1 = np.where(l1 > 15, l1 - 16, l1)
        l2 = np.where(l2 > 15, l2 - 16, l2)
        ql[:, 32 * k:32 * k + 32] = (l1 | (l2 << 4)).astype(np.uint8)
        m1 <<= 2
        m2 <<= 2
    blocks = np.concatenate([d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8), scales, qh, ql], axis=1)
    return blocks.reshape(rows, cols // QK_K * 176)


def make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL). x: [B, n]. Returns (scale, L int8)."""
    B, n = x.shape
    ax = np.abs(x)
    imax = np.argmax(ax, axis=1)  # first index of the largest |x| (strict '>' in C)
    amax = ax[np.arange(B), imax]
    mx = x[np.arange(B), imax]
    zero = amax < F32(1e-15)
    safe_max = np.where(zero, F32(1), mx)
    w = x * x

    def sums(iscale):
        sumlx = np.zeros(B, dtype=F32)
        suml2 = np.zeros(B, dtype=F32)
        ls = np.empty((B, n), dtype=np.int32)
        for i in range(n):
            l = np.clip(nearest_int(iscale * x[:, i]), -nmax, nmax - 1)
            ls[:, i] = l
            lf = l.astype(F32)
            sumlx = sumlx + w[:, i] * x[:, i] * lf
            suml2 = suml2 + w[:, i] * lf * lf
        return sumlx, suml2, ls

    iscale = F32(-nmax) / safe_max
    sumlx, suml2, ls = sums(iscale)
    L = ls + nmax
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for is_ in range(-9, 10):
            if is_ == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(is_)) / safe_max
            sumlx, suml2, ls = sums(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[:, None], ls + nmax, L)
            new_scale = sumlx / suml2
            scale = np.where(better, new_scale, scale)
            best = np.where(better, new_scale * sumlx, best)
    L = np.where(zero[:, None], 0, L)
    scale = np.where(zero, F32(0), scale)
    return scale.astype(F32), L.astype(np.int8)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    rows, cols = x.shape
    xb = np.ascontiguousarray(x, dtype=F32).reshape(-1, QK_K)
    nb = xb.shape[0]
    sub = xb.reshape(nb, 16, 16)
    scales = np.empty((nb, 16), dtype=F32)
    L = np.empty((nb, 16, 16), dtype=np.int32)
    for ib in range(16):
        s, l = make_qx_quants_rmse1(sub[:, ib, :], 32)
        scales[:, ib] = s
        L[:, ib, :] = l
    max_scale = np.zeros(nb, dtype=F32)
    max_abs_scale = np.zeros(nb, dtype=F32)
    for ib in range(16):
        a = np.abs(scales[:, ib])
        upd = a > max_abs_scale
        max_abs_scale = np.where(upd, a, max_abs_scale)
        max_scale = np.where(upd, scales[:, ib], max_scale)
    zero = max_abs_scale < F32(1e-15)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / np.where(zero, F32(1), max_scale)
        d = fp16_round(F32(1) / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
        for j in range(16):
            dd = d.astype(F32) * sc[:, j].astype(F32)
            nz = dd != 0
            l = np.clip(nearest_int(sub[:, j, :] / dd[:, None]), -32, 31) + 32
            L[:, j, :] = np.where(nz[:, None], l, L[:, j, :])
    L = L.reshape(nb, QK_K).astype(np.uint8)
    ql = np.zeros((nb, 128), dtype=np.uint8)
    qh = np.zeros((nb, 64), dtype=np.uint8)
    for h, j in enumerate(range(0, QK_K, 128)):
        q1 = L[:, j + 0:j + 32]
        q2 = L[:, j + 32:j + 64]
        q3 = L[:, j + 64:j + 96]
        q4 = L[:, j + 96:j + 128]
        ql[:, 64 * h:64 * h + 32] = (q1 & 0xF) | ((q3 & 0xF) << 4)
        ql[:, 64 * h + 32:64 * h + 64] = (q2 & 0xF) | ((q4 & 0xF) << 4)
        qh[:, 32 * h:32 * h + 32] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    # all-zero super-blocks: memset 0, d = 0
    ql[zero] = 0
    qh[zero] = 0
    sc[zero] = 0
    d = np.where(zero, np.float16(0), d)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(-1, 1).view(np.uint8)], axis=1)
    return blocks.reshape(rows, cols // QK_K * 210)


K_QUANTIZERS = {QT.Q4_K: quantize_q4_k, QT.Q5_K: quantize_q5_k, QT.Q6_K: quantize_q6_k}


def quantize(data: np.ndarray, qtype: QT) -> np.ndarray:
    """ggml_quantize_chunk without imatrix: *_ref quantizers."""
    if qtype in K_QUANTIZERS:
        return K_QUANTIZERS[qtype](np.asarray(data, dtype=F32))
    return gguf.quants.quantize(np.asarray(data, dtype=F32), qtype)


# --------------------------------------------------------------------------
# llama-quantize (src/llama-quant.cpp), no imatrix, default params
# --------------------------------------------------------------------------
QUANT_FTYPE_DEFAULT = {
    FT.MOSTLY_Q4_0: QT.Q4_0, FT.MOSTLY_Q4_1: QT.Q4_1, FT.MOSTLY_Q5_0: QT.Q5_0,
    FT.MOSTLY_Q5_1: QT.Q5_1, FT.MOSTLY_Q8_0: QT.Q8_0,
    FT.MOSTLY_Q4_K_M: QT.Q4_K, FT.MOSTLY_Q5_K_M: QT.Q5_K, FT.MOSTLY_Q6_K: QT.Q6_K,
}
FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}


def weight_name_key(name: str) -> tuple[int, str]:
    """llama_model_loader::weight_name_comparer: by layer number (non-blk first), then name."""
    layer = -1
    if name.startswith("blk."):
        layer = int(name.split(".")[1])
    return (layer, name)


def tensor_category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_type_fallback(ncols: int, t: QT) -> QT:
    bs = gguf.GGML_QUANT_SIZES[t][0]
    if ncols % bs == 0:
        return t
    r = FALLBACK.get(t, t)
    if ncols % gguf.GGML_QUANT_SIZES[r][0] != 0:
        r = QT.F16
    return r


def llama_quantize(conv: Converted, ftype: FT) -> tuple[list[tuple[str, Any]], list[tuple[str, QT, np.ndarray]]]:
    default_type = QUANT_FTYPE_DEFAULT[ftype]
    order = sorted(conv.tensors, key=lambda t: weight_name_key(t[0]))
    names = [t[0] for t in order]
    n_attention_wv = sum(1 for n in names if tensor_category(n) in ("attn_v", "attn_qkv", "attn_kv_b"))
    has_tied_embeddings = "output.weight" not in names
    n_layer = conv.block_count
    i_attention_wv = i_ffn_down = 0
    out: list[tuple[str, QT, np.ndarray]] = []
    for name, stored_type, stored, values in order:
        ncols = values.shape[-1] if values.ndim else 1
        allows = values.ndim >= 2 and name.endswith("weight") and "_norm.weight" not in name
        if not allows:
            out.append((name, stored_type, stored))
            continue
        cat = tensor_category(name)
        new_type = default_type
        # llama_tensor_get_type_impl (only the branches reachable for these ftypes / archs)
        if cat == "output" or (has_tied_embeddings and cat == "token_embd"):
            if ncols % gguf.GGML_QUANT_SIZES[new_type][0] != 0:
                new_type = QT.Q8_0
            elif new_type != QT.Q8_0:
                new_type = QT.Q6_K
        elif cat == "token_embd":
            pass
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            if ftype in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M) and use_more_bits(i_attention_wv, n_attention_wv):
                new_type = QT.Q6_K
            i_attention_wv += 1
        elif cat == "ffn_down":
            if ftype in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M) and use_more_bits(i_ffn_down, n_layer):
                new_type = QT.Q6_K
            i_ffn_down += 1
        new_type = tensor_type_fallback(ncols, new_type)
        if new_type == stored_type:
            out.append((name, stored_type, stored))
        else:
            out.append((name, new_type, quantize(values, new_type)))
    kv = [(k, v) for k, v in conv.writer.kv_data[0].items()
          if k not in (gguf.Keys.General.QUANTIZATION_VERSION, gguf.Keys.General.FILE_TYPE)]
    kv.append((gguf.Keys.General.QUANTIZATION_VERSION, gguf.GGUFValue(gguf.GGML_QUANT_VERSION, VT.UINT32)))
    kv.append((gguf.Keys.General.FILE_TYPE, gguf.GGUFValue(int(ftype), VT.UINT32)))
    return kv, out


# --------------------------------------------------------------------------
# writing / reading back
# --------------------------------------------------------------------------
def write_writer(w: gguf.GGUFWriter, path: Path) -> None:
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


def write_gguf(path: Path, arch: str, kv: list[tuple[str, Any]], tensors: list[tuple[str, QT, np.ndarray]]) -> None:
    w = gguf.GGUFWriter(path=None, arch=arch)
    for k, v in kv:
        if k == gguf.Keys.General.ARCHITECTURE:
            continue
        w.add_key_value(k, v.value, v.type, v.sub_type)
    for name, qtype, data in tensors:
        w.add_tensor(name, data, raw_dtype=qtype)
    write_writer(w, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------
# round-trip checks for the quantized tensors
# --------------------------------------------------------------------------
def check_roundtrip(name: str, qtype: QT, data: np.ndarray, values: np.ndarray) -> float:
    deq = gguf.quants.dequantize(data, qtype).reshape(values.shape)
    err = np.abs(deq.astype(np.float64) - values.astype(np.float64))
    bs = gguf.GGML_QUANT_SIZES[qtype][0]
    if qtype in (QT.F32,):
        assert err.max() == 0, name
        return 0.0
    if qtype in (QT.F16, QT.BF16):
        rel = 2.0 ** (-11 if qtype == QT.F16 else -8)
        assert np.all(err <= np.abs(values) * rel + 6e-8), name
        return float(err.max())
    # per-block bounds: half a quantization step of rounding (a full step where the
    # format clamps: the +amax side of Q4_0/Q5_0, sub-block rescaling in the K types),
    # plus slack for the fp16 rounding of the block scale(s)
    bits = {QT.Q4_0: 4, QT.Q4_1: 4, QT.Q5_0: 5, QT.Q5_1: 5, QT.Q8_0: 8,
            QT.Q4_K: 4, QT.Q5_K: 5, QT.Q6_K: 6}[qtype]
    vb = values.reshape(-1, bs).astype(np.float64)
    eb = err.reshape(-1, bs)
    amax = np.abs(vb).max(axis=1)
    slack = amax * 2.0 ** -9 + 1e-7
    if qtype in (QT.Q4_0, QT.Q5_0):
        bound = amax / 2 ** (bits - 1) + slack
    elif qtype == QT.Q8_0:
        bound = 0.5 * amax / 127 + slack
    elif qtype in (QT.Q4_1, QT.Q5_1):
        bound = 0.5 * (vb.max(axis=1) - vb.min(axis=1)) / (2 ** bits - 1) + slack
    elif qtype == QT.Q6_K:
        bound = amax / 2 ** (bits - 1) + slack
    else:  # Q4_K / Q5_K: min clamped to <= 0
        bound = (vb.max(axis=1) - np.minimum(vb.min(axis=1), 0)) / (2 ** bits - 1) + slack
    worst = (eb.max(axis=1) / bound).max()
    assert worst <= 1.0, f"{name}: {qtype.name} round-trip error {worst:.3f} x bound"
    return float(worst)


# --------------------------------------------------------------------------
# the fixtures
# --------------------------------------------------------------------------
K_LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 448, "eos_token_id": 452, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 256, "initializer_range": 0.02, "intermediate_size": 512,
    "max_position_embeddings": 512, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 64, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
    "use_cache": True, "vocab_size": 453,
}
K_QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 448,
    "eos_token_id": 450, "hidden_act": "silu", "hidden_size": 256, "initializer_range": 0.02,
    "intermediate_size": 512, "max_position_embeddings": 512, "max_window_layers": 2,
    "model_type": "qwen2", "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 451,
}


def random_hf_checkpoint(cfg: dict, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """Seeded random weights in HF naming: matrices and biases N(0, 0.05^2), norms 1 + 0.1 N(0,1)."""
    h, f, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    nq, nkv, V = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["vocab_size"]
    bias = cfg["model_type"] == "qwen2"
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, h)
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (nq, h), p + "self_attn.k_proj.weight": (nkv, h),
            p + "self_attn.v_proj.weight": (nkv, h), p + "self_attn.o_proj.weight": (h, nq),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        })
        if bias:
            shapes.update({p + "self_attn.q_proj.bias": (nq,), p + "self_attn.k_proj.bias": (nkv,),
                           p + "self_attn.v_proj.bias": (nkv,)})
    rng = np.random.default_rng(seed)
    out = []
    for name in sorted(shapes):  # a single-file safetensors checkpoint, visited in name order
        shape = shapes[name]
        if name.endswith("norm.weight"):
            arr = (1.0 + 0.1 * rng.standard_normal(shape)).astype(F32)
        else:
            arr = (0.05 * rng.standard_normal(shape)).astype(F32)
        out.append((name, "F32", arr))
    return out


def make_k_model_dir(tmp: Path, name: str, cfg: dict, tokenizer_from: Path) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for fn in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(tokenizer_from / fn, d / fn)
    return d


def rand_finite_f16_in(rng: np.random.Generator, n: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return rng.uniform(lo, hi, size=n).astype(np.float16)


# byte offsets of the f16 scale fields in each block layout (ggml-common.h)
SCALE_FIELDS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}


def make_quant_blocks(path: Path, seed: int) -> list[tuple[str, QT]]:
    rng = np.random.default_rng(seed)
    rows, cols = 4, 512
    w = gguf.GGUFWriter(path=None, arch="quant_blocks")
    w.add_name("quant_blocks")
    w.add_description("strata test fixture: random blocks of each type (f16 scale fields finite, in [-2, 2]) "
                      "and '<name>.dequant' = gguf-py 0.19.0 gguf.quants.dequantize of it, as F32")
    listed = []
    for qtype in (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K):
        bs, ts = gguf.GGML_QUANT_SIZES[qtype]
        nblk = rows * cols // bs
        blocks = rng.integers(0, 256, size=(nblk, ts), dtype=np.uint8)
        for off in SCALE_FIELDS[qtype]:
            blocks[:, off:off + 2] = rand_finite_f16_in(rng, nblk).view(np.uint8).reshape(nblk, 2)
        data = blocks.reshape(rows, cols // bs * ts)
        deq = gguf.quants.dequantize(data, qtype).astype(F32)
        assert deq.shape == (rows, cols) and np.all(np.isfinite(deq))
        name = qtype.name.lower()
        w.add_tensor(name, data, raw_dtype=qtype)
        w.add_tensor(name + ".dequant", deq, raw_dtype=QT.F32)
        listed += [(name, qtype), (name + ".dequant", QT.F32)]
    # F16: random finite bit patterns (normals, subnormals, +-0, up to +-65504)
    bits = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & ~np.uint16(0x4000), bits).astype(np.uint16)
    f16 = bits.view(np.float16)
    assert np.all(np.isfinite(f16))
    w.add_tensor("f16", f16, raw_dtype=QT.F16)
    w.add_tensor("f16.dequant", gguf.quants.dequantize(f16.view(np.uint8), QT.F16).astype(F32), raw_dtype=QT.F32)
    # BF16: random finite bit patterns (exponent != 0xFF; includes subnormals and +-0)
    bits = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
    bits = np.where((bits & 0x7F80) == 0x7F80, bits & ~np.uint16(0x4000), bits).astype(np.uint16)
    bf = bits.view(np.uint8).reshape(rows, cols * 2)
    bdeq = gguf.quants.dequantize(bf, QT.BF16).astype(F32)
    assert bdeq.shape == (rows, cols) and np.all(np.isfinite(bdeq))
    w.add_tensor("bf16", bf, raw_dtype=QT.BF16)
    w.add_tensor("bf16.dequant", bdeq, raw_dtype=QT.F32)
    listed += [("f16", QT.F16), ("f16.dequant", QT.F32), ("bf16", QT.BF16), ("bf16.dequant", QT.F32)]
    write_writer(w, path)
    return listed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures" / "gguf")
    ap.add_argument("--models", type=Path, default=MODELS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    worst: dict[str, float] = {}

    def emit_converted(conv: Converted, fname: str) -> None:
        path = out / fname
        write_writer(conv.writer, path)
        for name, qtype, data, values in conv.tensors:
            worst[f"{fname}:{name}"] = check_roundtrip(f"{fname}:{name}", qtype, data, values)
        written.append(path)

    def emit_quantized(conv: Converted, ftype: FT, fname: str) -> None:
        kv, tensors = llama_quantize(conv, ftype)
        values = {n: v for n, _, _, v in conv.tensors}
        for name, qtype, data in tensors:
            worst[f"{fname}:{name}"] = check_roundtrip(f"{fname}:{name}", qtype, data, values[name])
        path = out / fname
        write_gguf(path, conv.arch, kv, tensors)
        written.append(path)

    # --- tiny-qwen2 (f32 source): convert --outtype f16; llama-quantize from --outtype f32
    d = args.models / "tiny-qwen2"
    hf = load_hf_tensors(d)
    emit_converted(convert_hf_to_gguf(d, hf, "f16"), "tiny-qwen2-f16.gguf")
    base = convert_hf_to_gguf(d, hf, "f32")
    for ft, suffix in ((FT.MOSTLY_Q8_0, "q8_0"), (FT.MOSTLY_Q4_0, "q4_0"), (FT.MOSTLY_Q5_1, "q5_1")):
        emit_quantized(base, ft, f"tiny-qwen2-{suffix}.gguf")

    # --- tiny-llama (bf16 source): convert --outtype bf16; llama-quantize from it
    d = args.models / "tiny-llama"
    hf = load_hf_tensors(d)
    base = convert_hf_to_gguf(d, hf, "bf16")
    emit_converted(base, "tiny-llama-bf16.gguf")
    base = convert_hf_to_gguf(d, hf, "bf16")  # (the writer above was consumed)
    for ft, suffix in ((FT.MOSTLY_Q8_0, "q8_0"), (FT.MOSTLY_Q4_1, "q4_1"), (FT.MOSTLY_Q5_0, "q5_0")):
        emit_quantized(base, ft, f"tiny-llama-{suffix}.gguf")

    # --- tiny-qwen3 (f16 source): convert --outtype f32 and --outtype q8_0 (converter's own Q8_0)
    d = args.models / "tiny-qwen3"
    hf = load_hf_tensors(d)
    emit_converted(convert_hf_to_gguf(d, hf, "f32"), "tiny-qwen3-f32.gguf")
    emit_converted(convert_hf_to_gguf(d, hf, "q8_0"), "tiny-qwen3-q8_0.gguf")

    # --- K-quant models (random f32 weights at dims K types fit); llama-quantize from --outtype f32
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kd = make_k_model_dir(tmp, "tiny-k-llama", K_LLAMA_CONFIG, args.models / "tiny-llama")
        base = convert_hf_to_gguf(kd, random_hf_checkpoint(K_LLAMA_CONFIG, seed=20251), "f32")
        for ft, suffix in ((FT.MOSTLY_Q4_K_M, "q4_k_m"), (FT.MOSTLY_Q5_K_M, "q5_k_m"), (FT.MOSTLY_Q6_K, "q6_k")):
            emit_quantized(base, ft, f"tiny-k-llama-{suffix}.gguf")
        kd = make_k_model_dir(tmp, "tiny-k-qwen2", K_QWEN2_CONFIG, args.models / "tiny-qwen2")
        base = convert_hf_to_gguf(kd, random_hf_checkpoint(K_QWEN2_CONFIG, seed=20252), "f32")
        emit_quantized(base, FT.MOSTLY_Q4_K_M, "tiny-k-qwen2-q4_k_m.gguf")

    # --- raw blocks of every type + reference dequantization
    qb = out / "quant_blocks.gguf"
    make_quant_blocks(qb, seed=20253)
    written.append(qb)

    # --- read everything back, manifest + table
    manifest: dict[str, Any] = {}
    rows = []
    for path in written:
        r = gguf.GGUFReader(path)
        types = Counter(t.tensor_type.name for t in r.tensors)
        ft_field = r.get_field(gguf.Keys.General.FILE_TYPE)
        file_type = int(ft_field.contents()) if ft_field is not None else None
        manifest[path.name] = {
            "sha256": sha256(path),
            "size": path.stat().st_size,
            "file_type": file_type,
            "kv_keys": [f.name for f in r.fields.values() if not f.name.startswith("GGUF.")],
            "tensors": {t.name: {"type": t.tensor_type.name, "ne": [int(x) for x in t.shape]} for t in r.tensors},
        }
        rows.append((path.name, path.stat().st_size, ", ".join(f"{k}:{v}" for k, v in sorted(types.items()))))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")

    w1 = max(len(r[0]) for r in rows)
    print(f"{'file':<{w1}}  {'bytes':>9}  tensor types")
    for name, size, types in rows:
        print(f"{name:<{w1}}  {size:>9}  {types}")
    total = sum(r[1] for r in rows)
    print(f"{'total':<{w1}}  {total:>9}")
    kq = {k: v for k, v in worst.items() if any(s in k for s in ("tiny-k-",))}
    print(f"round-trip: worst error / bound = {max(worst.values()):.3f} (all files), "
          f"{max(kq.values()):.3f} (K-quant files)")


if __name__ == "__main__":
    sys.exit(main())
