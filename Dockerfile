# pandora-gateway in a container: `docker compose up -d` with docker-compose.yml next to this file.
#
# The steps are run.sh's (a venv from requirements.txt, then server.py); settings come from the
# environment (same names as RefreshToV1Api), an optional conf/config.json, and gpts.json.
# Not built on the machines this was written on (they have no Docker engine): tests/e2e/
# test_ops_docker.py checks what can be checked without one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=33333

WORKDIR /app

# run.sh's setup: a venv with the pinned runtime dependencies (pycurl's wheel brings its libcurl).
COPY requirements.txt ./
RUN python -m venv .venv \
    && .venv/bin/python -m pip install --no-cache-dir --quiet -r requirements.txt \
    && touch .venv/.installed-requirements.txt

COPY . .

# A user of its own, owning only what the gateway writes: saved images, logs, conf/.
RUN useradd --system --uid 10001 --no-create-home --home-dir /app gateway \
    && mkdir -p static/images log conf \
    && chown -R gateway:gateway static/images log conf

USER gateway
EXPOSE 33333
VOLUME ["/app/static/images", "/app/log", "/app/conf"]

# Liveness: 200 whenever the process serves (GET /readyz also checks the upstream).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '33333'), timeout=4)"]

# conf/config.json, when the conf/ volume holds one, is read on top of the defaults.
CMD ["sh", "-c", "if [ -f conf/config.json ]; then exec .venv/bin/python server.py --config conf/config.json; else exec .venv/bin/python server.py; fi"]
