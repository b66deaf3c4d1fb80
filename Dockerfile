# WADM: one process that collects Binance/Bybit market data and serves the REST API on 8920.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WADM_DATA_DIR=/data \
    WADM_HOST=0.0.0.0

WORKDIR /app

# Dependencies first (pinned, URL-free lock exported from pyproject.toml), so code changes
# rebuild only the last layers.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY wadm ./wadm
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /data wadm \
    && mkdir -p /data \
    && chown wadm /data

USER 10001
VOLUME ["/data"]
# Inside the container the API listens on every interface; publish it on 127.0.0.1 only (as the
# compose file does) or set WADM_API_KEYS and put HTTPS in front.
EXPOSE 8920

# 200 when every configured stream is live and fresh; 503 (unhealthy) otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8920/health', timeout=4).status == 200 else 1)"]

# Granian forwards SIGTERM to the worker, whose lifespan flushes every buffer before exit.
STOPSIGNAL SIGTERM
CMD ["wadm", "run"]
