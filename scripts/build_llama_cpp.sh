#!/usr/bin/env bash
# Build llama.cpp's CPU tools (llama-bench, llama-server, llama-tokenize, llama-quantize,
# llama-cli, llama-completion) from the llama.cpp tree vendored in the llama-cpp-python
# 0.3.36 sdist (llama.cpp commit 0c1e57098 per the sdist's CHANGELOG).
#
# Plain CPU build with the instruction sets strata's CPU backend uses on this machine:
# AVX2/FMA/F16C, plus AVX-VNNI where the CPU has it, plus AVX-512 (F, CD, DQ, BW, VL) and
# AVX-512 VNNI where it has those (strata detects both at run time and uses `vpdpbusd`
# on 256- and 512-bit vectors for its batched quantized products; llama.cpp then gets the
# same instructions in its dot products and repacked GEMMs, and AVX-512 everywhere else
# too). No AMX, no AVX-512 VBMI/BF16, which strata does not use. OpenMP, no BLAS/CUDA,
# static libraries (self-contained binaries).
# The last line on standard output is the directory of the binaries.
# Idempotent: does nothing when all binaries exist and the stamp (sdist hash + flags +
# targets) matches. The tarball's sha256 is verified before every build.
#
# Env:
#   LLAMA_CPP_ISA           avx2, avxvnni or avx512vnni (default: the highest that
#                           /proc/cpuinfo lists)
#   LLAMA_CPP_DIR           output dir (default $ROOT/target/llama.cpp for avx2,
#                           $ROOT/target/llama.cpp-$LLAMA_CPP_ISA otherwise); binaries in
#                           its bin/
#   LLAMA_CPP_DOWNLOAD_DIR  where the sdist tarball is (or is downloaded to) and extracted
#                           (default $LLAMA_CPP_DIR/download); an already-extracted
#                           llama_cpp_python-0.3.36/ there is reused
#   LLAMA_CPP_JOBS          parallel build jobs (default $(nproc))
# Usage: scripts/build_llama_cpp.sh [--force]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
has() { grep -qw "$1" /proc/cpuinfo 2>/dev/null; }
if [ -z "${LLAMA_CPP_ISA:-}" ]; then
  LLAMA_CPP_ISA=avx2
  has avx_vnni && LLAMA_CPP_ISA=avxvnni
  if has avx512f && has avx512cd && has avx512dq && has avx512bw && has avx512vl \
    && has avx512_vnni; then
    LLAMA_CPP_ISA=avx512vnni
  fi
fi
case "$LLAMA_CPP_ISA" in
  avx2) OUT="${LLAMA_CPP_DIR:-$ROOT/target/llama.cpp}"; ISA_FLAGS=(-DGGML_AVX512=OFF) ;;
  avxvnni) OUT="${LLAMA_CPP_DIR:-$ROOT/target/llama.cpp-avxvnni}"
    ISA_FLAGS=(-DGGML_AVX_VNNI=ON -DGGML_AVX512=OFF) ;;
  avx512vnni) OUT="${LLAMA_CPP_DIR:-$ROOT/target/llama.cpp-avx512vnni}"
    # AVX-VNNI's VEX form too where the CPU has it (Sapphire Rapids, not Ice Lake), as
    # strata then uses both.
    ISA_FLAGS=(-DGGML_AVX_VNNI="$(has avx_vnni && echo ON || echo OFF)"
      -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON) ;;
  *) echo "build_llama_cpp.sh: LLAMA_CPP_ISA must be avx2, avxvnni or avx512vnni" >&2; exit 2 ;;
esac
# One download and extraction serves every build.
DL="${LLAMA_CPP_DOWNLOAD_DIR:-$ROOT/target/llama.cpp/download}"
JOBS="${LLAMA_CPP_JOBS:-$(nproc)}"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

SDIST_VERSION="0.3.36"
SDIST_NAME="llama_cpp_python-$SDIST_VERSION"
SDIST_URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$SDIST_NAME.tar.gz"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# The sdist has no git metadata; this is the llama.cpp commit its CHANGELOG names for 0.3.36.
LLAMA_COMMIT="0c1e57098"

TARGETS=(llama-bench llama-server llama-tokenize llama-quantize llama-cli llama-completion)
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=OFF
  -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "${ISA_FLAGS[@]}"
  -DGGML_OPENMP=ON
  -DGGML_BLAS=OFF
  -DGGML_CUDA=OFF
  -DGGML_METAL=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  "-DLLAMA_BUILD_COMMIT=$LLAMA_COMMIT"
)
# (LLAMA_CURL no longer exists in this llama.cpp: it is only a deprecation warning, so
#  it is not passed. LLAMA_USE_PREBUILT_UI=OFF stops the server's web-UI step from
#  trying to download assets; the server is then built without an embedded UI.)

log() { echo "build_llama_cpp.sh: $*" >&2; }

stamp_want="$(printf '%s\n' "$SDIST_SHA256" "${CMAKE_FLAGS[@]}" "${TARGETS[@]}" | sha256sum | cut -d' ' -f1)"
STAMP="$OUT/.stamp"
all_present=1
for t in "${TARGETS[@]}"; do
  [ -x "$OUT/bin/$t" ] || all_present=0
done
if [ "$FORCE" = 0 ] && [ "$all_present" = 1 ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$stamp_want" ]; then
  log "up to date ($OUT/bin)"
  echo "$OUT/bin"
  exit 0
fi

# --- cmake ---------------------------------------------------------------------------
USER_BIN="$(python3 -c 'import site; print(site.getuserbase())')/bin"
case ":$PATH:" in *":$USER_BIN:"*) ;; *) export PATH="$PATH:$USER_BIN" ;; esac
if ! command -v cmake >/dev/null 2>&1; then
  log "cmake not found; pip install --user cmake"
  python3 -m pip install --user --disable-pip-version-check -q cmake
fi
command -v cmake >/dev/null 2>&1 || { log "cmake still not found"; exit 1; }

# --- sdist: download, verify, extract --------------------------------------------------
mkdir -p "$DL"
TARBALL="$DL/$SDIST_NAME.tar.gz"
if [ ! -f "$TARBALL" ]; then
  log "downloading $SDIST_URL"
  tmp="$TARBALL.part.$$"
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 -o "$tmp" "$SDIST_URL"
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$SDIST_URL" "$tmp"
  fi
  mv "$tmp" "$TARBALL"
fi
got="$(sha256sum "$TARBALL" | cut -d' ' -f1)"
if [ "$got" != "$SDIST_SHA256" ]; then
  log "sha256 mismatch for $TARBALL: got $got, want $SDIST_SHA256"
  exit 1
fi
SRC="$DL/$SDIST_NAME/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  log "extracting $TARBALL"
  tmpd="$(mktemp -d "$DL/.extract.XXXXXX")"
  tar -xzf "$TARBALL" -C "$tmpd"
  rm -rf "${DL:?}/$SDIST_NAME"
  mv "$tmpd/$SDIST_NAME" "$DL/$SDIST_NAME"
  rmdir "$tmpd"
fi
grep -q "llama.cpp@$LLAMA_COMMIT" "$DL/$SDIST_NAME/CHANGELOG.md" \
  || log "warning: CHANGELOG does not name llama.cpp@$LLAMA_COMMIT"

# --- configure + build ------------------------------------------------------------------
BUILD="$OUT/build"
mkdir -p "$BUILD" "$OUT/bin"
start=$(date +%s)
log "configuring ($SRC -> $BUILD)"
cmake -S "$SRC" -B "$BUILD" "${CMAKE_FLAGS[@]}" >"$OUT/cmake-configure.log" 2>&1 \
  || { tail -50 "$OUT/cmake-configure.log" >&2; exit 1; }
log "building ${TARGETS[*]} with -j$JOBS (log: $OUT/cmake-build.log)"
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >"$OUT/cmake-build.log" 2>&1 \
  || { tail -50 "$OUT/cmake-build.log" >&2; exit 1; }
for t in "${TARGETS[@]}"; do
  install -m 0755 "$BUILD/bin/$t" "$OUT/bin/$t"
done
{
  echo "sdist $SDIST_NAME sha256 $SDIST_SHA256"
  echo "llama.cpp commit $LLAMA_COMMIT"
  # The sdist ships a shallow git checkout (1 commit), so the build number llama.cpp derives
  # from `git rev-list --count` ("build 1") is meaningless; the full hash is still useful.
  if full="$(git -C "$SRC" rev-parse HEAD 2>/dev/null)"; then echo "llama.cpp git HEAD $full"; fi
  "$OUT/bin/llama-cli" --version 2>&1 | grep -E 'version|built with' || true
  echo "cmake flags: ${CMAKE_FLAGS[*]}"
} >"$OUT/BUILD_INFO.txt"
echo "$stamp_want" >"$STAMP"
log "done in $(( $(date +%s) - start )) s; binaries in $OUT/bin"
echo "$OUT/bin"
