#!/usr/bin/env python3
"""Reference CPU benchmarks (PyTorch transformers and llama.cpp) for strata.

Builds a Qwen2.5-0.5B-shaped model with deterministic random weights (same
weights for every engine), in f32 and bf16, as plain HF directories:

    <root>/qwen2.5-0.5b-shape-f32/   config.json  model.safetensors  tokenizer.json ...
    <root>/qwen2.5-0.5b-shape-bf16/  config.json  model.safetensors  tokenizer.json ...
    <root>/gguf/qwen2.5-0.5b-shape-{f32,bf16}.gguf

(the GGUF is written directly with the `gguf` package, tensor-for-tensor from the
same safetensors, F32 resp. BF16 for 2-D tensors; 1-D norms/biases stay F32 as
llama.cpp's converter does). Then measures

  llama.cpp (llama-cpp-python): batch-1 decode tok/s, 512-token prefill tok/s
  transformers (torch):         batch-1 decode tok/s, batch-B decode total tok/s,
                                512-token prefill tok/s

with a fixed thread count (default 2), prints a table and writes JSON (--out).
Each measurement is bounded both in tokens and in seconds (--max-seconds).
Point `strata bench --model DIR` at the same directories for comparison.
Run through scripts/bench_reference.sh, which sets up the pinned venv.
"""

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent

QWEN05_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
SEED = 20240607
CHECK_PROMPT = [9, 100, 200, 300, 17, 42, 99, 447]
DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Model directory creation
# --------------------------------------------------------------------------
def gen_state_dict(torch):
    """Deterministic random Qwen2 weights (f32, HF names, tied embeddings -> no lm_head)."""
    c = QWEN05_CONFIG
    H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    hd = H // c["num_attention_heads"]
    kvd = hd * c["num_key_value_heads"]
    g = torch.Generator().manual_seed(SEED)

    def rnd(*shape, std=0.02, mean=0.0):
        t = torch.empty(*shape, dtype=torch.float32)
        t.normal_(mean, std, generator=g)
        return t

    sd = {"model.embed_tokens.weight": rnd(V, H), "model.norm.weight": rnd(H, std=0.1, mean=1.0)}
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = rnd(H, std=0.1, mean=1.0)
        sd[p + "post_attention_layernorm.weight"] = rnd(H, std=0.1, mean=1.0)
        sd[p + "self_attn.q_proj.weight"] = rnd(H, H)
        sd[p + "self_attn.q_proj.bias"] = rnd(H, std=0.1)
        sd[p + "self_attn.k_proj.weight"] = rnd(kvd, H)
        sd[p + "self_attn.k_proj.bias"] = rnd(kvd, std=0.1)
        sd[p + "self_attn.v_proj.weight"] = rnd(kvd, H)
        sd[p + "self_attn.v_proj.bias"] = rnd(kvd, std=0.1)
        sd[p + "self_attn.o_proj.weight"] = rnd(H, H)
        sd[p + "mlp.gate_proj.weight"] = rnd(I, H)
        sd[p + "mlp.up_proj.weight"] = rnd(I, H)
        sd[p + "mlp.down_proj.weight"] = rnd(H, I)
    return sd


def hf_to_gguf_name(name):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    parts = name.split(".")  # model.layers.{i}.<module...>
    i = parts[2]
    rest = ".".join(parts[3:])
    table = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    return f"blk.{i}.{table[rest]}"


def write_gguf(path, sd, dtype_name, tok_json, cfg):
    import numpy as np
    import gguf

    c = QWEN05_CONFIG
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(f"qwen2.5-0.5b-shape-random-{dtype_name}")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype_name == "f32" else gguf.LlamaFileType.MOSTLY_BF16)

    # Tokenizer: the small BPE, padded with [PAD{i}] (type UNUSED) up to vocab_size,
    # exactly like llama.cpp's convert_hf_to_gguf.py does for gpt2-style vocabs.
    model = tok_json["model"]
    vocab = dict(model["vocab"])
    specials = {}
    for t in tok_json["added_tokens"]:
        vocab[t["content"]] = t["id"]
        specials[t["id"]] = t["special"]
    rev = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(c["vocab_size"]):
        if i in rev:
            tokens.append(rev[i])
            types.append(gguf.TokenType.CONTROL if specials.get(i) else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["bos_token_id"])
    w.add_add_bos_token(False)

    for name in sorted(sd):
        t = sd[name].float().numpy()
        gname = hf_to_gguf_name(name)
        if dtype_name == "f32" or t.ndim == 1:
            w.add_tensor(gname, np.ascontiguousarray(t, dtype=np.float32))
        else:
            q = gguf.quants.quantize(np.ascontiguousarray(t, dtype=np.float32), gguf.GGMLQuantizationType.BF16)
            w.add_tensor(gname, q, raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_path(root: Path, d: str) -> Path:
    return root / "gguf" / f"qwen2.5-0.5b-shape-{d}.gguf"


def make_model_dirs(root: Path, dtypes, force: bool):
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(SCRIPTS))
    from make_fixtures import build_tokenizer, tokenizer_config, QWEN_SPECIALS  # noqa: E402

    dirs = {}
    pending = [d for d in dtypes if force or not (root / f"qwen2.5-0.5b-shape-{d}" / ".complete").exists()]
    sd = None
    if pending:
        log(f"[setup] generating random weights (seed {SEED}) ...")
        t0 = time.time()
        sd = gen_state_dict(torch)
        log(f"[setup] {sum(v.numel() for v in sd.values()) / 1e6:.1f}M params in {time.time() - t0:.1f}s")
        tok = build_tokenizer("qwen")
    for d in dtypes:
        out = root / f"qwen2.5-0.5b-shape-{d}"
        dirs[d] = out
        if d not in pending:
            log(f"[setup] {out} exists, reusing (use --force to rebuild)")
            continue
        out.mkdir(parents=True, exist_ok=True)
        (out / ".complete").unlink(missing_ok=True)
        tdtype = torch.float32 if d == "f32" else torch.bfloat16
        ids = {s: tok.token_to_id(s) for s in QWEN_SPECIALS}
        cfg = dict(QWEN05_CONFIG)
        cfg.update({"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                    "torch_dtype": DTYPE_NAMES[d], "transformers_version": None})
        import transformers
        cfg["transformers_version"] = transformers.__version__
        (out / "config.json").write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")
        (out / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "do_sample": False}, indent=2) + "\n")
        tok.save(str(out / "tokenizer.json"), pretty=True)
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config("qwen", tok), indent=2) + "\n")
        sdd = {k: v.to(tdtype).contiguous() for k, v in sd.items()}
        log(f"[setup] writing {out}/model.safetensors ({d}) ...")
        save_file(sdd, str(out / "model.safetensors"), metadata={"format": "pt"})
        gg = gguf_path(root, d)
        gg.parent.mkdir(parents=True, exist_ok=True)
        log(f"[setup] writing {gg} ...")
        write_gguf(gg, sdd, d, json.loads((out / "tokenizer.json").read_text()), cfg)
        del sdd
        gc.collect()
        (out / ".complete").write_text("ok\n")
    del sd
    gc.collect()
    return dirs


# --------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------
def prompt_tokens(n, vocab_hi, seed):
    import random

    r = random.Random(seed)
    return [r.randrange(0, vocab_hi) for _ in range(n)]


def last_logits(llm):
    """Logits of the last evaluated token (Llama.scores is only filled with logits_all=True)."""
    import numpy as np

    ptr = llm._ctx.get_logits_ith(-1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def bench_llamacpp(gguf_path: Path, args):
    import numpy as np
    from llama_cpp import Llama

    res = {}
    llm = Llama(model_path=str(gguf_path), n_ctx=args.prefill_tokens + args.decode_tokens + 64,
                n_batch=args.prefill_tokens, n_ubatch=args.prefill_tokens, n_threads=args.threads,
                n_threads_batch=args.threads, use_mmap=True, verbose=False, logits_all=False, seed=0)
    # Token ids drawn from the real BPE range (all embedding rows are equally cheap anyway).
    vocab_hi = 448
    # --- prefill ---
    toks = prompt_tokens(args.prefill_tokens, vocab_hi, 1)
    llm.reset()
    llm.eval(toks[:16])  # warm-up
    times = []
    t_start = time.perf_counter()
    for _ in range(args.prefill_reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > args.max_seconds:
            break
    best = min(times)
    res["prefill_tok_s"] = args.prefill_tokens / best
    res["prefill_s"] = best
    # --- batch-1 greedy decode after a short prompt ---
    llm.reset()
    llm.eval(prompt_tokens(8, vocab_hi, 2))
    n = 0
    t0 = time.perf_counter()
    while n < args.decode_tokens:
        nxt = int(np.argmax(last_logits(llm)))
        llm.eval([nxt])
        n += 1
        if time.perf_counter() - t0 > args.max_seconds:
            break
    dt = time.perf_counter() - t0
    res["decode_b1_tok_s"] = n / dt
    res["decode_b1_tokens"] = n
    # Last-position logits of a fixed 8-token prompt, for the cross-engine weight check.
    llm.reset()
    llm.eval(CHECK_PROMPT)
    res["_check_logits"] = np.array(last_logits(llm), dtype=np.float32)
    del llm
    gc.collect()
    return res


def bench_torch(model_dir: Path, dtype_name: str, args):
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(args.threads)
    dtype = torch.float32 if dtype_name == "f32" else torch.bfloat16
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation="sdpa").eval()
    log(f"  [torch {dtype_name}] loaded in {time.perf_counter() - t0:.1f}s")
    vocab_hi = 448
    res = {}
    with torch.inference_mode():
        # warm-up
        model(torch.tensor([prompt_tokens(16, vocab_hi, 3)]), use_cache=True, logits_to_keep=1)
        # --- prefill (logits only for the last position, like llama.cpp) ---
        ids = torch.tensor([prompt_tokens(args.prefill_tokens, vocab_hi, 1)])
        times = []
        t_start = time.perf_counter()
        for _ in range(args.prefill_reps):
            t0 = time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1)
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - t_start > args.max_seconds:
                break
        best = min(times)
        res["prefill_tok_s"] = args.prefill_tokens / best
        res["prefill_s"] = best
        log(f"  [torch {dtype_name}] prefill {res['prefill_tok_s']:.1f} tok/s")
        res["_check_logits"] = model(torch.tensor([CHECK_PROMPT]), logits_to_keep=1).logits[0, -1].float().numpy()

        # --- greedy decode with KV cache, batch 1 and batch B ---
        def decode(batch, max_new):
            x = torch.tensor([prompt_tokens(8, vocab_hi, 100 + b) for b in range(batch)])
            cache = DynamicCache()
            out = model(x, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            n = 0
            t0 = time.perf_counter()
            while n < max_new:
                out = model(nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                n += 1
                if time.perf_counter() - t0 > args.max_seconds:
                    break
            dt = time.perf_counter() - t0
            return n, dt

        n, dt = decode(1, args.decode_tokens)
        res["decode_b1_tok_s"] = n / dt
        res["decode_b1_tokens"] = n
        log(f"  [torch {dtype_name}] decode b1 {res['decode_b1_tok_s']:.2f} tok/s ({n} tokens)")
        n, dt = decode(args.batch, args.batch_decode_steps)
        res[f"decode_b{args.batch}_total_tok_s"] = args.batch * n / dt
        res[f"decode_b{args.batch}_steps"] = n
        log(f"  [torch {dtype_name}] decode b{args.batch} {res[f'decode_b{args.batch}_total_tok_s']:.2f} tok/s total")
    del model
    gc.collect()
    return res


def wait_idle(max_wait):
    """Wait (up to max_wait s) for the 1-min load average to fall below 0.5: the numbers
    are only meaningful on an otherwise idle machine."""
    t0 = time.time()
    warned = False
    while max_wait > 0 and (loadavg() or 0) > 0.5 and time.time() - t0 < max_wait:
        if not warned:
            log(f"[wait] load average {loadavg()} > 0.5, waiting up to {max_wait:.0f}s for an idle machine ...")
            warned = True
        time.sleep(5)
    if (loadavg() or 0) > 1.0:
        log(f"[warn] load average {loadavg()}: other processes are using the CPU, results will be pessimistic")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/strata-bench", help="where the model dirs are created")
    ap.add_argument("--out", default=None, help="write results JSON here")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--engines", default="llamacpp,torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--prefill-reps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batch-decode-steps", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=45.0, help="time cap per measurement loop")
    ap.add_argument("--force", action="store_true", help="rebuild model dirs")
    ap.add_argument("--wait-idle", type=float, default=120.0,
                    help="before each engine, wait up to this many seconds for load avg < 0.5")
    ap.add_argument("--setup-only", action="store_true", help="only create the model dirs")
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    dirs = make_model_dirs(Path(args.root), dtypes, args.force)
    if args.setup_only:
        for d, p in dirs.items():
            print(f"{d}: {p}  (gguf: {gguf_path(Path(args.root), d)})")
        return 0

    results = []
    for d in dtypes:
        for eng in engines:
            wait_idle(args.wait_idle)
            before = loadavg()
            log(f"[{eng} {d}] ... (load avg {before})")
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if eng == "llamacpp":
                r = bench_llamacpp(gguf_path(Path(args.root), d), args)
                r = {"engine": "llama.cpp", "dtype": d, "model_dir": str(dirs[d]),
                     "gguf": str(gguf_path(Path(args.root), d)), **r}
            elif eng == "torch":
                r = {"engine": "transformers", "dtype": d, "model_dir": str(dirs[d]), **bench_torch(dirs[d], d, args)}
            else:
                raise SystemExit(f"unknown engine {eng}")
            # Fraction of `threads` cores this process actually got (1.0 = uncontended).
            r["cpu_share"] = (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * args.threads)
            r["loadavg_1m_before"] = before
            r["loadavg_1m_after"] = loadavg()
            log(f"  [{eng} {d}] " + ", ".join(f"{k}={v:.2f}" for k, v in r.items() if isinstance(v, float)))
            results.append(r)

    # Same-weights check: llama.cpp vs transformers last-token logits per dtype.
    import numpy as np
    checks = {}
    for d in dtypes:
        ls = [r for r in results if r["dtype"] == d and "_check_logits" in r]
        if len(ls) == 2:
            a, b = ls[0]["_check_logits"], ls[1]["_check_logits"]
            checks[d] = {"max_abs_diff": float(np.abs(a - b).max()), "logit_std": float(b.std()),
                         "same_argmax": bool(a.argmax() == b.argmax())}
            log(f"[check {d}] llama.cpp vs transformers logits: {checks[d]}")
    for r in results:
        r.pop("_check_logits", None)

    versions = {"python": platform.python_version()}
    from importlib.metadata import version as dist_version
    for dist in ("torch", "transformers", "llama-cpp-python", "gguf", "numpy", "safetensors"):
        try:
            versions[dist] = dist_version(dist)
        except Exception:  # noqa: BLE001
            pass
    bkey = f"decode_b{args.batch}_total_tok_s"
    print()
    print(f"Qwen2.5-0.5B-shaped random model, threads={args.threads}, prefill={args.prefill_tokens} tok, "
          f"decode b1={args.decode_tokens} tok after 8-tok prompt, b{args.batch}={args.batch_decode_steps} steps")
    hdr = f"{'engine':<14}{'dtype':<6}{'prefill tok/s':>15}{'decode b1 tok/s':>17}{f'decode b{args.batch} tok/s':>18}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        b = r.get(bkey)
        print(f"{r['engine']:<14}{r['dtype']:<6}{r['prefill_tok_s']:>15.1f}{r['decode_b1_tok_s']:>17.2f}"
              f"{(f'{b:.2f}' if b is not None else '-'):>18}")
    doc = {
        "model": "Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 heads, 2 kv heads, ffn 4864, vocab 151936, tied), random weights",
        "seed": SEED,
        "threads": args.threads,
        "settings": {k: getattr(args, k) for k in ("decode_tokens", "prefill_tokens", "prefill_reps", "batch",
                                                   "batch_decode_steps", "max_seconds")},
        "machine": {"cpu": _cpu_name(), "nproc": os.cpu_count(), "platform": platform.platform()},
        "versions": versions,
        "results": results,
        "logits_check_llamacpp_vs_transformers": checks,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
