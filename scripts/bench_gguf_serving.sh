#!/usr/bin/env bash
# Serving on one GGUF file: `strata serve FILE` and `llama-server -m FILE`, one after the
# other on loopback, each driven by `strata loadgen` (CLIENTS concurrent streaming
# /v1/completions clients in a closed loop for SECS seconds, max_tokens TOKENS,
# ignore_eos), same thread count. llama-server runs twice: as a user starts it (its
# default slots: 4 at this llama.cpp), and with one slot per client (`-np CLIENTS`, so
# that it batches all of them as strata does). Prints each server's loadgen report
# (generated tok/s, TTFT percentiles, server CPU per token).
# Usage: scripts/bench_gguf_serving.sh FILE.gguf
# Env: CLIENTS (32), SECS (30), TOKENS (32), THREADS (2), PORT (18080).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FILE="$1"
CLIENTS="${CLIENTS:-32}"
SECS="${SECS:-30}"
TOKENS="${TOKENS:-32}"
THREADS="${THREADS:-2}"
PORT="${PORT:-18080}"
LLAMA_BIN="$("$ROOT/scripts/build_llama_cpp.sh" | tail -1)"
(cd "$ROOT" && cargo build --release -p strata 2> /dev/null)
STRATA="$ROOT/target/release/strata"
export RAYON_NUM_THREADS="$THREADS"

wait_ready() {  # bounded: 120 s
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "server on port $PORT did not become ready" >&2
  return 1
}

run_one() {  # name, command...
  local name="$1"; shift
  "$@" > "/tmp/bench-serving-$name.log" 2>&1 &
  local pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_ready
  echo "== $name ($CLIENTS clients, $SECS s, $TOKENS tokens each)"
  "$STRATA" loadgen --addr "127.0.0.1:$PORT" --clients "$CLIENTS" --duration-secs "$SECS" \
    --max-tokens "$TOKENS" --server-pid "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  trap - EXIT
}

run_one strata "$STRATA" serve "$FILE" --port "$PORT" --max-num-seqs "$CLIENTS"
# As a llama.cpp user starts it: default slots, default context.
run_one llama-server-default "$LLAMA_BIN/llama-server" -m "$FILE" -t "$THREADS" --port "$PORT" \
  --host 127.0.0.1 --no-webui
# One slot per client, each with room for the prompt and the answer.
run_one llama-server-np$CLIENTS "$LLAMA_BIN/llama-server" -m "$FILE" -t "$THREADS" --port "$PORT" \
  --host 127.0.0.1 -np "$CLIENTS" -c $((CLIENTS * 256)) --no-webui
