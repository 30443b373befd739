#!/usr/bin/env python3
"""Prints strata's benchmark figures next to transformers' and llama.cpp's,
as ratios from the same run (files written by scripts/bench_compare.sh)."""
import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/strata-bench")
ref = json.loads((root / "reference.json").read_text())
rows = []
for dtype in ("f32", "bf16"):
    b1 = json.loads((root / f"strata-{dtype}-b1.json").read_text())
    b32 = json.loads((root / f"strata-{dtype}-b32.json").read_text())
    strata = {
        "prefill": b1["rows"][0]["prefill_tok_s"],
        "decode_b1": b1["rows"][0]["decode_tok_s"],
        "decode_b32": b32["rows"][0]["decode_tok_s"],
    }
    other = {r["engine"]: r for r in ref["results"] if r["dtype"] == dtype}
    lc, tf = other.get("llama.cpp", {}), other.get("transformers", {})
    def ratio(a, b):
        return f"{a / b:.2f}x" if b else "-"
    rows.append((dtype, "prefill 512 tok/s", strata["prefill"], lc.get("prefill_tok_s"), tf.get("prefill_tok_s")))
    rows.append((dtype, "decode b1 tok/s", strata["decode_b1"], lc.get("decode_b1_tok_s"), tf.get("decode_b1_tok_s")))
    rows.append((dtype, "decode b32 total tok/s", strata["decode_b32"], None, tf.get("decode_b32_total_tok_s")))
    rows.append((dtype, "peak RSS / (weights + KV pool)", b1["peak_rss_bytes"] / (b1["weight_bytes"] + b1["kv_pool_bytes"]), None, None))
    rows.append((dtype, "decode b1 bandwidth limit tok/s", b1["decode_limit_tok_s"], None, None))

print("| dtype | figure | strata | llama.cpp | transformers | strata / llama.cpp | strata / transformers |")
print("|---|---|---:|---:|---:|---:|---:|")
fmt = lambda v: "-" if v is None else f"{v:.2f}" if v < 10 else f"{v:.1f}"
for dtype, name, s, lc, tf in rows:
    print(f"| {dtype} | {name} | {fmt(s)} | {fmt(lc)} | {fmt(tf)} | "
          f"{(f'{s / lc:.2f}x' if lc else '-')} | {(f'{s / tf:.2f}x' if tf else '-')} |")
