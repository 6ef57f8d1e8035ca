#!/usr/bin/env bash
# The check on a machine with a real NVIDIA GPU and no network: builds llama.cpp with CUDA from
# source, then runs the platform as a user would (the Manager on its embedded PostgreSQL, an
# agent that reads its GPUs through NVML and runs engines as processes) and serves a llama.cpp
# workload on the GPU through /endpoint, driven by the installed CLI and SDK.
#
# Needs KIT (default .gpukit), gathered by scripts/gpu_check_kit.sh: wheels/ (this platform's
# wheel and the dependencies the machine's Python lacks), llama-src.tgz and model.gguf. Writes
# check.log and the logs of each part to OUT (default /tmp/gpu-check).
# LLAMA_SERVER=/path/to/llama-server skips the build; SIMULATE_GPUS="1xNVIDIA L4" replaces NVML
# (to try the script on a machine without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=$(realpath "${KIT:-.gpukit}")
OUT=${OUT:-/tmp/gpu-check}
WORK=${WORK:-/tmp/gpu-check-work}
MANAGER_PORT=${MANAGER_PORT:-18080}
AGENT_PORT=${AGENT_PORT:-18081}
mkdir -p "$OUT" "$WORK"
chmod 755 "$WORK"
# A rerun starts the platform afresh (a build already made is kept).
rm -rf "$WORK/home" "$WORK/agent-state" "$WORK/site"
exec > >(tee "$OUT/check.log") 2>&1
step() { echo "== $(date +%T) $*"; }
started=$(date +%s)
build='' manager='' agent=''
stop_all() {
    for pid in $agent $manager; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid"
    done
    [ -n "$build" ] && kill -- -"$build" 2>/dev/null
}
trap stop_all EXIT

if [ -n "${LLAMA_SERVER:-}" ]; then
    llama_server=$LLAMA_SERVER
else
    step "building llama.cpp with CUDA (log: llama-build.log)"
    export PATH=/usr/local/cuda/bin:$PATH
    if ! command -v nvcc >/dev/null; then
        nvcc=$(find / -name nvcc -type f 2>/dev/null | head -1)
        [ -n "$nvcc" ] || { echo "no nvcc (CUDA's compiler) on this machine"; exit 1; }
        PATH=$(dirname "$nvcc"):$PATH
    fi
    nvcc --version | tail -2
    tar xzf "$KIT/llama-src.tgz" -C "$WORK"
    # Its own process group, so that an early exit stops the whole build.
    setsid bash -c '
        cd "$0/llama.cpp" &&
            cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
                -DCMAKE_CUDA_ARCHITECTURES='"${CUDA_ARCH:-90}"' -DGGML_CUDA_FA=OFF \
                -DGGML_CUDA_NCCL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
                -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF &&
            cmake --build build --target llama-server -j"$(nproc)"
    ' "$WORK" >"$OUT/llama-build.log" 2>&1 &
    build=$!
    llama_server=$WORK/llama.cpp/build/bin/llama-server
fi

step "installing the platform (non-editable) and its missing dependencies"
python3 --version
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" \
    "$KIT"/wheels/*.whl || exit 1
export PYTHONPATH=$WORK/site PATH=$WORK/site/bin:$PATH

step "the GPUs: nvidia-smi, then the agent's NVML inventory"
nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,driver_version --format=csv
python3 - <<'EOF' || exit 1
import json, logging, os, sys
from worker_agent.gpus import NvmlInventory, detect_inventory
source = detect_inventory(os.environ.get("SIMULATE_GPUS"), logging.getLogger("check"))
print(type(source).__name__, json.dumps(source.snapshot().to_wire(), indent=1))
if not os.environ.get("SIMULATE_GPUS") and not isinstance(source, NvmlInventory):
    sys.exit("the agent found no GPU through NVML")
EOF

home=$WORK/home
data=$home/data
mkdir -p "$home"
chmod 755 "$home"
url=http://127.0.0.1:$MANAGER_PORT
step "starting the Manager on its embedded PostgreSQL (log: manager.log)"
HOME=$home inferencekey manager --port "$MANAGER_PORT" --data-dir "$data" >"$OUT/manager.log" 2>&1 &
manager=$!
ik() { HOME=$home inferencekey "$@" --base-url "$url" --data-dir "$data"; }
token() { python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'; }
answers=''
for _ in $(seq 120); do
    kill -0 $manager 2>/dev/null || { tail -40 "$OUT/manager.log"; exit 1; }
    python3 -c "import httpx; httpx.get('$url/healthz', timeout=2).raise_for_status()" \
        2>/dev/null && answers=1 && break
    sleep 1
done
[ -n "$answers" ] || { echo "the Manager did not answer in 120 s"; exit 1; }
ik admin project create demo >/dev/null || exit 1
sdk_token=$(ik admin token create --project demo | token)
agent_token=$(ik admin worker create --project demo --name gpu-box | token)
live_key=$(ik admin key create --project demo --workload tiny | token)
step "the Manager answers ($(($(date +%s) - started)) s)"

if [ -n "${build:-}" ]; then
    step "waiting for the llama.cpp build"
    if ! wait $build; then
        build=''
        tail -60 "$OUT/llama-build.log"
        exit 1
    fi
    build=''
    step "built ($(($(date +%s) - started)) s)"
fi
"$llama_server" --version 2>&1 | tail -3

step "starting the agent, process runtime (log: agent.log)"
simulate=()
[ -n "${SIMULATE_GPUS:-}" ] && simulate=(--simulate-gpus "$SIMULATE_GPUS")
INFERENCEKEY_AGENT_TOKEN=$agent_token HOME=$home inferencekey agent --manager "$url" \
    --runtime process "${simulate[@]}" --listen "127.0.0.1:$AGENT_PORT" \
    --advertise-url "http://127.0.0.1:$AGENT_PORT" --state-dir "$WORK/agent-state" \
    --model-dir "$KIT" --binary "llama-server=$llama_server" --stop-engines-on-exit \
    >"$OUT/agent.log" 2>&1 &
agent=$!

step "ensure a llama.cpp workload with every layer on the GPU, then serve through /endpoint"
INFERENCEKEY_SDK_TOKEN=$sdk_token INFERENCEKEY_API_KEY=$live_key HOME=$home python3 - \
    "$url" "$KIT/model.gguf" <<'EOF'
import json, statistics, sys, time
from inferencekey import Backend, DataClient, ManagementClient, WorkloadSpec

url, model = sys.argv[1], sys.argv[2]
began = time.monotonic()
with ManagementClient.from_env(base_url=url, project="demo") as mgmt:
    ref = mgmt.ensure(WorkloadSpec(
        name="Tiny llama on the GPU", slug="tiny", model="tiny-random-llama",
        backend=Backend.LLAMACPP, command=f"llama-server -m {model} -c 2048 -ngl 99",
        execution_policy="fixed", execution_policy_config={"replicas": 1},
    ))
    mgmt.wait_until_ready(ref.workload_slug, timeout=180, silent=True)
print(f"ready after {time.monotonic() - began:.1f} s")
endpoint = DataClient.from_env(base_url=url, project="demo").endpoint("tiny")
out = endpoint.generate_text(prompt="Say hello", max_tokens=16, temperature=0)
print("answer:", json.dumps({"text": out.text, "model": out.model}))
times = []
for _ in range(30):
    start = time.perf_counter()
    endpoint.generate_text(prompt="Say hello", max_tokens=16, temperature=0)
    times.append(time.perf_counter() - start)
print(f"30 requests of 16 tokens through /endpoint: median {statistics.median(times) * 1000:.1f} ms,"
      f" max {max(times) * 1000:.1f} ms")
EOF
served=$?

step "what the GPU and the Manager saw"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
ik status --json >"$OUT/status.json"
python3 - "$OUT/status.json" <<'EOF'
import json, sys
status = json.load(open(sys.argv[1]))
for key in ("workers", "gpus", "workloads"):
    print(key, json.dumps(status.get(key), indent=1)[:3000])
EOF
ik logs demo/tiny --tail 400 >"$OUT/engine.log" 2>&1
grep -iE "CUDA|offload|VRAM|ggml_cuda|model buffer" "$OUT/engine.log" | head -30
if [ -z "${SIMULATE_GPUS:-}" ] && [ "$served" = 0 ]; then
    # Served is not enough: llama.cpp falls back to the CPU where it finds no GPU.
    grep -q CUDA0 "$OUT/engine.log" || { echo "the engine's log never names CUDA0"; served=1; }
    nvidia-smi --query-compute-apps=process_name --format=csv,noheader | grep -q llama-server ||
        { echo "nvidia-smi shows no llama-server"; served=1; }
fi

stop_all
trap - EXIT
step "done in $(($(date +%s) - started)) s; exit status $served"
exit $served
