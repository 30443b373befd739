#!/usr/bin/env bash
# Regenerate fixtures/gguf/* (small GGUF files laid out as llama.cpp's convert_hf_to_gguf.py
# and llama-quantize write them) from fixtures/models/* plus seeded random K-quant models.
# Creates/reuses a pinned venv at .venv-gguf (gguf-py + numpy; no torch).
# Usage: scripts/make_gguf_fixtures.sh [extra args for make_gguf_fixtures.py]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GGUF_FIXTURES_VENV:-$ROOT/.venv-gguf}"
REQ="$ROOT/scripts/requirements-gguf.txt"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ] || ! "$VPY" -c "import gguf, numpy" 2>/dev/null; then
  "$VPY" -m pip install --disable-pip-version-check -q -r "$REQ"
  "$VPY" -c "import importlib.metadata as m; print('gguf', m.version('gguf'), 'numpy', m.version('numpy'))"
  echo "$want" > "$STAMP"
fi

exec "$VPY" "$ROOT/scripts/make_gguf_fixtures.py" "$@"
