#!/usr/bin/env bash
# Reference CPU benchmarks (transformers + llama.cpp) on a Qwen2.5-0.5B-shaped random model.
# Creates/reuses a pinned venv at .venv-bench; llama-cpp-python is compiled from source
# by pip (plain CPU build with AVX2/FMA; ~30 min on 2 cores the first time).
# Usage: scripts/bench_reference.sh [--out results.json] [--root /tmp/strata-bench] [...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
REQ="$ROOT/scripts/requirements-bench.txt"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" "$ROOT/scripts/requirements-fixtures.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ] || ! "$VPY" -c "import torch, transformers, gguf, llama_cpp" 2>/dev/null; then
  grep -vE '^(torch==|llama-cpp-python==|#|$)' "$REQ" > "$VENV/req-rest.txt"
  "${PIP[@]}" -r "$VENV/req-rest.txt"
  torch_req="$(grep -E '^torch==' "$REQ")"
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    "${PIP[@]}" --no-deps "$torch_req"
    if ! "$VPY" -c "import torch; torch.zeros(1)" 2>/dev/null; then
      echo "bench_reference.sh: torch without its CUDA deps does not import; installing normally (large download)" >&2
      "${PIP[@]}" "$torch_req"
    fi
  fi
  llama_req="$(grep -E '^llama-cpp-python==' "$REQ")"
  if ! "$VPY" -c "import llama_cpp" 2>/dev/null; then
    echo "bench_reference.sh: building $llama_req from source (CPU, AVX2/FMA); this takes a while ..." >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "${PIP[@]}" --no-cache-dir "$llama_req"
  fi
  "$VPY" -c "import torch, transformers, llama_cpp, gguf; print('torch', torch.__version__, 'transformers', transformers.__version__, 'llama_cpp', llama_cpp.__version__, 'gguf', __import__('importlib.metadata').metadata.version('gguf'))"
  echo "$want" > "$STAMP"
fi

exec "$VPY" "$ROOT/scripts/bench_reference.py" "$@"
