#!/usr/bin/env bash
# Regenerate fixtures/chat_templates/* (chat templates rendered by HF
# transformers' apply_chat_template). Creates/reuses a pinned venv at
# .venv-chat-fixtures (transformers + jinja2, no torch).
# Usage: scripts/make_chat_fixtures.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHAT_FIXTURES_VENV:-$ROOT/.venv-chat-fixtures}"
REQ="$ROOT/scripts/requirements-chat-fixtures.txt"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ] || ! "$VPY" -c "import transformers, jinja2, tokenizers" 2>/dev/null; then
  "$VPY" -m pip install --disable-pip-version-check -q -r "$REQ"
  "$VPY" -c "import transformers, jinja2; print('transformers', transformers.__version__, 'jinja2', jinja2.__version__)"
  echo "$want" > "$STAMP"
fi

exec "$VPY" "$ROOT/scripts/make_chat_fixtures.py" "$@"
