# The InferenceKey Manager. Build from the repository root:
#   docker build -f deploy/manager.Dockerfile -t inferencekey-manager .
# It installs from PyPI. A host that reaches no package index (or not through TLS it trusts)
# builds from wheels made where one is reached, put in deploy/wheels/ (deploy/wheels/README.md):
#   pip wheel --wheel-dir deploy/wheels . setuptools wheel
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /src
# Into a virtual environment, copied alone into the image below: no sources, no pip.
RUN if ls /src/deploy/wheels/*.whl >/dev/null 2>&1; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src/deploy/wheels; \
    fi \
    && python -m venv /opt/inferencekey \
    && /opt/inferencekey/bin/pip install /src \
    && /opt/inferencekey/bin/pip uninstall --yes --quiet pip setuptools

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/inferencekey/bin:$PATH \
    INFERENCEKEY_DATA_DIR=/data

COPY --from=build /opt/inferencekey /opt/inferencekey
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin inferencekey \
    && mkdir -p /data \
    && chown inferencekey /data

USER inferencekey
VOLUME /data
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["inferencekey", "manager", "--host", "0.0.0.0", "--port", "8080"]
