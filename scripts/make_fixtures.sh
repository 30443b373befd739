#!/usr/bin/env bash
# Regenerate fixtures/models/* (tiny random HF checkpoints + reference outputs).
# Creates/reuses a pinned venv at .venv-fixtures (CPU-only use of torch).
# Usage: scripts/make_fixtures.sh [extra args for make_fixtures.py]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FIXTURES_VENV:-$ROOT/.venv-fixtures}"
REQ="$ROOT/scripts/requirements-fixtures.txt"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ] || ! "$VPY" -c "import torch, transformers, tokenizers, safetensors" 2>/dev/null; then
  torch_req="$(grep -E '^torch==' "$REQ")"
  # Everything except torch, pinned.
  grep -vE '^(torch==|#|$)' "$REQ" > "$VENV/req-no-torch.txt"
  "$VPY" -m pip install --disable-pip-version-check -q -r "$VENV/req-no-torch.txt"
  # torch: the PyPI Linux wheel depends on ~3 GB of nvidia-* CUDA packages that a CPU
  # run never needs. Try the wheel alone first; keep it only if it imports.
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    "$VPY" -m pip install --disable-pip-version-check -q --no-deps "$torch_req"
    if ! "$VPY" -c "import torch; torch.zeros(1)" 2>/dev/null; then
      echo "make_fixtures.sh: torch without its CUDA deps does not import; installing normally (large download)" >&2
      "$VPY" -m pip install --disable-pip-version-check -q "$torch_req"
    fi
  fi
  "$VPY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  echo "$want" > "$STAMP"
fi

exec "$VPY" "$ROOT/scripts/make_fixtures.py" "$@"
