#!/usr/bin/env bash
# One run, one machine, same weights: PyTorch transformers and llama.cpp
# (scripts/bench_reference.sh), then `strata bench` on the same Qwen2.5-0.5B-
# shaped checkpoints, then a table of strata's figures as ratios to theirs.
# Usage: scripts/bench_compare.sh [ROOT]   (default /tmp/strata-bench)
# Run it on an otherwise idle machine: each engine uses both cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${1:-/tmp/strata-bench}"
cd "$HERE"
cargo build --release -p strata
scripts/bench_reference.sh --root "$ROOT" --out "$ROOT/reference.json" --wait-idle 60
for d in f32 bf16; do
  model="$ROOT/qwen2.5-0.5b-shape-$d"
  # Same shapes of work as the reference: a 512-token prefill then batch-1
  # decode; batch-32 decode after 8-token prompts, 16 steps.
  target/release/strata bench --model "$model" --batch-sizes 1 --prompt-len 512 --decode-steps 64 \
    --json "$ROOT/strata-$d-b1.json"
  target/release/strata bench --model "$model" --batch-sizes 32 --prompt-len 8 --decode-steps 16 \
    --json "$ROOT/strata-$d-b32.json"
done
python3 scripts/bench_table.py "$ROOT"
