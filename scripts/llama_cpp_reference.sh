#!/usr/bin/env bash
# Record llama.cpp's reference tokenization and greedy generation on the fixture GGUF files
# into fixtures/gguf/llama_cpp_reference.json (see scripts/llama_cpp_reference.py).
# Builds llama.cpp first if needed (scripts/build_llama_cpp.sh; honours LLAMA_CPP_ISA, default avx2,
# LLAMA_CPP_DIR and LLAMA_CPP_DOWNLOAD_DIR). Needs only python3 (stdlib). Deterministic and rerunnable.
# Usage: scripts/llama_cpp_reference.sh [--out PATH] [--gguf-dir DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The committed reference was made with the AVX2 build; keep it so unless asked.
BIN="$(LLAMA_CPP_ISA="${LLAMA_CPP_ISA:-avx2}" "$ROOT/scripts/build_llama_cpp.sh" | tail -1)"
exec python3 "$ROOT/scripts/llama_cpp_reference.py" --bin-dir "$BIN" "$@"
