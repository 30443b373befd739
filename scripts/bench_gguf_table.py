"""Table of scripts/bench_gguf.sh results: strata and llama.cpp tok/s and their ratio."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
key = lambda r: (r["shape"], r["type"], r["kind"], r["n"])  # noqa: E731
llama = {key(r): r for r in rows if r["engine"] == "llama.cpp"}
print("| model | type | measure | llama.cpp tok/s | strata tok/s | strata / llama.cpp | strata share of bandwidth limit |")
print("|---|---|---|---:|---:|---:|---:|")
for r in rows:
    if r["engine"] != "strata":
        continue
    ref = llama.get(key(r))
    what = f"prefill {r['n']}" if r["kind"] == "prefill" else f"decode after {r['n']}"
    share = f"{r['bandwidth_fraction']:.2f}" if "bandwidth_fraction" in r else ""
    ratio = f"{r['tok_s'] / ref['tok_s']:.2f}x" if ref else "n/a"
    print(f"| {r['shape']} | {r['type']} | {what} | {ref['tok_s'] if ref else float('nan'):.1f} | {r['tok_s']:.1f} | {ratio} | {share} |")
