#!/usr/bin/env bash
# The CUDA backend's checks on a machine with an NVIDIA GPU, in one run of a
# few minutes: parity with the CPU backend, then decode speed against the
# device's measured read bandwidth.
#
#   scripts/gpu_check.sh prepare   # here (a Rust toolchain, no GPU needed):
#                                  # release builds of the test binary and of
#                                  # strata into target/gpu-carry/
#   scripts/gpu_check.sh run OUT [tests] [pd] [bench]
#                                  # on the GPU machine (no toolchain, no
#                                  # network): runs them (default: all
#                                  # three stages), results into OUT/
#
# `run` finds CUDA 13 (or 12) libraries under STRATA_CUDA_LIB_DIR, or else
# in a torch install (TORCH_ROOT, default /opt/torch, then python3's
# site-packages), and writes OUT/tests.txt (the parity
# tests, STRATA_REQUIRE_GPU=1 so a missing device fails them),
# OUT/pd-servers.txt (scripts/gpu_pd_check.py: P/D and a host-tier hit
# between real servers, cuda->cpu, cpu->cuda, cuda->cuda), OUT/bench-*.txt
# (strata bench --device cuda), OUT/profile-llama.txt (GPU time per op at
# batch 1 and 256) and OUT/summary.txt (nvidia-smi and the lines that
# matter from each): seven files, within what a device run brings back.
# Each stage has its own time limit, so one that hangs cannot take the rest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="$root/target/gpu-carry"

prepare() {
  cd "$root"
  mkdir -p "$carry"
  cargo build --release -p strata
  # The parity tests as one executable (release: a debug build is too big
  # to take along, and slow).
  local exe
  exe="$(cargo test --release -p strata-model --features cuda --test cuda --no-run \
    --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])')"
  [ -x "$exe" ] || { echo "gpu_check: no test executable built" >&2; exit 1; }
  cp "$exe" "$carry/cuda-tests"
  cp target/release/strata "$carry/strata"
  strip "$carry/cuda-tests" "$carry/strata" 2>/dev/null || true
  du -sh "$carry"/*
  echo "gpu_check: carry target/gpu-carry; on the GPU machine: scripts/gpu_check.sh run \$OUT"
}

# Directories holding libcublas.so.1[23] and libnvrtc.so.1[23] under $1.
lib_dirs_under() {
  { find "$1" \( -name 'libcublas.so.1[23]*' -o -name 'libnvrtc.so.1[23]*' \
    -o -name 'libcublasLt.so.1[23]*' -o -name 'libnvrtc-builtins.so.1[23]*' \) \
    2>/dev/null || true; } | xargs -r -n1 dirname | sort -u | paste -sd:
}

run() {
  local out="${1:?usage: scripts/gpu_check.sh run OUT [tests] [pd] [bench]}"
  shift
  # The stages to run (default: all), so that a short device budget can
  # split them over two calls.
  local stages="${*:-tests pd bench}" stage
  for stage in $stages; do
    case "$stage" in tests|pd|bench) ;; *) echo "gpu_check: unknown stage '$stage' (tests, pd, bench)" >&2; exit 2 ;; esac
  done
  mkdir -p "$out"
  [ -x "$carry/cuda-tests" ] && [ -x "$carry/strata" ] \
    || { echo "gpu_check: run 'scripts/gpu_check.sh prepare' first and carry target/gpu-carry" >&2; exit 1; }
  if [ -z "${STRATA_CUDA_LIB_DIR-}" ]; then
    local dirs
    dirs="$(lib_dirs_under "${TORCH_ROOT:-/opt/torch}")"
    if [ -z "$dirs" ]; then
      dirs="$(lib_dirs_under "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || echo /nonexistent)")"
    fi
    export STRATA_CUDA_LIB_DIR="$dirs"
  fi
  echo "STRATA_CUDA_LIB_DIR=$STRATA_CUDA_LIB_DIR" | tee "$out/summary.txt"
  # Outside OUT: only a few files come back from there.
  export STRATA_KERNEL_CACHE=/tmp/strata-kernel-cache
  (nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.mem --format=csv 2>&1 || true) \
    | tee -a "$out/summary.txt"

  local status=0
  case " $stages " in *" tests "*)
  echo "== parity tests" | tee -a "$out/summary.txt"
  STRATA_REQUIRE_GPU=1 RUST_BACKTRACE=1 timeout 240 "$carry/cuda-tests" --test-threads=1 --nocapture \
    >"$out/tests.txt" 2>&1 || status=$?
  grep -E '^test result|relative error|^test .* (ok|FAILED)$|panicked' "$out/tests.txt" \
    | tee -a "$out/summary.txt" || true

  ;; esac

  # P/D and the host tier between real servers on the GPU and the CPU.
  case " $stages " in *" pd "*)
  local pair
  for pair in "cuda cpu" "cpu cuda" "cuda cuda"; do
    set -- $pair
    echo "== P/D $1 -> $2" | tee -a "$out/summary.txt"
    timeout 120 python3 "$root/scripts/gpu_pd_check.py" --strata "$carry/strata" \
      --prefill-device "$1" --decode-device "$2" --log "$out/pd-servers.txt" \
      2>&1 | tee -a "$out/summary.txt" || status=1
  done

  ;; esac

  case " $stages " in *" bench "*)
  # Decode speed: Qwen2.5-0.5B and Llama-3-8B shapes, bf16, batch 1, 32
  # and 256 (decode steps replay CUDA graphs), each against the measured
  # device bandwidth; then Qwen without graphs.
  local model
  for model in qwen2.5-0.5b-shape llama-3-8b-shape; do
    echo "== bench $model" | tee -a "$out/summary.txt"
    timeout 200 "$carry/strata" bench --device cuda --model "$model" --dtype bf16 \
      --batch-sizes 1,16,32,256 --prompt-len 128 --decode-steps 32 --num-kv-blocks 4096 \
      >"$out/bench-$model.txt" 2>&1 || status=$?
    grep -E '^\||read bandwidth|of the limit|^model|error|graph (capture|launch) failed' "$out/bench-$model.txt" \
      | tee -a "$out/summary.txt" || true
  done
  # Where the time goes at batch 256 (and 1): GPU time per op.
  echo "== profile llama-3-8b-shape" | tee -a "$out/summary.txt"
  STRATA_CUDA_PROFILE=1 timeout 200 "$carry/strata" bench --device cuda --model llama-3-8b-shape \
    --dtype bf16 --batch-sizes 1,256 --prompt-len 128 --decode-steps 8 --num-kv-blocks 4096 \
    >"$out/profile-llama.txt" 2>&1 || status=$?
  grep -E '^batch .* ms/step wall|^\| (cublas|gemv|paged|\(not)' "$out/profile-llama.txt" \
    | tee -a "$out/summary.txt" || true
  # The same small decode batches without CUDA graphs, for the ratio.
  echo "== bench qwen2.5-0.5b-shape --enforce-eager" | tee -a "$out/summary.txt"
  timeout 120 "$carry/strata" bench --device cuda --model qwen2.5-0.5b-shape --dtype bf16 \
    --enforce-eager --batch-sizes 1,16,256 --prompt-len 128 --decode-steps 32 --num-kv-blocks 4096 \
    >"$out/bench-qwen-eager.txt" 2>&1 || status=$?
  grep -E '^\||of the limit|error' "$out/bench-qwen-eager.txt" | tee -a "$out/summary.txt" || true
  ;; esac
  echo "gpu_check: exit status $status" | tee -a "$out/summary.txt"
  return "$status"
}

case "${1-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/gpu_check.sh prepare | run OUT" >&2; exit 2 ;;
esac
