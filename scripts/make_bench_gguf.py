"""Write a full-size, randomly initialised F16 GGUF of a real model's shape, for
scripts/bench_gguf.sh (the hub is not reachable here; the shapes, tensor types and
metadata are those of the real checkpoints, so both engines do the real work).

Usage: python make_bench_gguf.py SHAPE OUT.gguf, SHAPE in qwen2.5-0.5b, llama-3.2-1b.
Uses make_gguf_fixtures.py's transcription of convert_hf_to_gguf.py (same keys, names,
Q/K permutation, llama3 rope_freqs tensor) on an HF-layout checkpoint of seeded random
weights, with the fixture tokenizer (and its special-token ids) padded to the model's vocabulary
([PADn] tokens).
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import make_gguf_fixtures as fx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    # Qwen/Qwen2.5-0.5B config.json
    "qwen2.5-0.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        torch_dtype="float32", bos_token_id=448, eos_token_id=450, attention_dropout=0.0,
        hidden_act="silu", initializer_range=0.02, rope_scaling=None, use_cache=True,
        tokenizer="tiny-qwen2",
    ),
    # meta-llama/Llama-3.2-1B config.json
    "llama-3.2-1b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                          original_max_position_embeddings=8192, rope_type="llama3"),
        torch_dtype="float32", bos_token_id=448, eos_token_id=452, attention_bias=False,
        attention_dropout=0.0, hidden_act="silu", initializer_range=0.02, mlp_bias=False,
        pretraining_tp=1, use_cache=True,
        tokenizer="tiny-llama",
    ),
}


def main() -> None:
    shape, out = sys.argv[1], Path(sys.argv[2])
    cfg = dict(SHAPES[shape])
    tok = cfg.pop("tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        d = fx.make_k_model_dir(Path(tmp), shape, cfg, ROOT / "fixtures" / "models" / tok)
        hf = fx.random_hf_checkpoint(cfg, seed=7)
        # N(0, 0.05^2) at these widths saturates the residual stream; use the
        # usual initialiser scale instead.
        hf = [(n, t, (a if n.endswith("norm.weight") else (a * 0.4).astype(np.float32))) for n, t, a in hf]
        conv = fx.convert_hf_to_gguf(d, hf, "f16")
        out.parent.mkdir(parents=True, exist_ok=True)
        fx.write_writer(conv.writer, out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
