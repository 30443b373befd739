#!/usr/bin/env bash
# strata against llama.cpp on the same GGUF files: one run, one machine, the same
# thread count. For each model shape (random weights, real shapes: make_bench_gguf.py)
# and each llama-quantize type:
#   - prefill of P tokens (llama-bench -p P -n 0; strata bench --prompt-len P, one step)
#   - batch-1 decode after a context of D tokens (llama-bench -n 32 -d D; strata bench
#     --prompt-len D --decode-steps 32)
# and prints one table of tok/s with strata/llama.cpp ratios, plus strata's fraction of
# the read-bandwidth limit. Results: target/bench-gguf/results.json.
#
# Env: SHAPES ("qwen2.5-0.5b llama-3.2-1b"), TYPES ("Q8_0 Q4_K_M"), DEPTHS ("16 512 2048"),
#      PREFILL ("512"), THREADS (2), REPS (2), BENCH_GGUF_DIR (target/bench-gguf).
# Builds llama.cpp (scripts/build_llama_cpp.sh), strata (release) and the gguf venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${BENCH_GGUF_DIR:-$ROOT/target/bench-gguf}"
SHAPES="${SHAPES:-qwen2.5-0.5b llama-3.2-1b}"
TYPES="${TYPES:-Q8_0 Q4_K_M}"
DEPTHS="${DEPTHS:-16 512 2048}"
PREFILL="${PREFILL:-512}"
THREADS="${THREADS:-2}"
REPS="${REPS:-2}"
mkdir -p "$OUT"

# llama.cpp with the instruction sets strata's kernels use here (AVX2, plus AVX-VNNI and
# AVX-512 VNNI where the CPU has them; LLAMA_CPP_ISA=avx2 with STRATA_CPU_ISA=avx2
# compares AVX2 alone, LLAMA_CPP_ISA=avxvnni with STRATA_CPU_ISA=avxvnni AVX-VNNI).
LLAMA_BIN="$("$ROOT/scripts/build_llama_cpp.sh" | tail -1)"
(cd "$ROOT" && cargo build --release -p strata)
STRATA="$ROOT/target/release/strata"

# The gguf-py venv of make_gguf_fixtures.sh (same pins).
VENV="${GGUF_FIXTURES_VENV:-$ROOT/.venv-gguf}"
if ! "$VENV/bin/python" -c "import gguf, numpy" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$ROOT/scripts/requirements-gguf.txt"
fi

export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
RESULTS="$OUT/runs.jsonl"
: > "$RESULTS"
for shape in $SHAPES; do
  f16="$OUT/$shape-f16.gguf"
  [ -s "$f16" ] || "$VENV/bin/python" "$ROOT/scripts/make_bench_gguf.py" "$shape" "$f16"
  for type in $TYPES; do
    file="$OUT/$shape-$(echo "$type" | tr 'A-Z' 'a-z').gguf"
    [ -s "$file" ] || "$LLAMA_BIN/llama-quantize" "$f16" "$file" "$type" "$THREADS" > "$OUT/quantize.log" 2>&1
    for p in $PREFILL; do
      echo "== $shape $type prefill $p" >&2
      "$LLAMA_BIN/llama-bench" -m "$file" -t "$THREADS" -p "$p" -n 0 -r "$REPS" -o json 2>/dev/null \
        | python3 -c 'import json,sys; [print(json.dumps({"engine":"llama.cpp","shape":sys.argv[1],"type":sys.argv[2],"kind":"prefill","n":int(sys.argv[3]),"tok_s":r["avg_ts"]})) for r in json.load(sys.stdin)]' "$shape" "$type" "$p" >> "$RESULTS"
      "$STRATA" bench "$file" --batch-sizes 1 --prompt-len "$p" --decode-steps 1 --json "$OUT/strata.json" > /dev/null 2>&1
      python3 -c 'import json,sys; d=json.load(open(sys.argv[4])); r=d["rows"][0]; print(json.dumps({"engine":"strata","shape":sys.argv[1],"type":sys.argv[2],"kind":"prefill","n":int(sys.argv[3]),"tok_s":r["prefill_tok_s"]}))' "$shape" "$type" "$p" "$OUT/strata.json" >> "$RESULTS"
    done
    for d in $DEPTHS; do
      echo "== $shape $type decode at depth $d" >&2
      "$LLAMA_BIN/llama-bench" -m "$file" -t "$THREADS" -p 0 -n 32 -d "$d" -r "$REPS" -o json 2>/dev/null \
        | python3 -c 'import json,sys; [print(json.dumps({"engine":"llama.cpp","shape":sys.argv[1],"type":sys.argv[2],"kind":"decode","n":int(sys.argv[3]),"tok_s":r["avg_ts"]})) for r in json.load(sys.stdin)]' "$shape" "$type" "$d" >> "$RESULTS"
      "$STRATA" bench "$file" --batch-sizes 1 --prompt-len "$d" --decode-steps 32 --json "$OUT/strata.json" > /dev/null 2>&1
      python3 -c 'import json,sys; d=json.load(open(sys.argv[4])); r=d["rows"][0]; print(json.dumps({"engine":"strata","shape":sys.argv[1],"type":sys.argv[2],"kind":"decode","n":int(sys.argv[3]),"tok_s":r["decode_tok_s"],"bandwidth_fraction":r["decode_tok_s"]/d["decode_limit_tok_s"],"read_gb_s":d["read_bandwidth_bytes_per_s"]/1e9,"weight_mib":d["weight_bytes"]/2**20,"peak_rss_mib":d["peak_rss_bytes"]/2**20}))' "$shape" "$type" "$d" "$OUT/strata.json" >> "$RESULTS"
    done
  done
done
python3 "$ROOT/scripts/bench_gguf_table.py" "$RESULTS" | tee "$OUT/table.md"
