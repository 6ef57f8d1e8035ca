# The InferenceKey Manager. Build from the repository root:
#   docker build -f deploy/manager.Dockerfile -t inferencekey-manager .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INFERENCEKEY_DATA_DIR=/data

WORKDIR /app
COPY . .
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin inferencekey \
    && mkdir -p /data \
    && chown inferencekey /data

USER inferencekey
VOLUME /data
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["inferencekey", "manager", "--host", "0.0.0.0", "--port", "8080"]
